"""pgml.train_joint and pgml.predict_joint through psql: several labels learned at once, the
metrics PostgresML computes for them, predictions compared with scikit-learn's on the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mirror.store import Mirror
from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import psql
from tests.predictor.test_psql_rows import make_houses
from trainer.split import split
from trainer.train import Trainer

LABELS = ["weight", "waist", "pulse"]
FEATURES = ["chins", "situps", "jumps"]
PRESERVE = json.dumps({c: {"scale": "preserve"} for c in FEATURES})

SESSION = """
SELECT * FROM pgml.load_dataset('linnerud');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', 'regression', 'pgml.linnerud',
                               ARRAY['weight', 'waist', 'pulse'], preprocess => '{
                               "chins": {"scale": "preserve"}, "situps": {"scale": "preserve"},
                               "jumps": {"scale": "preserve"}}');
SELECT pgml.predict_joint('Exercise vs Physiology', ARRAY[chins, situps, jumps])
  FROM pgml.linnerud ORDER BY chins, situps, jumps;
SELECT pgml.predict_joint('Exercise vs Physiology', ARRAY[5, 162, 60]);
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'svm',
                               hyperparams => '{"max_iter": 100}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'random_forest',
                               hyperparams => '{"n_estimators": 5}');
SELECT pgml.train_joint('Exercise vs Physiology', algorithm => 'xgboost',
                        hyperparams => '{"n_estimators": 10}', automatic_deploy => false);
SELECT * FROM pgml.deploy('Exercise vs Physiology', 'most_recent', 'random_forest');
SELECT array_length(pgml.predict_joint('Exercise vs Physiology', ARRAY[chins, situps, jumps]), 1),
       count(*)
  FROM pgml.linnerud GROUP BY 1;
SELECT models.algorithm, models.metrics->>'r2' FROM pgml.models ORDER BY models.id;
"""


def _rows(
    trainer: Trainer, name: str = "Exercise vs Physiology"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The snapshot's rows split as the training split them: x_train, y_train, x_test, y_test."""
    project = trainer.registry.project(name)
    assert project is not None
    snapshot = trainer.registry.last_snapshot(project.id)
    assert snapshot is not None and list(snapshot.y_column_name) == LABELS
    table = pq.read_table(trainer.home / snapshot.path)
    x = np.column_stack([table[c].to_numpy() for c in FEATURES]).astype(np.float64)
    y = np.column_stack([table[c].to_numpy() for c in LABELS]).astype(np.float64)
    train, test = split(
        len(x), test_size=snapshot.test_size, sampling=snapshot.test_sampling, seed=snapshot.seed
    )
    return x[train], y[train], x[test], y[test]


