"""The train/test split of a snapshot: seeded, so the same snapshot always splits the same way."""

from __future__ import annotations

import math

import numpy as np

from mirror.errors import TrainingError

SAMPLINGS = ("random", "last", "stratified")


def held_out_rows(rows: int, test_size: float) -> int:
    """How many of ``rows`` are held out: a fraction below 1, else a row count."""
    if not test_size > 0:
        raise TrainingError(f"test_size must be positive, not {test_size}")
    count = math.ceil(rows * test_size) if test_size < 1 else int(test_size)
    if count >= rows:
        raise TrainingError(
            f"test_size {test_size} leaves no rows to train on ({rows} rows in the snapshot);"
            " use a fraction such as 0.25",
            sqlstate="22000",
        )
    return count


def split(
    rows: int, *, test_size: float, sampling: str, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)`` of a snapshot with ``rows`` rows.

    ``random`` holds out a seeded random sample; ``last`` the last rows in snapshot order;
    ``stratified`` a seeded sample with each class of ``labels`` in proportion (for tasks
    without class labels it is ``random``).
    """
    if sampling not in SAMPLINGS:
        raise TrainingError(
            f"unknown test_sampling {sampling!r}; use one of: {', '.join(SAMPLINGS)}"
        )
    count = held_out_rows(rows, test_size)
    if count == 0:
        return np.arange(rows), np.arange(0)
    if sampling == "last":
        return np.arange(rows - count), np.arange(rows - count, rows)
    if sampling == "stratified" and labels is not None:
        return _stratified(labels, count, seed)
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[count:]), np.sort(order[:count])


def _stratified(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import StratifiedShuffleSplit

    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2 or count < len(classes):
        # Too few rows of some class to put one on each side: fall back to a random sample.
        order = np.random.default_rng(seed).permutation(len(labels))
        return np.sort(order[count:]), np.sort(order[:count])
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=count, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(labels)), labels))
    return np.sort(train), np.sort(test)
