"""Kafka Connect field schemas as Postgres types, and Debezium's JSON values as Postgres text.

With embedded schemas (``schemas.enable=true``) each column's type comes from its Connect
schema: Debezium's encodings of decimal (base64 unscaled bytes plus scale), date (days),
time and timestamp (milli-, micro- or nanoseconds), zoned timestamps, uuid, json, bytea and
arrays are turned back into Postgres' text. pgvector's vector and halfvec (Debezium's
DoubleVector and FloatVector: JSON arrays of numbers) become real[] (FLOAT[] in the mirror),
each number rounded to float32, which gives back the source's float4 exactly; their declared
dimension is not in the schema. A sparsevec (a struct) stays JSON.

Without schemas the types are guessed from the JSON values (numbers, booleans, strings,
arrays, objects): a date then mirrors as its day number, a vector as DOUBLE[], and a decimal
should be sent as a string (``decimal.handling.mode=string``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

# Postgres type OIDs the mirror knows (mirror/column_types.py).
BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSONB = 16, 17, 20, 21, 23, 25, 3802
FLOAT4, FLOAT8, DATE, TIME, TIMESTAMP, TIMESTAMPTZ = 700, 701, 1082, 1083, 1114, 1184
TIMETZ, INTERVAL, NUMERIC, UUID = 1266, 1186, 1700, 2950
_ARRAY_OF = {
    BOOL: 1000, INT2: 1005, INT4: 1007, INT8: 1016, FLOAT4: 1021, FLOAT8: 1022, NUMERIC: 1231,
    TEXT: 1009, UUID: 2951, DATE: 1182, TIME: 1183, TIMESTAMP: 1115, TIMESTAMPTZ: 1185,
    JSONB: 3807, TIMETZ: 1270, INTERVAL: 1187, BYTEA: 1001,
}  # fmt: skip


Convert = Callable[[list[Any]], pa.Array]
"""Turn one column's JSON values (None for NULL) into Postgres' text form."""


def _via_arrow(*steps: pa.DataType) -> Convert:
    """Convert by Arrow casts: build as the first type, cast through the others to text."""

    def convert(values: list[Any]) -> pa.Array:
        array = pa.array(values, type=steps[0])
        for step in steps[1:]:
            array = array.cast(step)
        return array.cast(pa.string())

    return convert


def _or_per_value(fast: Convert, one: Callable[[Any], str]) -> Convert:
    """``fast``, or value by value where a column holds values it does not take."""

    def convert(values: list[Any]) -> pa.Array:
        try:
            return fast(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            return per_value(one)(values)

    return convert


def per_value(one: Callable[[Any], str]) -> Convert:
    def convert(values: list[Any]) -> pa.Array:
        return pa.array([None if v is None else one(v) for v in values], type=pa.string())

    return convert


def _as_text(values: list[Any]) -> pa.Array:
    return pa.array(values, type=pa.string())


def _decimal(scale: int) -> Callable[[Any], str]:
    """Debezium's precise decimal: base64 of the unscaled big-endian two's-complement
    integer; the scale is in the schema."""

    def one(value: Any) -> str:
        if not isinstance(value, str):
            return str(value)  # decimal.handling.mode = double or string
        unscaled = int.from_bytes(base64.b64decode(value), "big", signed=True)
        if scale <= 0:
            return str(unscaled * 10**-scale)
        digits = str(abs(unscaled)).rjust(scale + 1, "0")
        sign = "-" if unscaled < 0 else ""
        return f"{sign}{digits[:-scale]}.{digits[-scale:]}"

    return one


def _variable_decimal(value: Any) -> str:
    if isinstance(value, Mapping):
        return _decimal(int(value["scale"]))(value["value"])
    return str(value)


def _bytea(value: Any) -> str:
    if isinstance(value, str):
        return "\\x" + base64.b64decode(value).hex()
    return str(value)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _time_of_day(unit: int) -> Callable[[Any], str]:
    """A time of day in ``unit`` fractions of a second (Postgres allows 24:00:00)."""

    def one(value: Any) -> str:
        seconds, fraction = divmod(int(value), unit)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        micros = fraction * 1_000_000 // unit
        return f"{hour:02d}:{minute:02d}:{second:02d}.{micros:06d}"

    return one


def _duration(value: Any) -> str:
    return f"{int(value)} microseconds"


def guess(value: Any) -> str:
    """Postgres' text form of a value whose type is not known (schemaless JSON)."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _array_literal(value, guess)
    return json.dumps(value)


def _array_literal(values: list[Any], element: Callable[[Any], str]) -> str:
    parts = []
    for value in values:
        if value is None:
            parts.append("NULL")
        elif isinstance(value, list):
            parts.append(_array_literal(value, element))
        else:
            text = element(value)
            if isinstance(value, str) or _NEEDS_QUOTES.search(text) or not text:
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(text)
    return "{" + ",".join(parts) + "}"


_NEEDS_QUOTES = re.compile(r'[\s,{}"\\]|^null$', re.IGNORECASE)


def _array(element: Callable[[Any], str]) -> Convert:
    return per_value(lambda value: _array_literal(value, element))


def _float4(value: Any) -> str:
    """A vector element as float32's shortest digits (Debezium sends it as a double)."""
    return str(np.float32(value))


_VECTORS = ("io.debezium.data.DoubleVector", "io.debezium.data.FloatVector")

