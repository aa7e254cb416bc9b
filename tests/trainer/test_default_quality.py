"""Every algorithm's default training against what a user gets by hand, on the same rows.

For each data set (scikit-learn's and River's bundled ones, the customers table; the larger
ones subsampled so that each test runs in well under a minute) and each algorithm the trainer
offers for its task, ``pgml.train`` without hyperparameters or preprocess is compared with the
same estimator (same class, defaults and seed) fitted by hand on the snapshot's rows and split:
once on the features as they are ("raw") and once standardised ("scaled": scikit-learn's
StandardScaler in a pipeline; River's StandardScaler in front of an online model, whose
features are named as the trainer names them). An online algorithm learns every row, each
scored before it is learned (progressive validation), so by hand it is scored the same way, by
River, on all rows in the snapshot's order. The default must score within 2% of the better
of the two (f1 macro for classification, r2 for regression), but for the few pairs in
KNOWN_GAPS, each held to its measured gap; for classification, one more test row wrong is also
accepted (one of iris' 38 test rows is 2.6%). Batch algorithms whose result turns on their
seed (perceptron, passive aggressive, SGD) are compared on the mean of five splits and seeds:
on a few hundred rows one seed against another moves their score by 10%.

By hand, the customers table needs what a user would do anyway: drop the key, name and email,
one-hot encode plan and country, the signup date as a day number, NULL as the mean.
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from threadpoolctl import threadpool_limits

from mirror.store import Mirror
from tests.customers import customers_table
from tests.trainer.test_defaults import create_table
from trainer import algorithms
from trainer.datasets import load_dataset
from trainer.online_algorithms import constructor_names, river_class, river_path
from trainer.split import split
from trainer.train import Trainer

TOLERANCE = 0.02
KNOWN_GAPS: dict[tuple[str, str], tuple[float, str]] = {
    ("Phishing", "perceptron"): (
        0.05,
        "standardised features validate within 2% of the raw ones, so they are kept; on the"
        " test rows raw ones are 3% better (mean of five seeds)",
    ),
}
"""Pairs measured behind by more than 2%, each allowed its measured gap (relative) and why."""
STOCHASTIC = frozenset(
    {
        "perceptron",
        "passive_aggressive",
        "stochastic_gradient_descent",
    }
)
"""Learn in a seeded shuffle: on a few hundred rows the seed moves their score by 10%. (River's
adaptive random forest turns on its seed too, but an online model has no split: it is compared
on all rows with the same seed, so by hand it learns exactly what the default learns.)"""
CUSTOMERS = 1500
"""Customers subsampled, so that every algorithm (SVMs, gaussian processes) fits in seconds."""
SCALE_FREE = frozenset(
    {
        "ada_boost",
        "bagging",
        "catboost",
        "extra_trees",
        "gradient_boosting_trees",
        "hist_gradient_boosting",
        "lightgbm",
        "random_forest",
        "xgboost",
        "xgboost_random_forest",
    }
)
"""Batch trees and ensembles of trees (their default base estimators are trees): a split on a
standardised feature is the same split on the raw one, so by hand they are fitted once, and
"scaled" is the raw score."""


@pytest.fixture(scope="module")
def by_hand_pool() -> Iterator[ProcessPoolExecutor]:
    """One process that fits by hand while the trainer trains the next model: the two take
    about as long, and each uses one core, as the trainer's worker does."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@dataclass(frozen=True)
class DataSet:
    name: str
    task: str
    label: str
    load: Callable[[Mirror, Trainer], str]  # into the mirror; returns the relation
    by_hand: Callable[[pa.Table], np.ndarray] = lambda t: _numbers(t)


def _numbers(table: pa.Table) -> np.ndarray:
    """Every column as float64; list columns (digits' image) flattened."""
    columns = []
    for column in table.itercolumns():
        if pa.types.is_list(column.type):
            columns += list(np.stack(column.to_pylist()).astype(np.float64).T)
        else:
            columns.append(column.to_numpy(zero_copy_only=False).astype(np.float64))
    return np.column_stack(columns)


