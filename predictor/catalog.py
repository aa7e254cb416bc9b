"""PostgreSQL's system catalogs as clients query them, answered from DuckDB's own.

postgres_fdw's ``IMPORT FOREIGN SCHEMA`` and ``ANALYZE``, and tools that describe tables, read
``pg_class``, ``pg_attribute``, ``pg_namespace``, ``pg_attrdef``, ``pg_collation`` and call
``format_type``, ``pg_get_expr`` and ``pg_relation_size``. DuckDB has most of these, but with
its own type ids; the views here give PostgreSQL's type oids and names, so an imported foreign
table gets the column types a PostgreSQL user expects (``smallint[]``, ``numeric(10,2)``).
They live in schema ``_pgml_catalog`` of the mirror; the statement translator sends catalog
references there.

:class:`ServedRelations` is the other half of the endpoint's catalog: the relations a client may
name at all (mirrored tables, the registry and data sets in schema ``pgml``, the ``pgml_scores``
views, and tables made in the file by hand before it was served), read from the mirror and
cached, for the allow-list check of every statement. The sidecar's bookkeeping
(``_pgml_sidecar``) and this catalog's implementation (``_pgml_catalog``) are never served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from mirror.duckdb_sql import META, transaction

SCHEMA = "_pgml_catalog"
TABLES = ("pg_class", "pg_namespace", "pg_attribute", "pg_attrdef", "pg_collation", "pg_type")
FUNCTIONS = ("format_type", "pg_get_expr", "pg_relation_size", "pg_table_is_visible")
INFORMATION_SCHEMA = {
    name: f"information_schema_{name}" for name in ("tables", "columns", "schemata")
}
"""``information_schema`` views answered here (DuckDB's, without the sidecar's own schemas)."""
_HIDDEN_SCHEMAS = f"('{META}', '{SCHEMA}')"
_MIRROR_SCHEMAS = (
    "select oid from duckdb_schemas() where database_name in (current_database(), 'system')"
)
"""The schemas of the mirror and DuckDB's own: the catalog shows no endpoint user's workspace
(predictor.workspace)."""

# (DuckDB type, PostgreSQL oid, PostgreSQL name); arrays get the array oid and "name[]".
_TYPES = [
    ("BOOLEAN", 16, 1000, "boolean"),
    ("TINYINT", 21, 1005, "smallint"),
    ("SMALLINT", 21, 1005, "smallint"),
    ("INTEGER", 23, 1007, "integer"),
    ("BIGINT", 20, 1016, "bigint"),
    ("HUGEINT", 1700, 1231, "numeric"),
    ("UTINYINT", 21, 1005, "smallint"),
    ("USMALLINT", 23, 1007, "integer"),
    ("UINTEGER", 20, 1016, "bigint"),
    ("UBIGINT", 1700, 1231, "numeric"),
    ("FLOAT", 700, 1021, "real"),
    ("DOUBLE", 701, 1022, "double precision"),
    ("VARCHAR", 25, 1009, "text"),
    ("BLOB", 17, 1001, "bytea"),
    ("DATE", 1082, 1182, "date"),
    ("TIME", 1083, 1183, "time without time zone"),
    ("TIMESTAMP", 1114, 1115, "timestamp without time zone"),
    ("TIMESTAMP WITH TIME ZONE", 1184, 1185, "timestamp with time zone"),
    ("INTERVAL", 1186, 1187, "interval"),
    ("UUID", 2950, 2951, "uuid"),
    ("JSON", 114, 199, "json"),
]


def _type_cases() -> tuple[str, str]:
    """SQL CASE arms: DuckDB data_type → PostgreSQL oid, and oid → PostgreSQL type name."""
    to_oid = []
    names: dict[int, str] = {}
    for duck, oid, array_oid, name in _TYPES:
        to_oid.append(f"when '{duck}' then {oid} when '{duck}[]' then {array_oid}")
        names.setdefault(oid, name)
        names.setdefault(array_oid, name + "[]")
    to_name = " ".join(f"when {oid} then '{name}'" for oid, name in names.items())
    return " ".join(to_oid), to_name


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or refresh) the catalog views and functions in schema ``_pgml_catalog``."""
    to_oid, to_name = _type_cases()
    pg_oid = (
        f"case when data_type like 'DECIMAL%[]' then 1231 when data_type like 'DECIMAL%' then 1700"
        f" else case data_type {to_oid} else 25 end end"
    )
    with transaction(con) as cursor:
        cursor.execute(f"create schema if not exists {SCHEMA}")
        statements = [
            f"create or replace view {SCHEMA}.pg_namespace as"
            " select oid, nspname, nspowner, nspacl from pg_catalog.pg_namespace",
            f"create or replace view {SCHEMA}.pg_class as select * from pg_catalog.pg_class"
            f" where relnamespace in ({_MIRROR_SCHEMAS})",
            f"create or replace view {SCHEMA}.pg_type as select * from pg_catalog.pg_type",
            f"create or replace view {SCHEMA}.pg_attribute as select"
            " table_oid as attrelid, column_name as attname,"
            f" ({pg_oid})::bigint as atttypid,"
            " case when data_type like 'DECIMAL%' and numeric_precision is not null"
            "  then ((numeric_precision << 16) | numeric_scale) + 4 else -1 end::integer"
            "  as atttypmod,"
            " column_index::smallint as attnum, not is_nullable as attnotnull,"
            " false as attisdropped, 0::bigint as attcollation, '' as attgenerated,"
            " -1::integer as attstattarget, (data_type like '%[]')::integer as attndims,"
            " column_default is not null as atthasdef, null::varchar[] as attfdwoptions"
            " from duckdb_columns() where database_name = current_database()",
            f"create or replace view {SCHEMA}.pg_attrdef as select 0::bigint as oid,"
            " 0::bigint as adrelid, 0::smallint as adnum, null::varchar as adbin where false",
            f"create or replace view {SCHEMA}.pg_collation as select 0::bigint as oid,"
            " null::varchar as collname, 0::bigint as collnamespace where false",
            f"create or replace macro {SCHEMA}.format_type(type_oid, type_modifier) as"
            f" case when type_oid = 1700 and type_modifier > 4 then 'numeric('"
            " || ((type_modifier - 4) >> 16) || ',' || ((type_modifier - 4) & 65535) || ')'"
            f" else case type_oid {to_name} else 'text' end end",
            f"create or replace macro {SCHEMA}.pg_get_expr(expression, relation) as null::varchar",
            f"create or replace macro {SCHEMA}.pg_table_is_visible(relation) as true",
            f"create or replace macro {SCHEMA}.pg_relation_size(relation) as ("
            " select coalesce(max(estimated_size), 0) * 64 from duckdb_tables()"
            " where database_name = current_database()"
            " and (schema_name || '.' || table_name = relation or table_name = relation))",
        ]
        for name, view in INFORMATION_SCHEMA.items():
            schema, database = ("schema_name", "catalog_name") if name == "schemata" else (
                "table_schema", "table_catalog"
            )  # fmt: skip
            statements.append(
                f"create or replace view {SCHEMA}.{view} as select * from information_schema.{name}"
                f" where {schema} not in {_HIDDEN_SCHEMAS} and {database} = current_database()"
            )
        for statement in statements:
            cursor.execute(statement)


