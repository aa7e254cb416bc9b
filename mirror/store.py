"""The mirror: a DuckDB file holding the source tables, and the position it is consistent with.

Only the replicator writes here. Every batch of changes and the source position it ends at are
committed in one DuckDB transaction (``commit(position)``), and a stored position never moves
backwards, so a restart resumes exactly where the last commit left off.

Bookkeeping lives in schema ``_pgml_sidecar``:

- ``positions``: one row per replication source (a slot name): the end LSN of the last applied
  source transaction.
- ``tables``: one row per mirrored table: its columns as mirrored, and its sync state (see
  ``mirror.tables``).
- ``kafka_offsets``: for a Debezium source, the next offset of each topic partition, committed
  with the changes it carries (Kafka's own consumer-group offsets are advisory).
- ``dead_letters``: Kafka messages that could not be applied, with topic, partition, offset and
  the reason.
- ``changes``: keys changed in logged tables, per batch (for online learning; see
  ``mirror.change_log``).

A table copied while the stream runs is committed with the stream's batch; a crash during
either copy leaves a table that is copied again on the next start.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from mirror import apply, change_log
from mirror.change_log import CommitListener, Touched
from mirror.changes import (
    Change,
    Inserts,
    Lsn,
    Relation,
    RowChange,
    SchemaChange,
    Truncate,
    Tuples,
    Updates,
)
from mirror.column_types import SourceType
from mirror.duckdb_sql import META, quote
from mirror.errors import MirrorError, MirrorOutOfMemory
from mirror.tables import (
    MirrorColumn,
    MirroredTable,
    SchemaPlan,
    mirror_columns,
    plan_schema,
    schema_steps,
)

_LOCKED_OFF = (
    "enable_external_access",
    "autoinstall_known_extensions",
    "autoload_known_extensions",
    "allow_community_extensions",
)
"""DuckDB settings :meth:`Mirror.lock_down` turns off. Without external access DuckDB's Python
client does not scan Python objects by name either (a connection's own
``python_enable_replacements`` would not reach its cursors)."""


def _why_not_opened(exc: duckdb.Error) -> str:
    """DuckDB's reason a mirror file did not open, and what to do about it."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "lock" in text.lower():
        advice = (
            "another process (replicate, run or serve) has it open; stop it first, or train"
            " through the SQL endpoint"
        )
    elif "Memory" in text or "memory" in text:
        advice = "set --memory-limit to a size such as 1GB"
    elif "No such file or directory" in text:
        advice = "create its directory, or fix --mirror"
    else:
        advice = "check --mirror: it must be a DuckDB file that pgml-sidecar wrote"
    return f"{text}; {advice}"


