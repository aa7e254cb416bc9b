"""How a Postgres column type is stored in the mirror, and how its text form is cast there."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class SourceType:
    """What the source catalog says of a type the mirror does not know by OID."""

    oid: int
    kind: str
    """pg_type.typtype: b base, d domain, e enum, c composite, r range, m multirange, p pseudo."""
    element_oid: int = 0
    base_oid: int = 0
    base_modifier: int = -1
    input_function: str = ""
    """The name of the type's input function (pg_type.typinput): ``vector_in``, ``halfvec_in``
    and ``sparsevec_in`` tell pgvector's types whatever schema the extension lives in."""


@dataclass(frozen=True, slots=True)
class MirrorType:
    """A DuckDB column type and the SQL that turns the Postgres text form into it."""

    sql: str
    cast: str
    """A SQL template with ``{value}`` standing for the text value."""
    prepare: Callable[[pa.Array], pa.Array] | None = None
    """A Python step run on the text column before the cast (array literals only)."""
    rewrite: str = ""
    """Which rewrite ``prepare`` applies to array elements (kept in the mirror's bookkeeping)."""

    def cast_sql(self, value_sql: str) -> str:
        return self.cast.replace(VALUE, value_sql)


VALUE = "{value}"
TEXT = MirrorType("VARCHAR", VALUE)

_SCALARS: dict[int, str] = {
    16: "BOOLEAN",
    20: "BIGINT",
    21: "SMALLINT",
    23: "INTEGER",
    26: "BIGINT",  # oid
    700: "REAL",
    701: "DOUBLE",
    1082: "DATE",
    1083: "TIME",
    1266: "TIMETZ",
    1114: "TIMESTAMP",
    1184: "TIMESTAMPTZ",
    1186: "INTERVAL",
    2950: "UUID",
    114: "JSON",
    3802: "JSON",
}
_TEXTS = {25, 1043, 1042, 19, 18}  # text, varchar, bpchar, name, "char"
_BYTEA = 17
_NUMERIC = 1700
_NUMERIC_ELEMENTS = {16, 20, 21, 23, 26, 700, 701, _NUMERIC}
_INTS = ("SMALLINT", "INTEGER", "BIGINT")
_ARRAYS: dict[int, int] = {
    1000: 16,
    1005: 21,
    1007: 23,
    1016: 20,
    1028: 26,
    1021: 700,
    1022: 701,
    1231: _NUMERIC,
    1009: 25,
    1015: 1043,
    1014: 1042,
    1003: 19,
    1002: 18,
    2951: 2950,
    1182: 1082,
    1183: 1083,
    1270: 1266,
    1115: 1114,
    1185: 1184,
    1187: 1186,
    199: 114,
    3807: 3802,
    1001: _BYTEA,
}


def numeric_type(modifier: int) -> str:
    """DECIMAL(p,s) when the declared precision fits DuckDB, DOUBLE otherwise."""
    if modifier < 4:
        return "DOUBLE"
    precision = ((modifier - 4) >> 16) & 0xFFFF
    scale = (modifier - 4) & 0xFFFF
    if precision > 38 or scale > precision:
        return "DOUBLE"
    return f"DECIMAL({precision},{scale})"


_BC_YEAR = "split_part({value}, '-', 1)"
_DATE_TIMES = {1082, 1114, 1184}
_INTERVAL = 1186


def _bc_aware(sql: str) -> str:
    """Postgres writes year 44 BC as ``0044-... BC``; DuckDB reads it as year ``-0043``."""
    return (
        f"CASE WHEN {VALUE} LIKE '% BC' THEN CAST(printf('-%04d', CAST({_BC_YEAR} AS INTEGER) - 1)"
        f" || substr({VALUE}, length({_BC_YEAR}) + 1, length({VALUE}) - length({_BC_YEAR}) - 3)"
        f" AS {sql}) ELSE CAST({VALUE} AS {sql}) END"
    )


