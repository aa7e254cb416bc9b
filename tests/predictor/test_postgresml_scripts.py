"""Sessions in the manner of PostgresML's example scripts, typed into psql against ``serve``.

Each session below is this project's own psql script that uses, with ``ON_ERROR_STOP``, every
function, argument form, algorithm and SQL construct that PostgresML's offline example scripts
use (regression, classification, binary and multi-class classification, image classification,
joint regression, clustering, decomposition, preprocessing, vectors, chunking, and the test
script that runs them one after another). Small data and small hyperparameters keep each
session in seconds; values are checked against scikit-learn fitted here on the snapshot's rows
where the result is deterministic.

:data:`INVENTORY` is the coverage table: each item the scripts use, the session that uses it,
and the text that shows it there (a test checks the text is in that session, so an item
dropped from a session shows). :data:`EXCLUDED` lists what needs a download and is left out:

- ``pgml.embed``, ``pgml.transform``, ``pgml.tune`` and every other Hugging Face model call
  (the transformers, embedding and finetune scripts);
- ``pgml.load_dataset`` of a Hugging Face data set (the preprocessing script's
  ``jdxcosta/diamonds``): its session builds a table of the same shape in the workspace;
- the ``nltk`` and ``spacy`` splitters of ``pgml.chunk`` (tokenizer models).

:data:`GAPS` lists what a session leaves out because the endpoint does not do it yet, each
with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import psql
from trainer.split import split
from trainer.train import Trainer

DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

REGRESSION = """
\\set ON_ERROR_STOP on
\\timing on
SELECT pgml.load_dataset('diabetes');
SELECT * FROM pgml.diabetes LIMIT 3;
\\echo @first
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target');
\\echo @predictions
SELECT age, sex, bmi, bp, s1, s2, s3, s4, s5, s6,
       pgml.predict('Diabetes Progression', ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6])
  FROM pgml.diabetes LIMIT 10;
\\echo @by_model_id
SELECT model_id, target, pgml.predict(model_id, ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6])
  FROM pgml.diabetes
  CROSS JOIN LATERAL (
      SELECT pgml.models.id AS model_id FROM pgml.models
      INNER JOIN pgml.projects ON pgml.models.project_id = pgml.projects.id
      WHERE pgml.projects.name = 'Diabetes Progression'
      LIMIT 1
  ) models
  LIMIT 10;
\\echo @positional_algorithm
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target', 'ridge');
SELECT * FROM pgml.train('Diabetes Progression', 'regression', 'pgml.diabetes', 'target',
                         'theil_sen', '{"max_iter": 10, "max_subpopulation": 100}');
\\echo @algorithms
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'lasso');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'elastic_net');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'least_angle');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'lasso_least_angle');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'orthogonal_matching_pursuit');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'bayesian_ridge');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'automatic_relevance_determination');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'stochastic_gradient_descent');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'passive_aggressive');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'ransac');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'huber');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'quantile');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'svm',
                         hyperparams => '{"max_iter": 100}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'nu_svm',
                         hyperparams => '{"max_iter": 10}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'linear_svm',
                         hyperparams => '{"max_iter": 100}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'ada_boost',
                         hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'bagging',
                         hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'extra_trees',
                         hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'gradient_boosting_trees',
                         hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'random_forest',
                         hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'kernel_ridge');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'gaussian_process');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'hist_gradient_boosting',
                         hyperparams => '{"max_iter": 10}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'xgboost',
                         hyperparams => '{"n_estimators": 10}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'catboost',
                         hyperparams => '{"n_estimators": 10}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'xgboost_random_forest',
                         hyperparams => '{"n_estimators": 10}');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'lightgbm',
                         hyperparams => '{"n_estimators": 1}');
\\echo @runtimes
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'linear', runtime => 'python');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'linear', runtime => 'rust');
SELECT * FROM pgml.train('Diabetes Progression', algorithm => 'xgboost', runtime => 'rust',
                         hyperparams => '{"n_estimators": 10}');
\\echo @hard_work
SELECT trained_models.* FROM pgml.trained_models
  JOIN pgml.models ON models.id = trained_models.id
  ORDER BY models.metrics->>'mean_squared_error' DESC LIMIT 5;
\\echo @deploy_random_forest
SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent', 'random_forest');
SELECT name, algorithm FROM pgml.deployed_models ORDER BY deployed_at DESC LIMIT 5;
\\echo @grid
SELECT pgml.train(
    'Diabetes Progression',
    algorithm => 'xgboost',
    hyperparams => '{"eval_metric": "rmse"}'::JSONB,
    search => 'grid',
    search_params => '{
        "max_depth": [1, 2],
        "n_estimators": [20, 40]
    }'
);
\\echo @strategies
SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score');
SELECT * FROM pgml.deploy('Diabetes Progression', 'most_recent');
SELECT * FROM pgml.deploy('Diabetes Progression', 'rollback');
SELECT * FROM pgml.deploy('Diabetes Progression', 'best_score', 'svm');
\\echo @improved
SELECT target,
       pgml.predict('Diabetes Progression', ARRAY[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6])
  FROM pgml.diabetes LIMIT 10;
"""

REGRESSION_ALGORITHMS = [
    "lasso", "elastic_net", "least_angle", "lasso_least_angle", "orthogonal_matching_pursuit",
    "bayesian_ridge", "automatic_relevance_determination", "stochastic_gradient_descent",
    "passive_aggressive", "ransac", "huber", "quantile", "svm", "nu_svm", "linear_svm",
    "ada_boost", "bagging", "extra_trees", "gradient_boosting_trees", "random_forest",
    "kernel_ridge", "gaussian_process", "hist_gradient_boosting", "xgboost", "catboost",
    "xgboost_random_forest", "lightgbm",
]  # fmt: skip


def sections(output: str) -> dict[str, list[str]]:
    """psql's output cut at each ``\\echo @name`` line: the lines printed after it, by name."""
    found: dict[str, list[str]] = {"": []}
    current = ""
    for line in output.splitlines():
        if line.startswith("@"):
            current = line[1:]
            found[current] = []
        elif line and not line.startswith("Time: ") and line != "Timing is on.":
            found[current].append(line)
    return found


