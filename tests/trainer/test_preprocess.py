"""Tests for turning table columns into features: encode, impute, scale, prediction input."""

from __future__ import annotations

import datetime as dt
import pickle
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
    pre = fitted(table)
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
        fitted(table)
    assert raised.value.sqlstate == "22000"
    assert fitted(table, {"key": {"encode": "ordinal"}}).feature_names == ["key"]


@pytest.mark.parametrize("encode", ["ordinal", "native"])
def test_ordinal_codes_are_sorted_category_indices(encode: str) -> None:
    table = pa.table({"size": ["m", "s", "l", "m", None]})
    pre = fitted(table, {"size": {"encode": encode, "impute": "max"}})
    assert pre.feature_names == ["size"]
    np.testing.assert_array_equal(pre.transform(table)[:, 0], [1, 2, 0, 1, 2])
    np.testing.assert_array_equal(pre.transform(pa.table({"size": ["xl", "s"]}))[:, 0], [2, 2])


def test_target_encoding_is_the_label_mean_per_category() -> None:
    table = pa.table({"city": ["paris", "lyon", "paris", None, "lyon", "paris"]})
    y = np.array([10.0, 1.0, 20.0, 7.0, 3.0, 30.0])
    pre = fitted(table, {"city": {"encode": "target"}}, y)
    assert pre.feature_names == ["city"]
    np.testing.assert_array_equal(pre.transform(table)[:, 0], [20, 2, 20, 7, 2, 20])
    unseen = pre.transform(pa.table({"city": ["nice"]}))
    assert unseen[0, 0] == y.mean()


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
