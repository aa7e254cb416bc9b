"""Views of the source, mirrored: their base tables found, their definitions made DuckDB views.

A view is not replicated (it has no rows of its own): the tables it reads are, and the mirror
gets a view of the same name whose query is the source's definition in DuckDB's SQL
(:mod:`replicator.view_sql`). The definition is read with ``pg_get_viewdef`` under an empty
``search_path``, so every relation in it is schema-qualified; views it reads are followed down
to their tables. A materialized view (its rows are stored, but never in the WAL), a foreign
table or a catalog cannot be mirrored, and say so. Each view made is listed in
``_pgml_sidecar.source_views``: the endpoint serves it to the roles the source lets SELECT it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import psycopg

from mirror.duckdb_sql import META, quote
from replicator import view_sql
from replicator.view_sql import UntranslatableView

SOURCE_VIEWS = "source_views"
"""The mirror's table of the views made from the source's (schema_name, view_name)."""
MAX_DEPTH = 32
"""Views over views over ...: deeper than this is refused (a definition refers to itself
only through a catalog trick)."""
KINDS = {
    "m": "a materialized view (its rows never reach the WAL, so it cannot be replicated: train"
    " on a view with the same query, or on a table the application refreshes)",
    "f": "a foreign table (its rows live in another server: mirror that server's tables)",
    "S": "a sequence",
    "c": "a composite type",
    "i": "an index",
}


@dataclass(frozen=True, slots=True)
class SourceView:
    """A view of the source: its name and its definition in PostgreSQL's SQL."""

    schema: str
    name: str
    definition: str
    security_invoker: bool = False
    """Whether PostgreSQL checks the privileges of the role reading it on its base relations
    (``security_invoker``, PostgreSQL 15), rather than its owner's."""
    owner: str = ""
    reads: tuple[tuple[str, str], ...] = ()
    """The relations its definition names, as (schema, name)."""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(slots=True)
class ViewPlan:
    """What mirroring a view takes: its views (the ones it reads first) and base tables."""

    views: list[SourceView] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)
    columns: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    """Every relation's columns and their types, for the translation."""


def relation_kind(conn: psycopg.Connection, schema: str, name: str) -> str | None:
    """``pg_class.relkind`` of ``schema.name`` in the source, or None if there is none."""
    row = conn.execute(
        "select c.relkind from pg_catalog.pg_class c"
        " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relname = %s",
        [schema, name],
    ).fetchone()
    return None if row is None else str(row[0])


def plan_view(conn: psycopg.Connection, schema: str, name: str) -> ViewPlan:
    """Read the view and every view it reads; raise :class:`UntranslatableView` for a relation
    that cannot be mirrored."""
    plan = ViewPlan()
    _add_view(conn, plan, schema, name, (f"{schema}.{name}",))
    return plan


def _add_view(
    conn: psycopg.Connection, plan: ViewPlan, schema: str, name: str, path: tuple[str, ...]
) -> None:
    if len(path) > MAX_DEPTH:
        raise UntranslatableView(f"view {path[0]} reads views more than {MAX_DEPTH} deep")
    view = read_view(conn, schema, name)
    plan.columns[(schema, name)] = _column_types(conn, schema, name)
    for found in view.reads:
        if found in plan.tables or any((v.schema, v.name) == found for v in plan.views):
            continue
        kind = relation_kind(conn, *found)
        shown = ".".join(found)
        if kind in ("r", "p"):
            plan.tables.append(found)
            plan.columns[found] = _column_types(conn, *found)
        elif kind == "v":
            _add_view(conn, plan, *found, (*path, shown))
        else:
            what = KINDS.get(kind or "", "not a table or a view")
            raise UntranslatableView(
                f"view {' -> '.join((*path, shown))}: {shown} is {what}"
                if kind
                else f"view {path[-1]} reads {shown}, which the source does not have"
            )
    plan.views.append(view)


