"""What each source role may read of the mirror: its SELECT privileges on the mirrored tables.

The source decides who reads what. :meth:`SourcePrivileges.readable` answers, for every
mirrored table, whether a role may SELECT it in the source and which columns: :data:`ALL`, or
the columns its column privileges cover. PostgreSQL's own rules decide (``has_table_privilege``
and ``has_column_privilege``: role membership and inheritance, PUBLIC, superusers), plus two
the mirror needs: without USAGE on the table's schema the role reads nothing of it, and a table
whose row-level security applies to the role is not readable at all (the mirror holds every
row and cannot apply the policies).

One catalog query answers every role asked about; answers are cached per role, refreshed at
least every ``max_age`` seconds (and on demand, :meth:`SourcePrivileges.refresh`). When the
source cannot be reached the last answer is kept and the failure logged; a role never answered
gets nothing, and so does a name that is no source role.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import duckdb
import psycopg

from mirror.duckdb_sql import META

log = logging.getLogger("pgml_sidecar")

MAX_AGE_S = 60.0
RETRY_AFTER_S = 5.0
UNCOVERED_RETRY_S = 1.0
"""A table mirrored after a role's answer asks the source again, at most this often."""
MAX_ROLES = 10_000
"""Roles kept in the cache; the longest unrefreshed ones are forgotten first."""
APPLICATION_NAME = "pgml-sidecar privileges"


class AllColumns:
    """Every column of a table: the role holds SELECT on the table itself."""

    _instance: AllColumns | None = None

    def __new__(cls) -> AllColumns:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ALL"

    def __contains__(self, column: object) -> bool:
        return True


ALL: Final = AllColumns()
Columns = AllColumns | frozenset[str]
Readable = Mapping[tuple[str, str], Columns]
NOTHING: Final[Readable] = {}


@dataclass(frozen=True, slots=True)
class MirroredRelation:
    """A mirrored table as the privileges query needs it."""

    schema: str
    name: str
    relid: int = 0
    """The source table's OID; 0 when unknown (then the name is looked up). With it, a table
    answers only while both its OID and its name are the mirrored table's."""
    columns: tuple[str, ...] = ()
    """The mirrored columns; empty when unknown (then every source column counts)."""


def mirrored_relations(con: duckdb.DuckDBPyConnection) -> list[MirroredRelation]:
    """The tables the mirror holds (``_pgml_sidecar.tables``), with their source OIDs, and the
    source views made over them (``_pgml_sidecar.source_views``), looked up by name."""
    cursor = con.cursor()
    try:
        rows = cursor.execute(
            f"select schema_name, table_name, relid, columns from {META}.tables order by 1, 2"
        ).fetchall()
        try:
            views = cursor.execute(
                f"select schema_name, view_name from {META}.source_views order by 1, 2"
            ).fetchall()
        except duckdb.CatalogException:
            views = []
    except duckdb.CatalogException:
        return []
    finally:
        cursor.close()
    return [
        MirroredRelation(schema, name, int(relid or 0), _column_names(columns))
        for schema, name, relid, columns in rows
    ] + [MirroredRelation(schema, name) for schema, name in views]


def _column_names(columns: str | None) -> tuple[str, ...]:
    try:
        return tuple(str(c["name"]) for c in json.loads(columns or "[]"))
    except (ValueError, TypeError, KeyError):
        return ()


