"""A PostgresML-style session typed into psql in the source database, beside ``run``.

The session of :mod:`tests.predictor.test_postgresml_scripts` that the source's ``pgml``
schema serves: a view made in the source and trained on, ``pgml.train`` with its arguments
positional and named (algorithm, hyperparams, search, search_params, runtime), several
algorithms, ``pgml.deploy`` by each strategy, and ``pgml.predict`` through dblink to the
endpoint, with ``ON_ERROR_STOP``.

In the source ``pgml.train`` and ``pgml.deploy`` are requests answered by the sidecar: each
returns a request id at once. Where a script of PostgresML's goes on to use a model it just
trained, the session here is cut in two and the test awaits the requests in between.

Left out, as the source does not have them (the endpoint does, see the other module):
``pgml.train_joint``, ``pgml.predict_joint``, ``pgml.predict_proba``, ``pgml.decompose``,
``pgml.load_dataset``, the vector functions and ``pgml.chunk``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.predictor.test_postgresml_scripts import DIABETES, sections, snapshot_rows
from tests.sidecar.test_daemon import finished
from tests.source_roles import run


@dataclass
class Source:
    dsn: str
    daemon: Daemon
    pg_bin: Path

    def psql(self, script: str) -> dict[str, list[str]]:
        params = conninfo_to_dict(self.dsn)
        done = subprocess.run(
            [str(self.pg_bin / "psql"), "-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1",
             "-h", str(params["host"]), "-p", str(params["port"]), "-U", str(params["user"]),
             "-d", str(params["dbname"])],
            input=script, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        return sections(done.stdout)

    def done(self, lines: list[str]) -> list[int]:
        """Await the requests whose ids are ``lines``; their model ids."""
        models = []
        for line in lines:
            status, error, model_id = finished(self.dsn, int(line))
            assert (status, error) == ("done", None), line
            assert model_id is not None
            models.append(model_id)
        return models


@pytest.fixture
def source(source_dsn: str, mirror_path: Path, pg_bin: Path) -> Iterator[Source]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    columns = ", ".join(f"{c} double precision" for c in DIABETES)
    rows = [
        (i, *map(float, x), float(y))
        for i, (x, y) in enumerate(zip(data.data, data.target, strict=True))
    ]
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute(
            f"create table public.diabetes (id bigint primary key, {columns}, target float8)"
        )
        with conn.cursor().copy("copy public.diabetes from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        source_schema.install(conn)
    run(source_dsn, "create extension if not exists dblink")
    daemon = Daemon(
        DaemonSettings(
            source_dsn=source_dsn, mirror_path=mirror_path, tables=["public.diabetes"], port=0,
            metrics_port=0,
        )
    )  # fmt: skip
    daemon.start()
    try:
        user = conninfo_to_dict(source_dsn)["user"]
        endpoint = f"host=127.0.0.1 port={daemon.endpoint.port} dbname=pgml user={user}"
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            source_schema.install(conn, endpoint_dsn=endpoint)
        yield Source(source_dsn, daemon, pg_bin)
    finally:
        daemon.stop()


TRAIN = """
\\set ON_ERROR_STOP on
DROP VIEW IF EXISTS public.diabetes_view;
CREATE VIEW public.diabetes_view AS
SELECT age, sex, bmi, bp, s1, s2, s3, s4, s5, s6, target FROM public.diabetes WHERE id < 300;
\\echo @rows
SELECT count(*) FROM public.diabetes_view;
\\echo @first
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'public.diabetes_view', 'target');
"""
PREDICT = """
\\set ON_ERROR_STOP on
\\echo @predictions
SELECT age, sex, bmi, bp, s1, s2, s3, s4, s5, s6,
       pgml.predict('Diabetes Progression', ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6])
  FROM public.diabetes_view LIMIT 10;
\\echo @trainings
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'public.diabetes_view', 'target',
                         'ridge');
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'public.diabetes_view', 'target',
                         'theil_sen', '{"max_iter": 10, "max_subpopulation": 100}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'lasso');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'svm',
                         hyperparams => '{"max_iter": 100}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'random_forest',
                         hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'linear', runtime => 'rust');
SELECT pgml.train(
    'Diabetes Progression',
    algorithm => 'xgboost',
    hyperparams => '{"eval_metric": "rmse"}'::JSONB,
    search => 'grid',
    search_params => '{
        "max_depth": [1, 2],
        "n_estimators": [5, 10]
    }'
);
"""
DEPLOY = """
\\set ON_ERROR_STOP on
\\echo @deploys
SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent', 'random_forest');
SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score');
SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent');
SELECT * FROM pgml.deploy('Diabetes Progression', 'rollback');
SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score', 'svm');
"""
IMPROVED = """
\\set ON_ERROR_STOP on
\\echo @improved
SELECT target, pgml.predict('Diabetes Progression',
                            ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6]) AS prediction
  FROM public.diabetes_view LIMIT 10;
"""


def test_a_postgresml_session_in_the_source(source: Source) -> None:
    from sklearn.linear_model import LinearRegression

    out = source.psql(TRAIN)
    assert out["rows"] == ["300"]
    first = source.done(out["first"])
    trainer = source.daemon.trainer
    x_train, y_train, _, _ = snapshot_rows(trainer, "Diabetes Progression", DIABETES, ["target"])
    assert len(x_train) == 225  # the view's 300 rows, three quarters to train on
    reference = LinearRegression().fit(x_train, y_train[:, 0])

    out = source.psql(PREDICT)
    rows = np.array([[float(v) for v in line.split("|")] for line in out["predictions"]])
    assert rows.shape == (10, 11)
    np.testing.assert_allclose(rows[:, 10], reference.predict(rows[:, :10]), rtol=1e-6)
    models = source.done(out["trainings"])
    registry = trainer.registry
    algorithms = [registry.model(m).algorithm for m in [*first, *models]]  # type: ignore[union-attr]
    assert algorithms == ["linear", "ridge", "theil_sen", "lasso", "svm", "random_forest",
                          "linear", "xgboost"]  # fmt: skip
    searched = registry.model(models[-1])
    assert searched is not None and searched.search == "grid"
    assert searched.hyperparams["eval_metric"] == "rmse"

    out = source.psql(DEPLOY)
    deployed = [registry.model(m).algorithm for m in source.done(out["deploys"])]  # type: ignore[union-attr]
    project = registry.project("Diabetes Progression")
    assert project is not None
    records = registry.models(project.id)
    best = max(records, key=lambda m: m.metrics["r2"]).algorithm
    assert deployed[0] == "random_forest" and deployed[1] == best
    assert deployed[2] == "xgboost" and deployed[4] == "svm"

    out = source.psql(IMPROVED)
    svm = registry.deployed(project.id)
    assert svm is not None and svm.algorithm == "svm"
    assert len(out["improved"]) == 10
    assert all(np.isfinite(float(line.split("|")[1])) for line in out["improved"])
