"""Tests for turning table columns into features: encode, impute, scale, prediction input."""

from __future__ import annotations

import datetime as dt
import pickle
import subprocess
import sys
import tarfile
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mirror.errors import TrainingError
from trainer.column_kinds import FeatureColumn, feature_columns
from trainer.model import Model
from trainer.preprocess import ONE_HOT_LIMIT, Preprocessor
from trainer.preprocess_options import IMPUTES, SCALES, parse_preprocess


def fitted(table: pa.Table, spec: dict | None = None, y: np.ndarray | None = None) -> Preprocessor:
    return Preprocessor(feature_columns(table.schema), spec).fit(table, y)


def test_feature_columns_kinds_in_table_order() -> None:
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("price", pa.decimal128(10, 2)),
            ("ratio", pa.float32()),
            ("garden", pa.bool_()),
            ("city", pa.large_string()),
            ("note", pa.string_view()),
            ("image", pa.list_(pa.int16())),
            ("flags", pa.list_(pa.bool_(), 3)),
            ("tags", pa.list_(pa.string())),
            ("born", pa.date32()),
            ("seen", pa.timestamp("us", tz="UTC")),
            ("opens", pa.time64("us")),
            ("took", pa.duration("ms")),
            ("key", pa.uuid()),
            ("blob", pa.binary()),
            ("label", pa.int32()),
        ]
    )
    columns = feature_columns(schema, exclude=["label"])
    assert [(c.name, c.kind) for c in columns] == [
        ("id", "number"),
        ("price", "number"),
        ("ratio", "number"),
        ("garden", "boolean"),
        ("city", "text"),
        ("note", "text"),
        ("image", "array"),
        ("flags", "array"),
        ("tags", "text"),
        ("born", "number"),
        ("seen", "number"),
        ("opens", "number"),
        ("took", "number"),
        ("key", "text"),
        ("blob", "text"),
    ]


# -- numbers and booleans ------------------------------------------------------------------------


def test_numbers_with_nulls_take_the_training_mean() -> None:
    table = pa.table({"age": pa.array([20, None, 40, 30], pa.int32()), "w": [1.5, 2.5, None, 4.0]})
    pre = fitted(table)
    x = pre.transform(table)
    assert pre.feature_names == ["age", "w"]
    assert x.dtype == np.float64 and x.shape == (4, 2)
    np.testing.assert_array_equal(x[:, 0], [20, 30, 40, 30])
    np.testing.assert_array_equal(x[:, 1], [1.5, 2.5, (1.5 + 2.5 + 4.0) / 3, 4.0])
    np.testing.assert_array_equal(pre.fit_transform(table), x)


def test_nan_and_infinity_count_as_missing() -> None:
    table = pa.table({"v": [1.0, float("nan"), 3.0, float("inf")]})
    np.testing.assert_array_equal(fitted(table).transform(table)[:, 0], [1, 2, 3, 2])


def test_integers_beyond_float_precision_are_rounded_not_refused() -> None:
    table = pa.table({"id": pa.array([2**62, 1], pa.int64())})
    np.testing.assert_array_equal(fitted(table).transform(table)[:, 0], [2.0**62, 1.0])


def test_all_null_column_imputes_zero() -> None:
    table = pa.table({"v": pa.array([None, None], pa.float64()), "n": pa.nulls(2)})
    pre = fitted(table)
    np.testing.assert_array_equal(pre.transform(table), np.zeros((2, 2)))


@pytest.mark.parametrize("strategy", [s for s in IMPUTES if s != "error"])
def test_every_impute_strategy(strategy: str) -> None:
    values = np.array([4.0, 1.0, 7.0, 1.0, 10.0, 3.0])
    raw = pa.array([*values[:3], None, *values[3:]])
    expected = {
        "mean": values.mean(),
        "median": np.median(values),
        "mode": 1.0,
        "min": values.min(),
        "max": values.max(),
        "zero": 0.0,
    }[strategy]
    table = pa.table({"v": raw})
    x = fitted(table, {"v": {"impute": strategy}}).transform(table)
    assert x[3, 0] == expected
    np.testing.assert_array_equal(np.delete(x[:, 0], 3), values)