def mirror_type(
    type_oid: int, modifier: int, catalog: Mapping[int, SourceType] | None = None
) -> MirrorType:
    """Map a source column type to its mirror type; unknown types become text.

    The casts read Postgres' text output (DateStyle ISO, IntervalStyle postgres): BC dates
    and timestamps, and intervals with mixed signs, are rewritten first; a numeric NaN or
    infinity has no DECIMAL form and becomes NULL.
    """
    if type_oid in _DATE_TIMES:
        sql = _SCALARS[type_oid]
        return MirrorType(sql, _bc_aware(sql))
    if type_oid == _INTERVAL:
        return MirrorType("INTERVAL", f"CAST(replace({VALUE}, '+', '') AS INTERVAL)")
    if type_oid in _SCALARS:
        sql = _SCALARS[type_oid]
        return MirrorType(sql, f"CAST({VALUE} AS {sql})")
    if type_oid in _TEXTS:
        return TEXT
    if type_oid == _NUMERIC:
        sql = numeric_type(modifier)
        if sql == "DOUBLE":
            return MirrorType(sql, f"CAST({VALUE} AS DOUBLE)")
        return MirrorType(
            sql,
            f"CASE WHEN {VALUE} IN ('NaN', 'Infinity', '-Infinity') THEN NULL"
            f" ELSE CAST({VALUE} AS {sql}) END",
        )
    if type_oid == _BYTEA:
        return MirrorType("BLOB", f"unhex(substr({VALUE}, 3))")
    element = _ARRAYS.get(type_oid)
    source = (catalog or {}).get(type_oid)
    vector = pgvector_type(type_oid, modifier, catalog)
    if vector is not None:
        return _vector_type(*vector)
    if element is None and source is not None:
        if source.kind == "d" and source.base_oid:
            return mirror_type(source.base_oid, source.base_modifier, catalog)
        element = source.element_oid or None
    if element is not None:
        if pgvector_type(element, -1, catalog) is not None:
            return TEXT  # an array of vectors: no DuckDB type reads its literal
        return _array_type(element, catalog)
    return TEXT


_PGVECTOR_INPUTS = {"vector_in": "vector", "halfvec_in": "halfvec", "sparsevec_in": "sparsevec"}
MAX_DENSE_SPARSEVEC = 16_000
"""The most dimensions a sparsevec may declare to be mirrored dense (a vector's own limit)."""


def pgvector_type(
    type_oid: int, modifier: int, catalog: Mapping[int, SourceType] | None
) -> tuple[str, int] | None:
    """pgvector's type of a column (``vector``, ``halfvec`` or ``sparsevec``) and its declared
    dimensions (-1 when undeclared), through domains; None for any other type."""
    source = (catalog or {}).get(type_oid)
    if source is None:
        return None
    if source.kind == "d" and source.base_oid:
        return pgvector_type(source.base_oid, source.base_modifier, catalog)
    kind = _PGVECTOR_INPUTS.get(source.input_function)
    if kind is None or source.kind != "b":
        return None
    return kind, modifier if modifier > 0 else -1


def _vector_type(kind: str, dims: int) -> MirrorType:
    """pgvector's values as DuckDB floats: FLOAT[n] for a declared dimension, FLOAT[] if not.

    A halfvec's values are exact as float32. A sparsevec is mirrored dense (FLOAT[n], zeros
    where no value is stored) when it declares at most ``MAX_DENSE_SPARSEVEC`` dimensions, so
    that it reads like a vector; otherwise it stays in its text form (``{1:0.5,7:2}/100000``).
    """
    sql = f"FLOAT[{dims}]" if dims > 0 else "FLOAT[]"
    cast = f"CAST({VALUE} AS {sql})"
    if kind != "sparsevec":
        return MirrorType(sql, cast)
    if not 0 < dims <= MAX_DENSE_SPARSEVEC:
        return TEXT
    return MirrorType(sql, cast, prepare=sparse_to_dense, rewrite=SPARSEVEC)


SPARSEVEC = "sparsevec"


def sparse_to_dense(column: pa.Array) -> pa.Array:
    """Rewrite sparsevec literals (``{1:0.5,3:2}/4``, indices from 1) as dense lists
    (``[0.5,0,2,0]``), keeping each value's digits and the NULLs."""
    out: list[str | None] = []
    for literal in column.to_pylist():
        out.append(None if literal is None else _dense_literal(literal))
    return pa.array(out, type=pa.string())


def _dense_literal(literal: str) -> str:
    entries, slash, dims = literal.strip().rpartition("/")
    if not slash or not entries.startswith("{") or not entries.endswith("}"):
        return literal  # not a sparsevec: the cast says so
    try:
        values = ["0"] * int(dims)
        for entry in filter(None, entries[1:-1].split(",")):
            index, _, value = entry.partition(":")
            values[int(index) - 1] = value.strip()
    except (ValueError, IndexError):
        return literal
    return "[" + ",".join(values) + "]"


