"""Drift: recent rows against the training snapshot, and a model's error over time.

Feature drift compares a sliding window of recent rows with the reference (the rows the model
was trained on), column by column: numbers and booleans by the population stability index
(PSI) over the reference's deciles, text by the Jensen-Shannon divergence of category
frequencies. Error drift follows a model's errors where labels arrive: River's ADWIN with its
defaults, on the absolute error of a regression and on the error (1 = wrong, 0 = right) of a
classification.

Both are pure: they take rows and return :class:`DriftEvent` s; the monitor
(``trainer.monitoring``) feeds them, and the daemon turns the events into metrics and retrainings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.errors import ConfigError, TrainingError
from trainer import column_kinds, raw_values
from trainer.column_kinds import FeatureColumn, feature_columns

DETECTORS: tuple[str, ...] = ("psi", "jensen_shannon", "adwin")
TASKS: tuple[str, ...] = ("regression", "classification")
EPSILON = 1e-4  # the proportion PSI gives an empty bin
TOP_CATEGORIES = 50
# Classification errors go to ADWIN too, not DDM: River's DDM with its defaults (warm_start 30,
# drift_threshold 3) raised 23 false alarms in 20 seeded streams of 30k rows of a steady 5% error
# rate; with warm_start 300 and threshold 4, 1, but a 5% -> 40% jump was found after a median 102
# rows; River's ADWIN with its defaults raised none and found the jump after a median 39 (20
# streams; tests/trainer/test_drift.py keeps one of each).
_DECILES = np.arange(1, 10) / 10


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """A detection: which detector, on which feature (None for error drift), how strongly.

    ``statistic`` is the score that crossed ``threshold`` (PSI, Jensen-Shannon); for error
    drift it is the error level when detected (the mean absolute error or the error rate of
    the mean error of its window) and ``threshold`` the detector's sensitivity (ADWIN's
    delta). ``rows`` counts the rows the detector had seen since the model was deployed when it
    detected the drift (labelled rows, for error drift); ``lsn`` is the mirror commit (the
    replication batch) that brought the row, where the monitor knows it.
    """

    detector: str  # "psi" | "jensen_shannon" | "adwin"
    feature: str | None
    statistic: float
    threshold: float
    rows: int
    lsn: int = 0


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    """When feature drift is reported, and over how many recent rows it is measured."""

    psi: float = 0.2
    jensen_shannon: float = 0.1
    window: int = 5000  # the sliding window of recent rows, per column
    min_rows: int = 500  # no verdict on a column before its window holds this many rows

    def __post_init__(self) -> None:
        if not (self.psi > 0 and 0 < self.jensen_shannon <= 1):
            raise ConfigError(
                f"drift thresholds must be positive (Jensen-Shannon at most 1), not psi={self.psi}"
                f" and jensen_shannon={self.jensen_shannon}; the defaults are 0.2 and 0.1"
            )
        if not 1 <= self.min_rows <= self.window:
            raise ConfigError(
                f"drift min_rows ({self.min_rows}) must be between 1 and window ({self.window});"
                " the defaults are 500 and 5000"
            )


# -- the statistics ------------------------------------------------------------------------------


def psi(expected: np.ndarray, actual: np.ndarray, edges: np.ndarray) -> float:
    """Population stability index of the values ``actual`` against the values ``expected``.

    Bins are right-closed between the inner ``edges`` and open-ended outside them:
    (-inf, e0], (e0, e1], ..., (e_last, inf); NaN values have a bin of their own. An empty bin
    counts as a proportion of EPSILON.
    """
    bins = len(edges) + 2
    return _psi(
        _proportions(_bins(expected, edges), bins), _proportions(_bins(actual, edges), bins)
    )


def jensen_shannon(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence, base 2 (0 for equal distributions, 1 for disjoint ones).

    ``p`` and ``q`` map categories to frequencies or counts; each is normalised to sum to 1.
    """
    keys = sorted(set(p) | set(q))
    p_values = np.array([float(p.get(k, 0.0)) for k in keys])
    q_values = np.array([float(q.get(k, 0.0)) for k in keys])
    return _jensen_shannon(_normalised(p_values), _normalised(q_values))


