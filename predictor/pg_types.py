"""DuckDB and Arrow types as Postgres types; values in Postgres text form, and parameters back."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.errors import SidecarError


class InvalidParameter(SidecarError):
    """A Bind parameter is not a valid value of its type, or its format is not supported."""

    sqlstate = "22P02"


@dataclass(frozen=True, slots=True)
class PgType:
    """A Postgres type as RowDescription and ParameterDescription name it."""

    oid: int
    size: int
    """pg_type.typlen: bytes of a fixed-size value, -1 for variable length."""
    name: str


BOOL = PgType(16, 1, "bool")
BYTEA = PgType(17, -1, "bytea")
NAME = PgType(19, 64, "name")
INT8 = PgType(20, 8, "int8")
INT2 = PgType(21, 2, "int2")
INT4 = PgType(23, 4, "int4")
TEXT = PgType(25, -1, "text")
OID = PgType(26, 4, "oid")
JSON = PgType(114, -1, "json")
FLOAT4 = PgType(700, 4, "float4")
FLOAT8 = PgType(701, 8, "float8")
UNKNOWN = PgType(705, -2, "unknown")
BPCHAR = PgType(1042, -1, "bpchar")
VARCHAR = PgType(1043, -1, "varchar")
DATE = PgType(1082, 4, "date")
TIME = PgType(1083, 8, "time")
TIMESTAMP = PgType(1114, 8, "timestamp")
TIMESTAMPTZ = PgType(1184, 8, "timestamptz")
INTERVAL = PgType(1186, 16, "interval")
TIMETZ = PgType(1266, 12, "timetz")
NUMERIC = PgType(1700, -1, "numeric")
UUID = PgType(2950, 16, "uuid")
JSONB = PgType(3802, -1, "jsonb")

_ARRAY_OIDS = {
    BOOL: 1000, BYTEA: 1001, NAME: 1003, INT2: 1005, INT4: 1007, TEXT: 1009, OID: 1028,
    BPCHAR: 1014, VARCHAR: 1015, INT8: 1016, FLOAT4: 1021, FLOAT8: 1022, TIMESTAMP: 1115,
    DATE: 1182, TIME: 1183, TIMESTAMPTZ: 1185, INTERVAL: 1187, NUMERIC: 1231, TIMETZ: 1270,
    UUID: 2951, JSON: 199, JSONB: 3807,
}  # fmt: skip
ARRAY_OF: dict[int, PgType] = {e.oid: PgType(a, -1, "_" + e.name) for e, a in _ARRAY_OIDS.items()}
"""The array type of each element type OID."""
ELEMENT_OF: dict[int, PgType] = {a: e for e, a in _ARRAY_OIDS.items()}
"""The element type of each array type OID."""
BY_OID: dict[int, PgType] = (
    {t.oid: t for t in _ARRAY_OIDS} | {t.oid: t for t in ARRAY_OF.values()} | {UNKNOWN.oid: UNKNOWN}
)


def array_of(element: PgType) -> PgType:
    """Return the array type of an element type (text[] for a type without one)."""
    return ARRAY_OF.get(element.oid) or ARRAY_OF[TEXT.oid]


# -- type mapping ---------------------------------------------------------------------------------


def pg_type_for_arrow(t: pa.DataType, *, jsonb: bool = False) -> PgType:
    """Return the Postgres type a column of Arrow type ``t`` is sent as.

    JSON (the ``arrow.json`` extension, structs and maps) is json, or jsonb when ``jsonb``.
    """
    json_type = JSONB if jsonb else JSON
    if isinstance(t, pa.BaseExtensionType):
        name = t.extension_name
        if name == "arrow.uuid":
            return UUID
        if name == "arrow.json":
            return json_type
        if name == "arrow.opaque" and getattr(t, "type_name", "") in ("bignum", "varint"):
            return NUMERIC
        return pg_type_for_arrow(t.storage_type, jsonb=jsonb)
    if pa.types.is_dictionary(t):
        return pg_type_for_arrow(t.value_type, jsonb=jsonb)
    if _is_list(t):
        return array_of(pg_type_for_arrow(_innermost(t), jsonb=jsonb))
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return json_type
    if pa.types.is_fixed_size_binary(t):
        return UUID if t.byte_width == 16 else BYTEA
    for test, pg in _ARROW_TESTS:
        if test(t):
            return pg
    return TEXT


_ARROW_TESTS: tuple[tuple[Callable[[pa.DataType], bool], PgType], ...] = (
    (pa.types.is_boolean, BOOL),
    (lambda t: t in (pa.int8(), pa.int16(), pa.uint8()), INT2),
    (lambda t: t in (pa.int32(), pa.uint16()), INT4),
    (lambda t: t in (pa.int64(), pa.uint32()), INT8),
    (lambda t: t == pa.uint64(), NUMERIC),
    (lambda t: t in (pa.float16(), pa.float32()), FLOAT4),
    (pa.types.is_float64, FLOAT8),
    (pa.types.is_decimal, NUMERIC),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), TEXT),
    (pa.types.is_string_view, TEXT),
    (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), BYTEA),
    (pa.types.is_binary_view, BYTEA),
    (pa.types.is_date, DATE),
    (pa.types.is_time, TIME),
    (lambda t: pa.types.is_timestamp(t) and t.tz is None, TIMESTAMP),
    (pa.types.is_timestamp, TIMESTAMPTZ),
    (pa.types.is_duration, INTERVAL),
    (pa.types.is_interval, INTERVAL),
)


def _is_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _innermost(t: pa.DataType) -> pa.DataType:
    while _is_list(t):
        t = t.value_type
    return t


_DUCKDB_NAMES: dict[str, PgType] = {
    **dict.fromkeys(("BOOLEAN", "BOOL", "LOGICAL"), BOOL),
    **dict.fromkeys(("TINYINT", "INT1", "SMALLINT", "INT2", "SHORT", "UTINYINT"), INT2),
    **dict.fromkeys(("INTEGER", "INT4", "INT", "SIGNED", "USMALLINT"), INT4),
    **dict.fromkeys(("BIGINT", "INT8", "LONG", "UINTEGER"), INT8),
    **dict.fromkeys(("HUGEINT", "INT128", "UBIGINT", "UHUGEINT", "BIGNUM", "VARINT"), NUMERIC),
    **dict.fromkeys(("DECIMAL", "NUMERIC"), NUMERIC),
    **dict.fromkeys(("FLOAT", "FLOAT4", "REAL"), FLOAT4),
    **dict.fromkeys(("DOUBLE", "FLOAT8", "DOUBLE PRECISION"), FLOAT8),
    **dict.fromkeys(("VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR"), TEXT),
    **dict.fromkeys(("BLOB", "BYTEA", "BINARY", "VARBINARY"), BYTEA),
    "DATE": DATE,
    "TIME": TIME,
    "TIME_NS": TIME,
    # DuckDB's Arrow export of TIMETZ drops the offset (12:00:00+02 arrives as 12:00:00).
    **dict.fromkeys(("TIME WITH TIME ZONE", "TIMETZ"), TIME),
    **dict.fromkeys(("TIMESTAMP", "DATETIME", "TIMESTAMP_US"), TIMESTAMP),
    **dict.fromkeys(("TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"), TIMESTAMP),
    **dict.fromkeys(("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"), TIMESTAMPTZ),
    "INTERVAL": INTERVAL,
    "UUID": UUID,
    "JSON": JSON,
}
_DUCKDB_ARRAY_SUFFIX = re.compile(r"\[\d*\]$")
_DUCKDB_JSON_KINDS = ("STRUCT", "MAP")


def pg_type_for_duckdb(type_name: str, *, jsonb: bool = False) -> PgType:
    """Return the Postgres type for a DuckDB type name, as ``DESCRIBE`` or ``.types`` spell it."""
    name = " ".join(type_name.strip().upper().split())
    if _DUCKDB_ARRAY_SUFFIX.search(name):
        while (m := _DUCKDB_ARRAY_SUFFIX.search(name)) is not None:
            name = name[: m.start()].rstrip()
        return array_of(pg_type_for_duckdb(name, jsonb=jsonb))
    base = name.split("(", 1)[0].strip()
    if base in _DUCKDB_JSON_KINDS:
        return JSONB if jsonb else JSON
    if base == "JSON":
        return JSONB if jsonb else JSON
    return _DUCKDB_NAMES.get(base, TEXT)


# -- one value as Postgres text --------------------------------------------------------------------

_INFINITY_TEXT = {math.inf: "Infinity", -math.inf: "-Infinity"}
_POSTGRES_EPOCH = dt.datetime(2000, 1, 1)
_POSTGRES_EPOCH_DATE = dt.date(2000, 1, 1)
_DAY_MICROS = 86_400_000_000


def text_value(value: Any) -> bytes | None:
    """Return one Python value in Postgres text output format; None stays NULL.

    A lone surrogate (never valid in Postgres text) is sent as '?'.
    """
    if value is None:
        return None
    return _text(value).encode(errors="replace")


def _text(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    match value:
        case bool():
            return "t" if value else "f"
        case int():
            return str(value)
        case float():
            return float_text(value)
        case Decimal():
            return decimal_text(value)
        case str():
            return value
        case bytes() | bytearray() | memoryview():
            return "\\x" + bytes(value).hex()
        case dt.datetime():
            return timestamp_text(value)
        case dt.date():
            return value.isoformat()
        case dt.time():
            return _trim_fraction(value.replace(tzinfo=None).isoformat(timespec="microseconds"))
        case dt.timedelta():
            micros = value // dt.timedelta(microseconds=1)
            days = abs(micros) // _DAY_MICROS * (1 if micros >= 0 else -1)
            return interval_text(0, days, micros - days * _DAY_MICROS)
        case uuid.UUID():
            return str(value)
        case dict():
            return json_text(value)
        case list() | tuple():
            return array_text(value)
    return str(value)


def float_text(value: float, *, bits: int = 64) -> str:
    """Return a float as Postgres 12+ prints it (float8, or float4 when ``bits`` is 32).

    Postgres prints the shortest digits that read back to the same value, but (built with
    Ryu's STRICTLY_SHORTEST off) never a decimal lying exactly halfway to a neighbouring
    float, which Python's repr may pick for magnitudes of 2**54 (float4: 2**25) and up.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return _INFINITY_TEXT[value]
    if bits == 32:
        value = float(np.float32(value))
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    if abs(value) < _FAST_DIGITS_BELOW[bits]:
        digits, exponent = _shortest_digits(abs(value), bits)
    else:
        digits, exponent = _open_interval_digits(abs(value), bits)
    return sign + _float_layout(digits, exponent, fixed_below=6 if bits == 32 else 15)


_FAST_DIGITS_BELOW = {64: float(2**54), 32: float(2**25)}


def _shortest_digits(value: float, bits: int) -> tuple[str, int]:
    """Return the shortest round-trip digits of a positive float and its decimal exponent."""
    if bits == 32:
        text = np.format_float_scientific(np.float32(value), unique=True, trim="-")
    else:
        text = repr(value)
    mantissa, _, exp_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    exponent = int(exp_text or 0) + len(whole) - 1
    digits = whole + fraction
    stripped = digits.lstrip("0")
    exponent -= len(digits) - len(stripped)
    return stripped.rstrip("0"), exponent


def _float_layout(digits: str, exponent: int, *, fixed_below: int) -> str:
    if -4 <= exponent < fixed_below:
        if exponent < 0:
            return f"0.{'0' * (-exponent - 1)}{digits}"
        whole, frac = digits[: exponent + 1], digits[exponent + 1 :]
        whole = whole.ljust(exponent + 1, "0")
        return f"{whole}.{frac}" if frac else whole
    rest = "." + digits[1:] if len(digits) > 1 else ""
    return f"{digits[0]}{rest}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _open_interval_digits(value: float, bits: int) -> tuple[str, int]:
    """Return the shortest digits strictly between the midpoints to the neighbouring floats.

    Among candidates of that length the closest to the value wins, ties to even, as in Ryu.
    """
    if bits == 32:
        f32 = np.float32(value)
        with np.errstate(over="ignore"):
            below = float(np.nextafter(f32, np.float32(0)))
            above = float(np.nextafter(f32, np.float32(np.inf)))
    else:
        below, above = math.nextafter(value, 0.0), math.nextafter(value, math.inf)
    exact = Fraction(value)
    low = (exact + Fraction(below)) / 2
    high = (exact + Fraction(above)) / 2 if math.isfinite(above) else exact + (exact - low)
    e10 = math.floor(math.log10(value))
    while Fraction(10) ** e10 > exact:
        e10 -= 1
    while Fraction(10) ** (e10 + 1) <= exact:
        e10 += 1
    for length in range(1, 18):
        scale = Fraction(10) ** (e10 - length + 1)
        nearest = round(exact / scale)
        inside = [c for c in (nearest - 1, nearest, nearest + 1) if low < c * scale < high]
        if inside:
            best = min(inside, key=lambda c: (abs(c * scale - exact), c % 2))
            text = str(best)
            exponent = e10 - length + len(text)
            return text.rstrip("0"), exponent
    raise AssertionError(f"no decimal found for {value!r}")  # 17 digits always suffice


def decimal_text(value: Decimal) -> str:
    """Return a Decimal as numeric prints it: no exponent, 'NaN', 'Infinity'."""
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "-Infinity" if value.is_signed() else "Infinity"
    return f"{value:f}"


def timestamp_text(value: dt.datetime) -> str:
    """Return a timestamp as Postgres prints it (ISO datestyle); aware ones in UTC with '+00'."""
    suffix = ""
    if value.tzinfo is not None:
        offset = value.utcoffset()
        value = value.replace(tzinfo=None) - (offset or dt.timedelta(0))
        suffix = "+00"
    return _trim_fraction(value.isoformat(sep=" ", timespec="microseconds")) + suffix


def _trim_fraction(text: str) -> str:
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def interval_text(months: int, days: int, micros: int) -> str:
    """Return an interval as Postgres prints it with intervalstyle 'postgres'."""
    years, months = int(months / 12), months - int(months / 12) * 12
    parts: list[str] = []
    before_negative = False
    for amount, unit in ((years, "year"), (months, "mon"), (days, "day")):
        if amount == 0:
            continue
        plus = "+" if before_negative and amount > 0 else ""
        parts.append(f"{plus}{amount} {unit}{'' if amount == 1 else 's'}")
        before_negative = amount < 0
    if not parts or micros != 0:
        sign = "-" if micros < 0 else ("+" if before_negative else "")
        hours, rest = divmod(abs(micros), 3_600_000_000)
        minutes, rest = divmod(rest, 60_000_000)
        seconds, fraction = divmod(rest, 1_000_000)
        clock = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
        parts.append(clock + (f".{fraction:06d}".rstrip("0") if fraction else ""))
    return " ".join(parts)


_ARRAY_QUOTE = re.compile(r'[{},"\\ \t\n\r\v\f]')


def array_text(values: list[Any] | tuple[Any, ...]) -> str:
    """Return a (nested) list as a Postgres array literal, quoting elements as array_out does."""
    items: list[str] = []
    for value in values:
        if value is None:
            items.append("NULL")
        elif isinstance(value, list | tuple):
            items.append(array_text(value))
        else:
            items.append(_array_element(_text(value)))
    return "{" + ",".join(items) + "}"


def _array_element(text: str) -> str:
    if text == "" or text.upper() == "NULL" or _ARRAY_QUOTE.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def json_text(value: Any) -> str:
    """Return a value as JSON text like jsonb prints it; non-finite floats become strings."""
    return json.dumps(_jsonable(value), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    match value:
        case None | bool() | int() | str():
            return value
        case float():
            return value if math.isfinite(value) else float_text(value)
        case dict():
            return {str(k): _jsonable(v) for k, v in value.items()}
        case list() | tuple():
            return [_jsonable(v) for v in value]
        case Decimal():
            return float(value) if value.is_finite() else decimal_text(value)
    return _text(value)


# -- a column as Postgres text, vectorised --------------------------------------------------------

_TEXT = pa.large_string()
_NULL_TEXT = pa.scalar("NULL", _TEXT)
_EMPTY = pa.scalar("", _TEXT)
_QUOTE = pa.scalar('"', _TEXT)
_INT64_MAX = np.iinfo(np.int64).max
_INT32_MAX = np.iinfo(np.int32).max
_HEX = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), np.uint8).reshape(256, 2)


