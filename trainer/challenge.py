"""Champion and challenger scored on the same recent rows: which model serves after drift.

Each model's registered metrics come from its own snapshot's test split, and after drift the
deployed model's split holds rows from before it: a challenger that learned the new concept
can score below a champion that gets every new row wrong. Here both are scored on the same
labelled rows, those the monitor saw change after the challenger's snapshot (so after the
detection, and unseen by either in training), and the challenger serves if it scores higher
on the project's key metric. Both scores are recorded in ``pgml.challenges``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mirror.changes import Lsn, format_lsn
from mirror.errors import TrainingError
from mirror.registry import Challenge, ModelRecord
from trainer.metrics import key_metric
from trainer.model import Model

RecentRows = Callable[[str, Lsn], pa.Table | None]
"""The labelled rows the monitor last saw of a project's deployed model, changed after a mirror
position: feature columns and label, oldest first (``Monitor.recent_rows``)."""

RECENT_STRATEGY = "best_recent_score"
"""The deployment strategy that picks the model scoring highest on the recent rows."""


def score(model: Model, rows: pa.Table) -> dict[str, float]:
    """The model's metrics on labelled rows as the relation holds them (its label and feature
    columns): r2, mean_squared_error, mean_absolute_error; or f1, precision, recall (macro over
    the labels among the rows and predictions) and accuracy."""
    from sklearn import metrics

    assert model.label is not None
    labels = list(model.labels) if model.joint else [model.label]
    truth = np.column_stack([rows[y].to_numpy(zero_copy_only=False) for y in labels])
    truth = truth if model.joint else truth[:, 0]
    predicted = model.predict(rows.select([c.name for c in model.preprocessor.columns]))
    if model.task == "regression":  # a joint model's labels flattened, as its metrics are
        truth, predicted = truth.astype(np.float64).ravel(), predicted.astype(np.float64).ravel()
        return {
            "r2": float(metrics.r2_score(truth, predicted)) if len(truth) > 1 else math.nan,
            "mean_squared_error": float(metrics.mean_squared_error(truth, predicted)),
            "mean_absolute_error": float(metrics.mean_absolute_error(truth, predicted)),
        }
    labels = _labels(truth, predicted)
    truth, predicted = _codes(truth, labels), _codes(predicted, labels)
    scores: dict[str, float] = {"accuracy": float(metrics.accuracy_score(truth, predicted))}
    for name, measure in (
        ("f1", metrics.f1_score),
        ("precision", metrics.precision_score),
        ("recall", metrics.recall_score),
    ):
        scores[name] = float(measure(truth, predicted, average="macro", zero_division=0))
    return scores


def _labels(*columns: np.ndarray) -> list[Any]:
    seen: dict[Any, None] = {}
    for column in columns:
        seen.update(dict.fromkeys(column.tolist()))
    return list(seen)


def _codes(values: np.ndarray, labels: list[Any]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[v] for v in values.tolist()], dtype=np.int64)


def better(task: str, challenger: dict[str, float], champion: dict[str, float]) -> bool:
    """Whether the challenger's key metric beats the champion's (a champion without a score
    loses to any challenger with one)."""
    metric = key_metric(task)
    new, old = challenger.get(metric, math.nan), champion.get(metric, math.nan)
    if math.isnan(new):
        return False
    return math.isnan(old) or new > old


def compare(
    task: str,
    project_id: int,
    champion: tuple[ModelRecord, Model] | None,
    challengers: Sequence[tuple[ModelRecord, Model]],
    rows: pa.Table,
    *,
    reason: str,
    after: Lsn,
) -> Challenge:
    """Score the champion (the deployed model, if any) and each challenger on ``rows``; the
    best challenger is the one the returned challenge names, ``deployed`` if it beats the
    champion."""
    if not challengers:
        raise TrainingError("no model to compare with the deployed one", sqlstate="42704")
    if rows.num_rows == 0:
        raise TrainingError(
            "no recent labelled rows to score the models on: the monitor keeps those it sees"
            " change while the sidecar runs",
            sqlstate="55000",
        )
    scored = [(record, score(model, rows)) for record, model in challengers]
    best_record, best = scored[0]
    for record, scores in scored[1:]:
        if better(task, scores, best):
            best_record, best = record, scores
    old = score(champion[1], rows) if champion is not None else {}
    won = champion is None or (champion[0].id != best_record.id and better(task, best, old))
    return Challenge(
        project_id=project_id,
        champion_id=champion[0].id if champion is not None else None,
        challenger_id=best_record.id,
        reason=reason,
        after_lsn=format_lsn(after) if after else None,
        num_rows=rows.num_rows,
        metric=key_metric(task),
        champion_metrics=old,
        challenger_metrics=best,
        deployed=won,
    )