def test_mode_takes_the_smallest_of_equally_frequent_values() -> None:
    table = pa.table({"v": [5.0, 5.0, 2.0, 2.0, None]})
    assert fitted(table, {"v": {"impute": "mode"}}).transform(table)[4, 0] == 2.0


@pytest.mark.parametrize("strategy", SCALES)
def test_every_scale_strategy(strategy: str) -> None:
    v = np.random.default_rng(7).normal(3.0, 2.0, size=101)
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    expected = {
        "preserve": v,
        "standard": (v - v.mean()) / v.std(),
        "min_max": (v - v.min()) / (v.max() - v.min()),
        "max_abs": v / np.abs(v).max(),
        "robust": (v - median) / (q3 - q1),
    }[strategy]
    table = pa.table({"v": v})
    pre = fitted(table, {"v": {"scale": strategy}})
    np.testing.assert_allclose(pre.transform(table)[:, 0], expected, rtol=1e-12, atol=1e-12)
    new = pa.table({"v": [100.0]})  # statistics are the training ones
    single = pre.transform(new)[0, 0]
    np.testing.assert_allclose(single, {"preserve": 100.0}.get(strategy, single))
    if strategy == "standard":
        assert single == pytest.approx((100.0 - v.mean()) / v.std())


def test_scaling_a_constant_column_does_not_divide_by_zero() -> None:
    table = pa.table({"c": [5.0, 5.0, 5.0]})
    for strategy in ("standard", "min_max", "max_abs", "robust"):
        x = fitted(table, {"c": {"scale": strategy}}).transform(table)
        assert np.isfinite(x).all()


def test_booleans_are_zero_and_one() -> None:
    table = pa.table({"garden": [True, False, None, True]})
    pre = fitted(table)
    np.testing.assert_array_equal(pre.transform(table)[:, 0], [1, 0, 2 / 3, 1])
    as_text = pa.table({"garden": ["t", "false", None, "YES"]})
    np.testing.assert_array_equal(pre.transform(as_text)[:, 0], [1, 0, 2 / 3, 1])


def test_decimals_dates_and_timestamps_become_numbers() -> None:
    table = pa.table(
        {
            "price": pa.array([Decimal("1.25"), Decimal("2.50")], pa.decimal128(5, 2)),
            "born": pa.array([dt.date(1970, 1, 2), dt.date(2024, 1, 1)], pa.date32()),
            "seen": pa.array(
                [dt.datetime(1970, 1, 1, 0, 1), dt.datetime(2024, 1, 1, 10)],
                pa.timestamp("ns", tz="UTC"),
            ),
            "opens": pa.array([dt.time(0, 0, 30), dt.time(9, 30)], pa.time64("us")),
            "took": pa.array([dt.timedelta(seconds=90), dt.timedelta(days=1)], pa.duration("ms")),
        }
    )
    pre = fitted(table, {"born": {"encode": "native"}, "seen": {"encode": "native"}})
    jan_2024 = 1704067200.0
    expected = [[1.25, 86400, 60, 30, 90], [2.5, jan_2024, jan_2024 + 36000, 34200, 86400]]
    np.testing.assert_array_equal(pre.transform(table), expected)
    rows = [[2.5, "2024-01-01", "2024-01-01 12:00:00+02:00", "09:30:00", "1 day"]]
    np.testing.assert_array_equal(pre.transform(pre.table_from_rows(rows)), [expected[1]])