def _bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value: 0..len(edges) by ``edges`` (right-closed), len(edges)+1 for NaN."""
    values = np.asarray(values, dtype=np.float64)
    codes = np.searchsorted(edges, values, side="left")
    codes[np.isnan(values)] = len(edges) + 1
    return codes


def _proportions(codes: np.ndarray, bins: int) -> np.ndarray:
    return _normalised(np.bincount(codes, minlength=bins).astype(np.float64))


def _normalised(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else counts


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = np.maximum(expected, EPSILON), np.maximum(actual, EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    return float(max(0.0, (_kl(p, m) + _kl(q, m)) / 2))


def _kl(p: np.ndarray, m: np.ndarray) -> float:
    seen = p > 0
    return float(np.sum(p[seen] * np.log2(p[seen] / m[seen])))


# -- feature drift -------------------------------------------------------------------------------


class _Window:
    """The bin codes of a column's last ``size`` rows, in a ring, with a count per bin."""

    def __init__(self, size: int, bins: int) -> None:
        self.codes = np.zeros(size, dtype=np.int32)
        self.counts = np.zeros(bins, dtype=np.int64)
        self.filled = 0
        self._position = 0

    def add(self, codes: np.ndarray) -> None:
        size = len(self.codes)
        codes = codes[-size:]
        slots = (self._position + np.arange(len(codes))) % size
        dropped = self.codes[slots[slots < self.filled]]  # slots that held a row
        self.counts -= np.bincount(dropped, minlength=len(self.counts))
        self.counts += np.bincount(codes, minlength=len(self.counts))
        self.codes[slots] = codes
        self._position = (self._position + len(codes)) % size
        self.filled = min(size, self.filled + len(codes))


@dataclass(slots=True)
class _Monitor:
    """One column: how its values become bin codes, the reference's proportions per bin."""

    column: FeatureColumn
    source: str  # how the reference stored it (see trainer.column_kinds)
    detector: str
    threshold: float
    expected: np.ndarray
    window: _Window
    edges: np.ndarray | None = None  # numbers: the inner bin edges
    categories: pa.Array | None = None  # text: the top categories, then "other", then NULL
    above: bool = False

    def codes(self, raw: pa.Array) -> np.ndarray:
        if self.edges is not None:
            return _bins(raw_values.numbers(self.column, raw, self.source), self.edges)
        assert self.categories is not None
        return _category_codes(raw_values.text(raw), self.categories)

    def score(self) -> float:
        actual = _normalised(self.window.counts.astype(np.float64))
        if self.detector == "psi":
            return _psi(self.expected, actual)
        return _jensen_shannon(self.expected, actual)


def _category_codes(text: pa.Array, categories: pa.Array) -> np.ndarray:
    """Position in ``categories``; len(categories) for any other value, one more for NULL."""
    found = pc.index_in(text, value_set=categories).fill_null(len(categories))
    codes = np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int32).copy()
    codes[np.asarray(text.is_null())] = len(categories) + 1
    return codes


