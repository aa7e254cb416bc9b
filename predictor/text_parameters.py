"""Bind parameters sent in text format as Python values, array literals included."""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from mirror.errors import SidecarError
from predictor.pg_types import (
    BOOL,
    BPCHAR,
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
    NAME,
    NUMERIC,
    OID,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
    UUID,
    VARCHAR,
)


class InvalidParameter(SidecarError):
    """A Bind parameter is not a valid value of its type, or its format is not supported."""

    sqlstate = "22P02"


TEXT_OIDS = frozenset((0, TEXT.oid, VARCHAR.oid, BPCHAR.oid, NAME.oid, UNKNOWN.oid))
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
    text = decode(data)
    if oid in TEXT_OIDS or oid in _JSON_OIDS:
        return text
    element = ELEMENT_OF.get(oid)
    if element is not None:
        return _map_leaves(parse_array_literal(text), lambda s: _parse_text(s, element.oid))
    return _parse_text(text, oid)


def decode(data: bytes) -> str:
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


MAX_ARRAY_DIMS = 6


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
        if depth > MAX_ARRAY_DIMS:
            raise InvalidParameter(
                f"number of array dimensions exceeds the maximum allowed ({MAX_ARRAY_DIMS})",
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