def text_column(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return a column's values in Postgres text output format as a large_string array.

    Numbers, booleans, dates, times, timestamps, strings, bytea, uuid and lists of those are
    converted by Arrow and numpy kernels; intervals, structs and maps value by value.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    t = array.type
    if isinstance(t, pa.BaseExtensionType):
        storage = array.storage
        if t.extension_name == "arrow.uuid":
            return _uuid_text(storage)
        return text_column(storage)
    if pa.types.is_dictionary(t):
        return text_column(array.dictionary_decode())
    if pa.types.is_null(t):
        return pa.nulls(len(array), _TEXT)
    for test, convert in _COLUMN_TEXT:
        if test(t):
            return convert(array)
    return _each_value(array)


def _each_value(array: pa.Array) -> pa.Array:
    if pa.types.is_map(array.type):
        values: list[Any] = [None if v is None else dict(v) for v in array.to_pylist()]
        return pa.array([None if v is None else json_text(v) for v in values], _TEXT)
    if pa.types.is_struct(array.type):
        return pa.array([None if v is None else json_text(v) for v in array.to_pylist()], _TEXT)
    if pa.types.is_interval(array.type):
        return pa.array(
            [
                None if v is None else interval_text(v[0], v[1], _micros(v[2]))
                for v in array.to_pylist()
            ],
            _TEXT,
        )
    if pa.types.is_duration(array.type):
        micros = pc.cast(array, pa.duration("us"), safe=False).cast(pa.int64()).to_pylist()
        return pa.array([None if v is None else interval_text(0, 0, v) for v in micros], _TEXT)
    return pa.array([_maybe_text(v) for v in array.to_pylist()], _TEXT)


def _micros(nanoseconds: int) -> int:
    return nanoseconds // 1000 if nanoseconds >= 0 else -(-nanoseconds // 1000)


def _maybe_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _cast_text(array: pa.Array) -> pa.Array:
    return pc.cast(array, _TEXT)


def _bool_text(array: pa.Array) -> pa.Array:
    return pc.if_else(array, pa.scalar("t", _TEXT), pa.scalar("f", _TEXT))


# Arrow prints the shortest round-trip digits (as Postgres does below 2**54, float4 2**25), in
# fixed layout when the decimal exponent is in [-6, 10), else as 1.5e+10 / 1.5e-7. Postgres uses
# fixed layout for exponents in [-4, 15) (float4: [-4, 6)) and two exponent digits at least.
# Values whose exponent is clear from their magnitude keep Arrow's text (exponents -9 to -7 get
# their zero), the rest (near a power of ten, in the exponent bands the two disagree on, or large)
# are redone one by one.
_NEAR = 1e-5


def _float_text(array: pa.Array) -> pa.Array:
    bits = 64 if pa.types.is_float64(array.type) else 32
    if bits == 32 and not pa.types.is_float32(array.type):
        array = pc.cast(array, pa.float32())
    text = pc.cast(array, _TEXT)
    x = np.abs(array.to_numpy(zero_copy_only=False).astype(np.float64))
    valid = _validity(array)
    fixed_high = 10.0 ** min(10, 6 if bits == 32 else 15)
    with np.errstate(invalid="ignore"):
        as_arrow = (x == 0) | ((x >= 1e-4 * (1 + _NEAR)) & (x < fixed_high * (1 - _NEAR)))
        as_arrow |= (x > 0) & (x < 1e-9 * (1 - _NEAR))
        if bits == 64:
            as_arrow |= (x >= 1e15 * (1 + _NEAR)) & (x < _FAST_DIGITS_BELOW[64])
        padded = (x >= 1e-9 * (1 + _NEAR)) & (x < 1e-6 * (1 - _NEAR))
    finite = np.isfinite(x)
    if padded.any():
        fixed = pc.replace_substring_regex(text, pattern=r"e-([0-9])$", replacement=r"e-0\1")
        text = pc.if_else(pa.array(padded), fixed, text)
    nonfinite = ~finite if valid is None else ~finite & valid
    if nonfinite.any():
        values = array.to_numpy(zero_copy_only=False)
        words = np.where(np.isnan(values), "NaN", np.where(values > 0, "Infinity", "-Infinity"))
        text = pc.if_else(pa.array(nonfinite), pa.array(words, _TEXT), text)
    redo = ~(as_arrow | padded | ~finite)
    if redo.any():
        positions = np.flatnonzero(redo)
        values = array.take(pa.array(positions)).to_pylist()
        text = _scatter(
            text, positions, pa.array([float_text(v, bits=bits) for v in values], _TEXT)
        )
    return text


def _validity(array: pa.Array) -> np.ndarray | None:
    """Return a boolean array of which values are not null, or None when none is null."""
    if array.null_count == 0:
        return None
    bitmap = np.frombuffer(array.buffers()[0], np.uint8)
    bits = np.unpackbits(bitmap, bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)


def _scatter(text: pa.Array, positions: np.ndarray, replacements: pa.Array) -> pa.Array:
    mask = np.zeros(len(text), dtype=bool)
    mask[positions] = True
    return pc.replace_with_mask(text, pa.array(mask), replacements)


def _decimal_text(array: pa.Array) -> pa.Array:
    if array.type.scale >= 0:
        return pc.cast(array, _TEXT)
    return _each_value(array)


def _string_text(array: pa.Array) -> pa.Array:
    return array if array.type == _TEXT else pc.cast(array, _TEXT)


def _bytea_text(array: pa.Array) -> pa.Array:
    if not pa.types.is_large_binary(array.type):
        array = pc.cast(array, pa.large_binary())
    offsets = np.frombuffer(array.buffers()[1], np.int64)[
        array.offset : array.offset + len(array) + 1
    ]
    data = np.frombuffer(array.buffers()[2] or b"", np.uint8)[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    out_offsets = np.zeros(len(array) + 1, np.int64)
    np.cumsum(2 + 2 * lengths, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), np.uint8)
    starts = out_offsets[:-1]
    out[starts] = ord("\\")
    out[starts + 1] = ord("x")
    if len(data):
        row_of_byte = np.repeat(np.arange(len(array)), lengths)
        target = (
            2 * (np.arange(len(data)) - (offsets[:-1] - offsets[0])[row_of_byte])
            + starts[row_of_byte]
            + 2
        )
        out[target] = _HEX[data, 0]
        out[target + 1] = _HEX[data, 1]
    return _from_buffers(out_offsets, out, array)


def _from_buffers(offsets: np.ndarray, data: np.ndarray, like: pa.Array) -> pa.Array:
    validity = like.is_valid() if like.null_count else None
    mask = None if validity is None else pc.invert(validity)
    result = pa.Array.from_buffers(
        _TEXT, len(like), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return result if mask is None else pc.if_else(mask, pa.scalar(None, _TEXT), result)


def _uuid_text(array: pa.Array) -> pa.Array:
    raw = np.frombuffer(array.buffers()[1], np.uint8)
    raw = raw[array.offset * 16 : (array.offset + len(array)) * 16].reshape(-1, 16)
    hexed = _HEX[raw].reshape(-1, 32)
    out = np.full((len(array), 36), ord("-"), np.uint8)
    for start, stop, at in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        out[:, at : at + stop - start] = hexed[:, start:stop]
    offsets = np.arange(0, 36 * len(array) + 1, 36, dtype=np.int64)
    return _from_buffers(offsets, out.reshape(-1), array)


def _fixed_binary_text(array: pa.Array) -> pa.Array:
    if array.type.byte_width == 16:
        return _uuid_text(array)
    return _bytea_text(pc.cast(array, pa.large_binary()))


def _date_text(array: pa.Array) -> pa.Array:
    if not pa.types.is_date32(array.type):
        array = pc.cast(array, pa.date32())
    days = array.cast(pa.int32())
    text = pc.cast(array, _TEXT)
    return _fix_out_of_range(text, days, lo=-719162, hi=2932897, unit="D", infinity=_INT32_MAX)


def _timestamp_text(array: pa.Array) -> pa.Array:
    t: pa.TimestampType = array.type
    raw = array.cast(pa.int64())
    infinite = pc.or_(pc.equal(raw, _INT64_MAX), pc.less_equal(raw, -_INT64_MAX))
    if pc.any(infinite).as_py():
        array = pc.if_else(infinite, pa.scalar(0, t), array)
    micros = pc.cast(array, pa.timestamp("us", tz=t.tz), safe=False).cast(pa.int64())
    naive = micros.cast(pa.timestamp("us"))
    text = pc.replace_substring_regex(pc.cast(naive, _TEXT), pattern=r"\.?0+$", replacement="")
    if t.tz is not None:
        text = pc.binary_join_element_wise(text, pa.scalar("+00", _TEXT), _EMPTY)
    lo, hi = -62135596800_000000, 253402300800_000000
    text = _fix_out_of_range(text, micros, lo=lo, hi=hi, unit="us", infinity=None, tz=t.tz)
    return _infinities(text, raw, _INT64_MAX)


def _fix_out_of_range(
    text: pa.Array, ticks: pa.Array, *, lo: int, hi: int, unit: _Unit, infinity: int | None,
    tz: str | None = None,
) -> pa.Array:  # fmt: skip
    values = ticks.to_numpy(zero_copy_only=False)
    valid = ticks.is_valid().to_numpy(zero_copy_only=False)
    outside = valid & ((values < lo) | (values >= hi))
    if infinity is not None:
        outside &= np.abs(values) != infinity
    if outside.any():
        bad = np.flatnonzero(outside)
        fixed = [_far_datetime_text(int(values[i]), unit, tz is not None) for i in bad]
        text = _scatter(text, bad, pa.array(fixed, _TEXT))
    if infinity is not None:
        text = _infinities(text, ticks, infinity)
    return text


_Unit = Literal["D", "us"]


def _far_datetime_text(ticks: int, unit: _Unit, aware: bool) -> str:
    """Format a date or timestamp beyond years 1-9999 (BC years as Postgres writes them)."""
    iso = str(np.datetime64(ticks, unit)).replace("T", " ")
    negative = iso.startswith("-")
    year_text, rest = iso.lstrip("-+").split("-", 1)
    year = -int(year_text) if negative else int(year_text)
    text = f"{year if year > 0 else 1 - year:04d}-{_trim_fraction(rest)}"
    return text + ("+00" if aware else "") + (" BC" if year <= 0 else "")


def _infinities(text: pa.Array, raw: pa.Array, limit: int) -> pa.Array:
    positive = pc.equal(raw, limit)
    negative = pc.less_equal(raw, -limit)
    if not (pc.any(positive).as_py() or pc.any(negative).as_py()):
        return text
    text = pc.if_else(positive, pa.scalar("infinity", _TEXT), text)
    return pc.if_else(negative, pa.scalar("-infinity", _TEXT), text)


def _time_text(array: pa.Array) -> pa.Array:
    micros = pc.cast(array, pa.time64("us"), safe=False)
    return pc.replace_substring_regex(pc.cast(micros, _TEXT), pattern=r"\.?0+$", replacement="")


def _list_text(array: pa.Array) -> pa.Array:
    t = array.type
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        array = pc.cast(array, pa.large_list(t.value_type))
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        values = array.values.slice(array.offset * size, len(array) * size)
        offsets = pa.array(np.arange(0, size * len(array) + 1, size, dtype=np.int64))
    else:
        raw = array.offsets.to_numpy().astype(np.int64)
        values = array.values.slice(raw[0], raw[-1] - raw[0])
        offsets = pa.array(raw - raw[0])
    elements = text_column(values)
    if not _is_list(array.type.value_type):
        elements = _quote_elements(elements)
    elements = pc.fill_null(elements, _NULL_TEXT)
    mask = pc.is_null(array) if array.null_count else None
    lists = pa.LargeListArray.from_arrays(offsets, elements, mask=mask)
    joined = pc.binary_join(lists, pa.scalar(",", _TEXT))
    return pc.binary_join_element_wise(pa.scalar("{", _TEXT), joined, pa.scalar("}", _TEXT), _EMPTY)


def _quote_elements(text: pa.Array) -> pa.Array:
    needs = pc.match_substring_regex(text, pattern=r'^$|[{},"\\ \t\n\r\v\f]|(?i)^null$')
    if not pc.any(needs).as_py():
        return text
    escaped = pc.replace_substring_regex(text, pattern=r'(["\\])', replacement=r"\\\1")
    quoted = pc.binary_join_element_wise(_QUOTE, escaped, _QUOTE, _EMPTY)
    return pc.if_else(needs, quoted, text)


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


_COLUMN_TEXT: tuple[tuple[Callable[[pa.DataType], bool], Callable[[pa.Array], pa.Array]], ...] = (
    (_is_int, _cast_text),
    (pa.types.is_boolean, _bool_text),
    (pa.types.is_floating, _float_text),
    (pa.types.is_decimal, _decimal_text),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), _string_text),
    (pa.types.is_string_view, _string_text),
    (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), _bytea_text),
    (pa.types.is_binary_view, _bytea_text),
    (pa.types.is_fixed_size_binary, _fixed_binary_text),
    (pa.types.is_date, _date_text),
    (pa.types.is_timestamp, _timestamp_text),
    (pa.types.is_time, _time_text),
    (_is_list, _list_text),
)