_TIME_UNITS = {
    "io.debezium.time.Time": 1_000,
    "io.debezium.time.MicroTime": 1_000_000,
    "io.debezium.time.NanoTime": 1_000_000_000,
}
_TIMESTAMP_UNITS = {
    "io.debezium.time.Timestamp": "ms",
    "io.debezium.time.MicroTimestamp": "us",
    "io.debezium.time.NanoTimestamp": "ns",
}
_PLAIN = {
    "int8": (INT2, pa.int64()),
    "int16": (INT2, pa.int64()),
    "int32": (INT4, pa.int64()),
    "int64": (INT8, pa.int64()),
    "float": (FLOAT4, pa.float64()),
    "float32": (FLOAT4, pa.float64()),
    "double": (FLOAT8, pa.float64()),
    "float64": (FLOAT8, pa.float64()),
    "boolean": (BOOL, pa.bool_()),
}
_TEXT_NAMES = {
    "io.debezium.time.ZonedTimestamp": TIMESTAMPTZ,
    "io.debezium.time.ZonedTime": TIMETZ,
    "io.debezium.data.Uuid": UUID,
    "io.debezium.data.Json": JSONB,
}


@dataclass(frozen=True, slots=True)
class _Type:
    """A Connect schema's Postgres type and how its values become Postgres text."""

    oid: int
    modifier: int
    convert: Convert
    one: Callable[[Any], str]
    """The same conversion for a single value (array elements)."""
    may_be_unavailable: bool


def connect_type(schema: Mapping[str, Any]) -> _Type:
    """The Postgres type behind a Connect field schema, by Debezium's semantic names."""
    kind = schema.get("type")
    name = schema.get("name") or ""
    params = schema.get("parameters") or {}
    if name == "org.apache.kafka.connect.data.Decimal":
        scale = int(params.get("scale", 0))
        precision = int(params.get("connect.decimal.precision", 0))
        modifier = ((precision << 16) | scale) + 4 if precision else -1
        one = _decimal(scale)
        return _Type(NUMERIC, modifier, per_value(one), one, False)
    if name == "io.debezium.data.VariableScaleDecimal":
        return _Type(NUMERIC, -1, per_value(_variable_decimal), _variable_decimal, False)
    if name == "io.debezium.time.Date":
        return _Type(DATE, -1, _via_arrow(pa.int32(), pa.date32()), _date_one, False)
    if name in _TIME_UNITS:
        one = _time_of_day(_TIME_UNITS[name])
        return _Type(TIME, -1, per_value(one), one, False)
    if name in _TIMESTAMP_UNITS:
        unit = _TIMESTAMP_UNITS[name]
        return _Type(TIMESTAMP, -1, _timestamps(unit), _timestamp_one(unit), False)
    if name == "io.debezium.time.MicroDuration":
        return _Type(INTERVAL, -1, per_value(_duration), _duration, False)
    if name in _TEXT_NAMES:
        return _Type(_TEXT_NAMES[name], -1, _as_text, str, name == "io.debezium.data.Json")
    if name in _VECTORS:
        return _Type(_ARRAY_OF[FLOAT4], -1, _array(_float4), guess, True)
    if kind in _PLAIN:
        oid, arrow = _PLAIN[kind]
        convert = _via_arrow(arrow)
        if oid in (FLOAT4, FLOAT8):  # NaN and infinities come as the strings "NaN", ...
            convert = _or_per_value(convert, guess)
        return _Type(oid, -1, convert, guess, False)
    if kind == "bytes":
        return _Type(BYTEA, -1, per_value(_bytea), _bytea, True)
    if kind == "array":
        element = connect_type(schema.get("items") or {})
        oid = _ARRAY_OF.get(element.oid, _ARRAY_OF[TEXT])
        return _Type(oid, -1, _array(element.one), guess, True)
    if kind in ("struct", "map"):
        return _Type(JSONB, -1, per_value(_json_text), _json_text, False)
    return _Type(TEXT, -1, _as_text, str, True)


def _date_one(value: Any) -> str:
    return str(pa.scalar(int(value), pa.int32()).cast(pa.date32()))


_INFINITY = {"ms": 2**63 // 10**6, "us": 2**63 // 10**3, "ns": 2**63 - 1}
"""Debezium sends PostgreSQL's infinite timestamps as the largest long in the unit."""


def _timestamp_one(unit: str) -> Callable[[Any], str]:
    def one(value: Any) -> str:
        if abs(int(value)) >= _INFINITY[unit]:
            return "infinity" if value > 0 else "-infinity"
        return str(pa.scalar(int(value), pa.int64()).cast(pa.timestamp(unit)))

    return one


def _timestamps(unit: str) -> Convert:
    fast = _via_arrow(pa.int64(), pa.timestamp(unit))
    limit = _INFINITY[unit]

    def convert(values: list[Any]) -> pa.Array:
        if any(v is not None and abs(v) >= limit for v in values):
            return per_value(_timestamp_one(unit))(values)
        return fast(values)

    return convert


def guessed_type(value: Any) -> int:
    """The Postgres type a schemaless JSON value most likely had."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT8
    if isinstance(value, float):
        return FLOAT8
    if isinstance(value, list):
        element = next((v for v in value if v is not None), None)
        if element is None or isinstance(element, list | dict):
            return JSONB if element is not None else _ARRAY_OF[TEXT]
        return _ARRAY_OF[guessed_type(element)]
    if isinstance(value, dict):
        return JSONB
    return TEXT
