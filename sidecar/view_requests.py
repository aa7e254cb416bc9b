"""Trainings on a view of the source: who may ask, as PostgreSQL decides, and the view mirrored.

PostgreSQL lets a role read a view if it may SELECT the view; the view then reads its base
relations with its owner's privileges (a ``security_invoker`` view, with the reader's), and
their row-level security applies to that role. The sidecar asks the same of the source before
it trains on a view: the requester needs SELECT on every column of the view (training reads
them all), not on the base tables; each view's owner (or, for ``security_invoker``, whoever
reads it) needs SELECT on what it reads; a base table with row-level security that role does
not bypass is refused, the mirror's copy having every row. On the SQL endpoint, the mirrored
base tables stay readable only by the roles that may SELECT them in the source.

Then the view's base tables are published and copied if they are not mirrored yet (as the
daemon copies tables named later), and the view is made, translated, in the mirror: again at
each training that names it, so a changed definition is picked up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import duckdb
import psycopg

from mirror.errors import SidecarError
from replicator import views
from replicator.views import SourceView, ViewPlan

AddTables = Callable[[Sequence[tuple[str, str]]], None]
"""Publish tables and copy them into the mirror, returning once they are there."""

_MAY_READ = """
select coalesce(bool_and(pg_catalog.has_column_privilege(r.oid, c.oid, a.attnum, 'select')),
                true)
       and pg_catalog.has_schema_privilege(r.oid, c.relnamespace, 'usage')
from pg_catalog.pg_roles r, pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
left join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
where r.rolname = %s and n.nspname = %s and c.relname = %s
group by r.oid, c.relnamespace
"""
_ROW_SECURITY = """
select c.relrowsecurity and not (r.rolsuper or r.rolbypassrls
       or (pg_catalog.pg_has_role(r.oid, c.relowner, 'usage') and not c.relforcerowsecurity))
from pg_catalog.pg_roles r, pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where r.rolname = %s and n.nspname = %s and c.relname = %s
"""


def check_view(conn: psycopg.Connection, role: str, plan: ViewPlan) -> None:
    """Raise 42501 unless ``role`` may read the plan's view (its last) in the source, as
    PostgreSQL would let it."""
    top = plan.views[-1]
    if not _may_read(conn, role, top.schema, top.name):
        raise SidecarError(
            f"permission denied for view {top.name} (training reads every column of"
            f" {top.qualified}, and role {role} may not SELECT them all in the source)",
            sqlstate="42501",
        )
    by_name = {(v.schema, v.name): v for v in plan.views}
    readers = {(top.schema, top.name): role if top.security_invoker else top.owner}
    for view in reversed(plan.views):  # the one asked for first, then what it reads
        reader = readers.get((view.schema, view.name), view.owner)
        for relation in view.reads:
            inner = by_name.get(relation)
            if inner is not None:
                readers.setdefault(relation, reader if inner.security_invoker else inner.owner)
            _check_base(conn, view, reader, relation)


def _check_base(
    conn: psycopg.Connection, view: SourceView, reader: str, relation: tuple[str, str]
) -> None:
    shown = ".".join(relation)
    if not _may_read(conn, reader, *relation):
        raise SidecarError(
            f"permission denied for table {relation[1]} (view {view.qualified} reads {shown}"
            f" as role {reader}, which may not SELECT all of it in the source)",
            sqlstate="42501",
        )
    row = conn.execute(_ROW_SECURITY, [reader, *relation]).fetchone()
    if row is not None and row[0]:
        raise SidecarError(
            f"permission denied for table {relation[1]} (view {view.qualified} reads {shown},"
            f" which has row-level security that role {reader} does not bypass, and the"
            " sidecar's copy of it has every row)",
            sqlstate="42501",
        )


def _may_read(conn: psycopg.Connection, role: str, schema: str, name: str) -> bool:
    row = conn.execute(_MAY_READ, [role, schema, name]).fetchone()
    return bool(row and row[0])


def mirror_view(
    conn: psycopg.Connection,
    con: duckdb.DuckDBPyConnection,
    plan: ViewPlan,
    add_tables: AddTables | None,
    mirrored: Callable[[tuple[str, str]], bool],
) -> None:
    """Copy the plan's base tables into the mirror where they are not, then make its views."""
    top = plan.views[-1].qualified
    missing = [t for t in plan.tables if not mirrored(t)]
    if missing:
        names = ", ".join(".".join(t) for t in missing)
        if add_tables is None:
            raise SidecarError(
                f"view {top} reads {names}, which the mirror does not have; with the Debezium"
                " source, add them to the connector's table.include.list and to the sidecar's"
                " tables, then ask again",
                sqlstate="55000",
            )
        try:
            add_tables(missing)
        except SidecarError as exc:
            raise SidecarError(
                f"view {top} reads {names}, which are not mirrored yet, and the sidecar could"
                f" not add them: {exc}",
                sqlstate=exc.sqlstate,
            ) from None
    views.create_views(con, plan)