# -- parameters ------------------------------------------------------------------------------------

_TEXT_OIDS = frozenset((0, TEXT.oid, VARCHAR.oid, BPCHAR.oid, NAME.oid, UNKNOWN.oid))
_JSON_OIDS = frozenset((JSON.oid, JSONB.oid))
_INT_RANGES = {INT2.oid: 16, INT4.oid: 32, INT8.oid: 64}
_INT_SYNTAX = re.compile(r"\s*[+-]?[0-9]+(_[0-9]+)*\s*")
_FLOAT_SYNTAX = re.compile(
    r"\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity|nan)\s*", re.IGNORECASE
)
_BOOL_WORDS = (("true", True, 1), ("yes", True, 1), ("on", True, 2),
               ("false", False, 1), ("no", False, 1), ("off", False, 2))  # fmt: skip


def parse_text_param(data: bytes | None, oid: int) -> Any:
    """Return a Bind parameter sent in text format as a Python value for type ``oid``.

    Types without a parser here (and date/time spellings Python cannot read, such as
    'infinity' or 'epoch') come back as str, for the SQL engine to cast.
    """
    if data is None:
        return None
    text = _decode(data)
    if oid in _TEXT_OIDS or oid in _JSON_OIDS:
        return text
    element = ELEMENT_OF.get(oid)
    if element is not None:
        return _map_leaves(parse_array_literal(text), lambda s: _parse_text(s, element.oid))
    return _parse_text(text, oid)