def test_train_joint_and_predict_joint(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer
) -> None:
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    lines = psql(pg_bin, endpoint, SESSION).stdout.splitlines()
    assert lines[0] == "pgml.linnerud|20"
    assert lines[1] == "Exercise vs Physiology|regression|linear|t"
    x_train, y_train, x_test, y_test = _rows(trainer)
    reference = LinearRegression().fit(x_train, y_train)
    from sklearn.datasets import load_linnerud

    data = load_linnerud()
    order = np.lexsort(data.data.T[::-1])  # ORDER BY chins, situps, jumps
    expected = reference.predict(data.data[order].astype(np.float64))
    got = np.array([[float(v) for v in line.strip("{}").split(",")] for line in lines[2:22]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    one = [float(v) for v in lines[22].strip("{}").split(",")]
    np.testing.assert_allclose(one, reference.predict([[5.0, 162.0, 60.0]])[0], rtol=1e-6)
    assert lines[23].startswith("Exercise vs Physiology|regression|svm|")
    assert lines[24].startswith("Exercise vs Physiology|regression|random_forest|")
    assert lines[25] == '("Exercise vs Physiology",regression,xgboost,f)'
    assert lines[26] == "Exercise vs Physiology|most_recent|random_forest"
    assert lines[27] == "3|20"
    metrics = dict(line.split("|") for line in lines[28:30])  # linear, svm
    # PostgresML scores a joint model on every label of every test row, flattened
    flat = r2_score(y_test.ravel(), reference.predict(x_test).ravel())
    assert float(metrics["linear"]) == pytest.approx(flat, rel=1e-6)


def test_joint_refusals(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    script = """
SELECT * FROM pgml.load_dataset('linnerud');
SELECT * FROM pgml.train_joint('J', 'regression', 'pgml.linnerud', ARRAY['weight', 'waist']);
"""
    psql(pg_bin, endpoint, script)
    cases = {
        "SELECT pgml.predict('J', ARRAY[1, 2, 3, 4]);": "use pgml.predict_joint",
        "SELECT * FROM pgml.train_joint('K', 'classification', 'pgml.linnerud',"
        " ARRAY['weight', 'waist']);": "are for regression, not classification",
        "SELECT * FROM pgml.train_joint('J', algorithm => 'online_linear');": "batch algorithm",
        "SELECT * FROM pgml.train_joint('L', 'regression', 'pgml.linnerud',"
        " ARRAY['weight', 'nope']);": "nope",
    }
    for statement, message in cases.items():
        done = psql(pg_bin, endpoint, statement, check=False)
        assert done.returncode != 0 and message in done.stderr, (statement, done.stderr)
    single = "SELECT * FROM pgml.train('Single', 'regression', 'pgml.linnerud', 'weight');"
    psql(pg_bin, endpoint, single)
    statement = "SELECT pgml.predict_joint('Single', ARRAY[1, 2, 3, 4, 5]);"
    done = psql(pg_bin, endpoint, statement, check=False)
    assert "needs a joint model" in done.stderr


def test_every_regression_algorithm_trains_jointly(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer
) -> None:
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.svm import SVR

    from trainer import algorithms

    names = [n for n in algorithms.algorithm_names("regression") if not algorithms.is_online(n)]
    small = {"n_estimators": 5}
    calls = []
    for name in names:
        params = algorithms.hyperparameter_names(name, "regression")
        hyperparams = {k: v for k, v in small.items() if k in params}
        if "max_iter" in params:
            hyperparams["max_iter"] = 100
        calls.append(
            f"SELECT * FROM pgml.train_joint('All', algorithm => '{name}',"
            f" hyperparams => '{json.dumps(hyperparams)}', preprocess => '{PRESERVE}');"
        )
    script = (
        "SELECT * FROM pgml.load_dataset('linnerud');\n"
        "SELECT * FROM pgml.train_joint('All', 'regression', 'pgml.linnerud',"
        f" ARRAY['weight', 'waist', 'pulse'], preprocess => '{PRESERVE}');\n"
        + "\n".join(calls)
        + "\nSELECT * FROM pgml.deploy('All', 'most_recent', 'svm');"
        "\nSELECT pgml.predict_joint('All', ARRAY[chins, situps, jumps]) FROM pgml.linnerud"
        " ORDER BY chins, situps, jumps;"
    )
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    trained = [line.split("|")[2] for line in lines[2 : 2 + len(names)]]
    assert trained == names
    project = trainer.registry.project("All")
    assert project is not None
    for record in trainer.registry.models(project.id):
        assert all(np.isfinite(record.metrics[m]) for m in ("r2", "mean_squared_error")), record
    project_model = trainer.registry.models(project.id, algorithm="svm")[-1]
    x_train, y_train, _, _ = _rows(trainer, "All")
    reference = MultiOutputRegressor(SVR(max_iter=100)).fit(x_train, y_train)
    from sklearn.datasets import load_linnerud

    data = load_linnerud().data.astype(np.float64)
    expected = reference.predict(data[np.lexsort(data.T[::-1])])
    got = np.array([[float(v) for v in row.strip("{}").split(",")] for row in lines[-20:]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert project_model.hyperparams == {"max_iter": 100}


def test_a_joint_model_has_no_scores_view(
    pg_bin: Path, endpoint: SqlEndpoint, mirror: Mirror, trainer: Trainer
) -> None:
    make_houses(mirror)
    script = """
SELECT * FROM pgml.train_joint('Houses Joint', 'regression', 'public.houses',
                               ARRAY['price', 'rooms']);
SELECT * FROM pgml.train('Houses Price', 'regression', 'public.houses', 'price');
SELECT count(*), count(prediction) FROM pgml_scores.houses_price;
SELECT array_length(pgml.predict_joint('Houses Joint', h), 1), count(*)
  FROM public.houses h GROUP BY 1;
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    assert lines[2:] == ["120|120", "2|120"]
    done = psql(pg_bin, endpoint, "SELECT * FROM pgml_scores.houses_joint;", check=False)
    assert 'relation "pgml_scores.houses_joint" does not exist' in done.stderr
