"""Who owns each project: recorded in the mirror, judged with the source's roles.

A project belongs to the source role that created it: the role stamped on the
``pgml.train()`` request that made it (or, on the SQL endpoint, the source role of the
endpoint user). Only that role, a member of it, or a member of :data:`ADMIN_ROLE` may change
the project: retrain or retarget it, deploy, schedule, write back, or stop either. Membership
is PostgreSQL's (``pg_has_role(..., 'USAGE')``, superusers included), asked of the source each
time. A project made before owners were recorded has none: only members of ``pgml_admin`` may
change it.

The record is ``_pgml_sidecar.project_owners`` in the mirror; :func:`publish_owners` copies
it to the source's ``pgml.projects``, where the ``pgml.*`` functions refuse a non-owner at
once.
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import psycopg

from mirror.duckdb_sql import META
from mirror.errors import SidecarError

ADMIN_ROLE = "pgml_admin"
TABLE = f"{META}.project_owners"


class NotOwner(SidecarError):
    """The role may not change the project (PostgreSQL's ``must be owner of ...``)."""

    sqlstate = "42501"


class ProjectOwners:
    """The owner of each project, kept in the mirror beside the registry."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        cursor = con.cursor()
        try:
            cursor.execute(f"create schema if not exists {META}")
            cursor.execute(
                f"create table if not exists {TABLE} (project varchar primary key,"
                " owner varchar not null, recorded_at timestamptz default current_timestamp)"
            )
        finally:
            cursor.close()

    def owner(self, project: str) -> str | None:
        """The role that owns ``project``, or None if none is recorded."""
        cursor = self.con.cursor()
        try:
            row = cursor.execute(
                f"select owner from {TABLE} where project = ?", [project]
            ).fetchone()
        finally:
            cursor.close()
        return None if row is None else str(row[0])

    def claim(self, project: str, role: str) -> str:
        """Record ``role`` as the owner unless one is recorded; return the owner now recorded."""
        cursor = self.con.cursor()
        try:
            cursor.execute(
                f"insert or ignore into {TABLE} (project, owner) values (?, ?)", [project, role]
            )
        finally:
            cursor.close()
        owner = self.owner(project)
        assert owner is not None
        return owner

    def release(self, project: str, role: str) -> None:
        """Forget a claim ``role`` made (a first training that created nothing)."""
        cursor = self.con.cursor()
        try:
            cursor.execute(f"delete from {TABLE} where project = ? and owner = ?", [project, role])
        finally:
            cursor.close()

    def all(self) -> dict[str, str]:
        cursor = self.con.cursor()
        try:
            rows = cursor.execute(f"select project, owner from {TABLE} order by 1").fetchall()
        finally:
            cursor.close()
        return {str(p): str(o) for p, o in rows}


def may_change(conn: psycopg.Connection, role: str, owner: str | None) -> bool:
    """Whether source role ``role`` may change a project owned by ``owner`` (None: nobody)."""
    row = conn.execute(
        "select r.rolsuper"
        " or (o.oid is not null and pg_catalog.pg_has_role(r.oid, o.oid, 'USAGE'))"
        " or (a.oid is not null and pg_catalog.pg_has_role(r.oid, a.oid, 'USAGE'))"
        " from pg_catalog.pg_roles r"
        " left join pg_catalog.pg_roles o on o.rolname = %(owner)s"
        " left join pg_catalog.pg_roles a on a.rolname = %(admin)s"
        " where r.rolname = %(role)s",
        {"role": role, "owner": owner, "admin": ADMIN_ROLE},
    ).fetchone()
    return bool(row and row[0])


def check_may_change(conn: psycopg.Connection, role: str, project: str, owner: str | None) -> None:
    """Raise :class:`NotOwner` unless ``role`` may change ``project`` (owned by ``owner``)."""
    if may_change(conn, role, owner):
        return
    if owner is None:
        why = (
            "it was made before pgml-sidecar recorded owners: only members of"
            f" {ADMIN_ROLE} may change it"
        )
    else:
        why = (
            f"it belongs to role {owner}: only that role, its members and members of"
            f" {ADMIN_ROLE} may change it"
        )
    raise NotOwner(f"must be owner of project {project} ({why})")


def publish_owners(conn: psycopg.Connection, owners: Mapping[str, str]) -> int:
    """Copy owners to the source's ``pgml.projects``; return the rows that changed there."""
    if not owners:
        return 0
    with conn.transaction():
        cursor = conn.execute(
            "insert into pgml.projects (project_name, owner)"
            " select * from unnest(%s::text[], %s::name[])"
            " on conflict (project_name) do update set owner = excluded.owner, updated_at = now()"
            " where pgml.projects.owner is distinct from excluded.owner",
            [list(owners), list(owners.values())],
        )
        return cursor.rowcount
