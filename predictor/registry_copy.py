"""The registry copied to the source: ``pgml.models``, ``snapshots``, ``deployments``, projects.

PostgresML keeps its registry in the database, so its users write ``select ... from
pgml.models join pgml.deployments ...`` in production Postgres. The sidecar's registry is in
the mirror; :class:`RegistryCopy` copies it into the tables of the same names that
sidecar/sql/install.sql makes in the source, whenever it changed: each table's rows upserted
(a row the same as the source's is not written again) and rows the registry no longer has
deleted, one transaction for all of them. The source's ``pgml.projects`` is also the record of
owners (:mod:`predictor.ownership`), so a project's id, task and relation are set beside its
owner and the row is never deleted.

Those tables are never published (the copy would come back through the stream), and their
rows show only to roles that may see the project (row-level security in install.sql). A
source installed before these tables existed gets nothing, and one line in the log says how to
add them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import duckdb
import psycopg

log = logging.getLogger("pgml_sidecar")

RETRY_MISSING_S = 300.0
"""How often a source without the registry tables is looked at again."""


@dataclass(frozen=True)
class CopiedTable:
    name: str  # in schema pgml, both sides
    columns: tuple[tuple[str, str], ...]  # (column, PostgreSQL type of the copy)
    select: str  # from the mirror, the columns in order


def _table(name: str, columns: str, select: str | None = None) -> CopiedTable:
    pairs = tuple(
        (c.split()[0], c.split(maxsplit=1)[1]) for c in (x.strip() for x in columns.split(","))
    )
    names = ", ".join(c for c, _ in pairs)
    return CopiedTable(name, pairs, select or f"select {names} from pgml.{name} order by id")


SNAPSHOTS = _table(
    "snapshots",
    "id bigint, relation_name text, y_column_name text[], test_size real, test_sampling text,"
    " status text, num_rows bigint, columns jsonb, analysis jsonb, materialized boolean,"
    " created_at timestamptz, updated_at timestamptz",
)
MODELS = _table(
    "models",
    "id bigint, project_id bigint, snapshot_id bigint, num_features integer, algorithm text,"
    " runtime text, hyperparams jsonb, status text, metrics jsonb, search text,"
    " search_params jsonb, search_args jsonb, search_results jsonb, preprocess jsonb,"
    " created_at timestamptz, updated_at timestamptz",
)
DEPLOYMENTS = _table(
    "deployments", "id bigint, project_id bigint, model_id bigint, strategy text, created_at"
    " timestamptz"
)  # fmt: skip
REGISTRY = (SNAPSHOTS, MODELS, DEPLOYMENTS)
"""Copied whole, in this order (a model names its snapshot, a deployment its model)."""
PROJECTS_SELECT = """
select p.name, p.id, p.task, s.relation_name, p.created_at
from pgml.projects p
left join (
    select distinct on (m.project_id) m.project_id, s.relation_name
    from pgml.models m join pgml.snapshots s on s.id = m.snapshot_id
    order by m.project_id, m.id desc
) s on s.project_id = p.id
order by p.id
"""
"""Each project with the relation its last training read (who may SELECT it sees it)."""


class RegistryCopy:
    """Keeps the source's registry tables equal to the mirror's registry."""

    def __init__(self, con: duckdb.DuckDBPyConnection, source_dsn: str) -> None:
        self.con = con
        self.source_dsn = source_dsn
        self._copied: str | None = None  # the registry's fingerprint when last copied
        self._missing_since: float | None = None

    def fingerprint(self) -> str:
        """A digest of every copied row of the mirror's registry: changes when any does."""
        cursor = self.con.cursor()
        try:
            parts = [
                cursor.execute(
                    f"select count(*)::varchar || ':' || coalesce(hash(string_agg(t::varchar,"
                    f" '|' order by t.id))::varchar, '') from ({table.select}) t"
                ).fetchall()[0][0]
                for table in REGISTRY
            ]
            parts += [
                cursor.execute(
                    f"select coalesce(hash(string_agg(t::varchar, '|' order by t.id))::varchar,"
                    f" '') from ({PROJECTS_SELECT}) t"
                ).fetchall()[0][0]
            ]
        finally:
            cursor.close()
        return "/".join(parts)

    def copy_if_changed(self) -> bool:
        """Copy the registry to the source if it changed since the last copy; True if copied.

        A source refusing it (down, or a privilege missing) is logged and tried again at the
        next call; one without the tables is looked at again every few minutes.
        """
        if self._missing_since is not None:
            if time.monotonic() - self._missing_since < RETRY_MISSING_S:
                return False
            self._missing_since = None
        fingerprint = self.fingerprint()
        if fingerprint == self._copied:
            return False
        try:
            with psycopg.connect(self.source_dsn, autocommit=True) as conn:
                if not _has_tables(conn):
                    self._missing_since = time.monotonic()
                    log.warning(
                        "the source has no pgml.models, pgml.snapshots or pgml.deployments"
                        " (installed before they existed): the registry is not copied there;"
                        " run sidecar/sql/install.sql again as the owner of schema pgml"
                        " (pgml-sidecar init --print-sql shows it)"
                    )
                    return False
                self.copy(conn)
        except psycopg.Error as exc:
            log.warning("cannot copy the registry to the source (tried again soon): %s", exc)
            return False
        self._copied = fingerprint
        return True

    def copy(self, conn: psycopg.Connection) -> None:
        """Make the source's registry tables equal to the mirror's, in one transaction."""
        cursor = self.con.cursor()
        try:
            rows = {t.name: cursor.execute(t.select).fetchall() for t in REGISTRY}
            projects = cursor.execute(PROJECTS_SELECT).fetchall()
        finally:
            cursor.close()
        with conn.transaction():
            for table in reversed(REGISTRY):  # deletes first, a deployment before its model
                _delete_others(conn, table, [r[0] for r in rows[table.name]])
            for table in REGISTRY:
                _upsert(conn, table, rows[table.name])
            _upsert_projects(conn, projects)


