"""Postgres types by OID, and the Postgres type each DuckDB and Arrow type is sent as."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa


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
VECTOR = PgType(16388, -1, "vector")
"""pgvector's type: its OID is the one CREATE EXTENSION gave it in each database (this is a
common one); clients read it as text."""

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


def pg_type(oid: int) -> PgType:
    """Return the known Postgres type with this OID, or 'unknown'."""
    return BY_OID.get(oid, UNKNOWN)


def is_array(oid: int) -> bool:
    """Tell whether an OID is a known array type."""
    return oid in ELEMENT_OF


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
    if is_vector(t):
        return VECTOR
    if is_list(t):
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


def is_vector(t: pa.DataType) -> bool:
    """Whether ``t`` is a fixed-size list of float32: a DuckDB ``FLOAT[n]`` array, which only a
    mirrored pgvector column or a ``::vector`` cast makes (PostgreSQL's arrays are lists)."""
    return pa.types.is_fixed_size_list(t) and t.value_type == pa.float32()


def is_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _innermost(t: pa.DataType) -> pa.DataType:
    while is_list(t):
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
