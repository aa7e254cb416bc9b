"""Arrays as text in PostgreSQL's spelling: ``image::text`` is ``{0,0,5,...}``, not ``[0.0, ...]``.

An array cast to text (``x::text``, ``CAST(x AS varchar)``) and ``array_to_string`` answer what
PostgreSQL's ``array_out`` would: braces, elements joined by commas without spaces, numbers as
PostgreSQL prints them (``5``, not ``5.0``; ``Infinity``, ``NaN``), ``t``/``f``, ``NULL``, and
text elements quoted where array_out quotes them. The statement translator sends such casts to
``_pgml_catalog.pg_text`` and ``array_to_string`` to ``_pgml_catalog.pg_array_to_string``.

Each is a DuckDB macro with one overload per array type (and a plain cast for any other
value), called through an untyped one that binds its argument first as a lambda's parameter:
DuckDB cannot pick a typed overload for an argument holding an aggregate until it is bound.
Arrays of other element types (timestamps, three dimensions, ...) keep DuckDB's text.
"""

from __future__ import annotations

import duckdb

from mirror.duckdb_sql import transaction

SCHEMA = "_pgml_catalog"
TEXT, TO_STRING = "pg_text", "pg_array_to_string"

_FLOAT = (
    "case when isinf({e}) then (case when {e} > 0 then 'Infinity' else '-Infinity' end)"
    " when isnan({e}) then 'NaN' else regexp_replace({e}::varchar, '\\.0$', '') end"
)
_TEXT = (
    "case when {e} = '' or upper({e}) = 'NULL' or regexp_matches({e}, '[{{}},\"\\\\\\s]')"
    " then '\"' || replace(replace({e}, '\\', '\\\\'), '\"', '\\\"') || '\"' else {e} end"
)
_ELEMENTS = {
    "FLOAT": _FLOAT,
    "DOUBLE": _FLOAT,
    "BIGINT": "{e}::varchar",
    "INTEGER": "{e}::varchar",
    "HUGEINT": "{e}::varchar",
    "BOOLEAN": "case when {e} then 't' else 'f' end",
    "VARCHAR": _TEXT,
    "DATE": "{e}::varchar",
}
"""How an element of each type is spelled inside an array (an element in text: quoted where
array_out would)."""


def _joined(items: str, spelled: str, separator: str) -> str:
    """``items`` (a list) spelled element by element (``spelled``, over ``e``) and joined."""
    return f"array_to_string(list_transform({items}, lambda e: {spelled}), {separator})"


def _array(items: str, element: str) -> str:
    """The text of the array ``items``, its elements spelled by ``element``."""
    spelled = f"case when e is null then 'NULL' else {element.format(e='e')} end"
    return f"'{{' || {_joined(items, spelled, chr(39) + ',' + chr(39))} || '}}'"


def _nested(element: str) -> str:
    """A two-dimensional array's text: ``{{1,2},{3,4}}``."""
    rows = f"case when r is null then 'NULL' else {_array('r', element)} end"
    return f"'{{' || array_to_string(list_transform(x, lambda r: {rows}), ',') || '}}'"


def _definitions() -> dict[str, list[tuple[str, str]]]:
    text: list[tuple[str, str]] = []
    to_string: list[tuple[str, str]] = []
    for t, element in _ELEMENTS.items():
        text.append((f"x {t}[]", _array("x", element)))
        text.append((f"x {t}[][]", _nested(element)))
        plain = "e" if t == "VARCHAR" else element.format(e="e")  # joined as they are
        kept = "list_filter(x, lambda e: e is not null)"
        to_string.append((f"x {t}[], s", _joined(kept, plain, "s")))
        shown = f"case when e is null then n else {plain} end"
        to_string.append((f"x {t}[], s, n", _joined("x", shown, "s")))
    text.append(("x", "x::varchar"))
    to_string.append(("x, s", "array_to_string(x, s)"))
    to_string.append(("x, s, n", "array_to_string(x, s)"))
    return {TEXT: text, TO_STRING: to_string}


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or refresh) ``pg_text`` and ``pg_array_to_string`` in schema ``_pgml_catalog``."""
    with transaction(con) as cursor:
        cursor.execute(f"create schema if not exists {SCHEMA}")
        for name, overloads in _definitions().items():
            bodies = ", ".join(f"({parameters}) as {body}" for parameters, body in overloads)
            cursor.execute(f"create or replace macro {SCHEMA}.{name}_typed{bodies}")
        # a numeric array would take the double precision overload: its own text, respelled
        numeric = "'{' || replace((q::varchar)[2:-2], ', ', ',') || '}'"
        typed = f"{SCHEMA}.{TEXT}_typed(q)"
        one = (
            "list_transform([x], lambda q: case when typeof(q) like 'DECIMAL(%)[]'"
            f" then {numeric} else {typed} end)[1]"
        )
        cursor.execute(f"create or replace macro {SCHEMA}.{TEXT}(x) as {one}")
        # the separator stays an argument of its own: DuckDB joins with a constant one only
        two = f"list_transform([x], lambda q: {SCHEMA}.{TO_STRING}_typed(q, s))[1]"
        three = f"list_transform([x], lambda q: {SCHEMA}.{TO_STRING}_typed(q, s, n))[1]"
        cursor.execute(
            f"create or replace macro {SCHEMA}.{TO_STRING}(x, s) as {two}, (x, s, n) as {three}"
        )
