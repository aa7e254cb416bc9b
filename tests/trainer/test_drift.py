"""Tests for drift: PSI and Jensen-Shannon, feature drift over a sliding window, error drift."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from mirror.errors import ConfigError, TrainingError
from trainer.drift import (
    DriftEvent,
    DriftThresholds,
    ErrorDrift,
    FeatureDrift,
    jensen_shannon,
    psi,
)

DECILES = np.arange(1, 10) / 10
COLORS = ["red", "green", "blue"]


def rows(rng: np.random.Generator, n: int, *, shift: float = 0.0) -> pa.Table:
    """A table like a training snapshot; ``shift`` moves column x by that many sd."""
    x = rng.normal(shift, 1.0, n)
    return pa.table(
        {
            "x": x,
            "amount": rng.gamma(2.0, 10.0, n),
            "flag": rng.random(n) < 0.3,
            "color": rng.choice(COLORS, n, p=[0.5, 0.3, 0.2]),
            "day": pa.array(rng.integers(19000, 19365, n).astype("int32"), pa.date32()),
            "embedding": pa.array([[1.0, 2.0]] * n),
            "target": 2.0 * x + rng.normal(0.0, 0.5, n),
        }
    )


def stream(drift: FeatureDrift, table: pa.Table, chunk: int = 100) -> list[DriftEvent]:
    events: list[DriftEvent] = []
    for start in range(0, table.num_rows, chunk):
        events += drift.update(table.slice(start, chunk))
    return events


# -- the statistics ------------------------------------------------------------------------------


def test_psi_matches_a_hand_computed_value() -> None:
    expected = np.array([0.0, 0.0, 1.0, 1.0])  # half in (-inf, 0.5], half in (0.5, inf)
    actual = np.array([0.0, 1.0, 1.0, 1.0])  # a quarter, three quarters
    want = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(expected, actual, np.array([0.5])) == pytest.approx(want)  # 0.2747


def test_psi_counts_an_empty_bin_as_epsilon_and_nan_as_its_own_bin() -> None:
    edges = np.array([0.5])
    everything_moved = psi(np.zeros(10), np.ones(10), edges)
    assert everything_moved == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4))
    half_null = psi(np.zeros(4), np.array([0.0, 0.0, np.nan, np.nan]), edges)
    assert half_null == pytest.approx(-0.5 * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4))


def test_psi_is_near_zero_for_one_distribution_and_large_for_a_shift_of_one_sd() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0.0, 1.0, 10_000)
    edges = np.unique(np.quantile(reference, DECILES))
    assert psi(reference, rng.normal(0.0, 1.0, 10_000), edges) < 0.01
    assert psi(reference, reference, edges) == pytest.approx(0.0)
    assert psi(reference, rng.normal(1.0, 1.0, 10_000), edges) > 0.2  # about 0.94


def test_jensen_shannon_matches_hand_computed_values() -> None:
    assert jensen_shannon({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    assert jensen_shannon({"a": 3, "b": 1}, {"a": 30, "b": 10}) == pytest.approx(0.0)
    m = {"a": 0.75, "b": 0.25}
    want = 0.5 * (0.5 * math.log2(0.5 / m["a"]) + 0.5 * math.log2(0.5 / m["b"]))
    want += 0.5 * math.log2(1.0 / m["a"])
    assert jensen_shannon({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(want)  # 0.3113


def test_jensen_shannon_exceeds_its_threshold_when_the_category_mix_changes() -> None:
    before = {"red": 0.8, "green": 0.15, "blue": 0.05}
    after = {"red": 0.2, "green": 0.15, "blue": 0.65}
    assert jensen_shannon(before, after) > DriftThresholds().jensen_shannon
    assert jensen_shannon(before, {"red": 0.78, "green": 0.16, "blue": 0.06}) < 0.01


# -- feature drift -------------------------------------------------------------------------------


def test_a_shift_of_one_column_gives_one_event_for_that_column_and_rearms() -> None:
    rng = np.random.default_rng(7)
    drift = FeatureDrift(rows(rng, 10_000).drop_columns(["target"]))  # the model's features
    assert drift.columns == ["x", "amount", "flag", "color", "day"]  # arrays are not monitored

    assert stream(drift, rows(rng, 3000)) == []
    calm = drift.scores
    assert set(calm) == set(drift.columns)
    assert max(calm.values()) < 0.02

    events = stream(drift, rows(rng, 3000, shift=1.0))
    assert [(e.detector, e.feature) for e in events] == [("psi", "x")]
    delay = events[0].rows - 3000
    assert 0 < delay <= 2500  # measured: 2300 rows, with the window holding 3000 calm rows
    assert events[0].statistic > 0.2 and events[0].threshold == 0.2
    assert drift.scores["x"] > 0.3 and drift.scores["amount"] < 0.02

    assert stream(drift, rows(rng, 5000)) == []  # back to normal: the window refills
    assert drift.scores["x"] < 0.02
    again = stream(drift, rows(rng, 3000, shift=-1.0))
    assert [e.feature for e in again] == ["x"]
    assert 0 < again[0].rows - 11_000 <= 2500  # measured: 2400


def test_scores_are_those_of_the_last_window_rows() -> None:
    rng = np.random.default_rng(3)
    reference = rows(rng, 4000)
    thresholds = DriftThresholds(window=1000, min_rows=200)
    drift = FeatureDrift(reference, columns=["x"], thresholds=thresholds)
    recent = rows(rng, 4321, shift=0.3)
    for start, size in [(0, 150), (150, 37), (187, 2500), (2687, 999), (3686, 635)]:
        drift.update(recent.slice(start, size))
        seen = recent.column("x").to_numpy()[max(0, start + size - 1000) : start + size]
        edges = np.unique(np.quantile(reference.column("x").to_numpy(), DECILES))
        want = psi(reference.column("x").to_numpy(), seen, edges) if start + size >= 200 else None
        got = drift.scores["x"]
        assert math.isnan(got) if want is None else got == pytest.approx(want)


def test_no_verdict_before_min_rows() -> None:
    rng = np.random.default_rng(4)
    thresholds = DriftThresholds(window=1000, min_rows=400)
    drift = FeatureDrift(rows(rng, 2000), columns=["x", "amount"], thresholds=thresholds)
    assert drift.update(rows(rng, 399, shift=5.0)) == []
    assert math.isnan(drift.scores["x"])
    events = drift.update(rows(rng, 1, shift=5.0))
    assert [(e.feature, e.rows) for e in events] == [("x", 400)]


def test_text_boolean_and_null_shifts_are_detected() -> None:
    rng = np.random.default_rng(5)
    drift = FeatureDrift(rows(rng, 5000), columns=["color", "flag", "amount"])
    changed = rows(rng, 2000)
    changed = changed.set_column(
        changed.schema.get_field_index("color"),
        "color",
        pa.array(rng.choice([*COLORS, "purple"], 2000, p=[0.1, 0.1, 0.2, 0.6])),
    )
    changed = changed.set_column(
        changed.schema.get_field_index("flag"), "flag", pa.array(rng.random(2000) < 0.8)
    )
    changed = changed.set_column(
        changed.schema.get_field_index("amount"), "amount", pa.nulls(2000, pa.float64())
    )
    events = drift.update(changed)
    assert {(e.detector, e.feature) for e in events} == {
        ("jensen_shannon", "color"),
        ("psi", "flag"),
        ("psi", "amount"),
    }
    assert drift.scores["color"] > 0.1


def test_dates_are_monitored_as_numbers() -> None:
    rng = np.random.default_rng(6)
    drift = FeatureDrift(rows(rng, 3000), columns=["day"])
    later = pa.table({"day": pa.array([dt.date(2030, 1, 1)] * 600, pa.date32())})
    assert [e.feature for e in drift.update(later)] == ["day"]


def test_columns_missing_from_the_reference_are_refused() -> None:
    rng = np.random.default_rng(8)
    with pytest.raises(TrainingError, match="nope") as caught:
        FeatureDrift(rows(rng, 100), columns=["x", "nope"])
    assert caught.value.sqlstate == "42703"
    with pytest.raises(TrainingError, match="reference with rows"):
        FeatureDrift(rows(rng, 0))
    with pytest.raises(ConfigError, match="min_rows"):
        DriftThresholds(window=100, min_rows=500)


# -- error drift ---------------------------------------------------------------------------------


def feed(monitor: ErrorDrift, y_true: np.ndarray, y_pred: np.ndarray) -> list[DriftEvent]:
    events: list[DriftEvent] = []
    for start in range(0, len(y_true), 250):
        events += monitor.update(y_true[start : start + 250], y_pred[start : start + 250])
    return events


def test_adwin_detects_a_jump_in_regression_error_soon() -> None:
    rng = np.random.default_rng(10)
    y = rng.normal(0.0, 1.0, 8000)
    noise = np.where(np.arange(8000) < 5000, 0.5, 2.0)  # the concept shifts at row 5000
    monitor = ErrorDrift("regression")
    events = feed(monitor, y, y + rng.normal(0.0, 1.0, 8000) * noise)
    assert events, "no drift detected"
    assert events[0].detector == "adwin" and events[0].feature is None
    delay = events[0].rows - 5000
    assert 0 < delay < 500  # measured: 24 rows (ADWIN checks every 32 rows)
    assert events[0].statistic > 0.5 and events[0].threshold == 0.002
    assert monitor.rows == 8000


def test_classification_error_drift_is_adwin_which_beats_ddm() -> None:
    """River's DDM with its defaults raises false alarms on a steady 5% error (here at row
    177); with warm_start 300 and threshold 4 it is late. River's ADWIN with its defaults
    raises none and detects a 5% -> 40% jump soonest."""
    from river.drift import binary

    rng = np.random.default_rng(13)
    y = rng.integers(0, 2, 6000)
    rate = np.where(np.arange(6000) < 3000, 0.05, 0.40)
    predicted = np.where(rng.random(6000) < rate, 1 - y, y)
    wrong = (y != predicted).astype(float).tolist()

    def detections(detector: Any) -> list[int]:
        found = []
        for row, error in enumerate(wrong, 1):
            detector.update(error)
            if detector.drift_detected:
                found.append(row)
        return found

    ddm = detections(binary.DDM())
    assert ddm[0] < 3000  # a false alarm
    late = next(row for row in detections(binary.DDM(warm_start=300, drift_threshold=4.0))
                if row > 3000)  # fmt: skip
    events = feed(ErrorDrift("classification"), y, predicted)
    assert events and events[0].detector == "adwin" and events[0].feature is None
    assert 3000 < events[0].rows < min(late, next(row for row in ddm if row > 3000))
    assert events[0].threshold == 0.002  # River's default delta


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_error_drift_detects_where_rivers_adwin_does(task: str) -> None:
    """The same error stream fed to River's ADWIN with its defaults: the same rows."""
    from river import drift

    rng = np.random.default_rng(13)
    shift = np.arange(6000) >= 3000
    y: np.ndarray
    if task == "classification":
        y = rng.integers(0, 2, 6000)
        predicted = np.where(rng.random(6000) < np.where(shift, 0.4, 0.05), 1 - y, y)
        errors: list[float] = (y != predicted).astype(float).tolist()
    else:
        y = rng.normal(0.0, 1.0, 6000)
        predicted = y + rng.normal(0.0, 1.0, 6000) * np.where(shift, 2.0, 0.5)
        errors = np.abs(y - predicted).tolist()
    river = drift.ADWIN()
    expected = []
    for row, error in enumerate(errors, 1):
        river.update(error)
        if river.drift_detected:
            expected.append(row)
    assert expected and expected[0] > 3000
    assert [e.rows for e in feed(ErrorDrift(task), y, predicted)] == expected