def snapshot_rows(
    trainer: Trainer,
    project_name: str,
    features: list[str],
    labels: list[str],
    *,
    classes: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The project's last snapshot, split as the training split it (stratified by the label
    when ``classes``): x_train, y_train, x_test, y_test (a label column each)."""
    project = trainer.registry.project(project_name)
    assert project is not None
    snapshot = trainer.registry.last_snapshot(project.id)
    assert snapshot is not None
    table = pq.read_table(trainer.home / snapshot.path)
    x = np.column_stack([np.asarray(table[c].to_pylist(), dtype=np.float64) for c in features])
    y = np.column_stack([np.asarray(table[c].to_pylist(), dtype=np.float64) for c in labels])
    train, test = split(
        len(x),
        test_size=snapshot.test_size,
        sampling=snapshot.test_sampling,
        seed=snapshot.seed,
        labels=y[:, 0] if classes else None,
    )
    return x[train], y[train], x[test], y[test]


def trained(lines: list[str]) -> list[str]:
    """The algorithm of each ``SELECT * FROM pgml.train(...)`` result line."""
    return [line.split("|")[2] for line in lines]


def test_regression_session(pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer) -> None:
    from sklearn.linear_model import LinearRegression

    out = sections(psql(pg_bin, endpoint, REGRESSION).stdout)
    assert out[""][0] == "(pgml.diabetes,442)"
    assert len(out[""]) == 4  # and three rows of the data set
    assert out["first"] == ["Diabetes Progression|regression|linear|t"]
    x_train, y_train, _, _ = snapshot_rows(trainer, "Diabetes Progression", DIABETES, ["target"])
    reference = LinearRegression().fit(x_train, y_train[:, 0])
    rows = np.array([[float(v) for v in line.split("|")] for line in out["predictions"]])
    assert rows.shape == (10, 11)
    np.testing.assert_allclose(rows[:, 10], reference.predict(rows[:, :10]), rtol=1e-6)
    by_id = [line.split("|") for line in out["by_model_id"]]
    assert len(by_id) == 10 and {row[0] for row in by_id} == {"1"}
    assert trained(out["positional_algorithm"]) == ["ridge", "theil_sen"]
    assert trained(out["algorithms"]) == REGRESSION_ALGORITHMS
    assert trained(out["runtimes"]) == ["linear", "linear", "xgboost"]
    assert len(out["hard_work"]) == 5
    assert out["deploy_random_forest"][0] == "Diabetes Progression|most_recent|random_forest"
    assert out["deploy_random_forest"][1] == "Diabetes Progression|random_forest"
    assert out["grid"] == ['("Diabetes Progression",regression,xgboost,f)'] or out["grid"] == [
        '("Diabetes Progression",regression,xgboost,t)'
    ]
    project = trainer.registry.project("Diabetes Progression")
    assert project is not None
    models = trainer.registry.models(project.id)
    assert all("mean_squared_error" in m.metrics and "r2" in m.metrics for m in models)
    searched = models[-1]
    assert searched.search == "grid"
    assert searched.hyperparams["eval_metric"] == "rmse"
    assert searched.hyperparams["max_depth"] in (1, 2)
    assert searched.hyperparams["n_estimators"] in (20, 40)
    best = max(models, key=lambda m: m.metrics["r2"])
    strategies = [line.split("|") for line in out["strategies"]]
    assert strategies[0] == ["Diabetes Progression", "best_score", best.algorithm]
    assert strategies[1] == ["Diabetes Progression", "most_recent", "xgboost"]
    assert strategies[2][:2] == ["Diabetes Progression", "rollback"]
    assert strategies[3] == ["Diabetes Progression", "best_score", "svm"]
    deployed = trainer.registry.deployed(project.id)
    assert deployed is not None and deployed.algorithm == "svm"
    improved = [line.split("|") for line in out["improved"]]
    assert len(improved) == 10 and all(np.isfinite(float(p)) for _, p in improved)


BREAST_CANCER = [
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
    "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
    "mean fractal dimension", "radius error", "texture error", "perimeter error", "area error",
    "smoothness error", "compactness error", "concavity error", "concave points error",
    "symmetry error", "fractal dimension error", "worst radius", "worst texture",
    "worst perimeter", "worst area", "worst smoothness", "worst compactness", "worst concavity",
    "worst concave points", "worst symmetry", "worst fractal dimension",
]  # fmt: skip
CANCER_ARRAY = "ARRAY[\n        " + ",\n        ".join(f'"{c}"' for c in BREAST_CANCER) + "\n    ]"

CLASSIFIERS = """
SELECT * FROM pgml.train('{p}', algorithm => 'ridge');
SELECT * FROM pgml.train('{p}', algorithm => 'stochastic_gradient_descent');
SELECT * FROM pgml.train('{p}', algorithm => 'perceptron');
SELECT * FROM pgml.train('{p}', algorithm => 'passive_aggressive');
SELECT * FROM pgml.train('{p}', algorithm => 'svm');
SELECT * FROM pgml.train('{p}', algorithm => 'nu_svm');
SELECT * FROM pgml.train('{p}', algorithm => 'linear_svm');
SELECT * FROM pgml.train('{p}', algorithm => 'ada_boost');
SELECT * FROM pgml.train('{p}', algorithm => 'bagging');
SELECT * FROM pgml.train('{p}', algorithm => 'extra_trees',
                         hyperparams => '{{"n_estimators": 10}}');
SELECT * FROM pgml.train('{p}', algorithm => 'gradient_boosting_trees',
                         hyperparams => '{{"n_estimators": 10}}');
SELECT * FROM pgml.train('{p}', algorithm => 'random_forest',
                         hyperparams => '{{"n_estimators": 10}}');
SELECT * FROM pgml.train('{p}', algorithm => 'gaussian_process',
                         hyperparams => '{{"max_iter_predict": 100, "warm_start": true}}');
SELECT * FROM pgml.train('{p}', algorithm => 'xgboost', hyperparams => '{{"n_estimators": 10}}');
SELECT * FROM pgml.train('{p}', algorithm => 'catboost', hyperparams => '{{"n_estimators": 10}}');
SELECT * FROM pgml.train('{p}', algorithm => 'xgboost_random_forest',
                         hyperparams => '{{"n_estimators": 10}}');
SELECT * FROM pgml.train('{p}', algorithm => 'lightgbm', hyperparams => '{{"n_estimators": 1}}');
SELECT * FROM pgml.train('{p}', algorithm => 'hist_gradient_boosting',
                         hyperparams => '{{"max_iter": 2}}');
"""
CLASSIFICATION_ALGORITHMS = [
    "ridge", "stochastic_gradient_descent", "perceptron", "passive_aggressive", "svm", "nu_svm",
    "linear_svm", "ada_boost", "bagging", "extra_trees", "gradient_boosting_trees",
    "random_forest", "gaussian_process", "xgboost", "catboost", "xgboost_random_forest",
    "lightgbm", "hist_gradient_boosting",
]  # fmt: skip
DEPLOYS = """
\\echo @hard_work
SELECT trained_models.* FROM pgml.trained_models
  JOIN pgml.models ON models.id = trained_models.id
  ORDER BY models.metrics->>'f1' DESC LIMIT 5;
\\echo @deploy_random_forest
SELECT * FROM pgml.deploy('{p}', 'most_recent', 'random_forest');
SELECT name, algorithm FROM pgml.deployed_models ORDER BY deployed_at DESC LIMIT 5;
"""
STRATEGIES = """
\\echo @strategies
SELECT * FROM pgml.deploy('{p}', 'best_score');
SELECT * FROM pgml.deploy('{p}', 'most_recent');
SELECT * FROM pgml.deploy('{p}', 'rollback');
SELECT * FROM pgml.deploy('{p}', 'best_score', 'svm');
"""

BINARY = (
    """
\\set ON_ERROR_STOP on
SELECT pgml.load_dataset('breast_cancer');
SELECT * FROM pgml.breast_cancer LIMIT 2;
\\echo @first
SELECT * FROM pgml.train('Breast Cancer Detection', 'classification', 'pgml.breast_cancer',
                         'malignant');
