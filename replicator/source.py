"""The source database as the replicator sees it: checks, tables, publication, slot, types."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mirror.changes import Column, Lsn, Relation, parse_lsn
from mirror.column_types import SourceType, parse_array_literal
from mirror.errors import (
    ConfigError,
    SidecarError,
    SourceConnectionLost,
    SourceSetupError,
)

SESSION_OPTIONS = (
    "-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC"
    " -c extra_float_digits=3 -c bytea_output=hex"
)
"""Settings that make every value's text form one the mirror's casts read back exactly."""

_BUILTIN_OID_LIMIT = 10000


def source_conninfo(dsn: str, **extra: str) -> str:
    """The DSN with the sidecar's session options appended to any the user gave."""
    options = conninfo_to_dict(dsn).get("options") or ""
    return make_conninfo(
        dsn,
        options=f"{options} {SESSION_OPTIONS}".strip(),
        application_name="pgml-sidecar",
        **extra,
    )


def connect(dsn: str) -> psycopg.Connection:
    """A regular autocommit connection to the source, with a clear error if it fails
    (see :func:`connection_error`)."""
    try:
        return psycopg.connect(source_conninfo(dsn), autocommit=True)
    except psycopg.Error as exc:
        raise connection_error(exc, "cannot connect to the source database") from None


_CANNOT_HEAL = (
    (r"password authentication failed|no password supplied",
     "check the user and its password (PGPASSWORD or ~/.pgpass)"),
    (r"authentication failed", "check the user and how the source authenticates it"),
    (r'role ".*" does not exist', "check user= in the connection string"),
    (r'role ".*" is not permitted to log in', "ALTER ROLE ... LOGIN in the source"),
    (r'database ".*" does not exist', "check dbname= in the connection string"),
    (r"pg_hba\.conf", "allow this host and user in the source's pg_hba.conf (on a managed"
     " service: its network and user settings)"),
    (r"permission denied for database|does not have CONNECT privilege",
     "GRANT CONNECT ON DATABASE ... TO the user"),
    (r"does not support SSL", "set sslmode=prefer in the connection string, or enable SSL"
     " on the source"),
)  # fmt: skip
"""What a server or libpq says when a login cannot succeed however often it is retried, and
what to do about it."""


def connection_error(exc: psycopg.Error, doing: str) -> SidecarError:
    """What a failed connection to the source means, as one line saying what to do next.

    A malformed connection string is a `ConfigError`; a refused login (password, role,
    database, pg_hba.conf, CONNECT) a `SourceSetupError`, which retrying cannot fix; anything
    else (server down, starting, out of connection slots, network) a `SourceConnectionLost`,
    which retrying may fix.
    """
    text = first_line(exc)
    if not isinstance(exc, psycopg.OperationalError):  # libpq refused the string itself
        return ConfigError(
            f"the source connection string is not valid: {text}; write it as key=value pairs"
            " (host=db dbname=shop user=sidecar) or as a postgresql:// URI"
        )
    for pattern, advice in _CANNOT_HEAL:
        if re.search(pattern, text):
            return SourceSetupError(f"{doing}: {text}; {advice}")
    return SourceConnectionLost(
        f"{doing}: {text}; check that the source runs and that host and port are right"
    )


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str
    database: str
    active_pid: int | None
    confirmed_flush: Lsn | None


def check_wal_level(conn: psycopg.Connection) -> None:
    row = conn.execute("show wal_level").fetchone()
    level = row[0] if row else "unknown"
    if level != "logical":
        raise SourceSetupError(
            f"the source has wal_level = {level}; logical replication needs wal_level = logical"
            " (on RDS and Aurora set rds.logical_replication = 1, on Cloud SQL"
            " cloudsql.logical_decoding = on) and a server restart"
        )


