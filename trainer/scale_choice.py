"""Choosing how features are scaled when preprocess does not say: by validation on training rows.

For the algorithms sensitive to scale (:func:`trainer.algorithms.scale_choices`) standardised
features are usually better, but not always: a penalty sized for the raw features (lasso's
alpha against a target of small spread), a model without an intercept (kernel ridge), pixels
that share one unit, an online model whose running scaler moves under the linear models in its
leaves. So the trainer does what a careful user does by hand: it tries each scaling and keeps
the better: the preferred one unless another beats it by more than 2%.

A batch algorithm's scalings are scored by cross-validation on the training rows (at most
:data:`VALIDATION_ROWS` of them; 3 folds, and for kNN 10 folds twice over, see
:func:`trainer.algorithms.scale_validation`), an online algorithm's as it is scored itself: by
progressive validation (each row predicted, then learned) over its first
:data:`VALIDATION_ROWS` rows in order, where a linear model in a regression tree's leaves can
diverge on raw features before it has seen enough rows. Both use the training's
hyperparameters; the key metric (f1 macro, r2) decides; the test rows are never used. For
batch algorithms the scaling is the preprocessor's ("standard_all": standard, one-hot
features too; see :func:`preprocessor_scale`); for online ones it is River's StandardScaler in
front of the model. Clustering and decomposition, which have no label to
validate with, take the preferred one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mirror.errors import SidecarError
from trainer.column_kinds import FeatureColumn
from trainer.preprocess import Preprocessor

VALIDATION_ROWS = 3000
FOLDS = 3
MARGIN = 0.02
"""How much better than the preferred scaling another must validate to be chosen: by more than
this share of the preferred one's score (two scalings closer than that are a toss-up on a few
hundred rows, and the preferred one is the better bet)."""
_MINIMUM_ROWS = 30


@dataclass(frozen=True, slots=True)
class ScaleChoice:
    """The scaling chosen, each one's validation score, and how they were scored."""

    scale: str
    scores: dict[str, float] = field(default_factory=dict)
    how: str = "the only choice"
    fitted: Any = field(default=None, compare=False, repr=False)
    """The chosen online estimator, already fitted on every row when the validation covered
    them all (its progressive metrics are the model's): the training keeps it."""

    def note(self) -> dict[str, Any]:
        """For the model's registry notes."""
        return {"chosen": self.scale, "scores": self.scores, "by": self.how}


def preprocessor_scale(scale: str) -> dict[str, Any]:
    """The Preprocessor's arguments for a scaling choice."""
    if scale == "standard_all":
        return {"scale": "standard", "scale_one_hot": True}
    return {"scale": scale}


def choose(choices: Sequence[str], scores: Mapping[str, float], how: str) -> ScaleChoice:
    """The preferred (first) choice unless another scores better by more than MARGIN."""
    best = choices[0]
    for scale in choices[1:]:
        if scores[best] == -np.inf or scores[scale] > scores[best] + max(
            MARGIN * abs(scores[best]), 1e-9
        ):
            best = scale
    shown = {scale: round(float(scores[scale]), 6) for scale in choices}
    return ScaleChoice(best, shown, how)


def by_cross_validation(
    choices: Sequence[str],
    *,
    task: str,
    seed: int,
    table: pa.Table,
    y: np.ndarray | None,
    model: Callable[[str], tuple[Preprocessor, Any]],
    folds: int = FOLDS,
    repeats: int = 1,
) -> ScaleChoice:
    """The scaling that cross-validates best on ``table``; ``model(scale)`` makes a fresh
    preprocessor and estimator for one. With ``repeats`` the cross-validation is repeated
    with other folds and the scores averaged over all of them."""
    if (settled := _settled(choices, task, y)) is not None:
        return settled
    assert y is not None  # without a label there is nothing to compare: settled above
    rows = np.arange(len(y))
    if len(rows) > VALIDATION_ROWS:
        rows = np.sort(np.random.default_rng(seed).permutation(len(y))[:VALIDATION_ROWS])
    splits = [
        split for repeat in range(repeats) for split in _folds(task, y[rows], seed, folds, repeat)
    ]
    scores = {}
    for scale in choices:
        values = [
            _fold_score(task, model(scale), table, y, np.sort(rows[fit]), np.sort(rows[held]))
            for fit, held in splits
        ]
        scores[scale] = float(np.mean(values))
    count = len(splits) // repeats
    how = f"{count}-fold cross-validation on {len(rows):,} training rows"
    how += f", {repeats} times with other folds" if repeats > 1 else ""
    return choose(choices, scores, how)


