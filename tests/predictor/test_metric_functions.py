"""PostgresML's metric helpers, environment functions and pgml.deploy(model_id) through psql.

The metrics are compared with scikit-learn's on the same ``real`` numbers, computed here.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import xgboost
from sklearn import metrics

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import psql


def _array(values: np.ndarray) -> str:
    return f"ARRAY[{', '.join(repr(v.item()) for v in values)}]::real[]"


def _close(got: float | None, want: float) -> None:
    assert got is not None
    assert got == pytest.approx(float(np.float32(want)), rel=1e-6, abs=1e-7)


def test_regression_scores_are_scikit_learns(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    rng = np.random.default_rng(5)
    truth = rng.normal(10, 3, size=40).astype(np.float32)
    predicted = (truth + rng.normal(0, 1, size=40)).astype(np.float32)
    y, y_hat = _array(truth), _array(predicted)
    script = (
        f"SELECT pgml.sklearn_r2_score({y}, {y_hat});\n"
        f"SELECT pgml.sklearn_regression_metrics(ground_truth => {y}, y_hat => {y_hat});\n"
        f"SELECT pgml.sklearn_regression_metrics({y}, {y_hat})->>'mae';\n"
    )
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    _close(float(lines[0]), metrics.r2_score(truth, predicted))
    scores = json.loads(lines[1])
    assert list(scores) == ["r2", "mae", "mse"]
    _close(scores["r2"], metrics.r2_score(truth, predicted))
    _close(scores["mse"], metrics.mean_squared_error(truth, predicted))
    _close(scores["mae"], metrics.mean_absolute_error(truth, predicted))
    assert float(lines[2]) == scores["mae"]


def test_binary_classification_scores_are_scikit_learns(
    pg_bin: Path, endpoint: SqlEndpoint
) -> None:
    rng = np.random.default_rng(9)
    truth = rng.integers(0, 2, size=50).astype(np.float32)
    predicted = np.where(rng.random(50) < 0.8, truth, 1 - truth).astype(np.float32)
    y, y_hat = _array(truth), _array(predicted)
    script = (
        f"SELECT pgml.sklearn_f1_score({y}, {y_hat});\n"
        f"SELECT pgml.sklearn_classification_metrics({y}, {y_hat}, 2);\n"
    )
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    _close(float(lines[0]), metrics.f1_score(truth, predicted))
    scores = json.loads(lines[1])
    expected = {
        "f1": metrics.f1_score(truth, predicted),
        "f1_micro": metrics.f1_score(truth, predicted, average="micro"),
        "precision": metrics.precision_score(truth, predicted),
        "recall": metrics.recall_score(truth, predicted),
        "accuracy": metrics.accuracy_score(truth, predicted),
        "mcc": metrics.matthews_corrcoef(truth, predicted),
        "roc_auc": metrics.roc_auc_score(truth, predicted),
    }
    assert set(scores) == set(expected)
    for key, want in expected.items():
        _close(scores[key], want)


def test_multiclass_scores_are_macro_averaged(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    rng = np.random.default_rng(13)
    truth = rng.integers(0, 3, size=60).astype(np.float32)
    predicted = np.where(rng.random(60) < 0.7, truth, (truth + 1) % 3).astype(np.float32)
    script = f"SELECT pgml.sklearn_classification_metrics({_array(truth)}, {_array(predicted)}, 3);"
    scores = json.loads(psql(pg_bin, endpoint, script).stdout)
    assert "roc_auc" not in scores
    _close(scores["f1"], metrics.f1_score(truth, predicted, average="macro"))
    _close(scores["precision"], metrics.precision_score(truth, predicted, average="macro"))
    _close(scores["recall"], metrics.recall_score(truth, predicted, average="macro"))
    _close(scores["f1_micro"], metrics.f1_score(truth, predicted, average="micro"))


def test_metrics_of_nulls_and_bad_arrays(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    script = """
SELECT pgml.sklearn_r2_score(NULL, ARRAY[1]::real[]) IS NULL,
       pgml.sklearn_regression_metrics(ARRAY[1, 2]::real[], NULL) IS NULL,
       pgml.sklearn_classification_metrics(ARRAY[1, 0]::real[], ARRAY[1, 0]::real[], NULL) IS NULL;