class Mirror:
    """A DuckDB mirror file, opened for the replicator."""

    def __init__(
        self, path: str | Path, *, read_only: bool = False, memory_limit: str | None = None
    ) -> None:
        self.path = Path(path)
        config: dict[str, Any] = {"memory_limit": memory_limit} if memory_limit else {}
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.Error as exc:
            raise MirrorError(f"cannot open mirror {self.path}: {_why_not_opened(exc)}") from None
        self.source_types: dict[int, SourceType] = {}
        self.tables: dict[tuple[str, str], MirroredTable] = {}
        self._in_transaction = False
        self.watched: list[set[tuple[str, str]]] = []
        """Sets of tables (one per consumer) whose changed keys go to ``on_commit``."""
        self.logged: set[tuple[str, str]] = set()
        """Watched tables whose changed keys are also stored with each batch (``changes``)."""
        self.logs: list[set[tuple[str, str]]] = []
        """More sets of logged tables, one per consumer that replays the log (Chroma
        collections): their coverage is recorded with each commit (``change_log_coverage``)."""
        self.holds: list[Callable[[str, str], Lsn | None]] = []
        """Each consumer's oldest position still to replay of a table (None: it needs none):
        :meth:`forget_changes` keeps the changes after the oldest."""
        self.on_commit: CommitListener | None = None
        self.log_consumers: dict[tuple[str, str], set[str]] = {}
        """Who replays each logged table's keys (:meth:`consume_changes`)."""
        self.log_positions: dict[tuple[str, str, str], Lsn] = {}
        """How far each consumer has taken each table's logged keys."""
        self._touched: dict[tuple[str, str], Touched] = {}
        self.changes_applied = {"insert": 0, "update": 0, "delete": 0, "truncate": 0}
        """Rows applied by kind of change since the mirror was opened (for metrics)."""
        if not read_only:
            self._create_meta()
        self._load_tables()

    # -- bookkeeping ---------------------------------------------------------------------------

    def _create_meta(self) -> None:
        self.con.execute(f"create schema if not exists {META}")
        self.con.execute(
            f"create table if not exists {META}.positions ("
            " source varchar primary key, lsn ubigint not null, updated_at timestamptz)"
        )
        self.con.execute(
            f"create table if not exists {META}.tables ("
            " schema_name varchar, table_name varchar, columns json, identity varchar,"
            " state varchar,"
            " catchup_until ubigint default 0, relid bigint default 0,"
            " primary key (schema_name, table_name))"
        )
        change_log.create_change_log(self.con)
        self.con.execute(
            f"create table if not exists {META}.kafka_offsets ("
            ' topic varchar, "partition" integer, next_offset bigint not null,'
            ' updated_at timestamptz, primary key (topic, "partition"))'
        )
        self.con.execute(
            f"create table if not exists {META}.dead_letters ("
            ' topic varchar not null, "partition" integer not null, "offset" bigint not null,'
            " reason varchar not null, key blob, value blob, received_at timestamptz)"
        )

    def _load_tables(self) -> None:
        try:
            rows = self.con.execute(
                f"select schema_name, table_name, columns, identity, state, catchup_until, relid"
                f" from {META}.tables"
            ).fetchall()
        except duckdb.CatalogException:
            rows = []
        for schema, name, columns, identity, state, until, relid in rows:
            cols = [MirrorColumn(**c) for c in json.loads(columns)]
            self.tables[(schema, name)] = MirroredTable(
                schema, name, cols, identity, state, until or 0, relid or 0
            )

    @property
    def memory_limit_bytes(self) -> int:
        """DuckDB's memory limit for this database, in bytes."""
        cursor = self.con.cursor()  # the replicator's thread may be using self.con
        try:
            row = cursor.execute("select current_setting('memory_limit')").fetchone()
        finally:
            cursor.close()
        return parse_memory(str(row[0]) if row else "")

    def position(self, source: str) -> Lsn | None:
        """The end LSN of the last source transaction applied, or None for a new mirror."""
        row = self.con.execute(
            f"select lsn from {META}.positions where source = ?", [source]
        ).fetchone()
        return None if row is None else int(row[0])

    def _save_table(self, table: MirroredTable) -> None:
        columns = json.dumps([asdict(c) for c in table.columns])
        self.con.execute(
            f"insert or replace into {META}.tables values (?, ?, ?, ?, ?, ?, ?)",
            [
                table.schema,
                table.name,
                columns,
                table.identity,
                table.state,
                table.catchup_until,
                table.relid,
            ],
        )

    # -- transactions --------------------------------------------------------------------------

    def begin(self) -> None:
        if not self._in_transaction:
            self.con.execute("begin")
            self._in_transaction = True

    def commit(
        self, source: str, lsn: Lsn, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        """Store ``lsn`` as the source position (and the Kafka ``offsets`` the batch was
        consumed up to: topic and partition to the next offset) and commit everything applied
        since begin()."""
        try:
            self._commit(source, lsn, offsets)
        except duckdb.Error as exc:
            self.rollback()  # a refused commit (disk full...) leaves nothing half applied
            if out_of_memory(exc):
                raise MirrorOutOfMemory(
                    f"the mirror ran out of memory committing a batch ({first_line(exc)})",
                    invalidated=True,
                ) from None
            raise
        touched, self._touched = self._touched, {}
        if touched and self.on_commit is not None:
            self.on_commit(lsn, touched)

    def _commit(self, source: str, lsn: Lsn, offsets: Mapping[tuple[str, int], int] | None) -> None:
        self.begin()
        self.con.execute(
            f"insert into {META}.positions values (?, ?, now()) on conflict (source) do update"
            " set lsn = greatest(positions.lsn, excluded.lsn), updated_at = excluded.updated_at",
            [source, lsn],
        )
        if offsets:
            self.con.executemany(
                f"insert or replace into {META}.kafka_offsets values (?, ?, ?, now())",
                [[topic, partition, offset] for (topic, partition), offset in offsets.items()],
            )
        for table in self.tables.values():
            if table.state == "catchup" and lsn >= table.catchup_until:
                table.state = "ready"
                self._save_table(table)
        # stored with the batch, for consumers that must see each change exactly once across
        # restarts (online learning)
        kept = set().union(*self.logs) if self.logs else set()
        change_log.log_changes(self.con, lsn, self._touched, self.logged | kept)
        if kept:
            change_log.cover(self.con, lsn, kept)
        self.con.execute("commit")
        self._in_transaction = False

    def kafka_offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to consume of each Kafka topic and partition in the mirror."""
        rows = self.con.execute(
            f'select topic, "partition", next_offset from {META}.kafka_offsets'
        ).fetchall()
        return {(topic, int(partition)): int(offset) for topic, partition, offset in rows}

    def dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        """Keep a message that cannot be applied, with the batch it came in."""
        self.begin()
        self.con.execute(
            f"insert into {META}.dead_letters values (?, ?, ?, ?, ?, ?, now())",
            [topic, partition, offset, reason, key, value],
        )

    def logged_changes(self, schema: str, name: str, after: Lsn) -> list[tuple[Lsn, pa.Table]]:
        """The logged keys of ``schema.name`` committed after ``after``, oldest first."""
        return change_log.logged_changes(self.con, schema, name, after)

    def forget_changes(
        self, schema: str, name: str, upto: Lsn, *, consumer: str = "online models"
    ) -> None:
        """Drop logged keys of ``schema.name`` every consumer has taken: ``consumer`` has
        taken them up to and including ``upto``, each other consumer of the table up to where
        it last said (one that has said nothing yet keeps them all), and none past the oldest
        position a consumer in ``holds`` still replays from."""
        self.log_positions[(consumer, schema, name)] = upto
        consumers = self.log_consumers.get((schema, name), set()) | {consumer}
        taken = [self.log_positions.get((c, schema, name)) for c in consumers]
        known = [lsn for lsn in taken if lsn is not None]
        if len(known) != len(taken):
            return
        held = [h for h in (hold(schema, name) for hold in self.holds) if h is not None]
        change_log.forget_changes(self.con, schema, name, min([*known, *held]))

    def consume_changes(self, consumer: str, schema: str, name: str) -> None:
        """Log the keys of ``schema.name`` for ``consumer``, kept until it has taken them."""
        self.logged.add((schema, name))
        self.log_consumers.setdefault((schema, name), set()).add(consumer)

    def consume_only(self, consumer: str, tables: set[tuple[str, str]]) -> None:
        """``consumer`` replays the logged keys of ``tables`` and no others from now on."""
        for table, consumers in self.log_consumers.items():
            if table not in tables:
                consumers.discard(consumer)
        for table in tables:
            self.log_consumers.setdefault(table, set()).add(consumer)
        self.logged.intersection_update(t for t, c in self.log_consumers.items() if c)
        self.logged.update(tables)

    def commit_step(self) -> None:
        """Commit a step of an initial copy: no source position moves."""
        if self._in_transaction:
            self.con.execute("commit")
            self._in_transaction = False
        self.begin()

    def rollback(self) -> None:
        self._touched = {}
        if self._in_transaction:
            self._in_transaction = False
            # A failed commit ended the transaction; one that ran out of memory may have
            # invalidated the database, which then refuses everything until opened again.
            with contextlib.suppress(duckdb.TransactionException, duckdb.FatalException):
                self.con.execute("rollback")
            self.tables.clear()
            with contextlib.suppress(duckdb.FatalException):
                self._load_tables()

    def close(self) -> None:
        self.rollback()
        self.con.close()

    # -- lock-down -----------------------------------------------------------------------------

    def lock_down(self, *, allowed_directories: Iterable[str | Path]) -> None:
        """Lock DuckDB for every connection of this database, for as long as it is open.

        The second wall behind the endpoint's allow-list: no file outside
        ``allowed_directories`` (the sidecar's own: snapshots and models) and DuckDB's temp
        directory is read or written, no extension installed or loaded, no Python object
        scanned by name, and no setting changed any more (``lock_configuration``): not by the
        endpoint's clients, and not by the sidecar's own code either. Call it once
        the connection is fully set up (catalog, scoring functions, views). Calling it again
        does nothing.
        """
        cursor = self.con.cursor()  # the replicator's thread may be using self.con
        try:
            if _locked(cursor):
                return
            row = cursor.execute("select current_setting('temp_directory')").fetchone()
            directories = [str(Path(d).absolute()) for d in allowed_directories]
            if row is not None and row[0]:
                directories.append(str(Path(row[0]).absolute()))
            cursor.execute("set allowed_directories = ?", [directories])
            for setting in _LOCKED_OFF:
                cursor.execute(f"set {setting} = false")
            cursor.execute("set lock_configuration = true")
        finally:
            cursor.close()

    @property
    def locked(self) -> bool:
        """Whether :meth:`lock_down` locked the configuration."""
        cursor = self.con.cursor()
        try:
            return _locked(cursor)
        finally:
            cursor.close()

    # -- schema --------------------------------------------------------------------------------

    def table_for(self, relation: Relation) -> MirroredTable | None:
        return self.tables.get((relation.schema, relation.name))

    def create_table(self, relation: Relation, *, state: str, key: bool = True) -> MirroredTable:
        """Create (or re-create, emptied) the mirror table for ``relation``.

        With ``key=False`` the primary key comes later, from ``add_primary_key`` once the
        initial copy is in: building the index at once is faster than row by row."""
        columns = mirror_columns(relation, self.source_types)
        table = MirroredTable(
            relation.schema,
            relation.name,
            columns,
            relation.replica_identity,
            state,
            0,
            relation.oid,
        )
        definitions = [f"{quote(c.name)} {c.sql}" for c in table.columns]
        if key and table.has_primary_key:
            definitions.append(f"primary key ({', '.join(quote(c.name) for c in table.keys)})")
        self.con.execute(f"create schema if not exists {quote(relation.schema)}")
        self.con.execute(f"drop table if exists {table.qualified}")
        self.con.execute(f"create table {table.qualified} ({', '.join(definitions)})")
        self.tables[(relation.schema, relation.name)] = table
        self._save_table(table)
        return table

    def add_primary_key(self, table: MirroredTable) -> None:
        if table.has_primary_key:
            keys = ", ".join(quote(c.name) for c in table.keys)
            self.con.execute(f"alter table {table.qualified} add primary key ({keys})")

    def insert_rows(self, table: MirroredTable, rows: pa.Table) -> None:
        """Insert rows of an initial copy: typed columns as they are, text columns cast."""
        self.touch_everything(table.schema, table.name)
        try:
            apply.insert(self.con, table, Tuples(rows))
        except duckdb.ConversionException as exc:
            raise apply.unstorable(table, exc) from None

    def set_state(self, table: MirroredTable, state: str, catchup_until: Lsn = 0) -> None:
        table.state = state
        table.catchup_until = catchup_until
        self._save_table(table)

    def schema_plan(self, relation: Relation) -> SchemaPlan | None:
        """What following ``relation`` would change, or None if the table is not mirrored."""
        table = self.table_for(relation)
        if table is None:
            return None
        return plan_schema(table, relation, mirror_columns(relation, self.source_types))

    def follow_schema(
        self, relation: Relation, fill: Mapping[str, str | None] | None = None
    ) -> None:
        """Alter the mirror table so it has the relation's columns, keeping its rows."""
        table = self.table_for(relation)
        if table is None:
            return
        wanted = mirror_columns(relation, self.source_types)
        plan = plan_schema(table, relation, wanted)
        if plan.empty:
            return
        if plan.copy_reason is not None:
            raise MirrorError(f"{relation.qualified_name} {plan.copy_reason}: copy it again")
        for statement in schema_steps(table, plan, fill or {}):
            self.con.execute(statement)
        table.columns = wanted
        self._save_table(table)

    # -- applying changes ----------------------------------------------------------------------

    @property
    def catching_up(self) -> bool:
        """Whether some table skips changes already in its copy."""
        return any(t.state == "catchup" for t in self.tables.values())

    def apply(self, changes: Iterable[Change], commit_lsn: Lsn | None = None) -> int:
        """Apply changes in order inside the open transaction; return the rows touched.

        ``commit_lsn`` is the commit position of the source transaction the changes belong to;
        tables copied after it skip them.
        """
        self.begin()
        try:
            return self._apply(changes, commit_lsn)
        except duckdb.OutOfMemoryException as exc:
            raise MirrorOutOfMemory(
                f"the mirror ran out of memory applying a batch ({first_line(exc)})"
            ) from None

    def _apply(self, changes: Iterable[Change], commit_lsn: Lsn | None) -> int:
        touched = 0
        rows: list[RowChange] = []
        counts = self.changes_applied
        for change in changes:
            if isinstance(change, SchemaChange | Truncate):
                touched += self._apply_rows(rows, commit_lsn)
                rows = []
                self._apply_to_tables(change, commit_lsn)
                if isinstance(change, Truncate):
                    counts["truncate"] += len(change.relations)
            else:
                rows.append(change)
                kind = (
                    "insert" if isinstance(change, Inserts)
                    else "update" if isinstance(change, Updates) else "delete"
                )  # fmt: skip
                counts[kind] += apply.change_rows(change)
        return touched + self._apply_rows(rows, commit_lsn)

    def _apply_rows(self, changes: list[RowChange], commit_lsn: Lsn | None) -> int:
        """Apply row changes, table by table (tables are independent, so order within each
        table is all that matters); interleaved changes to a keyed table collapse to their net
        effect, two statements however many transactions the batch holds."""
        by_table: dict[tuple[str, str], list[RowChange]] = {}
        for change in changes:
            by_table.setdefault((change.relation.schema, change.relation.name), []).append(change)
        touched = 0
        for key, group in by_table.items():
            table = self.tables.get(key)
            if table is None or apply.in_copy(table, commit_lsn):
                continue
            if self._watching(key):
                change_log.touch(self._touched.setdefault(key, Touched()), table, group)
            try:
                touched += apply.apply_group(self.con, table, group)
            except duckdb.ConversionException as exc:
                raise apply.unstorable(table, exc) from None
        return touched

    def _apply_to_tables(self, change: SchemaChange | Truncate, commit_lsn: Lsn | None) -> None:
        if isinstance(change, SchemaChange):
            self.follow_schema(change.relation)  # the replicator calls it with fill values
            return
        for relation in change.relations:
            table = self.table_for(relation)
            if table is not None and not apply.in_copy(table, commit_lsn):
                self.con.execute(f"delete from {table.qualified}")
                self.touch_everything(table.schema, table.name)

    def _watching(self, key: tuple[str, str]) -> bool:
        return any(key in tables for tables in self.watched)

    def touch_everything(self, schema: str, name: str) -> None:
        """Report the whole table as changed at the next commit (after a copy or truncate)."""
        if self._watching((schema, name)):
            self._touched.setdefault((schema, name), Touched()).everything = True


_MEMORY = re.compile(r"([\d.]+)\s*([KMGT]i?B|bytes?)?", re.IGNORECASE)
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def out_of_memory(exc: BaseException) -> bool:
    """Whether DuckDB failed for want of memory (a commit says so only in its message)."""
    if isinstance(exc, duckdb.OutOfMemoryException):
        return True
    text = str(exc)
    return "could not allocate" in text or "failed to pin" in text or "Out of Memory" in text


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def parse_memory(text: str) -> int:
    """Bytes in a size as DuckDB shows it (``122.0 MiB``, ``1.8 GiB``)."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise MirrorError(f"cannot read DuckDB's memory limit {text!r}")
    unit = (match[2] or "b").lower()
    return int(float(match[1]) * _UNITS.get(unit[0], 1))


def _locked(cursor: duckdb.DuckDBPyConnection) -> bool:
    row = cursor.execute("select current_setting('lock_configuration')").fetchone()
    return bool(row and row[0])
