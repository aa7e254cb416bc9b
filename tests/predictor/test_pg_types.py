"""Types, text output and parameter input checked against what Postgres itself prints and sends."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import struct
import uuid
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor import pg_types
from predictor.binary_parameters import parse_binary_param
from predictor.column_text import text_column
from predictor.pg_types import PgType, pg_type_for_arrow, pg_type_for_duckdb
from predictor.text_parameters import InvalidParameter, parse_array_literal, parse_text_param
from predictor.value_text import float_text, interval_text, text_value

# -- type mapping ----------------------------------------------------------------------------------

ARROW_TYPES: list[tuple[pa.DataType, int]] = [
    (pa.int8(), 21),
    (pa.int16(), 21),
    (pa.uint8(), 21),
    (pa.int32(), 23),
    (pa.uint16(), 23),
    (pa.int64(), 20),
    (pa.uint32(), 20),
    (pa.uint64(), 1700),
    (pa.float16(), 700),
    (pa.float32(), 700),
    (pa.float64(), 701),
    (pa.decimal128(10, 2), 1700),
    (pa.decimal256(60, 0), 1700),
    (pa.bool_(), 16),
    (pa.string(), 25),
    (pa.large_string(), 25),
    (pa.string_view(), 25),
    (pa.binary(), 17),
    (pa.large_binary(), 17),
    (pa.binary(16), 2950),
    (pa.binary(8), 17),
    (pa.uuid(), 2950),
    (pa.json_(), 114),
    (pa.date32(), 1082),
    (pa.date64(), 1082),
    (pa.time64("us"), 1083),
    (pa.time32("ms"), 1083),
    (pa.timestamp("us"), 1114),
    (pa.timestamp("ns"), 1114),
    (pa.timestamp("us", tz="UTC"), 1184),
    (pa.timestamp("s", tz="Europe/Paris"), 1184),
    (pa.month_day_nano_interval(), 1186),
    (pa.duration("us"), 1186),
    (pa.list_(pa.int16()), 1005),
    (pa.list_(pa.int32()), 1007),
    (pa.large_list(pa.int64()), 1016),
    (pa.list_(pa.float32()), 1021),
    (pa.list_(pa.float64(), 3), 1022),
    (pa.list_(pa.string()), 1009),
    (pa.list_(pa.bool_()), 1000),
    (pa.list_(pa.decimal128(5, 1)), 1231),
    (pa.list_(pa.list_(pa.float64())), 1022),
    (pa.list_(pa.struct([("a", pa.int32())])), 199),
    (pa.list_(pa.null()), 1009),
    (pa.struct([("a", pa.int32())]), 114),
    (pa.map_(pa.string(), pa.int32()), 114),
    (pa.dictionary(pa.int8(), pa.string()), 25),
    (pa.null(), 25),
    (pa.sparse_union([pa.field("k", pa.int32())]), 25),
]


@pytest.mark.parametrize(("arrow_type", "oid"), ARROW_TYPES, ids=[str(t) for t, _ in ARROW_TYPES])
def test_pg_type_for_arrow(arrow_type: pa.DataType, oid: int) -> None:
    assert pg_type_for_arrow(arrow_type).oid == oid


def test_json_is_jsonb_when_told() -> None:
    assert pg_type_for_arrow(pa.json_(), jsonb=True).oid == 3802
    assert pg_type_for_arrow(pa.struct([("a", pa.int8())]), jsonb=True).oid == 3802
    assert pg_type_for_duckdb("JSON", jsonb=True).oid == 3802
    assert pg_type_for_duckdb("JSON[]", jsonb=True).oid == 3807


DUCKDB_TYPES = [
    ("BOOLEAN", 16),
    ("TINYINT", 21),
    ("UTINYINT", 21),
    ("SMALLINT", 21),
    ("USMALLINT", 23),
    ("INTEGER", 23),
    ("UINTEGER", 20),
    ("BIGINT", 20),
    ("UBIGINT", 1700),
    ("HUGEINT", 1700),
    ("BIGNUM", 1700),
    ("FLOAT", 700),
    ("DOUBLE", 701),
    ("DECIMAL(10,2)", 1700),
    ("decimal(38, 10)", 1700),
    ("VARCHAR", 25),
    ("BLOB", 17),
    ("DATE", 1082),
    ("TIME", 1083),
    ("TIME WITH TIME ZONE", 1083),  # Arrow carries no offset: sent as time
    ("TIMESTAMP", 1114),
    ("TIMESTAMP_NS", 1114),
    ("TIMESTAMP WITH TIME ZONE", 1184),
    ("TIMESTAMPTZ", 1184),
    ("INTERVAL", 1186),
    ("UUID", 2950),
    ("JSON", 114),
    ("SMALLINT[]", 1005),
    ("INTEGER[]", 1007),
    ("BIGINT[]", 1016),
    ("FLOAT[]", 1021),
    ("DOUBLE[3]", 1022),
    ("VARCHAR[]", 1009),
    ("BOOLEAN[]", 1000),
    ("DECIMAL(5,1)[]", 1231),
    ("DOUBLE[][]", 1022),
    ("STRUCT(a INTEGER, b VARCHAR)", 114),
    ("STRUCT(a INTEGER)[]", 199),
    ("MAP(VARCHAR, INTEGER)", 114),
    ("ENUM('x', 'y')", 25),
    ("UNION(k INTEGER)", 25),
    ("BIT", 25),
    ("NULL", 25),
    ("SOMETHING_NEW", 25),
]


@pytest.mark.parametrize(("name", "oid"), DUCKDB_TYPES)
def test_pg_type_for_duckdb(name: str, oid: int) -> None:
    assert pg_type_for_duckdb(name).oid == oid


def test_sizes_and_names_are_postgres_ones() -> None:
    assert pg_type_for_arrow(pa.int64()) == PgType(20, 8, "int8")
    assert pg_type_for_arrow(pa.float64()) == PgType(701, 8, "float8")
    assert pg_type_for_arrow(pa.string()) == PgType(25, -1, "text")
    assert pg_type_for_arrow(pa.list_(pa.float64())) == PgType(1022, -1, "_float8")
    assert pg_type_for_duckdb("TIMESTAMP WITH TIME ZONE") == PgType(1184, 8, "timestamptz")
    assert pg_types.pg_type(1007).name == "_int4"
    assert pg_types.pg_type(424242) == pg_types.UNKNOWN


# -- text output -----------------------------------------------------------------------------------

# float8 and float4 values (as float.hex) and the text Postgres 15 printed for them. Note the
# 17-digit outputs above 2**54: Postgres never prints a decimal lying halfway to a neighbour.
POSTGRES_FLOAT8 = [
    ("0x0.0p+0", "0"),
    ("-0x0.0p+0", "-0"),
    ("0x1.0000000000000p+0", "1"),
    ("-0x1.8000000000000p+0", "-1.5"),
    ("0x1.999999999999ap-4", "0.1"),
    ("0x1.5555555555555p-2", "0.3333333333333333"),
    ("0x1.a36e2eb1c432dp-14", "0.0001"),
    ("0x1.a36e2eb1c432cp-14", "9.999999999999999e-05"),
    ("0x1.4f8b588e368f1p-17", "1e-05"),
    ("0x1.421f5f40d8376p-23", "1.5e-07"),
    ("0x1.b7cdfd9d7bdbbp-34", "1e-10"),
    ("0x1.6bcc41e900000p+46", "100000000000000"),
    ("0x1.6bcc41e8fffffp+46", "99999999999999.98"),
    ("0x1.c6bf526340000p+49", "1e+15"),
    ("0x1.c12218377de66p+46", "123456789012345.6"),
    ("0x1.1c37937e08000p+53", "1e+16"),
    ("0x1.0000000000000p+53", "9.007199254740992e+15"),
    ("0x1.0000000000000p+54", "1.8014398509481984e+16"),
    ("0x1.0f0cf064dd592p+73", "1e+22"),
    ("0x1.52d02c7e14af6p+76", "9.999999999999999e+22"),
    ("0x0.0000000000001p-1022", "5e-324"),
    ("0x1.0000000000000p-1022", "2.2250738585072014e-308"),
    ("0x1.fffffffffffffp+1023", "1.7976931348623157e+308"),
    ("0x1.7681cc9b2df96p+31", "3141592653.589793"),
    ("0x1.d4223fc1f977bp+34", "31415926535.89793"),
    ("0x1.6fee0e1ac0000p+33", "12345678901.5"),
    ("0x1.4a852a42320d4p+47", "181705388398854.62"),
    ("0x1.81f91d2ef7e20p+55", "5.4320884885483776e+16"),
    ("0x1.fb53a7d138d62p+55", "7.1399896713554704e+16"),
    ("0x1.7fe1ffde7078ap+54", "2.7013351286251048e+16"),
    ("0x1.2a309f65354aep+57", "1.6786600843140038e+17"),
    ("0x1.dc911e9bef120p+55", "6.7070824782727424e+16"),
]
POSTGRES_FLOAT4 = [
    ("0x1.86a0000000000p+16", "100000"),
    ("0x1.e848000000000p+19", "1e+06"),
    ("0x1.e240000000000p+16", "123456"),
    ("0x1.2d68700000000p+20", "1.234567e+06"),
    ("0x1.19999a0000000p+0", "1.1"),
    ("0x1.4f8b580000000p-17", "1e-05"),
    ("0x1.a36e2e0000000p-14", "0.0001"),
    ("0x1.fffffe0000000p+127", "3.4028235e+38"),
    ("0x1.0000000000000p-149", "1e-45"),
    ("0x1.99999a0000000p-4", "0.1"),
    ("0x1.0000000000000p+24", "1.6777216e+07"),
    ("0x1.0000000000000p+25", "3.3554432e+07"),
    ("0x1.d002000000000p+26", "1.21636864e+08"),
    ("0x1.35ef9c0000000p+25", "4.0623928e+07"),
    ("0x1.addbd80000000p+27", "2.2536979e+08"),
    ("0x1.e847fe0000000p+19", "999999.94"),
]


@pytest.mark.parametrize(("value", "text"), POSTGRES_FLOAT8)
def test_float8_text_as_postgres(value: str, text: str) -> None:
    x = float.fromhex(value)
    assert float_text(x) == text
    assert text_value(x) == text.encode()
    assert text_column(pa.array([x, None])).to_pylist() == [text, None]


@pytest.mark.parametrize(("value", "text"), POSTGRES_FLOAT4)
def test_float4_text_as_postgres(value: str, text: str) -> None:
    x = float.fromhex(value)
    assert float_text(x, bits=32) == text
    assert text_column(pa.array([x], pa.float32())).to_pylist() == [text]


def test_non_finite_floats() -> None:
    values = [math.nan, math.inf, -math.inf, None, 1.0]
    expected = ["NaN", "Infinity", "-Infinity", None, "1"]
    assert text_column(pa.array(values)).to_pylist() == expected
    assert text_column(pa.array(values, pa.float32())).to_pylist() == expected
    assert [text_value(v) for v in values] == [e and e.encode() for e in expected]


def python_shortest(x: float) -> tuple[str, int]:
    """Shortest round-trip digits and decimal exponent, from Python's repr."""
    d = Decimal(repr(abs(x))).normalize()
    return "".join(map(str, d.as_tuple().digits)), d.adjusted()


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50))
def test_float_column_equals_value_by_value(values: list[float]) -> None:
    assert text_column(pa.array(values)).to_pylist() == [float_text(v) for v in values]
    f32 = [float(np.float32(v)) for v in values if abs(v) < 3.4e38 or not math.isfinite(v)]
    column = text_column(pa.array(f32, pa.float32())).to_pylist()
    assert column == [float_text(v, bits=32) for v in f32]


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-(2.0**54), max_value=2.0**54))
def test_float_digits_are_pythons_shortest_below_2_54(x: float) -> None:
    if x == 0:
        return
    text = float_text(x)
    ours = Decimal(text.lstrip("-")).normalize()
    digits, exponent = python_shortest(x)
    assert ("".join(map(str, ours.as_tuple().digits)), ours.adjusted()) == (digits, exponent)
    assert ("e" in text) == (not -4 <= exponent < 15)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_text_reads_back(x: float) -> None:
    assert float(float_text(x)) == x