def _decode(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise InvalidParameter(
            f"invalid byte sequence for encoding UTF8 at byte {e.start}", sqlstate="22021"
        ) from None


def _parse_text(text: str, oid: int) -> Any:
    parse = _TEXT_PARSERS.get(oid)
    return text if parse is None else parse(text)


def _parse_int(text: str, oid: int) -> int:
    name = BY_OID[oid].name
    if not _INT_SYNTAX.fullmatch(text):
        raise InvalidParameter(f'invalid input syntax for type {_SQL_NAMES[name]}: "{text}"')
    digits = text.strip().replace("_", "").lstrip("+-").lstrip("0")
    value = int(text.replace("_", "")) if len(digits) <= 20 else 1 << 64
    bits = _INT_RANGES[oid]
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise InvalidParameter(
            f'value "{text}" is out of range for type {_SQL_NAMES[name]}', sqlstate="22003"
        )
    return value


def _parse_float(text: str, *, bits: int = 64) -> float:
    name = "real" if bits == 32 else "double precision"
    if not _FLOAT_SYNTAX.fullmatch(text):
        raise InvalidParameter(f'invalid input syntax for type {name}: "{text}"')
    value = float(text)
    limit = float(np.finfo(np.float32).max) if bits == 32 else math.inf
    if (math.isinf(value) or abs(value) > limit) and "inf" not in text.lower():
        raise InvalidParameter(
            f'"{text.strip()}" is out of range for type {name}', sqlstate="22003"
        )
    return value


def _parse_oid(text: str) -> int:
    if not _INT_SYNTAX.fullmatch(text) or len(text) > 40 or not 0 <= (value := int(text)) < 1 << 32:
        raise InvalidParameter(f'invalid input syntax for type oid: "{text}"')
    return value


def _parse_numeric(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidParameter(f'invalid input syntax for type numeric: "{text}"') from None
    if value.is_snan() or "_" in text:
        raise InvalidParameter(f'invalid input syntax for type numeric: "{text}"')
    return value


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "0"):
        return word == "1"
    for full, value, shortest in _BOOL_WORDS:
        if len(word) >= shortest and full.startswith(word):
            return value
    raise InvalidParameter(f'invalid input syntax for type boolean: "{text}"')


def _parse_bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise InvalidParameter(f'invalid hexadecimal data in bytea: "{text}"') from None
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
        elif text[i + 1 : i + 2] == "\\":
            out.append(0x5C)
            i += 2
        elif re.fullmatch(r"[0-3][0-7]{2}", text[i + 1 : i + 4]):
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
        else:
            raise InvalidParameter("invalid input syntax for type bytea")
    return bytes(out)


def _parse_date(text: str) -> dt.date | str:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        return text


def _parse_timestamp(text: str) -> dt.datetime | str:
    try:
        return dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return text


def _parse_time(text: str) -> dt.time | str:
    try:
        return dt.time.fromisoformat(text.strip())
    except ValueError:
        return text


def _parse_uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise InvalidParameter(f'invalid input syntax for type uuid: "{text}"') from None


_SQL_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint"}
_TEXT_PARSERS: dict[int, Callable[[str], Any]] = {
    INT2.oid: lambda s: _parse_int(s, INT2.oid),
    INT4.oid: lambda s: _parse_int(s, INT4.oid),
    INT8.oid: lambda s: _parse_int(s, INT8.oid),
    OID.oid: _parse_oid,
    FLOAT4.oid: lambda s: _parse_float(s, bits=32),
    FLOAT8.oid: _parse_float,
    NUMERIC.oid: _parse_numeric,
    BOOL.oid: _parse_bool,
    BYTEA.oid: _parse_bytea,
    DATE.oid: _parse_date,
    TIMESTAMP.oid: _parse_timestamp,
    TIMESTAMPTZ.oid: _parse_timestamp,
    TIME.oid: _parse_time,
    UUID.oid: _parse_uuid,
}


def parse_array_literal(text: str) -> list[Any]:
    """Return the elements of a Postgres array literal as nested lists of str (NULL is None)."""
    source = text.strip()
    if source.startswith("["):
        _, eq, source = source.partition("=")
        if not eq:
            raise InvalidParameter(f'malformed array literal: "{text}"')
        source = source.strip()
    parser = _ArrayLiteral(source, text)
    value = parser.parse_list(depth=1)
    if parser.pos != len(source):
        raise InvalidParameter(f'malformed array literal: "{text}"', sqlstate="22P02")
    return value


class _ArrayLiteral:
    """A recursive-descent reader of array_in's input syntax."""

    def __init__(self, source: str, original: str) -> None:
        self.source = source
        self.original = original
        self.pos = 0

    def fail(self) -> InvalidParameter:
        return InvalidParameter(f'malformed array literal: "{self.original}"')

    def skip_space(self) -> None:
        while self.pos < len(self.source) and self.source[self.pos] in _ARRAY_SPACE:
            self.pos += 1

    def parse_list(self, *, depth: int) -> list[Any]:
        if depth > _MAX_ARRAY_DIMS:
            raise InvalidParameter(
                f"number of array dimensions exceeds the maximum allowed ({_MAX_ARRAY_DIMS})",
                sqlstate="54000",
            )
        if self.source[self.pos : self.pos + 1] != "{":
            raise self.fail()
        self.pos += 1
        items: list[Any] = []
        self.skip_space()
        if self.source[self.pos : self.pos + 1] == "}":
            self.pos += 1
            return items
        while True:
            self.skip_space()
            if self.source[self.pos : self.pos + 1] == "{":
                items.append(self.parse_list(depth=depth + 1))
            else:
                items.append(self.parse_element())
            self.skip_space()
            ch = self.source[self.pos : self.pos + 1]
            self.pos += 1
            if ch == "}":
                return items
            if ch != ",":
                raise self.fail()

    def parse_element(self) -> str | None:
        if self.source[self.pos : self.pos + 1] == '"':
            return self.parse_quoted()
        out: list[str] = []
        keep = 0  # trailing unescaped whitespace is dropped
        escaped = False
        while self.pos < len(self.source):
            ch = self.source[self.pos]
            if ch in ",}":
                break
            if ch in '"{':
                raise self.fail()
            if ch == "\\":
                if self.pos + 1 >= len(self.source):
                    raise self.fail()
                out.append(self.source[self.pos + 1])
                keep, escaped = len(out), True
                self.pos += 2
                continue
            out.append(ch)
            if ch not in _ARRAY_SPACE:
                keep = len(out)
            self.pos += 1
        text = "".join(out[:keep])
        if not escaped and text.upper() == "NULL":
            return None
        if not text and not escaped:
            raise self.fail()
        return text

    def parse_quoted(self) -> str:
        out: list[str] = []
        self.pos += 1
        while self.pos < len(self.source):
            ch = self.source[self.pos]
            if ch == '"':
                self.pos += 1
                self.skip_space()
                if self.source[self.pos : self.pos + 1] not in (",", "}"):
                    raise self.fail()
                return "".join(out)
            if ch == "\\":
                if self.pos + 1 >= len(self.source):
                    raise self.fail()
                ch = self.source[self.pos + 1]
                self.pos += 1
            out.append(ch)
            self.pos += 1
        raise self.fail()


_ARRAY_SPACE = " \t\n\r\v\f"


def _map_leaves(values: list[Any], parse: Callable[[str], Any]) -> list[Any]:
    return [
        _map_leaves(v, parse) if isinstance(v, list) else None if v is None else parse(v)
        for v in values
    ]


# -- binary parameters -----------------------------------------------------------------------------

_BINARY_STRUCTS: dict[int, struct.Struct] = {
    INT2.oid: struct.Struct(">h"),
    INT4.oid: struct.Struct(">i"),
    INT8.oid: struct.Struct(">q"),
    OID.oid: struct.Struct(">I"),
    FLOAT4.oid: struct.Struct(">f"),
    FLOAT8.oid: struct.Struct(">d"),
}
_MAX_ARRAY_DIMS = 6


def parse_binary_param(data: bytes | None, oid: int) -> Any:
    """Return a Bind parameter sent in binary format as a Python value for type ``oid``.

    Supported: int2/4/8, oid, float4/8, bool, numeric, text types, json, jsonb, bytea, uuid,
    date, time, timestamp, timestamptz, and arrays of those; others raise InvalidParameter.
    """
    if data is None:
        return None
    element = ELEMENT_OF.get(oid)
    if element is not None:
        return _parse_binary_array(bytes(data), oid, element)
    return _parse_binary(bytes(data), oid)


def _parse_binary(data: bytes, oid: int) -> Any:
    layout = _BINARY_STRUCTS.get(oid)
    if layout is not None:
        _expect_size(data, layout.size, oid)
        return layout.unpack(data)[0]
    if oid in _TEXT_OIDS or oid == JSON.oid:
        return _decode(data)
    parse = _BINARY_PARSERS.get(oid)
    if parse is None:
        name = BY_OID[oid].name if oid in BY_OID else f"oid {oid}"
        raise InvalidParameter(
            f"binary format is not supported for parameters of type {name}: send it as text",
            sqlstate="42883",
        )
    return parse(data)


def _expect_size(data: bytes, size: int, oid: int) -> None:
    if len(data) != size:
        name = BY_OID[oid].name if oid in BY_OID else f"oid {oid}"
        raise InvalidParameter(
            f"incorrect binary data format in parameter of type {name}: "
            f"{len(data)} bytes, expected {size}",
            sqlstate="22P03",
        )


def _binary_bool(data: bytes) -> bool:
    _expect_size(data, 1, BOOL.oid)
    return data != b"\x00"


def _binary_jsonb(data: bytes) -> str:
    if data[:1] != b"\x01":
        raise InvalidParameter(
            "unsupported jsonb version number in binary parameter", sqlstate="22P03"
        )
    return _decode(data[1:])


def _binary_uuid(data: bytes) -> uuid.UUID:
    _expect_size(data, 16, UUID.oid)
    return uuid.UUID(bytes=data)


def _binary_date(data: bytes) -> dt.date | str:
    _expect_size(data, 4, DATE.oid)
    days = struct.unpack(">i", data)[0]
    if abs(days) == _INT32_MAX:
        return "infinity" if days > 0 else "-infinity"
    try:
        return _POSTGRES_EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        raise InvalidParameter("date out of range for Python", sqlstate="22008") from None


def _binary_timestamp(data: bytes, *, aware: bool) -> dt.datetime | str:
    _expect_size(data, 8, TIMESTAMP.oid)
    micros = struct.unpack(">q", data)[0]
    if micros in (_INT64_MAX, -_INT64_MAX - 1):
        return "infinity" if micros > 0 else "-infinity"
    try:
        value = _POSTGRES_EPOCH + dt.timedelta(microseconds=micros)
    except OverflowError:
        raise InvalidParameter("timestamp out of range for Python", sqlstate="22008") from None
    return value.replace(tzinfo=dt.UTC) if aware else value


def _binary_time(data: bytes) -> dt.time:
    _expect_size(data, 8, TIME.oid)
    micros = struct.unpack(">q", data)[0]
    if not 0 <= micros < 86_400_000_000:
        raise InvalidParameter("time out of range", sqlstate="22008")
    seconds, fraction = divmod(micros, 1_000_000)
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, fraction)