def test_intervals_from_a_duckdb_snapshot_are_seconds(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.parquet"
    with duckdb.connect() as con:
        con.execute(
            "copy (select * from (values (interval '1 month 2 days 3.5 seconds'), (null)) t(took))"
            f" to '{path}' (format parquet)"
        )
    table = pq.read_table(path)
    pre = fitted(table)
    seconds = (30 + 2) * 86400 + 3.5
    np.testing.assert_array_equal(pre.transform(table)[:, 0], [seconds, seconds])
    for value in (dt.timedelta(days=32, seconds=3.5), "1 month 2 days 3.5 seconds", seconds):
        assert pre.transform(pre.table_from_rows([[value]]))[0, 0] == seconds


# -- text ----------------------------------------------------------------------------------------


def test_text_is_one_hot_with_null_as_its_own_category() -> None:
    table = pa.table({"color": ["red", "blue", None, "red"]})
    pre = fitted(table)
    assert pre.feature_names == ["color=blue", "color=red", "color IS NULL"]
    np.testing.assert_array_equal(
        pre.transform(table), [[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]]
    )
    unseen = pa.table({"color": pa.array(["green", "blue", None], pa.string())})
    np.testing.assert_array_equal(pre.transform(unseen), [[0, 0, 0], [1, 0, 0], [0, 0, 1]])


def test_null_not_seen_in_training_is_all_zeros() -> None:
    pre = fitted(pa.table({"color": ["red", "blue"]}))
    assert pre.feature_names == ["color=blue", "color=red"]
    np.testing.assert_array_equal(
        pre.transform(pa.table({"color": [None, "red"]})), [[0, 0], [0, 1]]
    )


def test_one_hot_refuses_too_many_categories() -> None:
    table = pa.table({"key": [f"k{i}" for i in range(ONE_HOT_LIMIT + 1)]})
    with pytest.raises(TrainingError, match=r"too many to one-hot.*target") as raised:
        fitted(table, {"key": {"encode": "one_hot"}})
    assert raised.value.sqlstate == "22000"
    assert fitted(table, {"key": {"encode": "ordinal"}}).feature_names == ["key"]


@pytest.mark.parametrize("encode", ["ordinal", "native"])
def test_ordinal_codes_are_sorted_category_indices(encode: str) -> None:
    table = pa.table({"size": ["m", "s", "l", "m", None]})
    pre = fitted(table, {"size": {"encode": encode, "impute": "max"}})
    assert pre.feature_names == ["size"]
    np.testing.assert_array_equal(pre.transform(table)[:, 0], [1, 2, 0, 1, 2])
    np.testing.assert_array_equal(pre.transform(pa.table({"size": ["xl", "s"]}))[:, 0], [2, 2])


def test_target_encoding_is_the_label_mean_per_category_shrunk_towards_the_mean() -> None:
    table = pa.table({"city": ["paris", "lyon", "paris", None, "lyon", "paris"]})
    y = np.array([10.0, 1.0, 20.0, 7.0, 3.0, 30.0])
    pre = fitted(table, {"city": {"encode": "target"}}, y)
    assert pre.feature_names == ["city"]

    # As scikit-learn's TargetEncoder(smooth="auto") encodes: a category's mean, shrunk
    # towards the overall mean by how much of the label's variance its rows leave unexplained.
    from sklearn.preprocessing import TargetEncoder

    named = np.array([0, 1, 2, 4, 5])
    cities = np.array(table["city"].to_pylist(), dtype=object)[named, None]
    sklearn = TargetEncoder(smooth="auto", target_type="continuous").fit(cities, y[named])
    paris, lyon = sklearn.transform(np.array([["paris"], ["lyon"]], dtype=object))[:, 0]
    alone = fitted(table.take(named), {"city": {"encode": "target"}}, y[named])
    assert alone.transform(table.take([0, 1]))[:, 0] == pytest.approx([paris, lyon])
    assert 2 < lyon < paris < 20
    x = pre.transform(table)[:, 0]
    assert x[[0, 2, 5]].tolist() == [x[0]] * 3 and x[1] == x[4]
    assert 2 < x[1] < x[0] < 20 and x[3] == 7  # NULL, seen once, keeps its label
    unseen = pre.transform(pa.table({"city": ["nice"]}))
    assert unseen[0, 0] == y.mean()


def test_target_encoding_of_the_training_rows_never_holds_their_own_label() -> None:
    # A unique column target encoded: at fit, each row's feature comes from the other folds,
    # which never saw its value, so it holds no label; a model cannot learn a shortcut.
    rows = 2000
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, rows).astype(np.float64)
    table = pa.table({"email": [f"user{i}@example.com" for i in range(rows)]})
    pre = Preprocessor(feature_columns(table.schema), {"email": {"encode": "target"}})
    x = pre.fit_transform(table, y)[:, 0]
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.1
    np.testing.assert_allclose(x, y.mean(), atol=0.02)  # each fold's overall mean
    # A category seen in the other folds gets their mean: the feature carries its signal.
    city = np.where(y == 1, rng.choice(["a", "b"], rows, p=[0.8, 0.2]),
                    rng.choice(["a", "b"], rows, p=[0.2, 0.8]))  # fmt: skip
    signal = Preprocessor(feature_columns(pa.table({"city": city}).schema),
                          {"city": {"encode": "target"}})  # fmt: skip
    x = signal.fit_transform(pa.table({"city": city}), y)[:, 0]
    assert np.corrcoef(x, y)[0, 1] > 0.5