TEXT_VALUES: list[tuple[Any, str]] = [
    (True, "t"),
    (False, "f"),
    (0, "0"),
    (-(2**63), "-9223372036854775808"),
    (Decimal("1.50"), "1.50"),
    (Decimal("1E+20"), "100000000000000000000"),
    (Decimal("-1E-7"), "-0.0000001"),
    (Decimal("NaN"), "NaN"),
    (Decimal("Infinity"), "Infinity"),
    (Decimal("-Infinity"), "-Infinity"),
    ("ü text", "ü text"),
    (b"\x00\xff", "\\x00ff"),
    (b"", "\\x"),
    (dt.date(2024, 1, 2), "2024-01-02"),
    (dt.time(12, 0, 1, 500000), "12:00:01.5"),
    (dt.time(12, 0), "12:00:00"),
    (dt.datetime(2024, 1, 2, 3, 4, 5, 120000, tzinfo=dt.UTC), "2024-01-02 03:04:05.12+00"),
    (
        dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "2024-01-02 03:04:05+00",
    ),
    (dt.datetime(2024, 1, 2), "2024-01-02 00:00:00"),
    (dt.timedelta(days=1, seconds=-1), "23:59:59"),
    (dt.timedelta(days=-1, seconds=-1), "-1 days -00:00:01"),
    (uuid.UUID(int=5), "00000000-0000-0000-0000-000000000005"),
    ({"a": 1, "b": [1.5, None], "c": math.nan}, '{"a": 1, "b": [1.5, null], "c": "NaN"}'),
    ([1, None, 3], "{1,NULL,3}"),
    ([[1, 2], [3, 4]], "{{1,2},{3,4}}"),
    ([], "{}"),
    # Postgres: select array['', 'a b', 'NULL', 'null', 'x,y', 'q"', 'b\', 'ü', '{']
    (
        ["", "a b", "NULL", "null", "x,y", 'q"', "b\\", "ü", "{"],
        '{"","a b","NULL","null","x,y","q\\"","b\\\\",ü,"{"}',
    ),
    ([dt.datetime(2024, 1, 1)], '{"2024-01-01 00:00:00"}'),
    ([b"\x01"], '{"\\\\x01"}'),
    ([1.5, math.nan, -math.inf], "{1.5,NaN,-Infinity}"),
    ([True, False], "{t,f}"),
    (np.int64(7), "7"),
    (np.float32(1.5), "1.5"),
]