def _sklearn(name: str, rows: int | None = None) -> Callable[[Mirror, Trainer], str]:
    """A data set of pgml.load_dataset; ``rows`` of it, chosen at random, if given."""

    def load(mirror: Mirror, trainer: Trainer) -> str:
        relation = load_dataset(trainer.con, name)[0]
        if rows is None:
            return relation
        table = trainer.con.execute(f"select * from {relation}").to_arrow_table()
        assert table is not None
        kept = np.sort(np.random.default_rng(0).choice(table.num_rows, rows, replace=False))
        create_table(mirror.con, name, table.take(kept).append_column("row", pa.array(kept)),
                     "row")  # fmt: skip
        return f"public.{name}"

    return load


def _river(name: str, label: str, cap: int | None = None) -> Callable[[Mirror, Trainer], str]:
    """A data set bundled with River, its first ``cap`` rows if given (they come in order)."""

    def load(mirror: Mirror, trainer: Trainer) -> str:
        from river import datasets

        rows = list(getattr(datasets, name)())[:cap]
        columns = {k: [float(x[k]) for x, _ in rows] for k in rows[0][0]}
        target = [y for _, y in rows]
        table = pa.table({**columns, label: target, "row": np.arange(len(rows))})
        create_table(mirror.con, name.lower(), table, "row")
        return f"public.{name.lower()}"

    return load


def _customers(mirror: Mirror, trainer: Trainer) -> str:
    rows = np.random.default_rng(0).choice(50_000, CUSTOMERS, replace=False)
    create_table(mirror.con, "customers", customers_table().take(np.sort(rows)), "id")
    return "public.customers"


def _customers_by_hand(table: pa.Table) -> np.ndarray:
    frame = table.drop_columns(["id", "name", "email"]).to_pandas()
    frame["signup_date"] = frame["signup_date"].map(lambda d: d.toordinal()).astype(float)
    frame["monthly_spend"] = frame["monthly_spend"].astype(float)
    frame["referred"] = frame["referred"].astype(float)
    frame["referred"] = frame["referred"].fillna(frame["referred"].mean())
    import pandas as pd

    return pd.get_dummies(frame, columns=["country", "plan"], dtype=float).to_numpy(float)


CLASSIFICATION = [
    DataSet("iris", "classification", "target", _sklearn("iris")),
    DataSet("wine", "classification", "target", _sklearn("wine")),
    DataSet("breast_cancer", "classification", "malignant", _sklearn("breast_cancer", 300)),
    DataSet("digits", "classification", "target", _sklearn("digits", 300)),
    DataSet("Phishing", "classification", "phishing", _river("Phishing", "phishing", 600)),
    DataSet("ImageSegments", "classification", "shape", _river("ImageSegments", "shape", 250)),
    DataSet("customers", "classification", "churned", _customers, _customers_by_hand),
]
REGRESSION = [
    DataSet("diabetes", "regression", "target", _sklearn("diabetes")),
    DataSet("TrumpApproval", "regression", "approval", _river("TrumpApproval", "approval", 600)),
    DataSet("ChickWeights", "regression", "weight", _river("ChickWeights", "weight")),
]


@dataclass(frozen=True)
class Score:
    value: float  # f1 (macro) or r2
    right: int  # test rows classified right (classification)


def _score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> Score:
    from sklearn.metrics import f1_score, r2_score

    if task == "classification":
        f1 = f1_score(y_true, y_pred, average="macro", zero_division=0)
        return Score(float(f1), int(np.sum(y_true == y_pred)))
    return Score(float(r2_score(y_true, y_pred)), 0)