def split_table_name(name: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` (schema public); quotes are not needed nor allowed."""
    schema, dot, table = name.strip().rpartition(".")
    return (schema if dot else "public"), table


def publication_tables(conn: psycopg.Connection, publication: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "select schemaname, tablename from pg_publication_tables where pubname = %s order by 1, 2",
        [publication],
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def resolve_tables(conn: psycopg.Connection, names: Iterable[str]) -> list[tuple[str, str]]:
    """Check that every named table exists; return them as (schema, table)."""
    tables = []
    for name in names:
        schema, table = split_table_name(name)
        row = conn.execute(
            "select c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relname = %s",
            [schema, table],
        ).fetchone()
        if row is None:
            raise SourceSetupError(
                f"table {schema}.{table} does not exist in the source database;"
                " check the names given to --tables"
            )
        if row[0] not in ("r", "p"):
            raise SourceSetupError(f"{schema}.{table} is not a table; only tables can be mirrored")
        tables.append((schema, table))
    return tables


def ensure_publication(
    conn: psycopg.Connection, publication: str, tables: Sequence[tuple[str, str]]
) -> None:
    """Create the publication for exactly these tables, or add the ones it lacks."""
    identifiers = [sql.Identifier(s, t) for s, t in tables]
    row = conn.execute(
        "select puballtables from pg_publication where pubname = %s", [publication]
    ).fetchone()
    try:
        if row is None:
            conn.execute(
                sql.SQL("create publication {} for table {}").format(
                    sql.Identifier(publication), sql.SQL(", ").join(identifiers)
                )
            )
            return
        if row[0]:
            return
        present = set(publication_tables(conn, publication))
        missing = [sql.Identifier(s, t) for s, t in tables if (s, t) not in present]
        if missing:
            conn.execute(
                sql.SQL("alter publication {} add table {}").format(
                    sql.Identifier(publication), sql.SQL(", ").join(missing)
                )
            )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceSetupError(
            f"cannot create or change publication {publication}: {first_line(exc)}; have the"
            " tables' owner run what `pgml-sidecar init --print-sql` prints (with the same"
            " --source and --tables) through psql, then start again"
        ) from None


@dataclass(frozen=True, slots=True)
class NoReplicaIdentity:
    """A table whose UPDATE and DELETE a publication makes fail: it has no replica identity.

    The table is a leaf (a plain table, or a partition: its own identity counts, not its
    parent's); ``partition_of`` names its partitioned root; ``quoted`` is its name as SQL.
    """

    schema: str
    table: str
    quoted: str
    reason: str
    partition_of: str | None = None

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    def describe_reason(self) -> str:
        where = f"a partition of {self.partition_of}; " if self.partition_of else ""
        return where + self.reason

    def describe(self) -> str:
        return f"{self.name} ({self.describe_reason()})"


_LEAVES_WITHOUT_IDENTITY = """
select n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       case c.relreplident
           when 'n' then 'REPLICA IDENTITY NOTHING'
           when 'i' then 'its replica identity index was dropped'
           else 'no primary key'
       end,
       case when root.oid <> c.oid then rn.nspname || '.' || root.relname end
from (select r.oid as relid from unnest(%s::oid[]) as r(oid)
      union
      select t.relid from unnest(%s::oid[]) as r(oid)
      cross join lateral pg_partition_tree(r.oid) as t where t.isleaf) as leaf
join pg_class c on c.oid = leaf.relid
join pg_namespace n on n.oid = c.relnamespace
join pg_class root on root.oid = coalesce(pg_partition_root(c.oid), c.oid)
join pg_namespace rn on rn.oid = root.relnamespace
where c.relkind = 'r' and c.relreplident <> 'f'
  and not exists (
      select from pg_index i
      where i.indrelid = c.oid and i.indisvalid
        and ((c.relreplident = 'd' and i.indisprimary)
             or (c.relreplident = 'i' and i.indisreplident)))
order by 1, 2
"""
"""The leaves of the given relations (a plain table is its own leaf) whose UPDATE or DELETE
PostgreSQL refuses once they are published: its rules (CheckCmdReplicaIdentity) in SQL."""


def tables_without_replica_identity(
    conn: psycopg.Connection, tables: Sequence[tuple[str, str]]
) -> list[NoReplicaIdentity]:
    """The tables, or leaf partitions of them, that have no replica identity."""
    return _leaves_without_identity(conn, _oids(conn, tables))


def _oids(conn: psycopg.Connection, tables: Sequence[tuple[str, str]]) -> list[int]:
    if not tables:
        return []
    row = conn.execute(
        "select array_agg(format('%%I.%%I', s, t)::regclass::oid)"
        " from unnest(%s::text[], %s::text[]) as x(s, t)",
        [[s for s, _ in tables], [t for _, t in tables]],
    ).fetchone()
    return list(row[0]) if row and row[0] else []


def published_without_replica_identity(
    conn: psycopg.Connection, publication: str | Sequence[str]
) -> list[NoReplicaIdentity]:
    """The tables of a publication (or of any of several) of UPDATEs or DELETEs that have no
    replica identity."""
    oids = conn.execute(
        "select array_agg(distinct format('%%I.%%I', t.schemaname, t.tablename)::regclass::oid)"
        " from pg_publication p join pg_publication_tables t on t.pubname = p.pubname"
        " where p.pubname = any(%s) and (p.pubupdate or p.pubdelete)",
        [_names(publication)],
    ).fetchone()
    return _leaves_without_identity(conn, oids[0] if oids else [])


def _names(publication: str | Sequence[str]) -> list[str]:
    return [publication] if isinstance(publication, str) else list(publication)


_PUBLICATIONS_OF = """
select distinct p.pubname
from pg_publication p
join pg_publication_tables t on t.pubname = p.pubname
where (p.pubupdate or p.pubdelete)
  and format('%%I.%%I', t.schemaname, t.tablename)::regclass in (
      select r.oid from unnest(%s::oid[]) as r(oid)
      union
      select a.relid from unnest(%s::oid[]) as r(oid)
      cross join lateral pg_partition_ancestors(r.oid) as a
      union
      select t.relid from unnest(%s::oid[]) as r(oid)
      cross join lateral pg_partition_tree(r.oid) as t)
order by 1
"""
"""The publications that publish a table, an ancestor or a partition of it (a partitioned
table is published as its root or as its leaves, as ``publish_via_partition_root`` says)."""


def publications_of(conn: psycopg.Connection, tables: Sequence[tuple[str, str]]) -> list[str]:
    """The publications of UPDATEs or DELETEs that publish any of ``tables`` (or a partition
    of one), whoever made them: Debezium's, with the Debezium source, whatever its name."""
    oids = _oids(conn, tables)
    if not oids:
        return []
    return [r[0] for r in conn.execute(_PUBLICATIONS_OF, [oids, oids, oids]).fetchall()]


def existing_tables(conn: psycopg.Connection, names: Iterable[str]) -> list[tuple[str, str]]:
    """The named tables that exist in the source (plain or partitioned), as (schema, table)."""
    found = []
    for name in names:
        schema, table = split_table_name(name)
        row = conn.execute(
            "select from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')",
            [schema, table],
        ).fetchone()
        if row is not None:
            found.append((schema, table))
    return found


def _leaves_without_identity(
    conn: psycopg.Connection, oids: Sequence[int] | None
) -> list[NoReplicaIdentity]:
    if not oids:
        return []
    rows = conn.execute(_LEAVES_WITHOUT_IDENTITY, [list(oids), list(oids)]).fetchall()
    return [NoReplicaIdentity(*row) for row in rows]


def replica_identity_advice(missing: Sequence[NoReplicaIdentity], *, published: bool) -> str:
    """One line: which tables lack a replica identity, what that breaks, the two fixes."""
    one = len(missing) == 1
    them = "it" if one else "them"
    harm = (
        f"published, the application's UPDATE and DELETE on {them} fail"
        if published
        else f"once published, the application's UPDATE and DELETE on {them} would fail"
    )
    alter = "; ".join(f"ALTER TABLE {m.quoted} REPLICA IDENTITY FULL" for m in missing)
    what = (
        f"{missing[0].name} has no replica identity ({missing[0].describe_reason()})"
        if one
        else f"{', '.join(m.describe() for m in missing)} have no replica identity"
    )
    return (
        f"{what}: {harm}; add a primary key{'' if one else ' to each'}, or run {alter}"
        " (every UPDATE and DELETE then writes the whole old row to the WAL)"
    )


@dataclass(frozen=True, slots=True)
class ReplicaIdentityCheck:
    """Tables without a replica identity: what :func:`replica_identity_plan` found and
    :func:`check_replica_identity` did."""

    new: list[NoReplicaIdentity] = field(default_factory=list)
    """Not yet in the publication: publishing them would break the application."""
    published: list[NoReplicaIdentity] = field(default_factory=list)
    """Already in the publication, left as they are."""
    set_full: list[NoReplicaIdentity] = field(default_factory=list)
    """Given REPLICA IDENTITY FULL (asked to)."""

    def to_fix(self) -> list[NoReplicaIdentity]:
        """Every table found, in name order."""
        return sorted([*self.new, *self.published], key=lambda m: (m.schema, m.table))


def replica_identity_plan(
    conn: psycopg.Connection,
    publication: str | Sequence[str],
    tables: Sequence[tuple[str, str]],
) -> ReplicaIdentityCheck:
    """Find the tables without a replica identity among ``tables`` and in the publication
    (or publications); change nothing."""
    published = published_without_replica_identity(conn, publication)
    already = {m.name for m in published}
    new = [m for m in tables_without_replica_identity(conn, tables) if m.name not in already]
    return ReplicaIdentityCheck(new=new, published=published)


def check_replica_identity(
    conn: psycopg.Connection,
    publication: str | Sequence[str],
    tables: Sequence[tuple[str, str]],
    *,
    set_full: bool = False,
) -> ReplicaIdentityCheck:
    """Refuse to publish a table without a replica identity, or give it FULL if ``set_full``.

    Publishing such a table makes the application's UPDATE and DELETE on it fail, so a table
    not yet in the publication is refused (SourceSetupError, naming the fixes). One already
    in it is reported instead: the sidecar did not put it there, and refusing to start would
    not help the application. With ``set_full`` both get REPLICA IDENTITY FULL.
    """
    plan = replica_identity_plan(conn, publication, tables)
    if set_full:
        fix = plan.to_fix()
        set_replica_identity_full(conn, fix)
        return ReplicaIdentityCheck(set_full=fix)
    if plan.new:
        raise SourceSetupError(
            replica_identity_advice(plan.new, published=False)
            + ", or pass --replica-identity-full to have pgml-sidecar run it"
        )
    return plan


def set_replica_identity_full(
    conn: psycopg.Connection, missing: Sequence[NoReplicaIdentity]
) -> None:
    """``ALTER TABLE ... REPLICA IDENTITY FULL`` on each; a clear error if not the owner."""
    for table in missing:
        try:
            conn.execute(
                sql.SQL("alter table {} replica identity full").format(
                    sql.Identifier(table.schema, table.table)
                )
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SourceSetupError(
                f"cannot set REPLICA IDENTITY FULL on {table.name}: {first_line(exc)}; have its"
                f" owner run ALTER TABLE {table.quoted} REPLICA IDENTITY FULL (or add a primary"
                " key), then start again"
            ) from None


def publication_script(
    conn: psycopg.Connection | None, publication: str, tables: Sequence[tuple[str, str]]
) -> str:
    """The SQL that makes ``publication`` cover ``tables``, for their owner to run.

    With a connection it says what is missing from the publication as it is (nothing, ALTER
    PUBLICATION ... ADD TABLE, or CREATE PUBLICATION); without one, CREATE PUBLICATION.
    """
    row = None
    present: set[tuple[str, str]] = set()
    if conn is not None:
        row = conn.execute(
            "select puballtables, pg_get_userbyid(pubowner) from pg_publication where pubname = %s",
            [publication],
        ).fetchone()
        if row is not None and row[0]:
            raise SourceSetupError(
                f"publication {publication} is FOR ALL TABLES, so the sidecar's own writes would"
                " come back to it; drop it, or give the sidecar another --publication"
            )
        if row is not None:
            present = set(publication_tables(conn, publication))
    name = quoted_name(conn, publication)
    missing = ", ".join(quoted_name(conn, s, t) for s, t in tables if (s, t) not in present)
    if conn is None or row is None:
        return f"create publication {name} for table {missing};\n"
    if not missing:
        return f"-- publication {publication} covers them all already\n"
    return (
        f"-- publication {publication} belongs to role {row[1]}: run this as it (or a member)\n"
        f"alter publication {name} add table {missing};\n"
    )


def quoted_name(conn: psycopg.Connection | None, *parts: str) -> str:
    """A (qualified) name as SQL needs it: quoted only where the server would quote it."""
    if conn is None:
        return sql.Identifier(*parts).as_string(None)
    row = conn.execute(
        "select string_agg(quote_ident(p), '.' order by n) from unnest(%s::text[])"
        " with ordinality as x(p, n)",
        [list(parts)],
    ).fetchone()
    assert row is not None
    return str(row[0])


def slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo | None:
    row = conn.execute(
        "select slot_name, plugin, database, active_pid, confirmed_flush_lsn::text"
        " from pg_replication_slots where slot_name = %s",
        [slot],
    ).fetchone()
    if row is None:
        return None
    return SlotInfo(
        row[0], row[1] or "", row[2] or "", row[3], parse_lsn(row[4]) if row[4] else None
    )


def drop_slot(conn: psycopg.Connection, slot: str) -> None:
    conn.execute("select pg_drop_replication_slot(%s)", [slot])


@dataclass(frozen=True, slots=True)
class SlotUse:
    """A logical replication slot of the database, and the WAL it keeps the server from
    recycling (pg_current_wal_lsn() minus its restart_lsn)."""

    name: str
    plugin: str
    active_pid: int | None
    retained_wal_bytes: int


def database_slots(conn: psycopg.Connection) -> list[SlotUse]:
    """Every logical replication slot of the connected database, by name."""
    rows = conn.execute(
        "select slot_name, coalesce(plugin, ''), active_pid,"
        " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint"
        " from pg_replication_slots"
        " where slot_type = 'logical' and database = current_database() and not temporary"
        " order by slot_name"
    ).fetchall()
    return [SlotUse(r[0], r[1], r[2], max(int(r[3]), 0)) for r in rows]


def may_replicate(conn: psycopg.Connection, role: str) -> bool:
    """Whether ``role`` may use replication slots: REPLICATION, superuser, or RDS's
    rds_replication."""
    row = conn.execute(
        "select rolreplication or rolsuper or case when to_regrole('rds_replication') is null"
        " then false else pg_has_role(oid, 'rds_replication', 'member') end"
        " from pg_roles where rolname = %s",
        [role],
    ).fetchone()
    return bool(row and row[0])


def drop_publication(conn: psycopg.Connection, publication: str) -> None:
    conn.execute(sql.SQL("drop publication if exists {}").format(sql.Identifier(publication)))


@dataclass(frozen=True, slots=True)
class CatchUpTarget:
    """The end of the WAL inserted so far: every transaction committed before lies below it."""

    lsn: Lsn
    wal_block_size: int

    def reached(self, sent: Lsn) -> bool:
        """Whether the server has decoded and sent everything up to the target.

        The insert position just past a page header is reached once the page starts: the
        header holds no record.
        """
        if sent >= self.lsn:
            return True
        page_start = self.lsn - self.lsn % self.wal_block_size
        return self.lsn - page_start in (24, 40) and sent >= page_start


def catch_up_target(conn: psycopg.Connection) -> CatchUpTarget:
    row = conn.execute(
        "select pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::int"
    ).fetchone()
    assert row is not None
    return CatchUpTarget(parse_lsn(row[0]), int(row[1]))


def describe_table(conn: psycopg.Connection, schema: str, table: str) -> Relation:
    """The table's Relation as pgoutput will describe it (published columns, replica identity)."""
    row = conn.execute(
        "select c.oid, c.relreplident from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relname = %s",
        [schema, table],
    ).fetchone()
    if row is None:
        raise SourceSetupError(f"table {schema}.{table} does not exist in the source database")
    oid, identity = int(row[0]), str(row[1])
    rows = conn.execute(
        "select a.attname, a.atttypid, a.atttypmod,"
        " coalesce(a.attnum = any(i.indkey), false) as is_key"
        " from pg_attribute a"
        " left join pg_index i on i.indrelid = a.attrelid"
        "   and ((%s = 'd' and i.indisprimary) or (%s = 'i' and i.indisreplident))"
        " where a.attrelid = %s and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''"
        " order by a.attnum",
        [identity, identity, oid],
    ).fetchall()
    columns = tuple(
        Column(name, int(type_oid), int(modifier), bool(is_key) or identity == "f")
        for name, type_oid, modifier, is_key in rows
    )
    return Relation(oid, schema, table, identity, columns)


def fast_defaults(
    conn: psycopg.Connection, table_oid: int, columns: Sequence[str]
) -> dict[str, str | None] | None:
    """The value rows that existed before ADD COLUMN have in each new column (text form).

    A non-volatile default is stored once in the catalog ("missing value") and never written
    to the WAL; a column without a default is NULL there. A volatile default rewrote the table,
    again without WAL for logical decoding: then None, and the table must be copied again.
    """
    rows = conn.execute(
        "select a.attname, a.atthasmissing, a.attmissingval::text, d.adbin is not null"
        " from pg_attribute a"
        " left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum"
        " where a.attrelid = %s and a.attname = any(%s) and not a.attisdropped",
        [table_oid, list(columns)],
    ).fetchall()
    if len(rows) != len(columns):
        return None  # renamed or dropped since: what the catalog says now does not apply
    values: dict[str, str | None] = {}
    for name, has_missing, missing, has_default in rows:
        if has_missing and missing is not None:
            values[name] = _first_array_element(missing)
        elif has_default:
            return None
        else:
            values[name] = None
    return values


def _first_array_element(literal: str) -> str | None:
    parsed = parse_array_literal(literal)
    first = parsed[0] if parsed else None
    return first if isinstance(first, str) or first is None else str(first)


def source_types(conn: psycopg.Connection, oids: Iterable[int]) -> dict[int, SourceType]:
    """Look up non-built-in types (enums, domains, arrays of them) in the source catalog."""
    wanted = sorted({o for o in oids if o >= _BUILTIN_OID_LIMIT})
    found: dict[int, SourceType] = {}
    while wanted:
        rows = conn.execute(
            "select t.oid, t.typtype, t.typelem, t.typbasetype, t.typtypmod, p.proname"
            " from pg_catalog.pg_type t join pg_catalog.pg_proc p on p.oid = t.typinput"
            " where t.oid = any(%s)",
            [wanted],
        ).fetchall()
        wanted = []
        for oid, kind, element, base, modifier, input_function in rows:
            found[int(oid)] = SourceType(
                int(oid), str(kind), int(element), int(base), int(modifier), str(input_function)
            )
            for nested in (int(element), int(base)):
                if nested >= _BUILTIN_OID_LIMIT and nested not in found:
                    wanted.append(nested)
    return found