@pytest.mark.parametrize(("value", "text"), TEXT_VALUES)
def test_text_value(value: Any, text: str) -> None:
    assert text_value(value) == text.encode()


def test_text_value_of_none_is_null() -> None:
    assert text_value(None) is None


def test_lone_surrogates_cannot_be_sent() -> None:
    assert text_value("a\ud800") == b"a?"


# Postgres: select interval '1 year 2 months 3 days 04:05:06.789', ... (intervalstyle postgres)
INTERVALS = [
    ((14, 3, 14_706_789_000), "1 year 2 mons 3 days 04:05:06.789"),
    ((0, -1, -1_000_000), "-1 days -00:00:01"),
    ((0, 0, 0), "00:00:00"),
    ((-12, 0, 0), "-1 years"),
    ((0, 0, 90_000_000_000), "25:00:00"),
    ((0, 1, -1_000_000), "1 day -00:00:01"),
    ((-3, 4, 0), "-3 mons +4 days"),
    ((-3, 0, 1_000_000), "-3 mons +00:00:01"),
    ((24, 2, 0), "2 years 2 days"),
    ((1, 1, 0), "1 mon 1 day"),
]


@pytest.mark.parametrize(("parts", "text"), INTERVALS)
def test_interval_text(parts: tuple[int, int, int], text: str) -> None:
    assert interval_text(*parts) == text
    months, days, micros = parts
    column = pa.array([pa.scalar((months, days, micros * 1000), pa.month_day_nano_interval())])
    assert text_column(column).to_pylist() == [text]