def test_target_encoding_with_more_than_two_classes_has_a_feature_per_class() -> None:
    table = pa.table({"shop": ["a", "a", "b", "b", "c", "c"] * 20})
    y = np.array([0, 0, 1, 1, 2, 1] * 20)
    columns = feature_columns(table.schema)
    pre = Preprocessor(columns, {"shop": {"encode": "target"}}, classes=["x", "y", "z"])
    x = pre.fit_transform(table, y)
    assert pre.feature_names == ["shop target=x", "shop target=y", "shop target=z"]
    np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=0.05)  # shares of the classes
    seen = pre.transform(pa.table({"shop": ["a", "c", "new"]}))
    np.testing.assert_allclose(seen[0], [1, 0, 0], atol=0.01)
    np.testing.assert_allclose(seen[1], [0, 0.5, 0.5], atol=0.02)
    np.testing.assert_allclose(seen[2], [1 / 3, 1 / 2, 1 / 6])


def test_target_encoding_needs_a_label() -> None:
    table = pa.table({"city": ["paris", "lyon"]})
    with pytest.raises(TrainingError, match=r"city.*label") as raised:
        fitted(table, {"city": {"encode": "target"}})
    assert raised.value.sqlstate == "22023"


def test_numbers_can_be_one_hot_encoded() -> None:
    table = pa.table({"zip": pa.array([75001, 69001, 75001], pa.int32())})
    pre = fitted(table, {"zip": {"encode": "one_hot"}})
    assert pre.feature_names == ["zip=69001", "zip=75001"]
    np.testing.assert_array_equal(pre.transform(pa.table({"zip": [69001]})), [[1, 0]])


def test_other_types_are_text() -> None:
    key = b"\x12" * 16
    table = pa.table(
        {
            "key": pa.array([key, None], pa.uuid()),
            "blob": pa.array([b"\x00\xff", b"ab"]),
            "meta": pa.array([{"a": 1}, {"a": 2}]),
        }
    )
    pre = fitted(table)
    assert pre.feature_names == [
        "key=12121212-1212-1212-1212-121212121212",
        "key IS NULL",
        "blob=00ff",
        "blob=6162",
        "meta={'a': 1}",
        "meta={'a': 2}",
    ]


# -- arrays --------------------------------------------------------------------------------------


def test_a_smallint_array_of_64_is_64_features() -> None:
    images = np.random.default_rng(3).integers(0, 17, size=(50, 64)).astype(np.int16)
    table = pa.table({"image": pa.array(list(images), pa.list_(pa.int16()))})
    pre = fitted(table)
    assert pre.columns == [FeatureColumn("image", "array", 64)]
    assert pre.feature_names == [f"image[{i}]" for i in range(64)]
    np.testing.assert_array_equal(pre.transform(table), images)


def test_ragged_lists_are_padded_then_imputed_and_cut() -> None:
    table = pa.table({"rooms": pa.array([[1, 2, 3], [5], None, [3, 4]], pa.list_(pa.int64()))})
    pre = fitted(table)
    assert pre.feature_names == ["rooms[0]", "rooms[1]", "rooms[2]"]
    np.testing.assert_array_equal(
        pre.transform(table), [[1, 2, 3], [5, 3, 3], [3, 3, 3], [3, 4, 3]]
    )
    longer = pa.table({"rooms": pa.array([[9, 8, 7, 6]], pa.list_(pa.int32()))})
    np.testing.assert_array_equal(pre.transform(longer), [[9, 8, 7]])


def test_arrays_cannot_be_encoded() -> None:
    with pytest.raises(TrainingError, match="array") as raised:
        Preprocessor([FeatureColumn("image", "array")], {"image": {"encode": "one_hot"}})
    assert raised.value.sqlstate == "22023"


# -- preprocess JSON -----------------------------------------------------------------------------