\\echo @predictions
SELECT malignant, pgml.predict('Breast Cancer Detection', @features) AS prediction
  FROM pgml.breast_cancer ORDER BY random() LIMIT 10;
\\echo @probabilities
SELECT malignant, pgml.predict('Breast Cancer Detection', @features),
       pgml.predict_proba('Breast Cancer Detection', @features) AS prediction
  FROM pgml.breast_cancer ORDER BY random() LIMIT 10;
\\echo @algorithms
"""
    + CLASSIFIERS.format(p="Breast Cancer Detection")
    + DEPLOYS.format(p="Breast Cancer Detection")
    + """
\\echo @grid
SELECT pgml.train(
    'Breast Cancer Detection',
    algorithm => 'xgboost',
    search => 'grid',
    search_params => '{
        "n_estimators": [2, 4],
        "max_depth": [1, 2, 3]
    }'
);
"""
    + STRATEGIES.format(p="Breast Cancer Detection")
    + """
\\echo @improved
SELECT malignant, pgml.predict('Breast Cancer Detection', @features) AS prediction
  FROM pgml.breast_cancer LIMIT 10;
"""
).replace("@features", CANCER_ARRAY)


def check_deploys(out: dict[str, list[str]], trainer: Trainer, project_name: str) -> None:
    assert len(out["hard_work"]) == 5
    assert out["deploy_random_forest"][0] == f"{project_name}|most_recent|random_forest"
    assert out["deploy_random_forest"][1] == f"{project_name}|random_forest"
    project = trainer.registry.project(project_name)
    assert project is not None
    models = trainer.registry.models(project.id)
    assert all("f1" in m.metrics and "accuracy" in m.metrics for m in models)
    best = max(m.metrics["f1"] for m in models)
    strategies = [line.split("|") for line in out["strategies"]]
    assert strategies[0][:2] == [project_name, "best_score"]
    assert best in {m.metrics["f1"] for m in models if m.algorithm == strategies[0][2]}
    assert strategies[1] == [project_name, "most_recent", models[-1].algorithm]
    assert strategies[2][:2] == [project_name, "rollback"]
    assert strategies[3] == [project_name, "best_score", "svm"]
    deployed = trainer.registry.deployed(project.id)
    assert deployed is not None and deployed.algorithm == "svm"


def test_binary_classification_session(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer
) -> None:
    out = sections(psql(pg_bin, endpoint, BINARY).stdout)
    assert out[""][0] == "(pgml.breast_cancer,569)"
    assert out["first"] == ["Breast Cancer Detection|classification|linear|t"]
    predictions = [line.split("|") for line in out["predictions"]]
    assert len(predictions) == 10 and {p for _, p in predictions} <= {"0", "1"}
    assert sum((m == "t") == (p == "1") for m, p in predictions) >= 8
    for line in out["probabilities"]:
        _, label, probabilities = line.split("|")
        values = [float(v) for v in probabilities.strip("{}").split(",")]
        assert len(values) == 2 and sum(values) == pytest.approx(1, abs=1e-6)
        assert int(np.argmax(values)) == int(label)
    assert trained(out["algorithms"]) == CLASSIFICATION_ALGORITHMS
    check_deploys(out, trainer, "Breast Cancer Detection")
    project = trainer.registry.project("Breast Cancer Detection")
    assert project is not None
    searched = [m for m in trainer.registry.models(project.id) if m.search == "grid"]
    assert len(searched) == 1 and searched[0].algorithm == "xgboost"
    assert searched[0].hyperparams["n_estimators"] in (2, 4)
    assert searched[0].hyperparams["max_depth"] in (1, 2, 3)
    assert len(out["improved"]) == 10


MULTI = (
    """
\\set ON_ERROR_STOP on
SELECT pgml.load_dataset('iris');
SELECT * FROM pgml.iris LIMIT 2;
DROP VIEW IF EXISTS pgml.iris_view;
CREATE VIEW pgml.iris_view AS SELECT * FROM pgml.iris ORDER BY random() LIMIT 100;
\\echo @view_rows
SELECT count(*) FROM pgml.iris_view;
\\echo @first
SELECT * FROM pgml.train('Iris Flower Types', 'classification', 'pgml.iris_view', 'target');
\\echo @probabilities
SELECT target, pgml.predict('Iris Flower Types', ARRAY[sepal_length, sepal_width, petal_length,
                                                      petal_width]),
       pgml.predict_proba('Iris Flower Types', ARRAY[sepal_length, sepal_width, petal_length,
                                                    petal_width]) AS prediction
  FROM pgml.iris_view LIMIT 10;
\\echo @algorithms
"""
    + CLASSIFIERS.format(p="Iris Flower Types")
    + DEPLOYS.format(p="Iris Flower Types")
    + """
\\echo @xgboost_predictions
SELECT * FROM pgml.deploy('Iris Flower Types', 'most_recent', 'xgboost');
SELECT sepal_length, sepal_width, petal_length, petal_width,
       pgml.predict('Iris Flower Types', ARRAY[sepal_length, sepal_width, petal_length,
                                              petal_width])
  FROM pgml.iris;
\\echo @grid
SELECT pgml.train(
    'Iris Flower Types',
    algorithm => 'gradient_boosting_trees',
    hyperparams => '{"random_state": 0}',
    search => 'grid',
    search_params => '{
        "n_estimators": [10, 20],
        "max_leaf_nodes": [2, 4],
        "criterion": ["friedman_mse", "squared_error"]
    }'
);
"""
    + STRATEGIES.format(p="Iris Flower Types")
    + """
\\echo @improved
SELECT target, pgml.predict('Iris Flower Types', ARRAY[sepal_length, sepal_width, petal_length,
                                                      petal_width]) AS prediction
  FROM pgml.iris_view LIMIT 10;
"""
)


def test_multi_classification_session_on_a_view(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer
) -> None:
    from xgboost import XGBClassifier

    out = sections(psql(pg_bin, endpoint, MULTI).stdout)
    assert out[""][0] == "(pgml.iris,150)"
    assert out["view_rows"] == ["100"]
    assert out["first"] == ["Iris Flower Types|classification|linear|t"]
    for line in out["probabilities"]:
        _, label, probabilities = line.split("|")
        values = [float(v) for v in probabilities.strip("{}").split(",")]
        assert len(values) == 3 and sum(values) == pytest.approx(1, abs=1e-6)
        assert int(np.argmax(values)) == int(label)
    assert trained(out["algorithms"]) == CLASSIFICATION_ALGORITHMS
    # trees split standardised features where they split the raw ones: xgboost as fitted here
    x_train, y_train, _, _ = snapshot_rows(
        trainer, "Iris Flower Types", IRIS, ["target"], classes=True
    )
    assert len(x_train) == 75  # the view's 100 rows, three quarters to train on
    reference = XGBClassifier(n_estimators=10).fit(x_train, y_train[:, 0].astype(int))
    assert out["xgboost_predictions"][0] == "Iris Flower Types|most_recent|xgboost"
    rows = np.array(
        [[float(v) for v in line.split("|")] for line in out["xgboost_predictions"][1:]]
    )
    assert rows.shape == (150, 5)
    same = rows[:, 4] == reference.predict(rows[:, :4])
    assert same.mean() >= 0.98, same.mean()
    project = trainer.registry.project("Iris Flower Types")
    assert project is not None
    searched = [m for m in trainer.registry.models(project.id) if m.search == "grid"]
    assert len(searched) == 1 and searched[0].hyperparams["random_state"] == 0
    assert searched[0].hyperparams["criterion"] in ("friedman_mse", "squared_error")
    check_deploys(out, trainer, "Iris Flower Types")
    assert len(out["improved"]) == 10


IMAGES = """
\\set ON_ERROR_STOP on
SELECT pgml.load_dataset('digits');
-- a quarter of the images keeps the session short
CREATE VIEW pgml.some_digits AS SELECT image, target FROM pgml.digits LIMIT 450;
\\echo @view
SELECT left(image::text, 40) || ',...}', target FROM pgml.digits LIMIT 10;
\\echo @first
SELECT * FROM pgml.train('Handwritten Digits', 'classification', 'pgml.some_digits', 'target');
\\echo @predictions
SELECT target, pgml.predict('Handwritten Digits', image) AS prediction
  FROM pgml.some_digits LIMIT 10;