def test_text_column_temporal_edges() -> None:
    days = pa.array([0, 2**31 - 1, -(2**31 - 1), -719162 - 366, 2932896 + 10, None], pa.int32())
    assert text_column(days.cast(pa.date32())).to_pylist() == [
        "1970-01-01",
        "infinity",
        "-infinity",
        "0001-01-01 BC",
        "10000-01-10",
        None,
    ]
    micros = pa.array([0, 2**63 - 1, -(2**63 - 1), -62135596800_000000 - 400 * 86400_000000])
    assert text_column(micros.cast(pa.timestamp("us"))).to_pylist() == [
        "1970-01-01 00:00:00",
        "infinity",
        "-infinity",
        "0002-11-28 00:00:00 BC",
    ]
    aware = pa.array([1_500_000, None], pa.int64()).cast(pa.timestamp("us", tz="Etc/UTC"))
    assert text_column(aware).to_pylist() == ["1970-01-01 00:00:01.5+00", None]
    nanos = pa.array([1_234_567_891], pa.int64()).cast(pa.timestamp("ns"))
    assert text_column(nanos).to_pylist() == ["1970-01-01 00:00:01.234567"]
    seconds = pa.array([86399], pa.int64()).cast(pa.timestamp("s", tz="Europe/Paris"))
    assert text_column(seconds).to_pylist() == ["1970-01-01 23:59:59+00"]
    times = pa.array([dt.time(1, 2, 3, 4000), dt.time(0, 0), None])
    assert text_column(times).to_pylist() == ["01:02:03.004", "00:00:00", None]
    durations = pa.array([dt.timedelta(days=2, microseconds=1), None])
    assert text_column(durations).to_pylist() == ["48:00:00.000001", None]