log = logging.getLogger("pgml_sidecar")

MIRRORED, LOCAL, SCORES, REGISTRY = "mirrored", "local", "scores", "registry"
REFRESH_SECONDS = 1.0
"""How long a lookup trusts the cached relations; a name not found refreshes them at once."""


@dataclass(frozen=True, slots=True)
class ServedRelation:
    """A relation endpoint clients may name, with its kind.

    ``mirrored``: a source table the replicator keeps; ``local``: a table or view made in the
    mirror file by other hands before it was served (``serve`` on a DuckDB file built by hand,
    the benchmarks); ``scores``: a ``pgml_scores`` view. These three are read only by callers
    whose ``readable`` (see :mod:`predictor.allow_list`) names them. ``registry``: the
    sidecar's own tables and views and the loaded data sets in schema ``pgml``, readable by
    every endpoint user.
    """

    schema: str
    name: str
    kind: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(identifier: str) -> str:
    """An identifier as DuckDB compares names: A-Z folded to a-z, nothing else.

    Unicode case folding would make ``"ſalaries"`` (long s) or ``"K"`` (Kelvin sign) the same
    name as ``salaries`` or ``k`` here while DuckDB reads another table under it."""
    return identifier.translate(_ASCII_LOWER)


class ServedRelations:
    """The relations of one mirror that the endpoint serves, cached and looked up by name.

    DuckDB resolves names without regard to case, so lookups do too. The cache is read again
    when it is older than :data:`REFRESH_SECONDS` or misses a name (a table mirrored or a score
    view made a moment ago); ``before_refresh`` runs first (the endpoint rebuilds its score views
    there after a deployment).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        before_refresh: Callable[[], None] | None = None,
    ) -> None:
        self._con = con
        self._before_refresh = before_refresh
        self._lock = threading.Lock()
        self._by_name: dict[tuple[str, str], ServedRelation] = {}
        self._loaded_at = -REFRESH_SECONDS

    def find(self, schema: str, name: str) -> ServedRelation | None:
        """The served relation ``schema.name`` names, or None."""
        key = (fold(schema), fold(name))
        stale = time.monotonic() - self._loaded_at > REFRESH_SECONDS
        if stale:
            self.refresh()
        found = self._by_name.get(key)
        if found is None and not stale:
            self.refresh()
            found = self._by_name.get(key)
        return found

    def all(self) -> list[ServedRelation]:
        """Every served relation, as of the last refresh."""
        return list(self._by_name.values())

    def refresh(self) -> None:
        """Read the served relations from the mirror again; on an error keep the last ones."""
        if self._before_refresh is not None:
            try:
                self._before_refresh()
            except Exception as exc:  # a view that cannot be made must not stop every query
                log.warning("served relations: refreshing before a lookup failed: %s", exc)
        with self._lock:
            cursor = self._con.cursor()
            try:
                rows = _served_rows(cursor)
            except duckdb.Error as exc:
                log.warning("served relations: cannot read them from the mirror: %s", exc)
                return
            finally:
                cursor.close()
            by_name: dict[tuple[str, str], ServedRelation] = {}
            for schema, name, kind in rows:
                key = (fold(schema), fold(name))
                if key not in by_name or kind == MIRRORED:
                    by_name[key] = ServedRelation(schema, name, kind)
            self._by_name = by_name
            self._loaded_at = time.monotonic()


def _served_rows(cursor: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    kind = (
        f"case schema_name when 'pgml' then '{REGISTRY}' when 'pgml_scores' then '{SCORES}'"
        f" else '{LOCAL}' end"
    )
    where = (
        "where database_name = current_database() and not internal"
        f" and schema_name not in ('{META}', '{SCHEMA}', 'information_schema', 'pg_catalog')"
    )
    own = (
        f"select schema_name, table_name, {kind} from duckdb_tables() {where}"
        f" union all select schema_name, view_name, {kind} from duckdb_views() {where}"
    )
    try:
        mirrored = cursor.execute(
            f"select schema_name, table_name, '{MIRRORED}' from {META}.tables"
        ).fetchall()
    except duckdb.CatalogException:
        mirrored = []  # a mirror the replicator never wrote to
    return mirrored + cursor.execute(own).fetchall()
