"""Fitting one model on a snapshot: split, preprocess, fit (or search), score, save.

This runs in a worker process (``trainer.worker``): it reads only the snapshot's Parquet file
and writes only the model file, so it never touches the mirror.

Features are scaled as preprocess says or, for the algorithms sensitive to it, as validates
better on the training rows (:mod:`trainer.scale_choice`). Besides the metrics, a fit reports
notes (how each column was used, the columns left out and why, the scaling chosen and its
scores, the score of the trivial model on the same rows) and notices for the user: each column
left out, and a model that scores no better than predicting the most frequent class (or the
mean) for every row.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mirror.errors import TrainingError
from trainer import scale_choice
from trainer.algorithms import (
    can_predict,
    is_online,
    is_wrapped,
    joint_estimator,
    make_estimator,
    scale_choices,
    scale_validation,
)
from trainer.column_kinds import feature_columns
from trainer.metrics import evaluate
from trainer.model import Model, save_model
from trainer.preprocess import Preprocessor
from trainer.scale_choice import ScaleChoice
from trainer.split import split

SEARCHES = ("grid", "random")
_SCORING = {"regression": "r2", "classification": "f1_macro"}


@dataclass(frozen=True, slots=True)
class FitJob:
    """Everything a worker needs to fit one model."""

    snapshot_path: str
    model_path: str
    task: str
    algorithm: str
    labels: list[str]
    """The label columns: none (clustering, decomposition), one, or several (a joint model)."""
    test_size: float
    test_sampling: str
    seed: int
    hyperparams: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, dict[str, str]] = field(default_factory=dict)
    search: str | None = None
    search_params: dict[str, Any] = field(default_factory=dict)
    search_args: dict[str, Any] = field(default_factory=dict)
    key: list[str] = field(default_factory=list)  # the relation's primary key: not a feature


@dataclass(frozen=True, slots=True)
class FitResult:
    """What a fit produced: scores, the parameters kept, and the saved model's hash."""

    metrics: dict[str, float]
    hyperparams: dict[str, Any]
    search_results: list[dict[str, Any]]
    num_features: int
    sha256: str
    train_rows: int
    test_rows: int
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    """How the columns were used and which were left out (``Preprocessor.description``), and
    ``baseline``: the key metric of the trivial model on the rows the model was scored on."""
    notices: list[str] = field(default_factory=list)
    """What the user should know: columns left out, a model no better than the trivial one."""