def test_text_column_matches_text_value() -> None:
    """Every vectorised conversion gives what the value-by-value one gives."""
    columns = [
        pa.array([1, None, -5], pa.int8()),
        pa.array([2**64 - 1, 0, None], pa.uint64()),
        pa.array([True, None, False]),
        pa.array([Decimal("1.50"), None, Decimal("-0.01")], pa.decimal128(10, 2)),
        pa.array([Decimal("100"), None], pa.decimal128(10, -2)),
        pa.array(["ü", None, ""]),
        pa.array(["a", None], pa.string_view()),
        pa.array([b"\x00\xff", None, b""]),
        pa.array([b"ab", None], pa.binary_view()),
        pa.array([b"abc", None], pa.binary(3)),
        pa.array([dt.date(2024, 2, 29), None]),
        pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 6), None]),
        pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), None]),
        pa.array([[1.5, None], None, []], pa.list_(pa.float64())),
        pa.array([["a b", "NULL", 'x"y', None], None], pa.large_list(pa.string())),
        pa.array([[[1, 2], [3]], None], pa.list_(pa.list_(pa.int32()))),
        pa.array([[1, 2], None], pa.list_(pa.int64(), 2)),
        pa.array([[{"a": 1}], None], pa.list_(pa.struct([("a", pa.int32())]))),
        pa.array([[dt.date(2024, 1, 1)]]),
        pa.array([{"a": 1, "b": "x"}, None]),
        pa.array([{"a": 1.5}], pa.struct([("a", pa.float32())])),
    ]
    for column in columns:
        expected = [text_value(v) for v in column.to_pylist()]
        texts = text_column(column).to_pylist()
        assert [None if t is None else t.encode() for t in texts] == expected, column.type


def test_text_column_of_other_shapes() -> None:
    uuids = pa.array([uuid.UUID(int=2**128 - 1).bytes, None], pa.binary(16))
    assert text_column(uuids).to_pylist() == ["ffffffff-ffff-ffff-ffff-ffffffffffff", None]
    extension = pa.ExtensionArray.from_storage(pa.uuid(), uuids)
    assert text_column(extension).to_pylist() == ["ffffffff-ffff-ffff-ffff-ffffffffffff", None]
    encoded = pa.array(["x", "y", None, "x"]).dictionary_encode()
    assert text_column(encoded).to_pylist() == ["x", "y", None, "x"]
    maps = pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int32()))
    assert text_column(maps).to_pylist() == ['{"k": 1}', None]
    assert text_column(pa.nulls(2)).to_pylist() == [None, None]
    chunked = pa.chunked_array([[1, 2], [3]])
    assert text_column(chunked).to_pylist() == ["1", "2", "3"]
    sliced = pa.array([b"\x01", None, b"\x02\x03", b"\x04"]).slice(1, 2)
    assert text_column(sliced).to_pylist() == [None, "\\x0203"]
    sliced_lists = pa.array([[1], [2, 3], None, [4]]).slice(1, 3)
    assert text_column(sliced_lists).to_pylist() == ["{2,3}", None, "{4}"]


