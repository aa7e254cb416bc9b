"""Bind parameters sent in binary format as Python values, arrays included."""

from __future__ import annotations

import datetime as dt
import math
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np

from predictor import text_parameters
from predictor.pg_types import (
    BOOL,
    BY_OID,
    BYTEA,
    DATE,
    ELEMENT_OF,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    JSON,
    JSONB,
    NUMERIC,
    OID,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UUID,
    PgType,
)
from predictor.text_parameters import InvalidParameter

_POSTGRES_EPOCH = dt.datetime(2000, 1, 1)
_POSTGRES_EPOCH_DATE = dt.date(2000, 1, 1)
_INT64_MAX = np.iinfo(np.int64).max
_INT32_MAX = np.iinfo(np.int32).max

_BINARY_STRUCTS: dict[int, struct.Struct] = {
    INT2.oid: struct.Struct(">h"),
    INT4.oid: struct.Struct(">i"),
    INT8.oid: struct.Struct(">q"),
    OID.oid: struct.Struct(">I"),
    FLOAT4.oid: struct.Struct(">f"),
    FLOAT8.oid: struct.Struct(">d"),
}


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
    if oid in text_parameters.TEXT_OIDS or oid == JSON.oid:
        return text_parameters.decode(data)
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
    return text_parameters.decode(data[1:])


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
    if not 0 < ndim <= text_parameters.MAX_ARRAY_DIMS or len(data) < 12 + 8 * ndim:
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
