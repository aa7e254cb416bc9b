"""The source database as the replicator sees it: checks, tables, publication, slot, types."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
            f"cannot create or change publication {publication}: {first_line(exc)};"
            " run as the tables' owner, or have an owner run"
            f" CREATE PUBLICATION {publication} FOR TABLE ..."
        ) from None


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
            "select oid, typtype, typelem, typbasetype, typtypmod from pg_type where oid = any(%s)",
            [wanted],
        ).fetchall()
        wanted = []
        for oid, kind, element, base, modifier in rows:
            found[int(oid)] = SourceType(
                int(oid), str(kind), int(element), int(base), int(modifier)
            )
            for nested in (int(element), int(base)):
                if nested >= _BUILTIN_OID_LIMIT and nested not in found:
                    wanted.append(nested)
    return found