# -- parameters in text format ---------------------------------------------------------------------

TEXT_PARAMS: list[tuple[bytes, int, Any]] = [
    (b"hello", 0, "hello"),
    (b"hello", 25, "hello"),
    (b"x", 1043, "x"),
    (b"42", 21, 42),
    (b" -7 ", 23, -7),
    (b"9223372036854775807", 20, 2**63 - 1),
    (b"1.5", 701, 1.5),
    (b"-Infinity", 701, -math.inf),
    (b"1e-5", 700, 1e-5),
    (b"inf", 700, math.inf),
    (b"4294967295", 26, 2**32 - 1),
    (b"12.50", 1700, Decimal("12.50")),
    (b"NaN", 1700, Decimal("NaN")),
    (b"t", 16, True),
    (b"TRUE", 16, True),
    (b"yes", 16, True),
    (b"on", 16, True),
    (b"1", 16, True),
    (b"f", 16, False),
    (b"of", 16, False),
    (b"No", 16, False),
    (b"0", 16, False),
    (b"{1.5,NULL,-2}", 1022, [1.5, None, -2.0]),
    (b"{1,2,3}", 1007, [1, 2, 3]),
    (b"{{1,2},{3,4}}", 1016, [[1, 2], [3, 4]]),
    (b"{{{{{{1}}}}}}", 1007, [[[[[[1]]]]]]),
    (b"[0:1]={1,2}", 1005, [1, 2]),
    (b"{}", 1009, []),
    (
        b'{"a b","NULL",NULL,"q\\"",b\\,c , " d ",a b,c\\ }',
        1009,
        ["a b", "NULL", None, 'q"', "b,c", " d ", "a b", "c "],
    ),
    (b"{t,f}", 1000, [True, False]),
    (b"{1.10}", 1231, [Decimal("1.10")]),
    (b'{"a": 1}', 114, '{"a": 1}'),
    (b'{"a": 1}', 3802, '{"a": 1}'),
    (b"\\x00ff", 17, b"\x00\xff"),
    (b"a\\\\b\\000", 17, b"a\\b\x00"),
    (b"2024-01-02", 1082, dt.date(2024, 1, 2)),
    (b"infinity", 1082, "infinity"),
    (b"2024-01-02 03:04:05", 1114, dt.datetime(2024, 1, 2, 3, 4, 5)),
    (b"2024-01-02 03:04:05+00", 1184, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    (b"12:30:00", 1083, dt.time(12, 30)),
    (b"00000000-0000-0000-0000-000000000005", 2950, uuid.UUID(int=5)),
    (b"1 day", 1186, "1 day"),
    (b"anything", 424242, "anything"),
]


@pytest.mark.parametrize(("data", "oid", "value"), TEXT_PARAMS)
def test_parse_text_param(data: bytes, oid: int, value: Any) -> None:
    parsed = parse_text_param(data, oid)
    if isinstance(value, Decimal) and value.is_nan():
        assert isinstance(parsed, Decimal) and parsed.is_nan()
    else:
        assert parsed == value
        assert type(parsed) is type(value)


def test_null_param_is_none() -> None:
    assert parse_text_param(None, 23) is None
    assert parse_binary_param(None, 23) is None


@pytest.mark.parametrize(
    ("data", "oid", "sqlstate"),
    [
        (b"abc", 23, "22P02"),
        (b"1.5", 23, "22P02"),
        (b"32768", 21, "22003"),
        (b"2147483648", 23, "22003"),
        (b"x", 701, "22P02"),
        (b"1_0", 701, "22P02"),
        (b"1e400", 701, "22003"),
        (b"1e39", 700, "22003"),
        (b"-1", 26, "22P02"),
        (b"9" * 5000, 20, "22003"),
        (b"9" * 5000, 26, "22P02"),
        (b"{" * 7 + b"1" + b"}" * 7, 1007, "54000"),
        (b"{" * 5000, 1007, "54000"),
        (b"x", 26, "22P02"),
        (b"1.2.3", 1700, "22P02"),
        (b"maybe", 16, "22P02"),
        (b"o", 16, "22P02"),
        (b"{1,2", 1007, "22P02"),
        (b"1,2", 1007, "22P02"),
        (b"{1,}", 1007, "22P02"),
        (b"{1}x", 1007, "22P02"),
        (b'{"a}', 1009, "22P02"),
        (b'{"x"y}', 1009, "22P02"),
        (b'{x"y"}', 1009, "22P02"),
        (b"{,}", 1009, "22P02"),
        (b"{a,b}", 1007, "22P02"),
        (b"\\xzz", 17, "22P02"),
        (b"\\q", 17, "22P02"),
        (b"not-a-uuid", 2950, "22P02"),
        (b"\xff", 25, "22021"),
    ],
)
def test_bad_text_params(data: bytes, oid: int, sqlstate: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_text_param(data, oid)
    assert info.value.sqlstate == sqlstate


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.text(
                st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8
            ),
        ),
        max_size=6,
    )
)
def test_text_array_round_trip(values: list[str | None]) -> None:
    assert parse_text_param(text_value(values), 1009) == values


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats()), max_size=6))
def test_float_array_round_trip(values: list[float | None]) -> None:
    back = parse_text_param(text_value(values), 1022)
    assert [bits(v) for v in back] == [bits(v) for v in values]


