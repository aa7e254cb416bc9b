"""A PostgresML-style session typed into psql in the source database, beside ``run``.

The session of :mod:`tests.predictor.test_postgresml_scripts` that the source's ``pgml``
schema serves: a view made in the source and trained on, ``pgml.train`` with its arguments
positional and named (algorithm, hyperparams, search, search_params, runtime), several
algorithms, ``pgml.deploy`` by each strategy, and ``pgml.predict`` through dblink to the
endpoint, with ``ON_ERROR_STOP``; then ``pgml.train_joint`` and ``pgml.predict_joint``, a
classifier's ``pgml.predict_proba``, and ``pgml.decompose`` of a decomposition trained on a
view, each answered by the endpoint through dblink as ``pgml.predict`` is.

In the source ``pgml.train`` and ``pgml.deploy`` are requests answered by the sidecar: each
returns a request id at once. Where a script of PostgresML's goes on to use a model it just
trained, the session here is cut in two and the test awaits the requests in between.

Left out, as the source does not have them (the endpoint does, see the other module):
``pgml.load_dataset``, the vector functions and ``pgml.chunk``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.predictor.test_postgresml_scripts import (
    DIABETES,
    IRIS,
    SESSIONS,
    sections,
    snapshot_rows,
)
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


LINNERUD = ["chins", "situps", "jumps", "weight", "waist", "pulse"]


def _table(conn: psycopg.Connection, name: str, columns: list[str], rows: Any) -> None:
    """``public.<name>`` with an id and ``columns`` of float8, holding ``rows``."""
    typed = ", ".join(f"{c} double precision" for c in columns)
    conn.execute(f"create table public.{name} (id bigint primary key, {typed})")
    with conn.cursor().copy(f"copy public.{name} from stdin") as copy:
        for i, row in enumerate(rows):
            copy.write_row((i, *map(float, row)))


@pytest.fixture
def source(source_dsn: str, mirror_path: Path, pg_bin: Path) -> Iterator[Source]:
    from sklearn.datasets import load_diabetes, load_iris, load_linnerud

    diabetes, iris, linnerud = load_diabetes(), load_iris(), load_linnerud()
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        _table(conn, "diabetes", [*DIABETES, "target"],
               np.column_stack([diabetes.data, diabetes.target]))  # fmt: skip
        _table(conn, "iris", [*IRIS, "target"], np.column_stack([iris.data, iris.target]))
        _table(conn, "linnerud", LINNERUD, np.column_stack([linnerud.data, linnerud.target]))
        source_schema.install(conn)
    run(source_dsn, "create extension if not exists dblink")
    daemon = Daemon(
        DaemonSettings(
            source_dsn=source_dsn, mirror_path=mirror_path,
            tables=["public.diabetes", "public.iris", "public.linnerud"], port=0, metrics_port=0,
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


JOINT_TRAIN = """
\\set ON_ERROR_STOP on
DROP VIEW IF EXISTS public.iris_vectors;
CREATE VIEW public.iris_vectors AS
SELECT sepal_length, sepal_width, petal_length, petal_width FROM public.iris;
\\echo @joint
SELECT * FROM pgml.train_joint('Exercise vs Physiology', 'regression', 'public.linnerud',
                               ARRAY['weight', 'waist', 'pulse']);
\\echo @classes
SELECT * FROM pgml.train('Iris Flower Types', 'classification', 'public.iris', 'target');
\\echo @reduction
SELECT * FROM pgml.train('Iris Reduction', 'decomposition', 'public.iris_vectors');
"""
JOINT_PREDICT = """
\\set ON_ERROR_STOP on
\\echo @joint
SELECT chins, situps, jumps,
       pgml.predict_joint('Exercise vs Physiology', ARRAY[chins, situps, jumps])
  FROM public.linnerud ORDER BY id LIMIT 10;
\\echo @algorithms
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'ridge');
\\echo @probabilities
SELECT target, pgml.predict('Iris Flower Types',
                            ARRAY[sepal_length, sepal_width, petal_length, petal_width]),
       pgml.predict_proba('Iris Flower Types',
                          ARRAY[sepal_length, sepal_width, petal_length, petal_width])
  FROM public.iris ORDER BY id LIMIT 10;