\\echo @probabilities
SELECT target, pgml.predict('Handwritten Digits', image),
       pgml.predict_proba('Handwritten Digits', image) AS prediction
  FROM pgml.some_digits LIMIT 10;
\\echo @algorithms
SELECT * FROM pgml.train('Handwritten Digits', algorithm => 'bagging');
SELECT * FROM pgml.train('Handwritten Digits', algorithm => 'random_forest',
                         hyperparams => '{"n_estimators": 10}');
SELECT * FROM pgml.train('Handwritten Digits', algorithm => 'linear', runtime => 'python');
SELECT * FROM pgml.train('Handwritten Digits', algorithm => 'xgboost', runtime => 'rust',
                         hyperparams => '{"n_estimators": 10}');
"""
IMAGES += DEPLOYS.format(p="Handwritten Digits")
IMAGES += """
\\echo @grid
SELECT pgml.train(
    'Handwritten Digits',
    algorithm => 'svm',
    hyperparams => '{"random_state": 0}',
    search => 'grid',
    search_params => '{
        "kernel": ["linear", "poly", "sigmoid"],
        "shrinking": [true, false]
    }'
);
"""
IMAGES += STRATEGIES.format(p="Handwritten Digits")
IMAGES += """
\\echo @improved
SELECT avg((pgml.predict('Handwritten Digits', image) = target)::int) FROM pgml.digits;
"""


def digit_texts() -> set[str]:
    """``left(image::text, 40) || ',...}'`` of each digit, as PostgreSQL spells it."""
    from sklearn.datasets import load_digits

    texts = ("{" + ",".join(str(int(v)) for v in image) + "}" for image in load_digits().data)
    return {text[:40] + ",...}" for text in texts}


def test_image_classification_session(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer
) -> None:
    out = sections(psql(pg_bin, endpoint, IMAGES).stdout)
    assert out[""] == ["(pgml.digits,1797)", "CREATE VIEW"]
    assert len(out["view"]) == 10
    assert {line.rsplit("|", 1)[0] for line in out["view"]} <= digit_texts()
    assert out["first"] == ["Handwritten Digits|classification|linear|t"]
    predictions = [line.split("|") for line in out["predictions"]]
    assert sum(t == p for t, p in predictions) >= 9
    for line in out["probabilities"]:
        _, label, probabilities = line.split("|")
        values = [float(v) for v in probabilities.strip("{}").split(",")]
        assert len(values) == 10 and sum(values) == pytest.approx(1, abs=1e-6)
        assert int(np.argmax(values)) == int(label)
    assert trained(out["algorithms"]) == ["bagging", "random_forest", "linear", "xgboost"]
    check_deploys(out, trainer, "Handwritten Digits")
    project = trainer.registry.project("Handwritten Digits")
    assert project is not None
    searched = [m for m in trainer.registry.models(project.id) if m.search == "grid"]
    assert len(searched) == 1 and searched[0].hyperparams["kernel"] in ("linear", "poly", "sigmoid")
    assert searched[0].hyperparams["shrinking"] in (True, False)
    assert float(out["improved"][0]) > 0.8


JOINT = """
\\set ON_ERROR_STOP on
SELECT pgml.load_dataset('linnerud');
SELECT * FROM pgml.linnerud LIMIT 2;
\\echo @first
SELECT * FROM pgml.train_joint('Exercise vs Physiology', 'regression', 'pgml.linnerud',
                               ARRAY['weight', 'waist', 'pulse']);
\\echo @predictions
SELECT chins, situps, jumps,
       pgml.predict_joint('Exercise vs Physiology', ARRAY[chins, situps, jumps])
  FROM pgml.linnerud LIMIT 10;
\\echo @algorithms
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'ridge');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'lasso');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'elastic_net');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'least_angle');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'lasso_least_angle');
SELECT * FROM pgml.train_joint('Exercise vs Physiology',
                               algorithm => 'orthogonal_matching_pursuit');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'bayesian_ridge');
SELECT * FROM pgml.train_joint('Exercise vs Physiology',
                               algorithm => 'automatic_relevance_determination');
SELECT * FROM pgml.train_joint('Exercise vs Physiology',
                               algorithm => 'stochastic_gradient_descent');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'passive_aggressive');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'ransac');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'theil_sen',
                               hyperparams => '{"max_iter": 10, "max_subpopulation": 100}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'huber');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'quantile');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'svm',
                               hyperparams => '{"max_iter": 100}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'nu_svm',
                               hyperparams => '{"max_iter": 10}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'linear_svm',
                               hyperparams => '{"max_iter": 100}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'ada_boost',
                               hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'bagging',
                               hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'extra_trees',
                               hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'gradient_boosting_trees',
                               hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'random_forest',
                               hyperparams => '{"n_estimators": 5}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'kernel_ridge');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'gaussian_process');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'xgboost',
                               hyperparams => '{"n_estimators": 10}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'xgboost_random_forest',
                               hyperparams => '{"n_estimators": 10}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'lightgbm',
                               hyperparams => '{"n_estimators": 1}');
SELECT * FROM pgml.train_joint('Exercise vs Physiology', algorithm => 'hist_gradient_boosting',
                               hyperparams => '{"max_iter": 10}');
\\echo @hard_work
SELECT trained_models.* FROM pgml.trained_models
  JOIN pgml.models ON models.id = trained_models.id
  ORDER BY models.metrics->>'mean_squared_error' DESC LIMIT 5;
\\echo @deploy_random_forest
SELECT * FROM pgml.deploy('Exercise vs Physiology', 'most_recent', 'random_forest');
SELECT name, algorithm FROM pgml.deployed_models ORDER BY deployed_at DESC LIMIT 5;
\\echo @strategies
SELECT * FROM pgml.deploy('Exercise vs Physiology', 'best_score');
SELECT * FROM pgml.deploy('Exercise vs Physiology', 'most_recent');
SELECT * FROM pgml.deploy('Exercise vs Physiology', 'rollback');
SELECT * FROM pgml.deploy('Exercise vs Physiology', 'best_score', 'svm');
\\echo @improved
SELECT weight, waist, pulse,
       pgml.predict_joint('Exercise vs Physiology', ARRAY[chins, situps, jumps]) AS prediction
  FROM pgml.linnerud LIMIT 10;