def bits(value: float | None) -> bytes | None:
    """Compare floats bit for bit, every NaN alike."""
    if value is None:
        return None
    return b"nan" if math.isnan(value) else struct.pack(">d", value)


def test_parse_array_literal_keeps_strings() -> None:
    assert parse_array_literal('{ a , "b" ,NULL,"NULL"}') == ["a", "b", None, "NULL"]


# -- parameters in binary format -------------------------------------------------------------------


def binary_array(
    element_oid: int, elements: list[bytes | None], dims: list[int] | None = None
) -> bytes:
    dims = dims if dims is not None else [len(elements)]
    has_null = int(any(e is None for e in elements))
    out = struct.pack(">iiI", len(dims), has_null, element_oid)
    for size in dims:
        out += struct.pack(">ii", size, 1)
    for e in elements:
        out += struct.pack(">i", -1) if e is None else struct.pack(">i", len(e)) + e
    return out


def numeric_binary(ndigits: int, weight: int, sign: int, dscale: int, digits: list[int]) -> bytes:
    return struct.pack(f">hhHh{len(digits)}h", ndigits, weight, sign, dscale, *digits)


BINARY_PARAMS: list[tuple[bytes, int, Any]] = [
    (struct.pack(">h", -2), 21, -2),
    (struct.pack(">i", 2**31 - 1), 23, 2**31 - 1),
    (struct.pack(">q", -(2**63)), 20, -(2**63)),
    (struct.pack(">I", 4000000000), 26, 4000000000),
    (struct.pack(">f", 1.5), 700, 1.5),
    (struct.pack(">d", -0.1), 701, -0.1),
    (b"\x01", 16, True),
    (b"\x00", 16, False),
    ("ü".encode(), 25, "ü"),
    (b"v", 1043, "v"),
    (b"c", 1042, "c"),
    (b"\x00\x01", 17, b"\x00\x01"),
    (b'{"a":1}', 114, '{"a":1}'),
    (b'\x01{"a":1}', 3802, '{"a":1}'),
    (uuid.UUID(int=7).bytes, 2950, uuid.UUID(int=7)),
    (struct.pack(">i", 8766), 1082, dt.date(2024, 1, 1)),
    (struct.pack(">i", 2**31 - 1), 1082, "infinity"),
    (struct.pack(">q", 1_500_000), 1114, dt.datetime(2000, 1, 1, 0, 0, 1, 500000)),
    (struct.pack(">q", 0), 1184, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)),
    (struct.pack(">q", -(2**63)), 1114, "-infinity"),
    (struct.pack(">q", 3_600_000_001), 1083, dt.time(1, 0, 0, 1)),
    (numeric_binary(2, 0, 0, 2, [12, 5000]), 1700, Decimal("12.50")),  # 12.50
    (numeric_binary(1, 1, 0x4000, 0, [1]), 1700, Decimal("-10000")),
    (numeric_binary(1, -1, 0, 6, [12]), 1700, Decimal("0.001200")),
    (numeric_binary(3, 1, 0, 2, [1, 2345, 6700]), 1700, Decimal("12345.67")),
    (numeric_binary(0, 0, 0, 0, []), 1700, Decimal("0")),
    (numeric_binary(0, 0, 0xC000, 0, []), 1700, "NaN"),
    (numeric_binary(0, 0, 0xD000, 0, []), 1700, Decimal("Infinity")),
    (binary_array(701, [struct.pack(">d", 1.5), None]), 1022, [1.5, None]),
    (binary_array(23, [struct.pack(">i", 1), struct.pack(">i", 2)]), 1007, [1, 2]),
    (binary_array(20, [struct.pack(">q", n) for n in range(4)], [2, 2]), 1016, [[0, 1], [2, 3]]),
    (binary_array(25, [b"a", b"", None]), 1009, ["a", "", None]),
    (binary_array(16, [b"\x01"]), 1000, [True]),
    (struct.pack(">iiI", 0, 0, 23), 1007, []),
]


