"""Model quality: multiclass models get roc_auc and log_loss as scikit-learn computes them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from trainer.metrics import evaluate
from trainer.online import RiverEstimator


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))  # iris is sorted by class
    return x[order], y[order]


def test_multiclass_roc_auc_and_log_loss_are_one_vs_rest(iris: tuple) -> None:
    x, y = iris
    for model in (
        LogisticRegression(max_iter=1000).fit(x[:100], y[:100]),
        RiverEstimator("online_hoeffding_tree", "classification").fit(x[:100], y[:100]),
    ):
        metrics = evaluate("classification", model, x[100:], y[100:])
        proba = model.predict_proba(x[100:])
        assert metrics["roc_auc"] == pytest.approx(
            roc_auc_score(y[100:], proba, multi_class="ovr"), abs=1e-12
        )
        assert metrics["log_loss"] == pytest.approx(
            log_loss(y[100:], proba, labels=[0, 1, 2]), abs=1e-12
        )


def test_a_class_missing_from_the_test_rows_leaves_roc_auc_out(iris: tuple) -> None:
    x, y = iris
    model = LogisticRegression(max_iter=1000).fit(x, y)
    rows = y != 2
    metrics = evaluate("classification", model, x[rows], y[rows])
    assert "roc_auc" not in metrics
    expected = log_loss(y[rows], model.predict_proba(x[rows]), labels=[0, 1, 2])
    assert metrics["log_loss"] == pytest.approx(expected, abs=1e-12)