def _has_tables(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "select to_regclass('pgml.models') is not null and to_regclass('pgml.snapshots') is not"
        " null and to_regclass('pgml.deployments') is not null"
    ).fetchone()
    return bool(row and row[0])


def _columns(rows: list[tuple[object, ...]], table: CopiedTable) -> list[list[object]]:
    """Column-wise lists of ``rows``, JSON left as its text (cast in the statement)."""
    return [[row[i] for row in rows] for i in range(len(table.columns))]


def _upsert(conn: psycopg.Connection, table: CopiedTable, rows: list[tuple[object, ...]]) -> None:
    if not rows:
        return
    names = [c for c, _ in table.columns]
    # unnest() of a text[][] would flatten y_column_name: every column goes as text and is cast.
    arrays = ", ".join("%s::text[]" for _ in names)
    casts = ", ".join(f"{name}::{kind}" for name, kind in table.columns)
    updates = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
    changed = " or ".join(f"t.{n} is distinct from excluded.{n}" for n in names[1:])
    values = [[_text(v) for v in column] for column in _columns(rows, table)]
    conn.execute(
        f"insert into pgml.{table.name} as t ({', '.join(names)})"  # names from this module
        f" select {casts} from unnest({arrays}) as u({', '.join(names)})"
        f" on conflict (id) do update set {updates} where {changed}",
        values,
    )


def _text(value: object) -> str | None:
    """A value as PostgreSQL reads its text (a list as an array literal)."""
    if value is None:
        return None
    if isinstance(value, list):
        items = ['"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in value]
        return "{" + ",".join(items) + "}"
    return str(value)


def _delete_others(conn: psycopg.Connection, table: CopiedTable, ids: list[object]) -> None:
    conn.execute(f"delete from pgml.{table.name} where id <> all(%s::bigint[])", [ids])


def _upsert_projects(conn: psycopg.Connection, projects: list[tuple[object, ...]]) -> None:
    """Set each project's id, task, relation and creation beside its owner (who is set by
    :func:`predictor.ownership.publish_owners`)."""
    if not projects:
        return
    name, ids, task, relation, created = ([p[i] for p in projects] for i in range(5))
    conn.execute(
        "insert into pgml.projects as t (project_name, id, task, relation_name, created_at)"
        " select * from unnest(%s::text[], %s::bigint[], %s::text[], %s::text[],"
        " %s::timestamptz[])"
        " on conflict (project_name) do update set id = excluded.id, task = excluded.task,"
        " relation_name = excluded.relation_name, created_at = excluded.created_at"
        " where (t.id, t.task, t.relation_name, t.created_at) is distinct from"
        " (excluded.id, excluded.task, excluded.relation_name, excluded.created_at)",
        [name, ids, task, relation, created],
    )