_NUMERIC_SIGNS = {0x0000: 0, 0x4000: 1}
_NUMERIC_SPECIAL = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}


def _binary_numeric(data: bytes) -> Decimal:
    if len(data) < 8:
        raise InvalidParameter("insufficient data in binary numeric parameter", sqlstate="22P03")
    ndigits, weight, sign, dscale = struct.unpack_from(">hhHh", data)
    if sign in _NUMERIC_SPECIAL:
        return Decimal(_NUMERIC_SPECIAL[sign])
    if sign not in _NUMERIC_SIGNS or ndigits < 0 or dscale < 0 or len(data) != 8 + 2 * ndigits:
        raise InvalidParameter("invalid binary numeric parameter", sqlstate="22P03")
    groups = struct.unpack_from(f">{ndigits}h", data, 8)
    if any(not 0 <= g < 10000 for g in groups):
        raise InvalidParameter("invalid digit in binary numeric parameter", sqlstate="22P03")
    digits = "".join(f"{g:04d}" for g in groups) or "0"
    exponent = 4 * (weight - ndigits + 1)
    if exponent > -dscale:
        digits += "0" * (exponent + dscale)
    elif exponent < -dscale:
        digits = digits[: len(digits) - (-dscale - exponent)] or "0"
    return Decimal((_NUMERIC_SIGNS[sign], tuple(int(c) for c in digits), -dscale))


