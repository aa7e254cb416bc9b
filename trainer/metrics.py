"""Model quality per task, under PostgresML's metric names."""

from __future__ import annotations

from typing import Any

import numpy as np

KEY_METRIC = {
    "regression": "r2",
    "classification": "f1",
    "clustering": "silhouette",
    "decomposition": "cumulative_explained_variance",
}


def key_metric(task: str) -> str:
    """The metric that decides deployments for ``task``: higher is better."""
    return KEY_METRIC[task]


def evaluate(task: str, estimator: Any, x_test: np.ndarray, y_test: np.ndarray | None) -> dict:
    """Score a fitted estimator on the held-out rows (``y_test`` holds class indices)."""
    if task == "regression":
        return _regression(estimator, x_test, y_test)
    if task == "classification":
        return _classification(estimator, x_test, y_test)
    if task == "clustering":
        return _clustering(estimator, x_test)
    return {"cumulative_explained_variance": float(np.sum(estimator.explained_variance_ratio_))}


def _regression(estimator: Any, x: np.ndarray, y: Any) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predicted = estimator.predict(x)
    if np.ndim(y) == 2:  # a joint model: every label of every row, as PostgresML scores it
        y, predicted = np.ravel(y), np.ravel(predicted)
    return {
        "r2": float(r2_score(y, predicted)),
        "mean_squared_error": float(mean_squared_error(y, predicted)),
        "mean_absolute_error": float(mean_absolute_error(y, predicted)),
    }


def _classification(estimator: Any, x: np.ndarray, y: Any) -> dict[str, float]:
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        matthews_corrcoef,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = estimator.predict(x)
    metrics = {
        "f1": float(f1_score(y, predicted, average="macro", zero_division=0)),
        "precision": float(precision_score(y, predicted, average="macro", zero_division=0)),
        "recall": float(recall_score(y, predicted, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y, predicted)),
        "mcc": float(matthews_corrcoef(y, predicted)),
    }
    classes = getattr(estimator, "classes_", None)
    if classes is None or len(classes) < 2:
        return metrics
    if hasattr(estimator, "predict_proba"):
        try:
            proba = estimator.predict_proba(x)
        except AttributeError:  # e.g. SVC without probability=True
            proba = None
        if proba is not None:
            return metrics | _probability_metrics(y, np.asarray(proba), np.asarray(classes))
    if len(classes) == 2 and len(np.unique(y)) == 2 and hasattr(estimator, "decision_function"):
        metrics["roc_auc"] = float(roc_auc_score(y, estimator.decision_function(x)))
    return metrics


def _probability_metrics(y: Any, proba: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """log_loss, and roc_auc when every class is among the rows: as scikit-learn computes them,
    one-vs-rest (macro average) for more than two classes."""
    from sklearn.metrics import log_loss, roc_auc_score

    metrics = {"log_loss": float(log_loss(y, proba, labels=classes))}
    if len(np.unique(y)) < len(classes):
        return metrics  # a class with no row: its roc_auc is undefined
    if len(classes) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y, proba[:, 1]))
    else:
        metrics["roc_auc"] = float(roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    return metrics


def _clustering(estimator: Any, x: np.ndarray) -> dict[str, float]:
    """The silhouette of the clusters; for the algorithms that cannot label new rows, of the
    clusters they gave the rows they were fitted on (``x`` must be those rows); for feature
    agglomeration, which clusters columns, of the clusters of columns."""
    from sklearn.metrics import silhouette_score

    if hasattr(estimator, "predict"):
        labels = estimator.predict(x)
    elif hasattr(estimator, "row_labels_"):  # spectral biclustering and coclustering
        labels = estimator.row_labels_
    elif hasattr(estimator, "transform"):  # feature agglomeration: clusters of columns
        x, labels = x.T, estimator.labels_
    else:
        labels = estimator.labels_  # dbscan and optics mark noise -1: a cluster of its own
    clusters = len(np.unique(labels))
    if not 2 <= clusters < len(x):
        return {"silhouette": -1.0}  # undefined: one cluster, or one per row
    return {"silhouette": float(silhouette_score(x, labels))}