_QUERY = """
with asked as (
    select r.oid as roleid, r.rolname, r.rolsuper, r.rolbypassrls
    from pg_catalog.pg_roles r where r.rolname = any (%(roles)s::text[])
),
mirrored as (
    select m.schema_name, m.table_name,
           case when m.relid > 0 then m.relid::oid
                else pg_catalog.to_regclass(pg_catalog.quote_ident(m.schema_name) || '.'
                                            || pg_catalog.quote_ident(m.table_name))::oid
           end as wanted
    from unnest(%(schemas)s::text[], %(names)s::text[], %(relids)s::bigint[])
        as m(schema_name, table_name, relid)
),
found as (
    select m.schema_name, m.table_name, c.oid, c.relnamespace, c.relowner, c.relrowsecurity,
           c.relforcerowsecurity,
           c.relkind = 'v' and coalesce(c.reloptions && array['security_invoker=true',
               'security_invoker=on', 'security_invoker=1', 'security_invoker=yes'], false)
               as invoker
    from mirrored m
    join pg_catalog.pg_class c on c.oid = m.wanted and c.relname = m.table_name
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace and n.nspname = m.schema_name
    -- a view reads its relations with its owner's privileges, as the mirror's copy does; not a
    -- view over a table with row security (the mirror holds every row): served to nobody
    where c.relkind <> 'v' or not exists (
        select from pg_catalog.pg_rewrite rw
        join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_rewrite'::regclass
                                   and d.objid = rw.oid
        join pg_catalog.pg_class t on t.oid = d.refobjid and t.relrowsecurity
        where rw.ev_class = c.oid)
)
select a.rolname, f.schema_name, f.table_name, w.whole,
       case when w.whole then null else array(
           select att.attname::text from pg_catalog.pg_attribute att
           where att.attrelid = f.oid and att.attnum > 0 and not att.attisdropped
             and pg_catalog.has_column_privilege(a.roleid, f.oid, att.attnum, 'SELECT'))
       end as columns
from asked a
cross join found f
cross join lateral (
    select pg_catalog.has_table_privilege(a.roleid, f.oid, 'SELECT') as whole
) w
where pg_catalog.has_schema_privilege(a.roleid, f.relnamespace, 'USAGE')
  -- a security_invoker view reads its relations with the reader's privileges: all of them
  and not (f.invoker and exists (
      select from pg_catalog.pg_rewrite rw
      join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_rewrite'::regclass
                                 and d.objid = rw.oid and d.refobjid <> f.oid
      join pg_catalog.pg_class t on t.oid = d.refobjid
      where rw.ev_class = f.oid
        and not pg_catalog.has_table_privilege(a.roleid, t.oid, 'SELECT')))
  and not (f.relrowsecurity and not (
      a.rolsuper or a.rolbypassrls
      or (pg_catalog.pg_has_role(a.roleid, f.relowner, 'USAGE') and not f.relforcerowsecurity)))
union all
select a.rolname, null, null, null, null from asked a
"""


def read_privileges(
    conn: psycopg.Connection, roles: Iterable[str], relations: Sequence[MirroredRelation]
) -> dict[str, dict[tuple[str, str], Columns]]:
    """Ask the source, in one query, what each role may SELECT of ``relations``.

    Roles that do not exist in the source are left out of the answer.
    """
    params = {
        "roles": sorted(set(roles)),
        "schemas": [r.schema for r in relations],
        "names": [r.name for r in relations],
        "relids": [r.relid for r in relations],
    }
    known = {(r.schema, r.name): r for r in relations}
    answer: dict[str, dict[tuple[str, str], Columns]] = {}
    for role, schema, table, whole, columns in conn.execute(_QUERY, params).fetchall():
        readable = answer.setdefault(role, {})
        if schema is None:
            continue  # the row that says the role exists
        if whole:
            readable[(schema, table)] = ALL
            continue
        mirrored = known[(schema, table)].columns
        allowed = frozenset(columns or ()) & frozenset(mirrored) if mirrored else columns
        if allowed:
            readable[(schema, table)] = frozenset(allowed)
    return answer


@dataclass(frozen=True, slots=True)
class _Answer:
    readable: Readable
    at: float
    covered: frozenset[tuple[str, str]]
    """The mirrored tables the source was asked about: a table mirrored since is not."""