_BINARY_PARSERS: dict[int, Callable[[bytes], Any]] = {
    BOOL.oid: _binary_bool,
    BYTEA.oid: bytes,
    JSONB.oid: _binary_jsonb,
    UUID.oid: _binary_uuid,
    DATE.oid: _binary_date,
    TIME.oid: _binary_time,
    TIMESTAMP.oid: lambda d: _binary_timestamp(d, aware=False),
    TIMESTAMPTZ.oid: lambda d: _binary_timestamp(d, aware=True),
    NUMERIC.oid: _binary_numeric,
}


def _parse_binary_array(data: bytes, oid: int, element: PgType) -> list[Any]:
    bad = InvalidParameter(
        f"incorrect binary data format in parameter of type {BY_OID[oid].name}", sqlstate="22P03"
    )
    if len(data) < 12:
        raise bad
    ndim, _flags, element_oid = struct.unpack_from(">iiI", data)
    if ndim == 0:
        return []
    if not 0 < ndim <= _MAX_ARRAY_DIMS or len(data) < 12 + 8 * ndim:
        raise bad
    if element_oid != element.oid:
        raise InvalidParameter(
            f"binary data has array element type {element_oid} instead of expected "
            f"{element.oid} ({element.name})",
            sqlstate="42804",
        )
    sizes = [struct.unpack_from(">i", data, 12 + 8 * d)[0] for d in range(ndim)]
    if any(s < 0 for s in sizes) or math.prod(sizes) * 4 > len(data):
        raise bad
    pos = 12 + 8 * ndim
    flat: list[Any] = []
    for _ in range(math.prod(sizes)):
        if pos + 4 > len(data):
            raise bad
        length = struct.unpack_from(">i", data, pos)[0]
        pos += 4
        if length == -1:
            flat.append(None)
            continue
        if length < 0 or pos + length > len(data):
            raise bad
        flat.append(_parse_binary(data[pos : pos + length], element.oid))
        pos += length
    if pos != len(data):
        raise bad
    return _nest(flat, sizes)


def _nest(flat: list[Any], sizes: list[int]) -> list[Any]:
    for size in reversed(sizes[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)] if size else []
    return flat


def pg_type(oid: int) -> PgType:
    """Return the known Postgres type with this OID, or 'unknown'."""
    return BY_OID.get(oid, UNKNOWN)


def is_array(oid: int) -> bool:
    """Tell whether an OID is a known array type."""
    return oid in ELEMENT_OF