def test_parse_preprocess_accepts_objects_and_json() -> None:
    spec = {"age": {"impute": "median", "scale": "standard"}, "city": {"encode": "target"}}
    assert parse_preprocess(spec, ["age", "city"]) == spec
    assert parse_preprocess('{"age": {"impute": "zero"}}', ["age"]) == {"age": {"impute": "zero"}}
    assert parse_preprocess(None, ["age"]) == {}
    assert parse_preprocess("", ["age"]) == {}


@pytest.mark.parametrize(
    ("spec", "sqlstate", "message"),
    [
        ({"agee": {"impute": "mean"}}, "42703", r"'agee'.*did you mean 'age'.*: age, city"),
        ({"age": {"fill": "mean"}}, "22023", r"unknown key 'fill'; use encode, impute or scale"),
        ({"age": {"scale": "huge"}}, "22023", r"preserve, standard, min_max, max_abs, robust"),
        ({"age": {"impute": "avg"}}, "22023", r"error, mean, median, mode, min, max, zero"),
        ({"city": {"encode": "hash"}}, "22023", r"native, target, one_hot, ordinal"),
        ('{"age": {"impute": ', "22023", r"preprocess is not valid JSON: "),
        ("[1, 2]", "22023", r"must be a JSON object"),
        ({"age": "mean"}, "22023", r"column 'age' must be an object"),
    ],
)
def test_parse_preprocess_errors_name_the_choices(
    spec: object, sqlstate: str, message: str
) -> None:
    with pytest.raises(TrainingError, match=message) as raised:
        parse_preprocess(spec, ["age", "city"])  # type: ignore[arg-type]
    assert raised.value.sqlstate == sqlstate


# -- impute: error -------------------------------------------------------------------------------


def test_impute_error_refuses_nulls_at_fit_and_transform() -> None:
    spec = {"age": {"impute": "error"}, "city": {"impute": "error"}}
    with pytest.raises(TrainingError, match="'age' holds NULL in 1 of 2 rows") as raised:
        fitted(pa.table({"age": [1.0, None], "city": ["a", "b"]}), spec)
    assert raised.value.sqlstate == "22000"
    pre = fitted(pa.table({"age": [1.0, 2.0], "city": ["a", "b"]}), spec)
    with pytest.raises(TrainingError, match="'city' holds NULL") as raised:
        pre.transform(pa.table({"age": [1.0], "city": pa.array([None], pa.string())}))
    assert raised.value.sqlstate == "22000"
    ordinal = fitted(
        pa.table({"city": ["a", "b"]}), {"city": {"encode": "ordinal", **spec["city"]}}
    )
    with pytest.raises(TrainingError, match="not seen in training"):
        ordinal.transform(pa.table({"city": ["z"]}))


# -- transform input -----------------------------------------------------------------------------


def test_transform_takes_similar_types_ignores_extra_columns() -> None:
    table = pa.table({"n": pa.array([1, 2], pa.int64()), "s": pa.array(["a", "b"], pa.string())})
    pre = fitted(table)
    other = pa.table(
        {
            "extra": ["x", "y"],
            "s": pa.array(["a", "b"], pa.large_string()),
            "n": pa.array([1, 2], pa.int32()),
        }
    )
    np.testing.assert_array_equal(pre.transform(other), pre.transform(table))


def test_missing_column_at_transform() -> None:
    pre = fitted(pa.table({"a": [1.0], "b": [2.0], "c": ["x"]}))
    with pytest.raises(TrainingError, match=r"columns b, c missing: .*a, b, c") as raised:
        pre.transform(pa.table({"a": [1.0]}))
    assert raised.value.sqlstate == "42703"


def test_wrong_kind_at_transform() -> None:
    pre = fitted(pa.table({"n": [1.0, 2.0]}))
    with pytest.raises(TrainingError, match="'n' holds text that is not a number") as raised:
        pre.transform(pa.table({"n": ["many"]}))
    assert raised.value.sqlstate == "22023"


def test_table_from_rows_per_column() -> None:
    table = pa.table(
        {
            "area": [50.0, None, 70.0],
            "city": ["paris", "lyon", None],
            "rooms": pa.array([[1, 2], [3], None], pa.list_(pa.int16())),
            "garden": [True, False, True],
        }
    )
    pre = fitted(table)
    rows: list[list[Any]] = [[50.0, "paris", [1, 2], True], [None, "lyon", "{3,NULL}", False]]
    np.testing.assert_array_equal(
        pre.transform(pre.table_from_rows(rows)), pre.transform(table)[:2]
    )