SELECT pgml.sklearn_regression_metrics(ARRAY[1]::real[], ARRAY[2]::real[]);
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    assert lines[0] == "t|t|t"
    assert json.loads(lines[1]) == {"r2": None, "mae": 1.0, "mse": 1.0}  # r2 of one sample: NaN
    for statement, sqlstate, message in [
        ("SELECT pgml.sklearn_r2_score(ARRAY[1, 2, 3]::real[], ARRAY[1, 2]::real[])", "22023",
         "inconsistent numbers of samples"),
        ("SELECT pgml.sklearn_f1_score(ARRAY[]::real[], ARRAY[]::real[])", "22023",
         "empty input array"),
        ("SELECT pgml.sklearn_f1_score(ARRAY[0, 1, 2]::real[], ARRAY[0, 1, 2]::real[])",
         "22023", "Target is multiclass but average='binary'"),
        ("SELECT pgml.sklearn_f1_score(ARRAY[1, NULL]::real[], ARRAY[1, 0]::real[])", "22004",
         "array must not contain nulls"),
        ("SELECT pgml.sklearn_f1_score(ARRAY['a'], ARRAY['b'])", "22P02", ""),
        ("SELECT pgml.sklearn_r2_score(ARRAY[1]::real[])", "42883",
         "function pgml.sklearn_r2_score takes (ground_truth real[], y_hat real[])"),
    ]:  # fmt: skip
        done = psql(pg_bin, endpoint, f"\\set VERBOSITY verbose\n{statement};", check=False)
        assert done.returncode == 3, statement
        assert f"ERROR:  {sqlstate}: " in done.stderr and message in done.stderr, done.stderr


def test_environment_functions_tell_what_the_sidecar_runs(
    pg_bin: Path, endpoint: SqlEndpoint
) -> None:
    script = """
SELECT pgml.python_version();
SELECT pgml.python_package_version('scikit-learn'), pgml.python_package_version(name => 'numpy');
SELECT pgml.validate_python_dependencies();
SELECT pgml.validate_shared_library();
SELECT p, pgml.python_package_version(p) FROM (VALUES ('xgboost'), (NULL)) AS t(p) ORDER BY p;
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    assert lines[0] == sys.version.splitlines()[0]
    assert lines[-5:] == [
        f"{version('scikit-learn')}|{version('numpy')}",
        "t",
        lines[-3],
        f"xgboost|{xgboost.__version__}",
        "|",
    ]
    assert lines[-3].startswith("pgml-sidecar loads no shared library into PostgreSQL")
    done = psql(
        pg_bin, endpoint, "\\set VERBOSITY verbose\nSELECT pgml.python_package_version('no-such');",
        check=False,
    )  # fmt: skip
    assert 'ERROR:  42704: package "no-such" is not installed beside pgml-sidecar' in done.stderr
    done = psql(pg_bin, endpoint, "SELECT pgml.python_package_version('antigravity');", check=False)
    assert "antigravity" not in sys.modules and "is not installed" in done.stderr


def test_deploy_by_model_id(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    script = """
SELECT * FROM pgml.load_dataset('iris');
SELECT * FROM pgml.train('Iris', 'classification', 'pgml.iris', 'target', 'linear');
SELECT * FROM pgml.train('Iris', algorithm => 'ridge');
SELECT * FROM pgml.deploy(1);
SELECT * FROM pgml.deploy(model_id => 2);
SELECT pgml.deploy(1::bigint);
SELECT m.algorithm FROM pgml.deployed_models d JOIN pgml.models m ON m.id = d.id;
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    assert lines[3:] == [
        "Iris|specific|linear",
        "Iris|specific|ridge",
        "(Iris,specific,linear)",
        "linear",
    ]