\\echo @decomposed
SELECT sepal_length, sepal_width, petal_length, petal_width,
       pgml.decompose('Iris Reduction', ARRAY[sepal_length, sepal_width, petal_length,
                                              petal_width]) AS pca
  FROM public.iris_vectors LIMIT 10;
"""


def _numbers(text: str) -> list[float]:
    return [float(v) for v in text.strip("{}").split(",")]


def test_joint_probabilities_and_decompositions_in_the_source(source: Source) -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression

    out = source.psql(JOINT_TRAIN)
    (joint,) = source.done(out["joint"])
    source.done(out["classes"])
    source.done(out["reduction"])
    trainer = source.daemon.trainer
    registry = trainer.registry
    labels = ["weight", "waist", "pulse"]
    model = registry.model(joint)
    assert model is not None and model.algorithm == "linear"
    snapshot = registry.snapshot(model.snapshot_id)
    assert snapshot is not None and snapshot.relation_name == "public.linnerud"
    assert snapshot.y_column_name == labels

    out = source.psql(JOINT_PREDICT)
    x_train, y_train, _, _ = snapshot_rows(
        trainer, "Exercise vs Physiology", ["chins", "situps", "jumps"], labels
    )
    reference = LinearRegression().fit(x_train, y_train)
    rows = [line.split("|") for line in out["joint"]]
    assert len(rows) == 10
    features = np.array([[float(v) for v in row[:3]] for row in rows])
    predicted = np.array([_numbers(row[3]) for row in rows])
    np.testing.assert_allclose(predicted, reference.predict(features), rtol=1e-6)
    (ridge,) = source.done(out["algorithms"])
    assert registry.model(ridge).algorithm == "ridge"  # type: ignore[union-attr]

    for line in out["probabilities"]:
        _, label, probabilities = line.split("|")
        values = _numbers(probabilities)
        assert len(values) == 3 and sum(values) == pytest.approx(1, abs=1e-6)
        assert int(np.argmax(values)) == int(float(label))

    x_train, _, _, _ = snapshot_rows(trainer, "Iris Reduction", IRIS, [IRIS[0]])
    pca = PCA().fit(x_train)
    for line in out["decomposed"]:
        *pixels, components = line.split("|")
        expected = pca.transform([[float(v) for v in pixels]])[0]
        np.testing.assert_allclose(_numbers(components), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("session", sorted(SESSIONS))
def test_every_endpoint_session_runs_on_the_endpoint_of_run(source: Source, session: str) -> None:
    """The endpoint sessions, unchanged, against the endpoint ``run`` serves beside the source
    (its users are source roles, its workspace and privileges theirs): each runs with
    ``ON_ERROR_STOP`` and prints every section the same way as against ``serve``, where
    :mod:`tests.predictor.test_postgresml_scripts` checks the values."""
    script = SESSIONS[session]
    if session == "regression":  # a model id computed per row: refused here, see below
        start = script.index("\\echo @by_model_id")
        script = script[:start] + script[script.index("\\echo @", start + 1) :]
    done = endpoint_psql(source, script)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = sections(done.stdout)
    named = [line[len("\\echo @") :] for line in script.splitlines()
             if line.startswith("\\echo @")]  # fmt: skip
    assert [name for name in printed if name] == named
    assert all(printed[name] for name in named), [n for n in named if not printed[n]]


def endpoint_psql(source: Source, script: str) -> subprocess.CompletedProcess[str]:
    user = conninfo_to_dict(source.dsn)["user"]
    return subprocess.run(
        [str(source.pg_bin / "psql"), "-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1",
         "-h", "127.0.0.1", "-p", str(source.daemon.endpoint.port), "-U", str(user),
         "-d", "pgml"],
        input=script, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_model_id_computed_per_row_is_refused_where_users_are_source_roles(
    source: Source,
) -> None:
    """Beside a source the endpoint checks, before a query runs, that the role may score with
    each model it names; a model id taken from a column (PostgresML's ``CROSS JOIN LATERAL``
    over pgml.models) cannot be checked so, and is refused in words (``serve`` without a
    source has no roles to check, and runs it)."""
    prepared = endpoint_psql(source, SESSIONS["regression"].split("\\echo @by_model_id")[0])
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    lateral = SESSIONS["regression"].split("\\echo @by_model_id")[1].split("\\echo @")[0]
    refused = endpoint_psql(source, lateral)
    assert refused.returncode == 3
    assert "name its project (or model id) with a constant or a parameter" in refused.stderr