def test_table_from_rows_flat_numbers() -> None:
    images = np.random.default_rng(5).integers(0, 17, size=(10, 64)).astype(np.int16)
    table = pa.table({"image": pa.array(list(images), pa.list_(pa.int16())), "n": list(range(10))})
    pre = fitted(table)
    flat = [[*map(int, images[0]), 0]]
    per_column = [[list(images[0]), 0]]
    expected = pre.transform(table)[:1]
    np.testing.assert_array_equal(pre.transform(pre.table_from_rows(flat)), expected)
    np.testing.assert_array_equal(pre.transform(pre.table_from_rows(per_column)), expected)


def test_table_from_rows_wrong_length_says_what_is_expected() -> None:
    table = pa.table({"image": pa.array([[1, 2, 3]], pa.list_(pa.int16())), "n": [1]})
    pre = fitted(table)
    with pytest.raises(TrainingError) as raised:
        pre.table_from_rows([[1, 2, 3]])
    assert raised.value.sqlstate == "22023"
    assert str(raised.value) == (
        "got 3 feature values; expected 2 values, one per feature column in this order:"
        " image (an array of 3), n; or 4 numbers: image[0]..image[2], n"
    )


# -- defaults: what preprocess does not say --------------------------------------------------------


def test_dates_and_timestamps_get_their_parts() -> None:
    table = pa.table(
        {
            "born": pa.array([dt.date(2024, 2, 29), None, dt.date(1969, 12, 31)], pa.date32()),
            "seen": pa.array(
                [dt.datetime(2024, 1, 7, 13, 5), dt.datetime(1970, 1, 1), None],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pre = fitted(table)
    assert pre.feature_names == [
        "born", "year(born)", "month(born)", "day(born)", "dayofweek(born)",
        "seen", "year(seen)", "month(seen)", "day(seen)", "dayofweek(seen)", "hour(seen)",
    ]  # fmt: skip
    x = pre.transform(table)
    leap_day, new_years_eve = 19782 * 86400.0, -86400.0
    np.testing.assert_array_equal(x[0, :5], [leap_day, 2024, 2, 29, 4])  # a Thursday
    np.testing.assert_array_equal(x[2, :5], [new_years_eve, 1969, 12, 31, 3])  # a Wednesday
    np.testing.assert_array_equal(x[1, :5], (x[0, :5] + x[2, :5]) / 2)  # NULL: the means
    np.testing.assert_array_equal(x[0, 5:], [1704632700, 2024, 1, 7, 0, 13])  # a Sunday
    # Prediction takes the same values as text, as pgml.predict passes them.
    rows = [["2024-02-29", "2024-01-07 14:05:00+01:00"]]
    np.testing.assert_array_equal(pre.transform(pre.table_from_rows(rows)), x[:1])
    with duckdb.connect() as con:  # the parts are SQL's
        assert con.execute(
            "select year(d), month(d), day(d), dayofweek(d) from (select date '2024-02-29' d)"
        ).fetchone() == (2024, 2, 29, 4)


def test_text_is_one_hot_up_to_a_hundred_values_then_target_encoded() -> None:
    rows = 3000
    rng = np.random.default_rng(5)
    few = rng.choice([f"p{i}" for i in range(100)], rows)
    many = rng.choice([f"c{i}" for i in range(400)], rows)
    y = rng.normal(size=rows)
    table = pa.table({"few": few, "many": many})
    pre = fitted(table, y=y)
    assert pre.feature_names == [*sorted(f"few=p{i}" for i in range(100)), "many"]
    assert pre.description()["columns"]["many"]["encode"] == "target"
    assert pre.left_out == {}
    # Without a label there is nothing to target encode with: left out, with the reason.
    unlabelled = fitted(table)
    assert unlabelled.feature_names == sorted(f"few=p{i}" for i in range(100))
    assert unlabelled.left_out == {
        "many": "400 distinct values in 3,000 rows: too many to one-hot encode, and without a"
        ' label it cannot be target encoded; set its preprocess to {"encode": "ordinal"} to'
        " use it"
    }


def test_text_that_identifies_rows_is_left_out_unless_preprocess_names_it() -> None:
    rows = 1000
    rng = np.random.default_rng(6)
    table = pa.table(
        {
            "email": [f"u{i}@example.com" for i in range(rows)],
            "name": [f"name {i % 600}" for i in range(rows)],
            "plan": rng.choice(["free", "pro"], rows),
        }
    )
    y = rng.integers(0, 2, rows)
    pre = fitted(table, y=y)
    assert pre.feature_names == ["plan=free", "plan=pro"]
    assert [c.name for c in pre.columns] == ["plan"]
    assert pre.left_out == {
        "email": "it identifies rows rather than describing them (1,000 distinct values in"
        " 1,000 rows)",
        "name": "it identifies rows rather than describing them (600 distinct values in"
        " 1,000 rows)",
    }
    assert pre.notices()[0] == (
        "column 'email' left out of the features: it identifies rows rather than describing"
        " them (1,000 distinct values in 1,000 rows); to use it anyway, name it in preprocess,"
        ' e.g. {"email": {"encode": "target"}}'
    )
    # Prediction needs only the columns used.
    assert pre.transform(pa.table({"plan": ["pro"]})).tolist() == [[0.0, 1.0]]
    assert pre.transform(pre.table_from_rows([["pro"]])).tolist() == [[0.0, 1.0]]
    named = fitted(table, {"name": {}}, y)
    assert named.feature_names == ["name", "plan=free", "plan=pro"]
    assert named.description()["columns"]["name"]["encode"] == "target"
    with pytest.raises(TrainingError, match=r"no column is left to learn from: 'email'") as err:
        fitted(table.select(["email"]), y=y)
    assert err.value.sqlstate == "22000"


def test_the_primary_key_is_left_out_unless_preprocess_names_it() -> None:
    table = pa.table({"id": pa.array(range(1, 101), pa.int64()), "age": range(100)})
    columns = feature_columns(table.schema)
    pre = Preprocessor(columns, key=["id"]).fit(table)
    assert pre.feature_names == ["age"]
    assert pre.left_out == {"id": "the primary key: it names rows, it does not describe them"}
    assert 'name it in preprocess, e.g. {"id": {"encode": "native"}}' in pre.notices()[0]
    kept = Preprocessor(columns, {"id": {}}, key=["id"]).fit(table)
    assert kept.feature_names == ["id", "age"] and kept.left_out == {}


def test_the_default_scale_spares_one_hot_features_and_yields_to_preprocess() -> None:
    table = pa.table(
        {
            "age": [20.0, 30.0, 40.0, 50.0],
            "paid": [True, False, True, True],
            "color": ["red", "blue", "red", "red"],
            "kept": [1.0, 2.0, 3.0, 4.0],
        }
    )
    pre = Preprocessor(feature_columns(table.schema), {"kept": {"impute": "zero"},
                       "color": {"scale": "min_max"}}, scale="standard")  # fmt: skip
    x = pre.fit_transform(table)
    assert pre.feature_names == ["age", "paid", "color=blue", "color=red", "kept"]
    np.testing.assert_allclose(x[:, [0, 1, 4]].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(x[:, [0, 1, 4]].std(axis=0), 1)
    np.testing.assert_array_equal(x[:, 2:4], [[0, 1], [1, 0], [0, 1], [0, 1]])
    described = pre.description()["columns"]
    assert {name: c["scale"] for name, c in described.items()} == {
        "age": "standard", "paid": "standard", "color": "min_max", "kept": "standard"
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown scale"):
        Preprocessor(feature_columns(table.schema), scale="huge")


# -- the fitted object ---------------------------------------------------------------------------


def test_pickle_round_trip_transforms_identically() -> None:
    rng = np.random.default_rng(11)
    table = pa.table(
        {
            "a": pa.array(rng.normal(size=200), mask=rng.random(200) < 0.1),
            "city": pa.array(rng.choice(["x", "y", "z"], size=200)),
            "size": pa.array(rng.choice(["s", "m"], size=200)),
            "rooms": pa.array([list(range(i % 4)) for i in range(200)], pa.list_(pa.int8())),
            "when": pa.array(rng.integers(0, 10**6, size=200), pa.timestamp("s")),
        }
    )
    spec = {"a": {"impute": "median", "scale": "robust"}, "size": {"encode": "target"}}
    pre = fitted(table, spec, rng.normal(size=200))
    copy = pickle.loads(pickle.dumps(pre))
    assert copy.feature_names == pre.feature_names and copy.columns == pre.columns
    np.testing.assert_array_equal(copy.transform(table), pre.transform(table))
    np.testing.assert_array_equal(pre.transform(table), pre.transform(table))


BEFORE_DEFAULTS_COMMIT = "bea37f5"  # the trainer before column defaults, parts, out of fold
_OLD_MODEL = textwrap.dedent(
    """
    import datetime as dt, pickle, sys
    import numpy as np, pyarrow as pa
    from sklearn.linear_model import Ridge
    from trainer.column_kinds import feature_columns
    from trainer.model import Model
    from trainer.preprocess import Preprocessor

    rng = np.random.default_rng(2)
    rows = 300
    table = pa.table({
        "id": pa.array(range(rows), pa.int64()),
        "age": pa.array(rng.normal(40, 9, rows), mask=rng.random(rows) < 0.1),
        "city": rng.choice(["x", "y", "z"], rows),
        "shop": rng.choice([f"s{i}" for i in range(150)], rows),
        "born": pa.array([dt.date(2000, 1, 1) + dt.timedelta(days=int(d))
                          for d in rng.integers(0, 9000, rows)], pa.date32()),
        "rooms": pa.array([list(range(i % 4)) for i in range(rows)], pa.list_(pa.int8())),
    })
    y = rng.normal(size=rows)
    pre = Preprocessor(feature_columns(table.schema), {"shop": {"encode": "target"},
                       "age": {"scale": "standard"}})
    x = pre.fit_transform(table, y)
    model = Model("regression", "ridge", pre, Ridge().fit(x, y), "y")
    with open(sys.argv[1], "wb") as f:
        pickle.dump((model, table, pre.transform(table), model.predict(table)), f)
    """
)


def test_models_pickled_before_the_defaults_keep_loading_and_predicting(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", BEFORE_DEFAULTS_COMMIT, "trainer", "mirror"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    if archive.returncode != 0:
        pytest.fail(f"cannot read the trainer at {BEFORE_DEFAULTS_COMMIT}: {archive.stderr!r}")
    old = tmp_path / "old"
    (tmp_path / "old.tar").write_bytes(archive.stdout)
    with tarfile.open(tmp_path / "old.tar") as tar:
        tar.extractall(old, filter="data")
    saved = tmp_path / "model.pickle"
    subprocess.run(
        [sys.executable, "-c", _OLD_MODEL, str(saved)], cwd=old, env={"PYTHONPATH": str(old)},
        check=True, timeout=120,
    )  # fmt: skip
    model, table, features, predictions = pickle.loads(saved.read_bytes())
    assert isinstance(model, Model)
    pre = model.preprocessor
    assert pre.left_out == {} and [c.name for c in pre.columns][:2] == ["id", "age"]
    assert pre.feature_names[:6] == ["id", "age", "city=x", "city=y", "city=z", "shop"]
    np.testing.assert_array_equal(pre.transform(table), features)
    np.testing.assert_array_equal(model.predict(table), predictions)
    rows = [list(row.values()) for row in table.slice(0, 2).to_pylist()]
    np.testing.assert_allclose(model.predict_rows(rows), predictions[:2], rtol=1e-12)
    assert pre.description()["columns"]["born"] == {
        "encode": "native", "impute": "mean", "scale": "preserve", "features": 1
    }  # fmt: skip
    copy = pickle.loads(pickle.dumps(model))  # and saved again with this code
    np.testing.assert_array_equal(copy.preprocessor.transform(table), features)


def test_a_million_rows_of_twenty_numbers() -> None:
    rng = np.random.default_rng(0)
    rows = 1_000_000
    columns = {}
    for i in range(20):
        values = rng.normal(size=rows)
        if i % 2:
            columns[f"c{i}"] = pa.array(values, mask=rng.random(rows) < 0.01)
        else:
            columns[f"c{i}"] = pa.array((values * 100).astype(np.int32))
    table = pa.table(columns)
    pre = fitted(table, {"c1": {"scale": "standard"}})
    x = pre.transform(table)
    assert x.shape == (rows, 20) and x.flags.c_contiguous and np.isfinite(x).all()