def test_a_feature_shift_without_label_change_is_not_error_drift() -> None:
    rng = np.random.default_rng(12)
    reference = rows(rng, 10_000)
    features = FeatureDrift(reference, columns=["x", "amount", "color"])
    errors = ErrorDrift("regression")
    labels = ErrorDrift("classification")
    feature_events: list[DriftEvent] = []
    error_events: list[DriftEvent] = []
    for shift in (0.0, 1.5):
        recent = rows(rng, 4000, shift=shift)  # target stays 2x + noise: the model is right
        x, y = recent.column("x").to_numpy(), recent.column("target").to_numpy()
        feature_events += stream(features, recent, chunk=250)
        error_events += feed(errors, y, 2.0 * x)
        truth = (y > 0).astype(int)
        error_events += feed(labels, truth, np.where(rng.random(4000) < 0.05, 1 - truth, truth))
    assert [e.feature for e in feature_events] == ["x"]
    assert error_events == []


def test_rows_without_a_label_or_prediction_are_skipped() -> None:
    monitor = ErrorDrift("regression")
    assert monitor.update(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, np.nan])) == []
    assert monitor.rows == 1
    labels = ErrorDrift("classification")
    labels.update(np.array(["a", None, "b"], dtype=object), np.array(["a", "b", "c"]))
    assert labels.rows == 2


def test_bad_error_drift_arguments_are_refused() -> None:
    with pytest.raises(TrainingError, match="unknown task"):
        ErrorDrift("clustering")
    with pytest.raises(TrainingError, match="ADWIN"):
        ErrorDrift("classification", warm_start=3)
    with pytest.raises(TrainingError, match="same length"):
        ErrorDrift("regression").update(np.zeros(3), np.zeros(2))