def read_view(conn: psycopg.Connection, schema: str, name: str) -> SourceView:
    """The view's definition with every relation schema-qualified (pg_dump's way: an empty
    search_path for the call), whether it is ``security_invoker``, and its owner."""
    with conn.transaction():
        conn.execute("select pg_catalog.set_config('search_path', '', true)")
        row = conn.execute(
            "select pg_catalog.pg_get_viewdef(c.oid, true), c.relkind,"
            " coalesce(c.reloptions::text[] && array['security_invoker=true',"
            " 'security_invoker=on', 'security_invoker=1', 'security_invoker=yes'], false),"
            " pg_catalog.pg_get_userbyid(c.relowner)"
            " from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relname = %s",
            [schema, name],
        ).fetchone()
    if row is None:
        raise UntranslatableView(f"view {schema}.{name} does not exist in the source")
    if row[1] != "v":
        raise UntranslatableView(f"{schema}.{name} is {KINDS.get(row[1], 'not a view')}")
    definition = str(row[0]).strip().rstrip(";")
    reads = tuple(view_sql.relations_read(definition))
    return SourceView(schema, name, definition, bool(row[2]), str(row[3]), reads)


SEARCH_SCHEMAS = ("public", "main", "pgml")
"""Where a name without a schema is looked for, as the trainer looks for it in the mirror."""


def find_view(conn: psycopg.Connection, relation_name: str) -> tuple[str, str, str] | None:
    """The source's view (or materialized view) a training's ``relation_name`` names, as
    (schema, name, relkind); None if it names something else. The name is resolved as the
    trainer resolves it in the mirror: split at the last dot, one pair of double quotes off
    each part, exact names; a bare name in public, main and pgml, the first found."""
    schema, _, name = relation_name.rpartition(".")
    schema, name = _unquote(schema), _unquote(name)
    for candidate in [schema] if schema else SEARCH_SCHEMAS:
        kind = relation_kind(conn, candidate, name)
        if kind is not None:
            return (candidate, name, kind) if kind in ("v", "m") else None
    return None


def _unquote(identifier: str) -> str:
    if len(identifier) >= 2 and identifier[0] == identifier[-1] == '"':
        return identifier[1:-1].replace('""', '"')
    return identifier


def _column_types(conn: psycopg.Connection, schema: str, name: str) -> dict[str, str]:
    rows = conn.execute(
        "select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)"
        " from pg_catalog.pg_attribute a join pg_catalog.pg_class c on c.oid = a.attrelid"
        " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped",
        [schema, name],
    ).fetchall()
    return {str(n): str(t) for n, t in rows}


def create_views(con: duckdb.DuckDBPyConnection, plan: ViewPlan) -> None:
    """Create (or replace) the plan's views in the mirror, the ones read first, in one
    transaction; raise :class:`UntranslatableView` for one DuckDB cannot create."""
    translated = [
        (view, view_sql.translate(view.definition, view=view.qualified, columns=plan.columns))
        for view in plan.views
    ]
    cursor = con.cursor()
    try:
        cursor.execute("begin")
        cursor.execute(f"create schema if not exists {META}")
        cursor.execute(view_sql.DIVIDE_MACRO_SQL)
        cursor.execute(
            f"create table if not exists {META}.{SOURCE_VIEWS} (schema_name varchar,"
            " view_name varchar, primary key (schema_name, view_name))"
        )
        for view, query in translated:
            target = f"{quote(view.schema)}.{quote(view.name)}"
            cursor.execute(f"create schema if not exists {quote(view.schema)}")
            try:
                cursor.execute(f"create or replace view {target} as {query}")
            except duckdb.Error as exc:
                raise UntranslatableView(
                    f"view {view.qualified} cannot be made in the mirror (DuckDB): "
                    f"{_first_line(exc)}; rewrite the view with what DuckDB has, or train on"
                    " a table"
                ) from None
            cursor.execute(
                f"insert or ignore into {META}.{SOURCE_VIEWS} values (?, ?)",
                [view.schema, view.name],
            )
        cursor.execute("commit")
    except BaseException:
        cursor.execute("rollback")
        raise
    finally:
        cursor.close()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
