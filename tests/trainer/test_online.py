"""Online (River) algorithms behind scikit-learn's API: fit, predict, round-trip, learn in order."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_diabetes, load_iris
from sklearn.model_selection import GridSearchCV

from mirror.errors import TrainingError
from tests.river_streams import learned_state, stream
from trainer.algorithms import (
    algorithm_names,
    check_search_params,
    hyperparameter_names,
    is_online,
    make_estimator,
    supports,
)
from trainer.metrics import evaluate
from trainer.online import RiverEstimator
from trainer.online_algorithms import ONLINE

PAIRS = [(name, task) for name, tasks in ONLINE.items() for task in tasks]
# Small forests keep the adaptive random forest fast; everything else runs with its defaults.
FAST = {"online_adaptive_random_forest": {"n_models": 3}}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    diabetes_x, diabetes_y = load_diabetes(return_X_y=True)
    iris_x, iris_y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(iris_y))  # iris is sorted by class
    iris_x, iris_y = iris_x[order], iris_y[order]
    binary = iris_y < 2
    return {
        "regression": [(diabetes_x[:200], diabetes_y[:200])],
        "classification": [(iris_x, iris_y), (iris_x[binary], iris_y[binary])],
    }


def fitted(name: str, task: str, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> Any:
    return make_estimator(name, task, FAST.get(name), seed=seed).fit(x, y)


def test_names_join_the_registry() -> None:
    assert set(ONLINE) >= {
        "online_linear",
        "online_logistic",
        "online_hoeffding_tree",
        "online_hoeffding_adaptive_tree",
        "online_adaptive_random_forest",
        "online_naive_bayes",
    }
    for name, task in PAIRS:
        assert is_online(name) and supports(name, task) and name in algorithm_names(task)
        assert isinstance(make_estimator(name, task), RiverEstimator)
    assert not is_online("linear") and not is_online("nonsense")
    assert not supports("online_naive_bayes", "regression")
    assert not supports("online_linear", "classification")
    assert "grace_period" in hyperparameter_names("online_hoeffding_tree", "classification")
    assert "seed" in hyperparameter_names("online_adaptive_random_forest", "regression")
    assert "l2" in hyperparameter_names("online_logistic", "classification")


@pytest.mark.parametrize(("name", "task"), PAIRS, ids=[f"{t}-{n}" for n, t in PAIRS])
def test_fits_predicts_round_trips_and_repeats(name: str, task: str, data: dict) -> None:
    for x, y in data[task]:
        estimator = fitted(name, task, x, y, seed=3)
        assert estimator.rows_learned == len(y)
        predicted = estimator.predict(x)
        assert predicted.shape == (len(x),)
        if task == "classification":
            np.testing.assert_array_equal(estimator.classes_, np.unique(y))
            assert set(np.unique(predicted)) <= set(np.unique(y))
            proba = estimator.predict_proba(x)
            assert proba.shape == (len(x), len(estimator.classes_))
            np.testing.assert_allclose(proba.sum(axis=1), 1.0)
            # Columns follow classes_: the most probable class is the prediction.
            np.testing.assert_array_equal(estimator.classes_[proba.argmax(axis=1)], predicted)
            assert {"accuracy", "f1", "log_loss"} <= estimator.progressive.keys()
        else:
            assert predicted.dtype == np.float64 and np.isfinite(predicted).all()
            assert {"mae", "rmse", "r2"} <= estimator.progressive.keys()
        assert estimator.history[-1]["rows"] == len(y)

        again = pickle.loads(pickle.dumps(estimator))
        np.testing.assert_array_equal(again.predict(x), predicted)
        if task == "classification":
            np.testing.assert_array_equal(again.predict_proba(x), estimator.predict_proba(x))
        np.testing.assert_array_equal(fitted(name, task, x, y, seed=3).predict(x), predicted)


@pytest.mark.parametrize("name", [n for n, tasks in ONLINE.items() if "classification" in tasks])
def test_binary_metrics_use_probabilities(name: str, data: dict) -> None:
    x, y = data["classification"][1]
    scored = evaluate("classification", fitted(name, "classification", x, y), x, y)
    assert {"f1", "accuracy", "roc_auc", "log_loss"} <= scored.keys()


@pytest.mark.parametrize(
    ("name", "task"),
    [("online_linear", "regression"), ("online_logistic", "classification"),
     ("online_naive_bayes", "classification")],
)  # fmt: skip
def test_large_inputs_predict_in_batches_alike(name: str, task: str) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1200, 4))
    y = (x @ [1.0, -2.0, 0.5, 0.0] > 0).astype(np.int64) if task == "classification" else x[:, 0]
    estimator = make_estimator(name, task).fit(x[:600], y[:600])
    one_by_one = np.array([estimator.predict(row[None])[0] for row in x[:700]])
    batch = estimator.predict(x[:700])  # 512 rows or more go through River's *_many
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-12)
    if task == "classification":
        proba = np.vstack([estimator.predict_proba(row[None]) for row in x[:700]])
        np.testing.assert_allclose(estimator.predict_proba(x[:700]), proba, rtol=1e-9)


# -- learning in order -----------------------------------------------------------------------


def flipping_stream(rows: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """y = x0 > 0 for the first half of the rows, y = x0 < 0 for the second."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(rows, 2))
    y = np.where(np.arange(rows) < rows // 2, x[:, 0] > 0, x[:, 0] < 0)
    return x, y.astype(np.float64)


@pytest.mark.parametrize("name", ["online_logistic", "online_hoeffding_adaptive_tree"])
def test_concept_flip_drops_then_recovers(name: str) -> None:
    x, y = flipping_stream()
    estimator = make_estimator(name, "classification", seed=1)
    predicted = np.concatenate(
        [estimator.partial_fit(x[i : i + 250], y[i : i + 250]) for i in range(0, len(y), 250)]
    )
    hits = predicted == y

    assert hits[1500:2000].mean() > 0.9  # learned the first concept
    assert hits[2000:2250].mean() < 0.7  # right after the flip: wrong
    assert hits[3500:4000].mean() > 0.9  # learned the new concept
    accuracy = {h["rows"]: h["accuracy"] for h in estimator.history}
    assert list(accuracy) == [1000, 2000, 3000, 4000]
    assert accuracy[3000] < accuracy[2000]
    assert estimator.progressive["accuracy"] == accuracy[4000]
    assert estimator.rows_learned == 4000


def test_partial_fit_returns_the_prediction_made_before_learning() -> None:
    x, y = flipping_stream(600)
    for task, target in [("regression", x[:, 0] * 3.0), ("classification", y)]:
        name = "online_linear" if task == "regression" else "online_hoeffding_tree"
        estimator = make_estimator(name, task).fit(x[:500], target[:500])
        row, label = x[500:501], target[500:501]
        expected = estimator.predict(row)[0]
        assert estimator.partial_fit(row, label)[0] == expected
        assert estimator.rows_learned == 501
    # Having learned the row, the linear model predicts it differently.
    linear = make_estimator("online_linear", "regression").fit(x[:5], x[:5, 0])
    before = linear.predict(x[5:6])[0]
    assert linear.partial_fit(x[5:6], x[5:6, 0])[0] == before
    assert linear.predict(x[5:6])[0] != before


def test_progressive_metrics_score_predictions_made_before_learning() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 3))
    y = x @ [2.0, -1.0, 0.5] + rng.normal(scale=0.1, size=300)
    estimator = make_estimator("online_linear", "regression")
    chunks = [slice(i, i + 70) for i in range(0, 300, 70)]
    before = np.concatenate([estimator.partial_fit(x[c], y[c]) for c in chunks])
    error = y - before
    assert estimator.progressive["mae"] == pytest.approx(np.abs(error).mean())
    assert estimator.progressive["rmse"] == pytest.approx(np.sqrt((error**2).mean()))
    r2 = 1 - (error**2).sum() / ((y - y.mean()) ** 2).sum()
    assert estimator.progressive["r2"] == pytest.approx(r2)