def by_progressive_validation(
    choices: Sequence[str],
    *,
    task: str,
    table: pa.Table,
    y: np.ndarray | None,
    model: Callable[[str], tuple[Preprocessor, Any]],
) -> ScaleChoice:
    """The scaling whose online model scores best by progressive validation over the first
    rows of ``table``; ``model(scale)`` makes a fresh preprocessor and online estimator."""
    if (settled := _settled(choices, task, y)) is not None:
        return settled
    assert y is not None  # without a label there is nothing to compare: settled above
    rows = np.arange(min(len(y), VALIDATION_ROWS))
    first = table.take(rows)
    scores, fitted = {}, {}
    for scale in choices:
        preprocessor, estimator = model(scale)
        fitted[scale] = estimator
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                estimator.fit(preprocessor.fit_transform(first, y[rows]), y[rows])
            value = float(estimator.metrics().get("f1" if task == "classification" else "r2",
                                                  -np.inf))  # fmt: skip
        except (SidecarError, ValueError, TypeError, ArithmeticError):
            value = -np.inf
        scores[scale] = value if np.isfinite(value) else -np.inf
    how = f"progressive validation on the first {len(rows):,} rows"
    choice = choose(choices, scores, how)
    if len(rows) < len(y) or not np.isfinite(scores[choice.scale]):
        return choice
    return ScaleChoice(choice.scale, choice.scores, how, fitted=fitted[choice.scale])


def _settled(choices: Sequence[str], task: str, y: np.ndarray | None) -> ScaleChoice | None:
    """The choice when there is nothing to compare: one scaling, no label, too few rows."""
    if len(choices) == 1 or y is None or task not in ("classification", "regression"):
        return ScaleChoice(choices[0])
    if len(y) < _MINIMUM_ROWS:
        return ScaleChoice(choices[0], how=f"too few training rows to compare ({len(y)})")
    return None


def _folds(
    task: str, y: np.ndarray, seed: int, folds: int, repeat: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Round ``repeat`` of ``folds`` shuffled folds (stratified when every class has a row
    for each fold); fewer folds when there are fewer rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    folds = min(folds, len(y))
    state = (seed + 1000 * repeat) % 2**32
    zeros = np.zeros(len(y))
    if task == "classification" and np.unique(y, return_counts=True)[1].min() >= folds:
        stratified = StratifiedKFold(folds, shuffle=True, random_state=state)
        return list(stratified.split(zeros, y))
    return list(KFold(folds, shuffle=True, random_state=state).split(zeros))


def _fold_score(
    task: str,
    model: tuple[Preprocessor, Any],
    table: pa.Table,
    y: np.ndarray,
    fit: np.ndarray,
    held: np.ndarray,
) -> float:
    """The key metric of one fold; minus infinity if the fold cannot be fitted."""
    from sklearn.metrics import f1_score, r2_score

    preprocessor, estimator = model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator.fit(preprocessor.fit_transform(table.take(fit), y[fit]), y[fit])
            predicted = estimator.predict(preprocessor.transform(table.take(held)))
            if task == "classification":
                return float(f1_score(y[held], predicted, average="macro", zero_division=0))
            value = float(r2_score(y[held], np.nan_to_num(predicted, nan=np.inf)))
    except (SidecarError, ValueError, TypeError, ArithmeticError, np.linalg.LinAlgError):
        return -np.inf
    return value if np.isfinite(value) else -np.inf


def explicit(columns: Sequence[FeatureColumn], spec: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether preprocess says how every column is scaled (then there is nothing to choose)."""
    return all("scale" in spec.get(c.name, {}) for c in columns)