def prepare_step(json_array: bool, rewrite: str) -> Callable[[pa.Array], pa.Array] | None:
    """The ``prepare`` step a stored column names: its flag and its rewrite."""
    if not json_array:
        return None
    if rewrite == SPARSEVEC:
        return sparse_to_dense
    return json_arrays(rewrite)


def _array_type(element_oid: int, catalog: Mapping[int, SourceType] | None) -> MirrorType:
    element = mirror_type(element_oid, -1, catalog)
    if element.sql == "BLOB":
        element = TEXT
    sql = f"{element.sql}[]"
    if element_oid in _NUMERIC_ELEMENTS and element.sql in ("DOUBLE", "REAL", "BOOLEAN", *_INTS):
        # Explicit bounds ("[0:1]={1,2}") go; a multi-dimensional array fails the cast loudly.
        bounds_gone = f"regexp_replace({VALUE}, '^\\[[^=]*=', '')"
        return MirrorType(sql, f"CAST(translate({bounds_gone}, '{{}}', '[]') AS {sql})")
    rewrite = _ELEMENT_REWRITES.get(element_oid, "")
    return MirrorType(
        sql, f"CAST(CAST({VALUE} AS JSON) AS {sql})", prepare=json_arrays(rewrite), rewrite=rewrite
    )


def _bc_element(text: str) -> str:
    """``0044-03-15 BC`` as DuckDB reads it: ``-0043-03-15``."""
    if not text.endswith(" BC"):
        return text
    year, _, rest = text[:-3].partition("-")
    return f"-{int(year) - 1:04d}-{rest}"


_REWRITERS: dict[str, Callable[[str], str]] = {
    "interval": lambda text: text.replace("+", ""),
    "bc": _bc_element,
}
_ELEMENT_REWRITES = {1186: "interval", 1082: "bc", 1114: "bc", 1184: "bc"}


def json_arrays(rewrite: str = "") -> Callable[[pa.Array], pa.Array]:
    """A ``prepare`` step writing Postgres array literals as JSON, elements rewritten."""
    element = _REWRITERS.get(rewrite)

    def prepare(column: pa.Array) -> pa.Array:
        return array_literals_to_json(column, element)

    return prepare


def _rewrite(value: object, element: Callable[[str], str]) -> object:
    if isinstance(value, list):
        return [_rewrite(v, element) for v in value]
    return element(value) if isinstance(value, str) else value


def array_literals_to_json(
    column: pa.Array, element: Callable[[str], str] | None = None
) -> pa.Array:
    """Rewrite Postgres array literals (``{a,"b c",NULL}``) as JSON arrays, keeping NULLs."""
    out: list[str | None] = []
    for literal in column.to_pylist():
        if literal is None:
            out.append(None)
            continue
        value: object = parse_array_literal(literal)
        if element is not None:
            value = _rewrite(value, element)
        out.append(json.dumps(value))
    return pa.array(out, type=pa.string())


def parse_array_literal(text: str) -> list[object]:
    """Parse a Postgres array literal into nested lists of strings and None.

    >>> parse_array_literal('{1,NULL,"a,b","x\\\\"y"}')
    ['1', None, 'a,b', 'x"y']
    >>> parse_array_literal('{{1,2},{3,4}}')
    [['1', '2'], ['3', '4']]
    """
    if text.startswith("["):  # explicit bounds: [0:1]={...}
        text = text[text.index("=") + 1 :]
    value, _ = _parse_array(text, 0)
    return value


def _parse_array(text: str, pos: int) -> tuple[list[object], int]:
    assert text[pos] == "{"
    pos += 1
    items: list[object] = []
    if text[pos] == "}":
        return items, pos + 1
    while True:
        char = text[pos]
        if char == "{":
            nested, pos = _parse_array(text, pos)
            items.append(nested)
        elif char == '"':
            pos += 1
            chars: list[str] = []
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chars.append(text[pos])
                pos += 1
            items.append("".join(chars))
            pos += 1
        else:
            start = pos
            while text[pos] not in ",}":
                pos += 1
            token = text[start:pos].strip()
            items.append(None if token.upper() == "NULL" else token)
        if text[pos] == "}":
            return items, pos + 1
        pos += 1  # the comma