def _sklearn_by_hand(
    algorithm: str,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
) -> list[Score]:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = []
    for scaled in (False, True) if algorithm not in SCALE_FREE else (False,):
        estimator = algorithms.make_estimator(algorithm, task, seed=seed)
        if scaled:
            estimator = make_pipeline(StandardScaler(), estimator)
        estimator.fit(x[train], y[train])
        scores.append(_score(task, y[test], estimator.predict(x[test])))
    return scores if len(scores) == 2 else scores * 2


def _river_by_hand(
    algorithm: str,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
) -> list[Score]:
    """River's progressive validation by hand, as a River user scores an online model: each
    row (all of them, in the snapshot's order) predicted before it is learned, a row without a
    prediction yet left out of the score (as ``river.evaluate.progressive_val_score`` does)."""
    from river import multiclass, preprocessing

    path = river_path(algorithm, task)
    binary = task == "classification" and len(np.unique(y)) <= 2
    scores = []
    for scaled in (False, True):
        params = {"seed": seed} if "seed" in constructor_names(path) else {}
        model: Any = river_class(path)(**params)
        if algorithm == "online_logistic" and not binary:
            model = multiclass.OneVsRestClassifier(model)
        if scaled:
            model = preprocessing.StandardScaler() | model
        label: Callable[[Any], Any] = bool if algorithm == "online_logistic" else (
            int if task == "classification" else float
        )  # fmt: skip
        # Named as the trainer names them: the adaptive random forest draws each tree's
        # features from the sorted names, so other names would be another random draw.
        names = [f"f{i}" for i in range(x.shape[1])]
        truth, predictions = [], []
        for row, target in zip(x.tolist(), y.tolist(), strict=True):
            features = dict(zip(names, row, strict=True))
            predicted = model.predict_one(features)
            if predicted is not None:
                truth.append(target)
                predictions.append(float(predicted))
            model.learn_one(features, label(target))
        scores.append(_score(task, np.array(truth), np.array(predictions)))
    return scores


def compare(
    mirror: Mirror, trainer: Trainer, data: DataSet, pool: ProcessPoolExecutor
) -> list[tuple[Any, ...]]:
    """(algorithm, default, raw, scaled, seconds) for every algorithm of the task; seconds
    are the default training's."""
    relation = data.load(mirror, trainer)
    pending: list[tuple[str, list[Score], list[Future[list[Score]]], float]] = []
    for algorithm in algorithms.algorithm_names(data.task):
        started = time.monotonic()
        ours, by_hand = [], []
        for seed in seeds(algorithm):
            score, x, y, train, test = train_default(trainer, data, relation, algorithm, seed)
            ours.append(score)
            hand = _river_by_hand if algorithms.is_online(algorithm) else _sklearn_by_hand
            by_hand.append(pool.submit(fit_by_hand, hand, algorithm, data.task, x, y, train,
                                       test, seed))  # fmt: skip
        pending.append((algorithm, ours, by_hand, time.monotonic() - started))
    rows: list[tuple[Any, ...]] = []
    for algorithm, ours, by_hand, seconds in pending:
        raw, scaled = zip(*(future.result() for future in by_hand), strict=True)
        rows.append((algorithm, mean_score(ours), mean_score(list(raw)),
                     mean_score(list(scaled)), seconds))  # fmt: skip
    return rows


def seeds(algorithm: str) -> range:
    """The splits (and estimator seeds) an algorithm is compared on: five for those whose
    result turns on the seed (the order rows are learned in), else one."""
    return range(5) if algorithm in STOCHASTIC else range(1)