@pytest.mark.parametrize(("data", "oid", "value"), BINARY_PARAMS)
def test_parse_binary_param(data: bytes, oid: int, value: Any) -> None:
    parsed = parse_binary_param(data, oid)
    if value == "NaN":
        assert isinstance(parsed, Decimal) and parsed.is_nan()
    else:
        assert parsed == value
        assert type(parsed) is type(value)
        if isinstance(value, Decimal):
            assert str(parsed) == str(value)


@pytest.mark.parametrize(
    ("data", "oid", "match"),
    [
        (b"\x00\x01\x02", 23, "int4: 3 bytes, expected 4"),
        (b"\x00", 20, "int8: 1 bytes, expected 8"),
        (b"", 16, "bool"),
        (b"\x02{}", 3802, "jsonb version"),
        (b"\x00" * 8, 1186, "binary format is not supported for parameters of type interval"),
        (b"\x00" * 4, 424242, "oid 424242"),
        (b"\x00" * 5, 1022, "_float8"),
        (binary_array(23, [struct.pack(">i", 1)]), 1016, "element type 23"),
        (binary_array(20, [b"\x00" * 7]), 1016, "int8"),
        (binary_array(20, [struct.pack(">q", 1)]) + b"x", 1016, "_int8"),
        (struct.pack(">iiI", 7, 0, 20), 1016, "_int8"),
        (struct.pack(">iiIii", 1, 0, 20, 1 << 30, 1), 1016, "_int8"),
        (numeric_binary(1, 0, 0x1234, 0, [1]), 1700, "numeric"),
        (numeric_binary(1, 0, 0, 0, [10000]), 1700, "digit"),
        (b"\x00\x01", 1700, "numeric"),
        (struct.pack(">q", -1), 1083, "time out of range"),
    ],
)
def test_bad_binary_params(data: bytes, oid: int, match: str) -> None:
    with pytest.raises(InvalidParameter, match=match):
        parse_binary_param(data, oid)


@settings(max_examples=500, deadline=None)
@given(oid=st.sampled_from(sorted(pg_types.BY_OID)), data=st.binary(max_size=40))
def test_random_binary_params_raise_only_invalid_parameter(oid: int, data: bytes) -> None:
    with contextlib.suppress(InvalidParameter):
        parse_binary_param(data, oid)


@settings(max_examples=500, deadline=None)
@given(oid=st.sampled_from(sorted(pg_types.BY_OID)), data=st.binary(max_size=20))
def test_random_text_params_raise_only_invalid_parameter(oid: int, data: bytes) -> None:
    with contextlib.suppress(InvalidParameter):
        parse_text_param(data, oid)