def fit(job: FitJob) -> FitResult:
    """Fit, score and save the model ``job`` describes."""
    started = time.perf_counter()
    table = pq.read_table(job.snapshot_path)
    # An online model learns every row in order, prequentially, from the first (an empty table
    # too): none is held out, and its metrics are the progressive ones.
    online = is_online(job.algorithm)
    features, y, classes = _label(table, job, online=online)
    if features.num_rows == 0 and not online:
        raise TrainingError("the relation has no rows to train on", sqlstate="22000")
    if online:
        train, test = np.arange(features.num_rows), np.arange(0)
    else:
        train, test = split(
            features.num_rows,
            test_size=job.test_size,
            sampling=job.test_sampling,
            seed=job.seed,
            labels=y if job.task == "classification" else None,
        )
    y_train = None if y is None else y[train]
    y_test = None if y is None else y[test]
    if classes is not None and y_train is not None and len(np.unique(y_train)) < 2 and not online:
        raise TrainingError(
            "the training rows hold one class only; classification needs at least two",
            sqlstate="22000",
        )
    columns = feature_columns(features.schema)
    options: dict[str, Any] = {
        "columns": columns,
        "spec": job.preprocess or None,
        "key": job.key,
        "classes": None if classes is None else classes.tolist(),
    }
    train_rows = features.take(train)
    choosing = time.perf_counter()
    choices = scale_choices(job.algorithm, job.task)
    if not any(column.kind == "text" for column in columns):  # no dummies to scale
        choices = tuple(scale for scale in choices if scale != "standard_all")
    if scale_choice.explicit(columns, job.preprocess):
        choice = ScaleChoice(choices[0], how="preprocess says how every column is scaled")
    else:

        def candidate(scale: str) -> tuple[Preprocessor, Any]:
            return _model(job, options, scale)

        if online:
            choice = scale_choice.by_progressive_validation(
                choices, task=job.task, table=train_rows, y=y_train, model=candidate
            )
        else:
            folds, repeats = scale_validation(job.algorithm)
            choice = scale_choice.by_cross_validation(
                choices, task=job.task, seed=job.seed, table=train_rows, y=y_train,
                model=candidate, folds=folds, repeats=repeats,
            )  # fmt: skip
    chosen = time.perf_counter()
    scaling = scale_choice.preprocessor_scale("preserve" if online else choice.scale)
    preprocessor = Preprocessor(**options, **scaling)
    x_train = preprocessor.fit_transform(train_rows, y_train)
    x_test = preprocessor.transform(features.take(test)) if len(test) else x_train[:0]
    loaded = time.perf_counter()

    results: list[dict[str, Any]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaled = choice.scale == "standard" if online else None
        if choice.fitted is not None and job.search is None:  # online, learned every row
            estimator, hyperparams, results = choice.fitted, dict(job.hyperparams), []
        else:
            estimator, hyperparams, results = _fit(job, x_train, y_train, scaled=scaled)
    fitted = time.perf_counter()
    scored_on = (x_test, y_test) if len(test) else (x_train, y_train)
    if not can_predict(job.algorithm):  # it labels only the rows it was fitted on
        scored_on = (x_train, y_train)
    metrics = estimator.metrics() if online else evaluate(job.task, estimator, *scored_on)
    notes = preprocessor.description() | {"scale": choice.note()}
    notices = preprocessor.notices()
    if not online and y_train is not None and scored_on[1] is not None:
        notes["baseline"], notice = _baseline(job.task, metrics, y_train, scored_on[1], classes)
        notices += [notice] if notice else []
    scored = time.perf_counter()

    label = job.labels[0] if job.labels else None
    model = Model(
        job.task, job.algorithm, preprocessor, estimator, label, classes, labels=tuple(job.labels)
    )
    inference_time = _one_row_time(model, features.take(test) if len(test) else features)
    measured = time.perf_counter()
    sha = save_model(model, Path(job.model_path))
    saved = time.perf_counter()
    metrics |= {"fit_time": fitted - loaded, "score_time": scored - fitted}
    if inference_time is not None:
        metrics["inference_time"] = inference_time
    return FitResult(
        metrics=metrics,
        hyperparams=hyperparams,
        search_results=results,
        num_features=len(preprocessor.feature_names),
        sha256=sha,
        train_rows=len(train),
        test_rows=len(test),
        timings={
            "load": loaded - started - (chosen - choosing),
            "choose_scale": chosen - choosing,
            "fit": fitted - loaded,
            "score": scored - fitted,
            "inference_time": measured - scored,
            "save": saved - measured,
            "worker_pid": os.getpid(),
        },
        warnings=sorted({str(w.message).splitlines()[0] for w in caught}),
        notes=notes,
        notices=notices,
    )


INFERENCE_ROWS = 25
INFERENCE_BUDGET_S = 0.5


def _one_row_time(model: Model, rows: pa.Table) -> float | None:
    """The median seconds of a one-row prediction (as ``pgml.predict`` makes one: raw values
    through the preprocessing and the model), over up to INFERENCE_ROWS rows and at most about
    INFERENCE_BUDGET_S; None for a model that cannot predict a new row (or has no rows)."""
    if not can_predict(model.algorithm) or rows.num_rows == 0:
        return None
    one = model.decompose if model.task == "decomposition" else model.predict
    times: list[float] = []
    spent = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(min(INFERENCE_ROWS, rows.num_rows)):
            row = rows.slice(i, 1)
            started = time.perf_counter()
            try:
                one(row)
            except Exception:  # a measurement: the model's own errors surface at predict
                return None
            times.append(time.perf_counter() - started)
            if time.perf_counter() - spent > INFERENCE_BUDGET_S:
                break
    return float(np.median(times))


def _baseline(
    task: str,
    metrics: dict[str, float],
    y_train: np.ndarray,
    y_test: np.ndarray,
    classes: np.ndarray | None,
) -> tuple[dict[str, Any], str | None]:
    """The trivial model's score on the test rows, and a notice if the model is no better.

    The trivial model predicts the training rows' most frequent class (classification) or
    their mean (regression) for every row.
    """
    from sklearn.metrics import f1_score, r2_score

    if task == "classification":
        majority = int(np.bincount(y_train.astype(np.int64)).argmax())
        guess = np.full(len(y_test), majority)
        score = float(f1_score(y_test, guess, average="macro", zero_division=0))
        shown = classes[majority] if classes is not None else majority
        metric, what = "f1", f"the most frequent class ({_plain(shown)!r})"
    elif y_train.ndim == 2:  # a joint model: each label's training mean, scored flattened
        means = y_train.mean(axis=0)
        guess = np.broadcast_to(means, y_test.shape).ravel()
        score = float(r2_score(y_test.ravel(), guess)) if len(y_test) > 1 else 0.0
        metric, what = "r2", "each label's training mean (" + ", ".join(f"{m:.6g}" for m in means)
        what += ")"
        mean: float | list[float] = [float(m) for m in means]
    else:
        mean = float(np.mean(y_train))
        score = float(r2_score(y_test, np.full(len(y_test), mean))) if len(y_test) > 1 else 0.0
        metric, what = "r2", f"the training mean ({mean:.6g})"
    baseline = {"predicts": _plain(shown) if task == "classification" else mean, metric: score}
    ours = metrics.get(metric)
    if ours is None or not math.isfinite(ours) or ours > score + 1e-9:
        return baseline, None
    return baseline, (
        f"the model scores no better than predicting {what} for every row: {metric}"
        f" {ours:.3f}, and that {score:.3f}; the features may not tell the rows apart"
        " (pgml.models.notes shows how each column was used), or the algorithm needs other"
        " hyperparameters or scaled features"
    )


def _label(
    table: pa.Table, job: FitJob, *, online: bool = False
) -> tuple[pa.Table, np.ndarray | None, np.ndarray | None]:
    """Split off the labels: (feature table, y, classes); rows without a label are left out.
    Several labels (a joint regression) give y one column per label.

    An online classifier may start with fewer than two classes (they are added as they come);
    a boolean label's classes are then always False and True, so True is River's positive
    class."""
    if not job.labels:
        return table, None, None
    for label in job.labels:
        if table[label].null_count:
            table = table.filter(pc.is_valid(table[label]))
    features = table.drop_columns(job.labels)
    if job.task == "regression":
        values = [_numeric_label(table[label], label) for label in job.labels]
        if len(values) > 1:  # a joint model: one row of labels per row
            return features, np.column_stack(values), None
        return features, values[0], None
    if len(job.labels) > 1:
        raise TrainingError(
            f"several label columns are for regression, not {job.task}", sqlstate="0A000"
        )
    (label,) = job.labels
    column = table[label]
    if job.task == "classification":
        values = column.to_numpy(zero_copy_only=False)
        if online and pa.types.is_boolean(column.type):
            return features, values.astype(np.int64), np.array([False, True])
        classes, y = np.unique(values, return_inverse=True)
        if len(classes) < 2 and not online:
            raise TrainingError(
                f"label column {label!r} holds one class only; classification needs at least two",
                sqlstate="22000",
            )
        return features, y.astype(np.int64), classes
    return features, None, None


def _numeric_label(column: pa.ChunkedArray, label: str) -> np.ndarray:
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
            or pa.types.is_decimal(kind) or pa.types.is_boolean(kind)):  # fmt: skip
        raise TrainingError(
            f"label column {label!r} is {kind}, not a number; regression needs a numeric"
            " label (for categories use task classification)",
            sqlstate="22023",
        )
    return np.asarray(column.cast(pa.float64()).to_numpy())