def train_default(
    trainer: Trainer, data: DataSet, relation: str, algorithm: str, seed: int
) -> tuple[Score, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The default training on split ``seed``: its score, and the rows and split by hand."""
    project = f"{data.name} {seed}"
    if trainer.registry.project(project) is None:
        result = trainer.train(project, task=data.task, relation=relation, y=data.label,
                               algorithm=algorithm, seed=seed)  # fmt: skip
    else:  # the project's snapshot and split again
        result = trainer.train(project, algorithm=algorithm)
    x, y, train, test = by_hand_rows(trainer, data, result.snapshot_id)
    metrics = result.metrics
    scored_rows = len(y) if algorithms.is_online(algorithm) else len(test)  # online: every row
    ours = Score(metrics[key(data.task)], round(metrics.get("accuracy", 0) * scored_rows))
    return ours, x, y, train, test


def fit_by_hand(
    hand: Callable[..., list[Score]],
    algorithm: str,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
) -> list[Score]:
    """[raw, scaled], in the pool's process, on one thread as the trainer's worker."""
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        return hand(algorithm, task, x, y, train, test, seed)


def mean_score(scores: list[Score]) -> Score:
    return Score(float(np.mean([s.value for s in scores])),
                 round(float(np.mean([s.right for s in scores]))))  # fmt: skip


def by_hand_rows(
    trainer: Trainer, data: DataSet, snapshot_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The snapshot's rows as a user has them by hand (x, y), and the trainer's split."""
    snapshot = trainer.registry.snapshot(snapshot_id)
    assert snapshot is not None
    table = pq.read_table(trainer.home / snapshot.path)
    labels = table[data.label].to_numpy(zero_copy_only=False)
    classification = data.task == "classification"
    y = np.unique(labels, return_inverse=True)[1] if classification else labels.astype(float)
    keys = [c["name"] for c in snapshot.columns if c.get("primary_key")]
    if data.name == "customers":
        keys = []  # dropped by hand, with name and email
    x = data.by_hand(table.drop_columns([data.label, *keys]))
    train, test = split(len(y), test_size=snapshot.test_size, sampling=snapshot.test_sampling,
                        seed=snapshot.seed, labels=y if classification else None)  # fmt: skip
    return x, y, train, test


def key(task: str) -> str:
    return "f1" if task == "classification" else "r2"


def check(data: DataSet, rows: list[tuple[Any, ...]]) -> None:
    """Each default within 2% of the better by hand; for classification, or at most one more
    test row wrong (on iris' 38 test rows one row is 2.6%)."""
    print(f"\n{data.name} ({data.task}, {key(data.task)}):")
    print(f"  {'algorithm':34} {'default':>8} {'raw':>8} {'scaled':>8} {'s':>5}")
    behind = []
    for algorithm, ours, raw, scaled, seconds in rows:
        best = max(raw, scaled, key=lambda score: score.value)
        close = ours.value >= best.value - TOLERANCE * abs(best.value)
        one_row = data.task == "classification" and ours.right >= best.right - 1
        shown = "" if close else "  (one test row)" if one_row else "  BEHIND"
        known = KNOWN_GAPS.get((data.name, algorithm))
        if not (close or one_row) and known is not None:
            one_row = ours.value >= best.value - known[0] * abs(best.value)
            shown = f"  known gap (at most {known[0]:.0%}): {known[1]}" if one_row else shown
        print(f"  {algorithm:34} {ours.value:8.4f} {raw.value:8.4f} {scaled.value:8.4f}"
              f" {seconds:5.1f}{shown}")  # fmt: skip
        if not (close or one_row):
            behind.append(f"{algorithm}: {ours.value:.4f}, by hand {best.value:.4f}")
    assert not behind, f"{data.name}: defaults more than 2% behind by hand: {behind}"


@pytest.mark.parametrize("data", CLASSIFICATION, ids=lambda d: d.name)
def test_classification_defaults_match_the_best_by_hand(
    mirror: Mirror, trainer: Trainer, data: DataSet, by_hand_pool: ProcessPoolExecutor
) -> None:
    check(data, compare(mirror, trainer, data, by_hand_pool))


@pytest.mark.parametrize("data", REGRESSION, ids=lambda d: d.name)
def test_regression_defaults_match_the_best_by_hand(
    mirror: Mirror, trainer: Trainer, data: DataSet, by_hand_pool: ProcessPoolExecutor
) -> None:
    check(data, compare(mirror, trainer, data, by_hand_pool))