"""
JOINT_ALGORITHMS = [
    "ridge", "lasso", "elastic_net", "least_angle", "lasso_least_angle",
    "orthogonal_matching_pursuit", "bayesian_ridge", "automatic_relevance_determination",
    "stochastic_gradient_descent", "passive_aggressive", "ransac", "theil_sen", "huber",
    "quantile", "svm", "nu_svm", "linear_svm", "ada_boost", "bagging", "extra_trees",
    "gradient_boosting_trees", "random_forest", "kernel_ridge", "gaussian_process", "xgboost",
    "xgboost_random_forest", "lightgbm", "hist_gradient_boosting",
]  # fmt: skip


def test_joint_regression_session(pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer) -> None:
    from sklearn.linear_model import LinearRegression

    out = sections(psql(pg_bin, endpoint, JOINT).stdout)
    assert out[""][0] == "(pgml.linnerud,20)"
    assert out["first"] == ["Exercise vs Physiology|regression|linear|t"]
    labels = ["weight", "waist", "pulse"]
    x_train, y_train, _, _ = snapshot_rows(
        trainer, "Exercise vs Physiology", ["chins", "situps", "jumps"], labels
    )
    reference = LinearRegression().fit(x_train, y_train)
    for line in out["predictions"]:
        *features, prediction = line.split("|")
        got = [float(v) for v in prediction.strip("{}").split(",")]
        expected = reference.predict([[float(f) for f in features]])[0]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert trained(out["algorithms"]) == JOINT_ALGORITHMS
    assert len(out["hard_work"]) == 5
    assert out["deploy_random_forest"][0] == "Exercise vs Physiology|most_recent|random_forest"
    strategies = [line.split("|") for line in out["strategies"]]
    assert [s[1] for s in strategies] == ["best_score", "most_recent", "rollback", "best_score"]
    assert strategies[1][2] == "hist_gradient_boosting" and strategies[3][2] == "svm"
    assert all(len(line.split("|")[3].split(",")) == 3 for line in out["improved"])


CLUSTERING_AND_DECOMPOSITION = """
\\set ON_ERROR_STOP on
SELECT pgml.load_dataset('digits');
CREATE VIEW pgml.digit_vectors AS
SELECT image FROM pgml.digits;
\\echo @view
SELECT left(image::text, 40) || ',...}' FROM pgml.digit_vectors LIMIT 10;
\\echo @clusters
SELECT * FROM pgml.train('Handwritten Digit Clusters', 'clustering', 'pgml.digit_vectors',
                         hyperparams => '{"n_clusters": 10}');
\\echo @cluster_predictions
SELECT count(DISTINCT pgml.predict('Handwritten Digit Clusters', image)) FROM pgml.digits;
\\echo @cluster_algorithms
SELECT * FROM pgml.train('Handwritten Digit Clusters', algorithm => 'affinity_propagation');
SELECT * FROM pgml.train('Handwritten Digit Clusters', algorithm => 'birch',
                         hyperparams => '{"n_clusters": 10}');
SELECT * FROM pgml.train('Handwritten Digit Clusters', algorithm => 'kmeans',
                         hyperparams => '{"n_clusters": 10}');
SELECT * FROM pgml.train('Handwritten Digit Clusters', algorithm => 'mini_batch_kmeans',
                         hyperparams => '{"n_clusters": 10}');
\\echo @cluster_task
SELECT pgml.load_dataset('iris');
CREATE VIEW pgml.iris_vectors AS
SELECT ARRAY[sepal_length, sepal_width, petal_length, petal_width] AS features FROM pgml.iris;
SELECT * FROM pgml.train('Iris Clusters', 'cluster', 'pgml.iris_vectors',
                         hyperparams => '{"n_clusters": 3}');
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'dbscan');
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'feature_agglomeration');
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'optics');
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'spectral',
                         hyperparams => '{"n_clusters": 3}');
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'spectral_bi',
                         hyperparams => '{"n_clusters": 3}');
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'spectral_co',
                         hyperparams => '{"n_clusters": 3}');
SELECT * FROM pgml.train('Iris Clusters', algorithm => 'mean_shift');
\\echo @reduction
CREATE VIEW digit_vectors AS
SELECT image FROM pgml.digits;
SELECT * FROM pgml.train('Handwritten Digits Reduction', 'decomposition', 'digit_vectors');
\\echo @decomposed
SELECT target, pgml.decompose('Handwritten Digits Reduction', image) AS pca
  FROM pgml.digits LIMIT 10;
\\echo @three
SELECT * FROM pgml.train('Handwritten Digits Reduction', hyperparams => '{"n_components": 3}');
SELECT image, pgml.decompose('Handwritten Digits Reduction', image) AS pca
  FROM pgml.digits LIMIT 10;
\\echo @hard_work
SELECT trained_models.* FROM pgml.trained_models
  JOIN pgml.models ON models.id = trained_models.id
  ORDER BY models.metrics->>'cumulative_explained_variance' DESC LIMIT 5;
\\echo @deploys
SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'most_recent', 'pca');
SELECT name, algorithm FROM pgml.deployed_models ORDER BY deployed_at DESC LIMIT 5;
SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'best_score');
SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'most_recent');
SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'rollback');
SELECT * FROM pgml.deploy('Handwritten Digits Reduction', 'best_score', 'pca');
\\echo @predicted
SELECT target, pgml.predict('Handwritten Digits Reduction', image) AS prediction,
       (pgml.decompose('Handwritten Digits Reduction', image))[1] AS first