def _model(job: FitJob, options: dict[str, Any], scale: str) -> tuple[Preprocessor, Any]:
    """A fresh preprocessor and estimator for ``job`` with features scaled as ``scale`` says
    (for an online algorithm: with River's StandardScaler or without)."""
    estimator = _estimator(job)
    if is_online(job.algorithm):
        estimator.set_params(scaled=scale == "standard")
        return Preprocessor(**options, scale="preserve"), estimator
    return Preprocessor(**options, **scale_choice.preprocessor_scale(scale)), estimator


def _estimator(job: FitJob) -> Any:
    """A fresh estimator for ``job``: for several labels, one that predicts them all (see
    :func:`trainer.algorithms.joint_estimator`)."""
    estimator = make_estimator(job.algorithm, job.task, job.hyperparams, seed=job.seed)
    return joint_estimator(estimator, job.algorithm) if len(job.labels) > 1 else estimator


def _fit(
    job: FitJob, x: np.ndarray, y: np.ndarray | None, *, scaled: bool | None = None
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Fit (or search) the job's estimator; ``scaled``: an online model's StandardScaler."""
    estimator = _estimator(job)
    if scaled is not None:
        estimator.set_params(scaled=scaled)
    try:
        if job.search is None:
            estimator.fit(x, y) if y is not None else estimator.fit(x)
            return estimator, dict(job.hyperparams), []
        return _search(job, estimator, x, y)
    except TrainingError:
        raise
    except (ValueError, TypeError) as exc:
        raise TrainingError(
            f"{job.algorithm} could not be fitted with hyperparameters"
            f" {json.dumps(job.hyperparams)}: {exc}",
            sqlstate="22023",
        ) from None


def _search(
    job: FitJob, estimator: Any, x: np.ndarray, y: np.ndarray | None
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    if job.task not in _SCORING:
        raise TrainingError(f"search works for regression and classification, not {job.task}")
    args = dict(job.search_args)
    folds = int(args.get("cv", 5))
    if len(x) < folds:
        raise TrainingError(
            f"{len(x)} training rows are fewer than the {folds} cross-validation folds;"
            ' add rows or set search_args {"cv": 2}',
            sqlstate="22000",
        )
    args.setdefault("scoring", _SCORING[job.task])
    prefix = "estimator__" if is_wrapped(estimator) else ""  # a joint model's per-label copies
    grid = {prefix + name: values for name, values in job.search_params.items()}
    if job.search == "grid":
        search = GridSearchCV(estimator, grid, **args)
    elif job.search == "random":
        args.setdefault("random_state", job.seed)
        search = RandomizedSearchCV(estimator, grid, **args)
    else:
        raise TrainingError(f"unknown search {job.search!r}; use one of: {', '.join(SEARCHES)}")
    search.fit(x, y)
    cv = search.cv_results_
    results = [
        {
            "params": _plain(_unprefixed(cv["params"][i], prefix)),
            "mean_test_score": _plain(cv["mean_test_score"][i]),
            "std_test_score": _plain(cv["std_test_score"][i]),
            "rank_test_score": int(cv["rank_test_score"][i]),
            "mean_fit_time": _plain(cv["mean_fit_time"][i]),
        }
        for i in range(len(cv["params"]))
    ]
    best = dict(job.hyperparams) | _plain(_unprefixed(search.best_params_, prefix))
    return search.best_estimator_, best, results


def _unprefixed(params: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {name.removeprefix(prefix): value for name, value in params.items()}


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones and NaN into None, for JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