def test_history_every_interval_plus_the_current_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RiverEstimator, "history_every", 100)
    x, y = flipping_stream(400)
    estimator = make_estimator("online_naive_bayes", "classification")
    estimator.partial_fit(x[:150], y[:150])
    assert [h["rows"] for h in estimator.history] == [100, 150]
    estimator.partial_fit(x[150:170], y[150:170])
    assert [h["rows"] for h in estimator.history] == [100, 170]  # the last entry moved on
    estimator.partial_fit(x[170:400], y[170:400])
    assert [h["rows"] for h in estimator.history] == [100, 200, 300, 400]
    assert estimator.history[-1] == {**estimator.progressive, "rows": 400}
    estimator.fit(x[:50], y[:50])  # fit starts again
    assert [h["rows"] for h in estimator.history] == [50] and estimator.rows_learned == 50


def test_rows_without_a_label_are_skipped() -> None:
    x, y = flipping_stream(400)
    y[::4] = np.nan
    for task in ("classification", "regression"):
        name = "online_hoeffding_tree"
        estimator = make_estimator(name, task).fit(x[:200], y[:200])
        assert estimator.rows_learned == 150
        predicted = estimator.partial_fit(x[200:], y[200:])
        assert estimator.rows_learned == 300
        assert np.isnan(predicted[::4]).all() and not np.isnan(predicted[1::4]).any()
        assert np.isnan(estimator.partial_fit(x[:3], np.full(3, np.nan))).all()
        assert estimator.rows_learned == 300
        assert estimator.history[-1]["rows"] == 300


# -- bad input -------------------------------------------------------------------------------