class FeatureDrift:
    """Compare recent rows with a reference (the training snapshot), column by column.

    Numbers (also dates, times and intervals, as the model reads them) and booleans are binned
    by the reference's deciles (unique edges, open-ended outer bins, NULL a bin of its own) and
    scored by PSI; text by Jensen-Shannon over the reference's top 50 categories, "other" and
    NULL. Array columns are not monitored. Each column keeps the bin codes of its last
    ``thresholds.window`` rows; its score is NaN until that window holds ``min_rows`` rows.
    """

    def __init__(
        self,
        reference: pa.Table,
        *,
        columns: Sequence[str] | None = None,
        thresholds: DriftThresholds = DriftThresholds(),
    ) -> None:
        if reference.num_rows == 0:
            raise TrainingError("feature drift needs a reference with rows", sqlstate="22023")
        self.thresholds = thresholds
        self._rows = 0
        kinds = {c.name: c for c in feature_columns(reference.schema)}
        names = list(kinds) if columns is None else list(columns)
        unknown = [name for name in names if name not in kinds]
        if unknown:
            raise TrainingError(
                f"feature drift: column {', '.join(unknown)} not in the reference, whose columns"
                f" are {', '.join(kinds)}",
                sqlstate="42703",
            )
        every = list(kinds.values())
        self._monitors = [
            self._monitor(kinds[name], raw_values.raw(reference, kinds[name], every))
            for name in names
            if kinds[name].kind != "array"
        ]
        self._scores = {m.column.name: math.nan for m in self._monitors}

    def _monitor(self, column: FeatureColumn, raw: pa.Array) -> _Monitor:
        source = column_kinds.source(raw.type)
        size = self.thresholds.window
        if column.kind in ("number", "boolean"):
            values = raw_values.numbers(column, raw, source)
            finite = values[~np.isnan(values)]
            edges = np.unique(np.quantile(finite, _DECILES)) if finite.size else np.empty(0)
            expected = _proportions(_bins(values, edges), len(edges) + 2)
            window = _Window(size, len(expected))
            return _Monitor(column, source, "psi", self.thresholds.psi, expected, window, edges)
        text = raw_values.text(raw)
        counts = pc.value_counts(text.drop_null())
        top = sorted(
            zip(
                counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
            ),
            key=lambda vc: (-vc[1], vc[0]),
        )[:TOP_CATEGORIES]
        categories = pa.array([v for v, _ in top], type=pa.large_string())
        expected = _proportions(_category_codes(text, categories), len(categories) + 2)
        window = _Window(size, len(expected))
        threshold = self.thresholds.jensen_shannon
        return _Monitor(
            column, source, "jensen_shannon", threshold, expected, window, categories=categories
        )

    @property
    def columns(self) -> list[str]:
        """The monitored columns."""
        return [m.column.name for m in self._monitors]

    @property
    def scores(self) -> dict[str, float]:
        """The current score per monitored column (NaN before ``min_rows`` rows)."""
        return dict(self._scores)

    def update(self, rows: pa.Table) -> list[DriftEvent]:
        """Add rows to the window; return an event per column whose score crosses its threshold.

        A column reports once when its score goes above the threshold, and again only after
        the score has fallen back to the threshold or below. Monitored columns missing from
        ``rows`` are left as they are.
        """
        self._rows += rows.num_rows
        events: list[DriftEvent] = []
        present = set(rows.column_names)
        columns = [m.column for m in self._monitors if m.column.name in present]
        for monitor in self._monitors:
            if monitor.column.name not in present or rows.num_rows == 0:
                continue
            monitor.window.add(monitor.codes(raw_values.raw(rows, monitor.column, columns)))
            if monitor.window.filled < self.thresholds.min_rows:
                continue
            score = monitor.score()
            self._scores[monitor.column.name] = score
            if score > monitor.threshold and not monitor.above:
                events.append(
                    DriftEvent(
                        monitor.detector, monitor.column.name, score, monitor.threshold, self._rows
                    )
                )
            monitor.above = score > monitor.threshold
        return events


# -- error drift ---------------------------------------------------------------------------------


class ErrorDrift:
    """River's ADWIN on a model's errors: the absolute error of a regression, 1 for a wrong
    class and 0 for a right one in a classification.

    ``detector_params`` go to ADWIN (delta, clock, ...); River's defaults otherwise.
    """

    def __init__(self, task: str, **detector_params: Any) -> None:
        if task not in TASKS:
            raise TrainingError(
                f"error drift: unknown task {task!r}; use regression or classification",
                sqlstate="22023",
            )
        from river import drift  # imported here: River is slow to import and only needed here

        self.task = task
        self.detector_name = "adwin"
        try:
            self._detector = drift.ADWIN(**detector_params)
        except TypeError as exc:
            raise TrainingError(
                f"error drift: bad parameter for ADWIN: {exc}", sqlstate="22023"
            ) from None
        self.threshold = float(self._detector.delta)
        self._rows = 0

    @property
    def rows(self) -> int:
        """Rows with a label and a prediction seen so far."""
        return self._rows

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> list[DriftEvent]:
        """Feed rows in order; return an event per detection. NaN or NULL labels are skipped."""
        truth, predicted = np.asarray(y_true), np.asarray(y_pred)
        if truth.shape != predicted.shape or truth.ndim != 1:
            raise TrainingError(
                f"error drift: labels {truth.shape} and predictions {predicted.shape} must be"
                " one-dimensional and of the same length",
                sqlstate="22023",
            )
        kept = _present(truth) & _present(predicted)
        truth, predicted = truth[kept], predicted[kept]
        if self.task == "regression":
            errors = np.abs(truth.astype(np.float64) - predicted.astype(np.float64)).tolist()
        else:
            errors = (truth != predicted).astype(np.float64).tolist()
        detector, events = self._detector, []
        for error in errors:
            self._rows += 1
            detector.update(error)
            if detector.drift_detected:
                events.append(
                    DriftEvent(
                        self.detector_name, None, float(detector.estimation), self.threshold,
                        self._rows,
                    )
                )  # fmt: skip
        return events


def _present(values: np.ndarray) -> np.ndarray:
    """True where a value is there: not None, not NaN."""
    if values.dtype.kind in "fc":
        return ~np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is not None and v == v for v in values.tolist()], dtype=bool)
    return np.ones(len(values), dtype=bool)
