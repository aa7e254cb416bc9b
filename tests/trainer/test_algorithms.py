"""Every PostgresML algorithm name builds, fits and repeats itself; bad names get clear errors."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

from mirror.errors import TrainingError
from trainer.algorithms import (
    TASKS,
    algorithm_names,
    can_predict,
    check_search_params,
    hyperparameter_names,
    is_online,
    make_estimator,
    supports,
)

# name → (regression class, classification class), as PostgresML documents them; passive
# aggressive is SGD configured as PA since scikit-learn deprecated the PassiveAggressive classes.
SUPERVISED = {
    "linear": ("LinearRegression", "LogisticRegression"),
    "ridge": ("Ridge", "RidgeClassifier"),
    "lasso": ("Lasso", None),
    "elastic_net": ("ElasticNet", None),
    "least_angle": ("Lars", None),
    "lasso_least_angle": ("LassoLars", None),
    "orthogonal_matching_pursuit": ("OrthogonalMatchingPursuit", None),
    "bayesian_ridge": ("BayesianRidge", None),
    "automatic_relevance_determination": ("ARDRegression", None),
    "stochastic_gradient_descent": ("SGDRegressor", "SGDClassifier"),
    "perceptron": (None, "Perceptron"),
    "passive_aggressive": ("SGDRegressor", "SGDClassifier"),
    "ransac": ("RANSACRegressor", None),
    "theil_sen": ("TheilSenRegressor", None),
    "huber": ("HuberRegressor", None),
    "quantile": ("QuantileRegressor", None),
    "svm": ("SVR", "SVC"),
    "nu_svm": ("NuSVR", "NuSVC"),
    "linear_svm": ("LinearSVR", "LinearSVC"),
    "ada_boost": ("AdaBoostRegressor", "AdaBoostClassifier"),
    "bagging": ("BaggingRegressor", "BaggingClassifier"),
    "extra_trees": ("ExtraTreesRegressor", "ExtraTreesClassifier"),
    "gradient_boosting_trees": ("GradientBoostingRegressor", "GradientBoostingClassifier"),
    "random_forest": ("RandomForestRegressor", "RandomForestClassifier"),
    "hist_gradient_boosting": ("HistGradientBoostingRegressor", "HistGradientBoostingClassifier"),
    "kernel_ridge": ("KernelRidge", None),
    "gaussian_process": ("GaussianProcessRegressor", "GaussianProcessClassifier"),
    "xgboost": ("XGBRegressor", "XGBClassifier"),
    "xgboost_random_forest": ("XGBRFRegressor", "XGBRFClassifier"),
    "lightgbm": ("LGBMRegressor", "LGBMClassifier"),
    "catboost": ("CatBoostRegressor", "CatBoostClassifier"),
    "knn": ("KNeighborsRegressor", "KNeighborsClassifier"),
}
UNSUPERVISED = {
    ("kmeans", "clustering"): "KMeans",
    ("mini_batch_kmeans", "clustering"): "MiniBatchKMeans",
    ("birch", "clustering"): "Birch",
    ("affinity_propagation", "clustering"): "AffinityPropagation",
    ("mean_shift", "clustering"): "MeanShift",
    ("dbscan", "clustering"): "DBSCAN",
    ("optics", "clustering"): "OPTICS",
    ("spectral", "clustering"): "SpectralClustering",
    ("spectral_bi", "clustering"): "SpectralBiclustering",
    ("spectral_co", "clustering"): "SpectralCoclustering",
    ("feature_agglomeration", "clustering"): "FeatureAgglomeration",
    ("pca", "decomposition"): "PCA",
}
EXPECTED_CLASS = {
    **{(n, "regression"): r for n, (r, _) in SUPERVISED.items() if r},
    **{(n, "classification"): c for n, (_, c) in SUPERVISED.items() if c},
    **UNSUPERVISED,
}
PAIRS = [(name, task) for task in TASKS for name in algorithm_names(task)]


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    diabetes_x, diabetes_y = load_diabetes(return_X_y=True)
    iris_x, iris_y = load_iris(return_X_y=True)
    binary = iris_y < 2
    return {
        "regression": (diabetes_x[:60], diabetes_y[:60].astype(np.float64)),
        "multiclass": (iris_x, iris_y),
        "binary": (iris_x[binary], iris_y[binary]),
        "features": iris_x,
    }


@pytest.fixture
def no_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        yield


def fit_predict(name: str, task: str, data: dict[str, Any], *, seed: int = 0) -> list[Any]:
    """Fit fresh estimators for ``task`` and return their outputs on the training rows."""
    if task == "regression":
        sets = [data["regression"]]
    elif task == "classification":
        sets = [data["multiclass"], data["binary"]]
    else:
        sets = [(data["features"], None)]
    outputs = []
    for x, y in sets:
        estimator = make_estimator(name, task, seed=seed)
        if task == "decomposition" or name == "feature_agglomeration":
            out = estimator.fit(x).transform(x)
            assert out.shape[0] == len(x) and out.ndim == 2
        elif not can_predict(name):  # labels the rows it is fitted on only
            estimator.fit(x)
            out = getattr(estimator, "row_labels_", getattr(estimator, "labels_", None))
            assert out is not None and out.shape == (len(x),) and not hasattr(estimator, "predict")
        else:
            out = estimator.fit(x, y).predict(x) if y is not None else estimator.fit(x).predict(x)
            assert out.shape == (len(x),)
        if task == "classification":
            assert set(np.unique(out)) <= set(np.unique(y))
        outputs.append(out)
    return outputs


def test_table_matches_postgresml() -> None:
    assert {(n, t) for n, t in PAIRS if not is_online(n)} == set(EXPECTED_CLASS)
    for (name, task), class_name in EXPECTED_CLASS.items():
        assert type(make_estimator(name, task)).__name__ == class_name, (name, task)


@pytest.mark.parametrize(("name", "task"), PAIRS)
@pytest.mark.usefixtures("no_deprecations")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fits_and_predicts(name: str, task: str, data: dict[str, Any]) -> None:
    fit_predict(name, task, data)


@pytest.mark.parametrize(("name", "task"), PAIRS)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_same_seed_same_predictions(name: str, task: str, data: dict[str, Any]) -> None:
    first = fit_predict(name, task, data, seed=7)
    second = fit_predict(name, task, data, seed=7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_algorithm_names_by_task() -> None:
    everything = algorithm_names()
    assert everything == sorted(everything)
    assert set(everything) == {name for name, _ in PAIRS}
    assert "lasso" in algorithm_names("regression")
    assert "lasso" not in algorithm_names("classification")
    assert "perceptron" in algorithm_names("classification")
    assert "perceptron" not in algorithm_names("regression")
    assert algorithm_names("clustering") == [
        "affinity_propagation",
        "birch",
        "dbscan",
        "feature_agglomeration",
        "kmeans",
        "mean_shift",
        "mini_batch_kmeans",
        "optics",
        "spectral",
        "spectral_bi",
        "spectral_co",
    ]
    assert algorithm_names("decomposition") == ["pca"]


def test_supports() -> None:
    assert supports("linear", "regression") and supports("linear", "classification")
    assert not supports("lasso", "classification")
    assert not supports("kmeans", "regression")
    assert not supports("nonsense", "regression")
    assert not supports("linear", "nonsense")


def test_misspelled_alias_is_orthogonal_matching_pursuit() -> None:
    assert supports("orthoganl_matching_pursuit", "regression")
    assert "orthoganl_matching_pursuit" not in algorithm_names()
    estimator = make_estimator("orthoganl_matching_pursuit", "regression")
    assert type(estimator).__name__ == "OrthogonalMatchingPursuit"
    assert "n_nonzero_coefs" in hyperparameter_names("orthoganl_matching_pursuit", "regression")


def test_hyperparams_are_applied() -> None:
    assert make_estimator("ridge", "regression", {"alpha": 3.5}).get_params()["alpha"] == 3.5
    forest = make_estimator("random_forest", "classification", {"n_estimators": 7, "n_jobs": 2})
    assert forest.get_params()["n_estimators"] == 7
    assert forest.get_params()["n_jobs"] == 2
    booster = make_estimator("xgboost", "regression", {"eta": 0.2, "lambda": 2.0})
    assert booster.get_params()["eta"] == 0.2
    assert booster.get_params()["lambda"] == 2.0
    lgbm = make_estimator("lightgbm", "regression", {"feature_fraction": 0.5, "num_leaves": 7})
    assert lgbm.get_params()["feature_fraction"] == 0.5
    assert lgbm.get_params()["num_leaves"] == 7


def test_seed_threads_and_quiet_defaults() -> None:
    forest = make_estimator("random_forest", "regression", seed=5).get_params()
    assert forest["random_state"] == 5 and forest["n_jobs"] == 1
    assert make_estimator("ridge", "regression", {"random_state": 9}).random_state == 9
    # LogisticRegression's n_jobs is deprecated (no effect): left unset so it does not warn.
    assert make_estimator("linear", "classification").get_params()["n_jobs"] is None
    booster = make_estimator("xgboost", "classification", seed=3).get_params()
    assert booster["random_state"] == 3 and booster["n_jobs"] == 1
    native = make_estimator("xgboost", "classification", {"seed": 4, "nthread": 2}).get_params()
    assert native["random_state"] is None and native["n_jobs"] is None
    lgbm = make_estimator("lightgbm", "classification", seed=3).get_params()
    assert lgbm["random_state"] == 3 and lgbm["n_jobs"] == 1 and lgbm["verbose"] == -1
    lgbm = make_estimator("lightgbm", "regression", {"num_threads": 2, "verbosity": 1})
    assert lgbm.get_params()["n_jobs"] is None and "verbose" not in lgbm.get_params()


def test_passive_aggressive_is_sgd_with_pa_updates() -> None:
    pa1 = make_estimator("passive_aggressive", "classification", {"C": 0.25}).get_params()
    assert (pa1["loss"], pa1["penalty"], pa1["learning_rate"], pa1["eta0"]) == (
        "hinge",
        None,
        "pa1",
        0.25,
    )
    pa2 = make_estimator(
        "passive_aggressive", "regression", {"loss": "squared_epsilon_insensitive"}
    )
    assert (pa2.loss, pa2.learning_rate, pa2.eta0) == ("epsilon_insensitive", "pa2", 1.0)
    assert "C" in hyperparameter_names("passive_aggressive", "classification")


def test_hyperparameter_names() -> None:
    ridge = hyperparameter_names("ridge", "regression")
    assert ridge == sorted(ridge) and "alpha" in ridge
    xgb = hyperparameter_names("xgboost", "classification")
    assert {"eta", "gamma", "lambda", "alpha", "max_depth", "n_estimators", "nthread"} <= set(xgb)
    lgbm = set(hyperparameter_names("lightgbm", "regression"))
    assert {
        "num_leaves",
        "learning_rate",
        "num_iterations",
        "feature_fraction",
        "bagging_fraction",
        "min_data_in_leaf",
        "n_estimators",
    } <= lgbm


def error(call: Any, *args: Any) -> TrainingError:
    with pytest.raises(TrainingError) as caught:
        call(*args)
    assert caught.value.sqlstate == "22023"
    return caught.value


def test_unknown_algorithm_lists_the_choices_for_the_task() -> None:
    message = str(error(make_estimator, "linear_regresion", "regression"))
    assert "linear_regresion" in message
    for name in algorithm_names("regression"):
        assert name in message
    assert "perceptron" not in message


def test_unsupported_task_says_which_tasks_it_supports() -> None:
    message = str(error(make_estimator, "lasso", "classification"))
    assert "lasso" in message and "regression" in message
    assert "LogisticRegression" not in message


def test_unknown_task_lists_tasks() -> None:
    for call, args in [
        (make_estimator, ("linear", "regresion")),
        (algorithm_names, ("regresion",)),
        (hyperparameter_names, ("linear", "regresion")),
    ]:
        message = str(error(call, *args))
        assert all(task in message for task in TASKS)


def test_unknown_hyperparameter_lists_valid_ones() -> None:
    message = str(error(make_estimator, "ridge", "regression", {"alpah": 1.0}))
    assert "ridge" in message and "alpah" in message
    for name in hyperparameter_names("ridge", "regression"):
        assert name in message
    assert "did you mean alpha" in message
    error(make_estimator, "xgboost", "regression", {"num_leaves": 3})


def test_check_search_params() -> None:
    check_search_params("ridge", "regression", {"alpha": [0.1, 1.0], "fit_intercept": [True]})
    check_search_params("xgboost", "classification", {"eta": [0.1], "max_depth": [2, 4]})
    assert "alpah" in str(error(check_search_params, "ridge", "regression", {"alpah": [1]}))
    assert "non-empty list" in str(error(check_search_params, "ridge", "regression", {"alpha": []}))
    assert "non-empty list" in str(error(check_search_params, "ridge", "regression", {"alpha": 1}))
    error(check_search_params, "ridge", "regression", ["alpha"])
    error(check_search_params, "nonsense", "regression", {})


def test_import_is_cheap() -> None:
    code = (
        "import sys, trainer.algorithms\n"
        "heavy = {'sklearn', 'xgboost', 'lightgbm', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