FROM pgml.digits LIMIT 10;
"""


def test_clustering_and_decomposition_session(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer
) -> None:
    from sklearn.decomposition import PCA

    out = sections(psql(pg_bin, endpoint, CLUSTERING_AND_DECOMPOSITION).stdout)
    assert len(out["view"]) == 10 and set(out["view"]) <= digit_texts()
    assert out["clusters"] == ["Handwritten Digit Clusters|clustering|kmeans|t"]
    assert out["cluster_predictions"] == ["10"]
    assert trained(out["cluster_algorithms"]) == [
        "affinity_propagation", "birch", "kmeans", "mini_batch_kmeans"
    ]  # fmt: skip
    assert out["cluster_task"][:2] == ["(pgml.iris,150)", "CREATE VIEW"]
    assert trained(out["cluster_task"][2:]) == [
        "kmeans", "dbscan", "feature_agglomeration", "optics", "spectral", "spectral_bi",
        "spectral_co", "mean_shift",
    ]  # fmt: skip
    assert out["reduction"] == ["CREATE VIEW", "Handwritten Digits Reduction|decomposition|pca|t"]
    decomposed = [line.split("|") for line in out["decomposed"]]
    assert len(decomposed) == 10
    assert out["three"][0].startswith("Handwritten Digits Reduction|decomposition|pca|")
    project = trainer.registry.project("Handwritten Digits Reduction")
    assert project is not None
    snapshot = trainer.registry.last_snapshot(project.id)
    assert snapshot is not None
    table = pq.read_table(trainer.home / snapshot.path)
    images = np.array(table["image"].to_pylist(), dtype=np.float64)
    train, _ = split(len(images), test_size=snapshot.test_size,
                     sampling=snapshot.test_sampling, seed=snapshot.seed)  # fmt: skip
    # the model with 3 components scores lower and is not deployed: decompose gives all 64
    reference = PCA().fit(images[train])
    for line in out["three"][1:]:
        image, components = line.split("|")
        got = [float(v) for v in components.strip("{}").split(",")]
        pixels = [float(v) for v in image.strip("{}").split(",")]
        expected = reference.transform([pixels])[0]
        assert len(got) == 64
        np.testing.assert_allclose(got[:10], expected[:10], rtol=1e-4, atol=1e-6)
    assert len(out["hard_work"]) == 5
    deploys = [line.split("|") for line in out["deploys"]]
    assert deploys[0] == ["Handwritten Digits Reduction", "most_recent", "pca"]
    assert ["Handwritten Digits Reduction", "pca"] in deploys
    assert deploys[-1] == ["Handwritten Digits Reduction", "best_score", "pca"]
    # pgml.predict with a decomposition model: its first component, as PostgresML answers
    predicted = [line.split("|") for line in out["predicted"]]
    assert len(predicted) == 10
    for _, prediction, first in predicted:
        assert float(prediction) == pytest.approx(float(first), rel=1e-6, abs=1e-9)


VECTORS = """
\\set ON_ERROR_STOP on
\\echo @scalar
SELECT pgml.add(ARRAY[1.0, 2.0, 3.0], 3);
SELECT pgml.subtract(ARRAY[1.0, 2.0, 3.0], 3);
SELECT pgml.multiply(ARRAY[1.0, 2.0, 3.0], 3);
SELECT pgml.divide(ARRAY[1.0, 2.0, 3.0], 100);
\\echo @pairwise
SELECT pgml.add(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY[4.0, 5.0, 6.0]::FLOAT4[]);
SELECT pgml.subtract(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY[4.0, 5.0, 6.0]::FLOAT4[]);
SELECT pgml.multiply(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY[4.0, 5.0, 6.0]::FLOAT4[]);
SELECT pgml.divide(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY[4.0, 5.0, 6.0]::FLOAT4[]);
\\echo @norms
SELECT pgml.norm_l0(ARRAY[1.0, 0.0, 3.0]::FLOAT4[]);
SELECT pgml.norm_l1(ARRAY[1.0, -2.0, 3.0]::FLOAT4[]);
SELECT pgml.norm_l2(ARRAY[1.0, 2.0, 3.0]::FLOAT4[]);
SELECT pgml.norm_max(ARRAY[1.0, -4.0, 3.0]::FLOAT4[]);
\\echo @normalized
SELECT pgml.normalize_l1(ARRAY[1.0, 2.0, 3.0]::FLOAT4[]);
SELECT pgml.normalize_l2(ARRAY[1.0, 2.0, 3.0]::FLOAT4[]);
SELECT pgml.normalize_max(ARRAY[1.0, 2.0, 4.0]::FLOAT4[]);
\\echo @comparisons
SELECT pgml.distance_l1(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY[4.0, 5.0, 6.0]::FLOAT4[]);
SELECT pgml.distance_l2(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY[4.0, 5.0, 6.0]::FLOAT4[]);
SELECT pgml.dot_product(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY[4.0, 5.0, 6.0]::FLOAT4[]);
SELECT pgml.cosine_similarity(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY[2.0, 4.0, 6.0]::FLOAT4[]);
\\echo @aggregates
WITH vectors AS (
  SELECT * FROM (
    VALUES
      (ARRAY[-2, -4, -6, -8]::FLOAT4[]),
      (ARRAY[-1, -2, -3, -4]::FLOAT4[]),
      (ARRAY[0, 0, 0, 0]::FLOAT4[]),
      (ARRAY[1, 2, 3, 5]::FLOAT4[]),
      (ARRAY[1, 2, 3, 4]::FLOAT4[]),
      (NULL)
  ) AS vectors (embedding)
) SELECT pgml.sum(embedding), pgml.min(embedding), pgml.max(embedding),
         pgml.min_abs(embedding), pgml.max_abs(embedding)
  FROM vectors;