def error(call: Any, *args: Any) -> str:
    with pytest.raises(TrainingError) as caught:
        call(*args)
    assert caught.value.sqlstate == "22023"
    return str(caught.value)


def test_unknown_hyperparameter_lists_the_valid_ones() -> None:
    message = error(make_estimator, "online_hoeffding_tree", "classification", {"grace_periods": 5})
    assert "grace_periods" in message and "did you mean grace_period" in message
    for name in hyperparameter_names("online_hoeffding_tree", "classification"):
        assert name in message
    message = error(RiverEstimator, "online_logistic", "classification", {"alpha": 1.0})
    assert "alpha" in message and "l2" in message and "optimizer" in message
    assert "alpah" in error(check_search_params, "online_linear", "regression", {"alpah": [0.1]})


def test_unsupported_task_says_which_tasks_it_supports() -> None:
    message = error(make_estimator, "online_naive_bayes", "regression")
    assert "online_naive_bayes" in message and "supports classification" in message
    assert "online_linear" in message  # the choices for regression
    assert "supports classification" in error(RiverEstimator, "online_naive_bayes", "regression")


def test_object_hyperparameters_by_class_name() -> None:
    estimator = make_estimator(
        "online_hoeffding_adaptive_tree",
        "classification",
        {"drift_detector": {"ADWIN": {"delta": 0.01}}, "grace_period": 50},
    )
    x, y = flipping_stream(300)
    estimator.fit(x, y)
    linear = make_estimator("online_linear", "regression", {"optimizer": "Adam", "l2": 0.01})
    linear.fit(x, x[:, 0])
    message = error(make_estimator, "online_linear", "regression", {"optimizer": "Adamm"})
    assert "Adam" in message and "SGD" in message
    error(make_estimator, "online_linear", "regression", {"optimizer": {"SGD": {"rate": 1}}})


def test_search_clones_and_sets_river_hyperparameters(data: dict) -> None:
    x, y = data["classification"][0]
    check_search_params("online_hoeffding_tree", "classification", {"grace_period": [20, 50]})
    estimator = make_estimator("online_hoeffding_tree", "classification", seed=2)
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params() and copy is not estimator
    search = GridSearchCV(estimator, {"grace_period": [20, 50]}, cv=2, scoring="f1_macro")
    search.fit(x, y)
    assert search.best_params_["grace_period"] in (20, 50)
    best = search.best_estimator_
    assert isinstance(best, RiverEstimator) and best.rows_learned == len(y)
    assert best.hyperparams == {"grace_period": search.best_params_["grace_period"]}
    assert estimator.hyperparams is None  # the search changed copies only


def test_prediction_needs_learning_and_the_same_features() -> None:
    estimator = make_estimator("online_linear", "regression")
    with pytest.raises(TrainingError, match="has not learned"):
        estimator.predict(np.zeros((1, 2)))
    estimator.fit(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(TrainingError, match="2 features, not 3"):
        estimator.predict(np.zeros((1, 3)))


# -- the same stream, the same model -------------------------------------------------------------


@pytest.mark.parametrize(("name", "task"), PAIRS)
def test_the_same_rows_give_the_same_model_however_they_are_batched(name: str, task: str) -> None:
    """One batch or one row at a time: the pickles are equal, byte for byte (but for River's
    unseeded sampling generators, see ``learned_state``)."""
    data = stream("TrumpApproval" if task == "regression" else "Phishing", 200)
    whole = make_estimator(name, task, FAST.get(name))
    whole.partial_fit(data.x, data.y)
    single = make_estimator(name, task, FAST.get(name))
    for row in range(len(data.y)):
        single.partial_fit(data.x[row : row + 1], data.y[row : row + 1])
    assert learned_state(single) == learned_state(whole)


RIVER_METRICS = {
    "regression": {"mae": "MAE", "rmse": "RMSE", "r2": "R2"},
    "classification": {"accuracy": "Accuracy", "f1": "MacroF1", "log_loss": "LogLoss"},
}


@pytest.mark.parametrize(
    ("name", "task"), [("online_hoeffding_tree", "classification"), ("online_linear", "regression")]
)
def test_progressive_metrics_are_rivers_progressive_val_score(name: str, task: str) -> None:
    from river import evaluate, metrics, preprocessing, tree
    from river import linear_model as lm

    data = stream("TrumpApproval" if task == "regression" else "Phishing", 400)
    ours = make_estimator(name, task)
    ours.partial_fit(data.x, data.y)
    for key, metric in RIVER_METRICS[task].items():
        model: Any = (
            tree.HoeffdingTreeClassifier()
            if task == "classification"
            else preprocessing.StandardScaler() | lm.LinearRegression()
        )
        expected = evaluate.progressive_val_score(data.rows, model, getattr(metrics, metric)())
        assert ours.progressive[key] == pytest.approx(expected.get(), abs=1e-9), key