class SourcePrivileges:
    """Each source role's readable mirrored tables, cached and kept fresh from the source."""

    def __init__(
        self,
        source_dsn: str,
        relations: duckdb.DuckDBPyConnection | Callable[[], Sequence[MirroredRelation]],
        *,
        max_age: float = MAX_AGE_S,
        retry_after: float = RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source_dsn = source_dsn
        if isinstance(relations, duckdb.DuckDBPyConnection):
            con = relations
            self._relations: Callable[[], Sequence[MirroredRelation]] = lambda: mirrored_relations(
                con
            )
        else:
            self._relations = relations
        self.max_age = max_age
        self.retry_after = retry_after
        self._clock = clock
        self._answers: dict[str, _Answer] = {}
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._retry_at = 0.0
        self._failing = False
        self.refreshes = 0
        """Catalog queries the source answered (tests and metrics read it)."""

    def readable(self, role: str, table: tuple[str, str] | None = None) -> Readable:
        """The mirrored tables ``role`` may SELECT in the source, each with its columns.

        With ``table`` (schema, name), an answer given before that table was mirrored is asked
        again at once: a table copied a moment ago is readable at once by those the source lets
        read it (a table the mirror does not hold, at most every :data:`UNCOVERED_RETRY_S`).
        """
        answer = self._answers.get(role)
        now = self._clock()
        if answer is not None and now - answer.at <= self.max_age:
            if table is None or table in answer.covered:
                return answer.readable
            # Mirrored since the answer: asked again at once (the next answer covers it); a
            # table the mirror does not hold, at most every UNCOVERED_RETRY_S.
            mirrored = self._mirrored(table)
            if now - answer.at < UNCOVERED_RETRY_S and not mirrored:
                return answer.readable
            if now >= self._retry_at:
                self.refresh([role], stale_before=None if mirrored else now - UNCOVERED_RETRY_S)
                answer = self._answers.get(role)
            return answer.readable if answer is not None else NOTHING
        if now >= self._retry_at:
            self.refresh(None if answer is not None else [role], stale_before=now - self.max_age)
            answer = self._answers.get(role)
        return answer.readable if answer is not None else NOTHING

    def _mirrored(self, table: tuple[str, str]) -> bool:
        try:
            return any((r.schema, r.name) == table for r in self._relations())
        except duckdb.Error:
            return False

    def may_select(self, role: str, schema: str, table: str, columns: Iterable[str] = ()) -> bool:
        """Whether ``role`` may SELECT these columns (or some column) of a mirrored table."""
        allowed = self.readable(role, (schema, table)).get((schema, table))
        if allowed is None:
            return False
        return all(c in allowed for c in columns)

    def refresh(
        self, roles: Iterable[str] | None = None, *, stale_before: float | None = None
    ) -> bool:
        """Ask the source again for ``roles`` (default: every role asked about so far).

        One catalog query; True if the source answered. With ``stale_before``, roles answered
        since then (by another thread meanwhile) are not asked again.
        """
        with self._lock:
            wanted = set(self._answers) if roles is None else set(roles)
            if stale_before is not None:
                answers = self._answers
                wanted = {r for r in wanted if r not in answers or answers[r].at < stale_before}
            if not wanted:
                return True
            try:
                relations = list(self._relations())
                answer = read_privileges(self._connection(), wanted, relations)
            except (psycopg.Error, duckdb.Error) as exc:
                self._lost(exc)
                return False
            now = self._clock()
            covered = frozenset((r.schema, r.name) for r in relations)
            for role in wanted:
                self._answers.pop(role, None)  # re-inserted last: the oldest answers go first
                self._answers[role] = _Answer(answer.get(role, {}), now, covered)
            while len(self._answers) > MAX_ROLES:
                self._answers.pop(next(iter(self._answers)))
            self.refreshes += 1
            if self._failing:
                log.info("privileges: the source answers again")
                self._failing = False
            return True

    def forget(self, role: str) -> None:
        """Drop the cached answer for ``role``: the next :meth:`readable` asks the source."""
        self._answers.pop(role, None)

    def run(self, stop: threading.Event) -> None:
        """Refresh every cached role well within ``max_age`` until ``stop`` is set."""
        try:
            while not stop.wait(self.max_age / 2):
                if self._answers:
                    self.refresh()
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self.source_dsn,
                autocommit=True,
                connect_timeout=5,
                application_name=APPLICATION_NAME,
                options="-c statement_timeout=30s",
            )
        return self._conn

    def _lost(self, exc: Exception) -> None:
        self._retry_at = self._clock() + self.retry_after
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if not self._failing:
            log.warning(
                "privileges: cannot read them from the source (%s); keeping the last answers",
                first,
            )
        self._failing = True