\\echo @average
WITH vectors AS (
  SELECT * FROM (
    VALUES
      (ARRAY[-2, -4, -6, -8]::FLOAT4[]),
      (ARRAY[-1, -2, -3, -4]::FLOAT4[]),
      (ARRAY[0, 0, 0, 0]::FLOAT4[]),
      (ARRAY[1, 2, 3, 5]::FLOAT4[]),
      (ARRAY[1, 2, 3, 4]::FLOAT4[]),
      (NULL)
  ) AS vectors (embedding)
) SELECT pgml.divide(pgml.sum(embedding), count(embedding)) AS avg FROM vectors;
"""


def vector(text: str) -> list[float]:
    return [float(v) for v in text.strip("{}").split(",")]


def test_vectors_session(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    out = sections(psql(pg_bin, endpoint, VECTORS).stdout)
    got = {n: [vector(line) for line in lines] for n, lines in out.items() if n != "aggregates"}
    assert got["scalar"] == [[4, 5, 6], [-2, -1, 0], [3, 6, 9], [0.01, 0.02, 0.03]]
    pairwise = np.array([[5, 7, 9], [-3, -3, -3], [4, 10, 18], [0.25, 0.4, 0.5]])
    np.testing.assert_allclose(np.array(got["pairwise"]), pairwise, rtol=1e-6)
    np.testing.assert_allclose([v[0] for v in got["norms"]], [2, 6, np.sqrt(14), 4], rtol=1e-6)
    np.testing.assert_allclose(got["normalized"], [
        np.array([1, 2, 3]) / 6, np.array([1, 2, 3]) / np.sqrt(14), [0.25, 0.5, 1]
    ], rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(
        [v[0] for v in got["comparisons"]], [9, np.sqrt(27), 32, 1], rtol=1e-6
    )
    rows = np.array([[-2, -4, -6, -8], [-1, -2, -3, -4], [0, 0, 0, 0], [1, 2, 3, 5], [1, 2, 3, 4]])
    columns = out["aggregates"][0].split("|") + out["average"]
    expected = [rows.sum(0), rows.min(0), rows.max(0), np.abs(rows).min(0), np.abs(rows).max(0),
                rows.sum(0) / 5]  # fmt: skip
    for text, want in zip(columns, expected, strict=True):
        np.testing.assert_allclose(vector(text), want, rtol=1e-6)


CHUNKING = """
\\set ON_ERROR_STOP on
DROP TABLE IF EXISTS documents CASCADE;
CREATE TABLE documents (
    id BIGSERIAL PRIMARY KEY,
    document TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
DROP TABLE IF EXISTS splitters CASCADE;
CREATE TABLE splitters (
    id BIGSERIAL PRIMARY KEY,
    splitter VARCHAR NOT NULL DEFAULT 'recursive_character'
);
DROP TABLE IF EXISTS document_chunks CASCADE;
CREATE TABLE document_chunks (
    id BIGSERIAL PRIMARY KEY,
    document_id BIGINT NOT NULL REFERENCES documents (id),
    splitter_id BIGINT NOT NULL REFERENCES splitters (id),
    chunk_index BIGINT NOT NULL,
    chunk VARCHAR
);
\\echo @ids
INSERT INTO documents (document) VALUES ('@text') RETURNING id;
INSERT INTO splitters (splitter) VALUES ('recursive_character') RETURNING id;
WITH document AS (
    SELECT id, document FROM documents WHERE id = 1
),
splitter AS (
    SELECT id, splitter FROM splitters WHERE id = 1
)
INSERT INTO document_chunks (document_id, splitter_id, chunk_index, chunk) SELECT
    (SELECT id FROM document),
    (SELECT id FROM splitter),
    chunk_index,
    chunk
FROM pgml.chunk(
    (SELECT splitter FROM splitter),
    (SELECT document FROM document),
    '{"chunk_size": 40, "chunk_overlap": 10}'
);
\\echo @chunks
SELECT id, document_id, splitter_id, chunk_index, chunk FROM document_chunks ORDER BY id;
"""
TEXT = (
    "Rivers carry what the mountains lose, and the sea keeps what the rivers bring."
    " Every stone on the shore was once a cliff, and every cliff will one day be sand."
)


def test_chunking_session(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    out = sections(psql(pg_bin, endpoint, CHUNKING.replace("@text", TEXT)).stdout)
    expected = RecursiveCharacterTextSplitter(chunk_size=40, chunk_overlap=10).split_text(TEXT)
    assert out["ids"] == ["1", "INSERT 0 1", "1", "INSERT 0 1", f"INSERT 0 {len(expected)}"]
    rows = [line.split("|") for line in out["chunks"]]
    assert rows == [[str(i), "1", "1", str(i), chunk] for i, chunk in enumerate(expected, 1)]


PREPROCESSING = """
\\set ON_ERROR_STOP on
CREATE TABLE pgml."jdxcosta/diamonds" AS
SELECT i AS "Unnamed: 0", 0.2 + (i % 40) * 0.05 AS carat,
       (ARRAY['Fair', 'Good', 'Very Good', 'Premium', 'Ideal'])[1 + i % 5] AS cut,
       (ARRAY['D', 'E', 'F', 'G', 'H', 'I', 'J'])[1 + i % 7] AS color,
       (ARRAY['I1', 'SI2', 'SI1', 'VS2', 'VS1'])[1 + (i * 3 + i % 4) % 5] AS clarity,
       58.0 + (i % 9) AS depth, 55.0 + (i % 6) AS "table",
       3.0 + (i % 40) * 0.1 AS x, 3.0 + (i % 37) * 0.1 AS y, 2.0 + (i % 31) * 0.1 AS z,
       (300 + (i % 40) * 120 + (i % 5) * 80 + (i % 7) * 30)::int AS price
  FROM generate_series(1, 300) AS i;
SELECT * FROM pgml."jdxcosta/diamonds" LIMIT 2;
ALTER TABLE pgml."jdxcosta/diamonds" DROP COLUMN "Unnamed: 0";
\\echo @trained
SELECT pgml.train(
    project_name => 'Diamond prices',
    task => 'regression',
    relation_name => 'pgml.jdxcosta/diamonds',
    y_column_name => 'price',
    algorithm => 'lightgbm',
    preprocess => '{
        "carat": {"scale": "standard"},
        "depth": {"scale": "standard"},
        "table": {"scale": "standard"},
        "cut": {"encode": "target", "scale": "standard"},
        "color": {"encode": "target", "scale": "standard"},
        "clarity": {"encode": "target", "scale": "standard"}
    }'
);
\\echo @predictions
SELECT price, pgml.predict('Diamond prices', (carat, cut, color, clarity, depth, "table", x, y, z))
  FROM pgml."jdxcosta/diamonds" LIMIT 10;
"""


def test_preprocessing_session(pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer) -> None:
    out = sections(psql(pg_bin, endpoint, PREPROCESSING).stdout)
    assert out[""][0] == "SELECT 300" and out[""][-1] == "ALTER TABLE"
    assert out["trained"] == ['("Diamond prices",regression,lightgbm,t)']
    project = trainer.registry.project("Diamond prices")
    assert project is not None
    model = trainer.registry.deployed(project.id)
    assert model is not None and model.algorithm == "lightgbm"
    assert model.preprocess["cut"] == {"encode": "target", "scale": "standard"}
    assert model.notes["columns"]["color"]["encode"] == "target"
    assert "Unnamed: 0" not in model.notes["columns"] and "carat" in model.notes["columns"]
    assert "r2" in model.metrics
    predictions = [line.split("|") for line in out["predictions"]]
    assert len(predictions) == 10
    assert all(300 <= float(p) <= 6000 for _, p in predictions)


SESSIONS = {
    "regression": REGRESSION, "binary": BINARY, "multi": MULTI, "images": IMAGES, "joint": JOINT,
    "clustering": CLUSTERING_AND_DECOMPOSITION, "vectors": VECTORS, "chunking": CHUNKING,
    "preprocessing": PREPROCESSING,
}  # fmt: skip

INVENTORY: list[tuple[str, str, str]] = [
    # functions and their argument forms
    ("pgml.load_dataset(name)", "regression", "pgml.load_dataset('diabetes')"),
    ("train: 4 positional arguments", "regression", "'pgml.diabetes', 'target');"),
    ("train: algorithm positional", "regression", "'target', 'ridge');"),
    ("train: hyperparams positional", "regression", "'theil_sen', '{\"max_iter\": 10"),
    (
        "train: project only, algorithm =>",
        "regression",
        "pgml.train('Diabetes Progression', algorithm =>",
    ),
    ("train: hyperparams =>", "regression", "hyperparams => '{\"max_iter\": 100}'"),
    ("train: hyperparams => '...'::JSONB", "regression", '\'{"eval_metric": "rmse"}\'::JSONB'),
    ("train: search => 'grid', search_params =>", "binary", "search => 'grid'"),
    ("train: search_params with strings", "multi", '"criterion": ["friedman_mse"'),
    ("train: search_params with booleans", "images", '"shrinking": [true, false]'),
    ("train: runtime => 'python'", "regression", "runtime => 'python'"),
    ("train: runtime => 'rust'", "regression", "runtime => 'rust'"),
    ("train: every argument named", "preprocessing", "project_name => 'Diamond prices'"),
    ("train: preprocess scale and target encoding", "preprocessing", '"encode": "target"'),
    (
        "train: task 'clustering' without a label",
        "clustering",
        "'clustering', 'pgml.digit_vectors',",
    ),
    ("train: task 'cluster'", "clustering", "'cluster', 'pgml.iris_vectors'"),
    ("train: task 'decomposition'", "clustering", "'decomposition', 'digit_vectors');"),
    ("SELECT pgml.train(...) (a record)", "binary", "SELECT pgml.train(\n"),
    ("SELECT * FROM pgml.train(...)", "regression", "SELECT * FROM pgml.train("),
    ("train_joint with ARRAY of labels", "joint", "ARRAY['weight', 'waist', 'pulse']"),
    (
        "train_joint: algorithm =>, hyperparams =>",
        "joint",
        "pgml.train_joint('Exercise vs Physiology', algorithm => 'svm',",
    ),
    (
        "predict(project, ARRAY[columns])",
        "regression",
        "pgml.predict('Diabetes Progression', ARRAY[age",
    ),
    ("predict(model_id, ...) with CROSS JOIN LATERAL", "regression", "CROSS JOIN LATERAL"),
    ("predict(project, array column)", "images", "pgml.predict('Handwritten Digits', image)"),
    ("predict(project, ARRAY of quoted columns)", "binary", '"mean radius"'),
    ("predict(project, (row of mixed types))", "preprocessing", "(carat, cut, color, clarity"),
    (
        "predict on a clustering model",
        "clustering",
        "pgml.predict('Handwritten Digit Clusters', image)",
    ),
    ("predict_proba(project, ARRAY)", "multi", "pgml.predict_proba('Iris Flower Types', ARRAY"),
    (
        "predict_proba(project, array column)",
        "images",
        "pgml.predict_proba('Handwritten Digits', image)",
    ),
    ("predict_joint", "joint", "pgml.predict_joint('Exercise vs Physiology', ARRAY[chins"),
    ("decompose", "clustering", "pgml.decompose('Handwritten Digits Reduction', image)"),
    ("deploy(project, strategy, algorithm)", "regression", "'most_recent', 'random_forest')"),
    ("deploy best_score", "regression", "'Diabetes Progression', 'best_score');"),
    ("deploy most_recent", "regression", "'Diabetes Progression', 'most_recent');"),
    ("deploy rollback", "regression", "'Diabetes Progression', 'rollback');"),
    ("deploy best_score with an algorithm", "regression", "'best_score', 'svm');"),
    ("pgml.trained_models JOIN pgml.models", "regression", "JOIN pgml.models ON models.id"),
    ("ORDER BY metrics->>'mean_squared_error'", "regression", "metrics->>'mean_squared_error'"),
    ("ORDER BY metrics->>'f1'", "binary", "metrics->>'f1'"),
    (
        "ORDER BY metrics->>'cumulative_explained_variance'",
        "clustering",
        "'cumulative_explained_variance'",
    ),
    ("pgml.deployed_models ORDER BY deployed_at", "regression", "ORDER BY deployed_at DESC"),
    ("pgml.models JOIN pgml.projects", "regression", "INNER JOIN pgml.projects"),
    (
        "vector add/subtract/multiply/divide with a scalar",
        "vectors",
        "pgml.divide(ARRAY[1.0, 2.0, 3.0], 100)",
    ),
    (
        "vector arithmetic pairwise on FLOAT4[]",
        "vectors",
        "pgml.subtract(ARRAY[1.0, 2.0, 3.0]::FLOAT4[], ARRAY",
    ),
    ("norm_l0, norm_l1, norm_l2, norm_max", "vectors", "pgml.norm_max("),
    ("normalize_l1, normalize_l2, normalize_max", "vectors", "pgml.normalize_max("),
    (
        "distance_l1, distance_l2, dot_product, cosine_similarity",
        "vectors",
        "pgml.cosine_similarity(",
    ),
    (
        "aggregates sum, min, max, min_abs, max_abs over VALUES with NULL",
        "vectors",
        "pgml.min_abs(embedding)",
    ),
    (
        "a vector function over aggregates",
        "vectors",
        "pgml.divide(pgml.sum(embedding), count(embedding))",
    ),
    ("pgml.chunk(splitter, text, kwargs) in FROM", "chunking", "FROM pgml.chunk("),
    # SQL around them
    ("\\set ON_ERROR_STOP", "regression", "\\set ON_ERROR_STOP on"),
    ("\\timing on", "regression", "\\timing on"),
    ("DROP VIEW IF EXISTS pgml.x", "multi", "DROP VIEW IF EXISTS pgml.iris_view"),
    ("CREATE VIEW pgml.x AS ... ORDER BY random() LIMIT", "multi", "ORDER BY random() LIMIT 100"),
    ("CREATE VIEW without a schema", "clustering", "CREATE VIEW digit_vectors AS"),
    ("ORDER BY random() LIMIT", "binary", "ORDER BY random() LIMIT 10"),
    ("left(image::text, 40) || ',...}'", "images", "left(image::text, 40) || ',...}'"),
    (
        "CREATE TABLE with NOT NULL DEFAULT NOW(), TIMESTAMPTZ, VARCHAR DEFAULT",
        "chunking",
        "DEFAULT NOW()",
    ),
    ("DROP TABLE IF EXISTS ... CASCADE", "chunking", "DROP TABLE IF EXISTS documents CASCADE"),
    ("BIGSERIAL PRIMARY KEY", "chunking", "id BIGSERIAL PRIMARY KEY"),
    ("REFERENCES another table", "chunking", "REFERENCES documents (id)"),
    ("INSERT ... RETURNING id", "chunking", "RETURNING id;"),
    (
        "WITH ... INSERT INTO ... SELECT with scalar subqueries",
        "chunking",
        "INSERT INTO document_chunks (document_id",
    ),
    ("a relation name with a slash", "preprocessing", 'pgml."jdxcosta/diamonds"'),
    ("ALTER TABLE ... DROP COLUMN", "preprocessing", 'DROP COLUMN "Unnamed: 0"'),
    ("multi-line JSON literal", "binary", "search_params => '{\n"),
]

ALGORITHMS = {
    "regression": ["linear", *REGRESSION_ALGORITHMS, "ridge", "theil_sen"],
    "classification": ["linear", *CLASSIFICATION_ALGORITHMS],
    "joint regression": ["linear", *JOINT_ALGORITHMS],
    "clustering": [
        "kmeans", "affinity_propagation", "birch", "mini_batch_kmeans", "dbscan",
        "feature_agglomeration", "optics", "spectral", "spectral_bi", "spectral_co", "mean_shift",
    ],
    "decomposition": ["pca"],
}  # fmt: skip
"""Every algorithm the scripts name, by task (those they leave commented out included)."""

EXCLUDED = {
    "pgml.embed, pgml.transform, pgml.tune": "Hugging Face models, downloaded",
    "pgml.load_dataset('jdxcosta/diamonds')": "a Hugging Face data set, downloaded",
    "pgml.chunk with nltk or spacy": "tokenizer models, downloaded",
}

GAPS: dict[str, str] = {}


def test_every_inventory_item_is_in_its_session() -> None:
    for item, session, text in INVENTORY:
        assert text in SESSIONS[session], (item, session, text)
    everything = "\n".join(SESSIONS.values())
    for task, names in ALGORITHMS.items():
        for name in names:
            assert f"'{name}'" in everything, (task, name)
    for gap in GAPS:
        assert f'GAPS["{gap}"]' in everything
