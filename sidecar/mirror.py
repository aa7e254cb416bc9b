"""The mirror: a DuckDB file holding the source tables, and the position it is consistent with.

Only the replicator writes here. Every batch of changes and the source position it ends at are
committed in one DuckDB transaction (``commit(position)``), and a stored position never moves
backwards, so a restart resumes exactly where the last commit left off.

Bookkeeping lives in schema ``_pgml_sidecar``:

- ``positions``: one row per replication source (a slot name): the end LSN of the last applied
  source transaction.
- ``tables``: one row per mirrored table: its columns as mirrored, and its sync state.
- ``kafka_offsets``: for a Debezium source, the next offset of each topic partition, committed
  with the changes it carries (Kafka's own consumer-group offsets are advisory).
- ``dead_letters``: Kafka messages that could not be applied, with topic, partition, offset and
  the reason.
- ``changes``: keys changed in logged tables, per batch (for online learning).

Table sync states (persisted in ``tables.state``):

- ``copying``: an initial copy committed chunk by chunk is under way; found at start, the table
  is copied again.
- ``catchup``: copied while streaming, under a snapshot consistent with WAL position
  ``catchup_until``; changes of transactions that committed before it are in the copy already
  and are skipped, until the stream passes it.
- ``ready``: every change is applied as it comes.

A table copied while the stream runs is committed with the stream's batch; a crash during
either copy leaves a table that is copied again on the next start.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from sidecar.changes import (
    Change,
    Deletes,
    Inserts,
    Lsn,
    Relation,
    RowChange,
    SchemaChange,
    Truncate,
    Tuples,
    Updates,
    slice_change,
)
from sidecar.column_types import MirrorType, SourceType, json_arrays, mirror_type
from sidecar.errors import MirrorError

META = "_pgml_sidecar"
_BATCH = "_pgml_sidecar_batch"
_ALIAS = "_pgml_sidecar_change"


def quote(identifier: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + identifier.replace('"', '""') + '"'


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of its own in one transaction: committed if the block succeeds, else rolled back."""
    cursor = con.cursor()
    try:
        cursor.execute("begin")
        yield cursor
        cursor.execute("commit")
    except BaseException:
        cursor.execute("rollback")
        raise
    finally:
        cursor.close()


@dataclass(slots=True)
class Touched:
    """Rows of one watched table changed by a committed batch: their keys, as text.

    ``everything`` means the whole table may have changed (a truncate or a copy). Keys may
    repeat, and a key may belong to a row that no longer exists: readers look the keys up in
    the mirror as committed.
    """

    keys: list[pa.Table] = field(default_factory=list)
    everything: bool = False


CommitListener = Callable[[Lsn, dict[tuple[str, str], Touched]], None]


def touched_keys(touched: Touched, *, distinct: bool = True) -> pa.Table:
    """The keys of a ``Touched`` (each once, unless ``distinct`` is False), as plain strings."""
    tables = [t.cast(pa.schema([(n, pa.string()) for n in t.column_names])) for t in touched.keys]
    keys = pa.concat_tables(tables, promote_options="permissive")
    return keys.group_by(keys.column_names).aggregate([]) if distinct else keys


def rows_for_keys(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    keys: pa.Table,
    columns: list[str],
    *,
    where: str = "",
) -> pa.Table:
    """The committed rows of ``schema.table`` whose key columns (text) are in ``keys``."""
    cursor = con.cursor()
    try:
        types = dict(
            cursor.execute(
                "select column_name, data_type from duckdb_columns()"
                " where schema_name = ? and table_name = ?",
                [schema, table],
            ).fetchall()
        )
        cursor.register("_pgml_touched", keys)
        # The text keys are cast to the column's type, not the column to text, so the key's
        # index and statistics serve the join instead of a cast of every row.
        match = " and ".join(
            f"r.{quote(k)} = try_cast(t.{quote(k)} as {types.get(k, 'varchar')})"
            for k in keys.column_names
        )
        listed = ", ".join(f"r.{quote(c)}" for c in columns)
        condition = f" where {where}" if where else ""
        return cursor.sql(
            f"select {listed} from {quote(schema)}.{quote(table)} r"
            f" semi join _pgml_touched t on {match}{condition}"
        ).to_arrow_table()
    finally:
        cursor.close()


@dataclass(frozen=True, slots=True)
class MirrorColumn:
    """A mirrored column: its source description and how text becomes its DuckDB type."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool
    sql: str
    cast: str
    json_array: bool
    rewrite: str = ""

    @property
    def mirror_type(self) -> MirrorType:
        prepare = json_arrays(self.rewrite) if self.json_array else None
        return MirrorType(self.sql, self.cast, prepare, self.rewrite)


@dataclass(slots=True)
class MirroredTable:
    """A source table's place in the mirror."""

    schema: str
    name: str
    columns: list[MirrorColumn]
    identity: str
    state: str
    catchup_until: Lsn
    relid: int = 0
    """The source table's OID: another OID under the same name is another table."""

    @property
    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"

    @property
    def keys(self) -> list[MirrorColumn]:
        return [c for c in self.columns if c.is_key]

    @property
    def has_primary_key(self) -> bool:
        return self.identity != "f" and bool(self.keys)


def mirror_columns(
    relation: Relation, catalog: Mapping[int, SourceType] | None = None
) -> list[MirrorColumn]:
    columns = []
    for column in relation.columns:
        kind = mirror_type(column.type_oid, column.type_modifier, catalog)
        columns.append(
            MirrorColumn(
                column.name,
                column.type_oid,
                column.type_modifier,
                column.is_key,
                kind.sql,
                kind.cast,
                kind.prepare is not None,
                kind.rewrite,
            )
        )
    return columns


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
            raise MirrorError(f"cannot open mirror {self.path}: {exc}") from None
        self.source_types: dict[int, SourceType] = {}
        self.tables: dict[tuple[str, str], MirroredTable] = {}
        self._in_transaction = False
        self.watched: list[set[tuple[str, str]]] = []
        """Sets of tables (one per consumer) whose changed keys go to ``on_commit``."""
        self.logged: set[tuple[str, str]] = set()
        """Watched tables whose changed keys are also stored with each batch (``changes``)."""
        self.on_commit: CommitListener | None = None
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
        self._create_change_log()
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

    def _create_change_log(self) -> None:
        """The key log, each batch's keys as one Arrow IPC stream. A log of an earlier
        version (keys as JSON) is converted in place, in one transaction."""
        kind = self.con.execute(
            "select data_type from information_schema.columns where table_schema = ?"
            " and table_name = 'changes' and column_name = 'keys'",
            [META],
        ).fetchone()
        create = (
            f"create table if not exists {META}.changes ("
            " lsn ubigint not null, schema_name varchar not null, table_name varchar not null,"
            " keys blob not null)"
        )
        if kind is None or kind[0] == "BLOB":
            self.con.execute(create)
            return
        self.con.execute("begin")
        old = self.con.execute(
            f"select lsn, schema_name, table_name, keys from {META}.changes"
        ).fetchall()
        self.con.execute(f"drop table {META}.changes")
        self.con.execute(create)
        self.con.executemany(
            f"insert into {META}.changes values (?, ?, ?, ?)",
            [[lsn, schema, name, _ipc(pa.Table.from_pylist(json.loads(keys)))]
             for lsn, schema, name, keys in old],
        )  # fmt: skip
        self.con.execute("commit")

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
        self._log_changes(lsn)
        try:
            self.con.execute("commit")
        except duckdb.Error:
            self.rollback()  # a refused commit (disk full...) leaves nothing half applied
            raise
        self._in_transaction = False
        touched, self._touched = self._touched, {}
        if touched and self.on_commit is not None:
            self.on_commit(lsn, touched)

    def _log_changes(self, lsn: Lsn) -> None:
        """Store the keys touched in logged tables with the batch, for consumers that must
        see each change exactly once across restarts (online learning)."""
        for (schema, name), touched in self._touched.items():
            if (schema, name) in self.logged and touched.keys:
                self.con.execute(
                    f"insert into {META}.changes values (?, ?, ?, ?)",
                    # as touched: readers match rows by a semi join, a repeat costs nothing
                    [lsn, schema, name, _ipc(touched_keys(touched, distinct=False))],
                )

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
        cursor = self.con.cursor()
        try:
            rows = cursor.execute(
                f"select lsn, keys from {META}.changes where schema_name = ? and table_name = ?"
                " and lsn > ? order by lsn",
                [schema, name, after],
            ).fetchall()
        finally:
            cursor.close()
        return [(int(lsn), pa.ipc.open_stream(keys).read_all()) for lsn, keys in rows]

    def forget_changes(self, schema: str, name: str, upto: Lsn) -> None:
        """Drop logged keys every consumer has taken (up to and including ``upto``)."""
        cursor = self.con.cursor()
        try:
            cursor.execute(
                f"delete from {META}.changes where schema_name = ? and table_name = ? and lsn <= ?",
                [schema, name, upto],
            )
        finally:
            cursor.close()

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
            with contextlib.suppress(duckdb.TransactionException):  # a failed commit ended it
                self.con.execute("rollback")
            self.tables.clear()
            self._load_tables()

    def close(self) -> None:
        self.rollback()
        self.con.close()

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
            self._insert(table, Tuples(rows))
        except duckdb.ConversionException as exc:
            raise _unstorable(table, exc) from None

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
        touched = 0
        rows: list[RowChange] = []
        counts = self.changes_applied
        for change in changes:
            if isinstance(change, SchemaChange | Truncate):
                touched += self._apply_rows(rows, commit_lsn)
                rows = []
                touched += self._apply_one(change, commit_lsn)
                if isinstance(change, Truncate):
                    counts["truncate"] += len(change.relations)
            else:
                rows.append(change)
                kind = (
                    "insert" if isinstance(change, Inserts)
                    else "update" if isinstance(change, Updates) else "delete"
                )  # fmt: skip
                counts[kind] += _change_rows(change)
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
            if table is None or _in_copy(table, commit_lsn):
                continue
            if self._watching(key):
                self._touch(table, group)
            try:
                touched += self._apply_group(table, group, commit_lsn)
            except duckdb.ConversionException as exc:
                raise _unstorable(table, exc) from None
        return touched

    def _watching(self, key: tuple[str, str]) -> bool:
        return any(key in tables for tables in self.watched)

    def _touch(self, table: MirroredTable, group: list[RowChange]) -> None:
        names = [c.name for c in table.keys] or [c.name for c in table.columns]
        touched = self._touched.setdefault((table.schema, table.name), Touched())
        for change in group:
            images = [change.old] if isinstance(change, Deletes) else [change.rows]
            if isinstance(change, Updates) and change.old is not None:
                images.append(change.old)
            for image in images:
                if all(n in image.values.column_names for n in names):
                    touched.keys.append(image.values.select(names))

    def touch_everything(self, schema: str, name: str) -> None:
        """Report the whole table as changed at the next commit (after a copy or truncate)."""
        if self._watching((schema, name)):
            self._touched.setdefault((schema, name), Touched()).everything = True

    def _apply_group(
        self, table: MirroredTable, group: list[RowChange], commit_lsn: Lsn | None
    ) -> int:
        if all(isinstance(c, Inserts) and not c.replace for c in group):
            return self._insert_all(table, group)
        if table.has_primary_key and not _has_unchanged(group):
            return self._apply_net(table, group)
        return sum(self._apply_one(change, commit_lsn) for change in group)

    def _insert_all(self, table: MirroredTable, changes: list[RowChange]) -> int:
        """Insert runs of new rows in one statement (a key is new until something deletes it)."""
        tables = [c.rows.values for c in changes if isinstance(c, Inserts)]
        rows = (
            tables[0]
            if len(tables) == 1
            else pa.concat_tables(tables, promote_options="permissive")
        )
        self._insert(table, Tuples(rows))
        return rows.num_rows

    def _apply_net(self, table: MirroredTable, changes: list[RowChange]) -> int:
        """Delete every key the changes touch, then insert each key's last row image."""
        names = [c.name for c in table.columns]
        pieces: list[pa.Table] = []
        seq = 0
        for change in changes:
            old = None if isinstance(change, Inserts) else change.old
            if old is not None:
                pieces.append(_events(old.values, names, seq, upsert=False))
            if not isinstance(change, Deletes):
                pieces.append(_events(change.rows.values, names, seq, upsert=True))
            seq += 2 * _change_rows(change)
        events = pa.concat_tables(pieces)
        self._register(table, events, {})
        keys = ", ".join(quote(c.name) for c in table.keys)
        self.con.execute(
            f"delete from {table.qualified} using (select distinct {keys} from {_BATCH})"
            f" {_ALIAS} where {_key_match(table, '')}"
        )
        columns = ", ".join(quote(c.name) for c in table.columns)
        casts = ", ".join(self._casts(table, events))
        self.con.execute(
            f"insert into {table.qualified} ({columns}) select {casts} from (select * from {_BATCH}"
            f" qualify row_number() over (partition by {keys} order by _seq desc) = 1) {_BATCH}"
            " where _upsert"
        )
        self.con.unregister(_BATCH)
        return sum(_change_rows(c) for c in changes)

    def _apply_one(self, change: Change, commit_lsn: Lsn | None) -> int:
        if isinstance(change, SchemaChange):
            self.follow_schema(change.relation)  # the replicator calls it with fill values
            return 0
        if isinstance(change, Truncate):
            for relation in change.relations:
                table = self.table_for(relation)
                if table is not None and not _in_copy(table, commit_lsn):
                    self.con.execute(f"delete from {table.qualified}")
                    self.touch_everything(table.schema, table.name)
            return 0
        table = self.table_for(change.relation)
        if table is None or _in_copy(table, commit_lsn):
            return 0
        if isinstance(change, Inserts):
            if change.replace and table.has_primary_key:
                return self._apply_net(table, [change])
            self._insert(table, change.rows)
            return change.rows.num_rows
        if isinstance(change, Updates):
            self._update(table, change)
            return change.rows.num_rows
        self._delete(table, change.old)
        return change.old.num_rows

    def _register(self, table: MirroredTable, rows: pa.Table, extra: dict[str, pa.Array]) -> None:
        arrays = []
        names = []
        by_name = {c.name: c for c in table.columns}
        for name in rows.column_names:
            column = rows.column(name)
            prepare = by_name[name].mirror_type.prepare if name in by_name else None
            arrays.append(prepare(column.combine_chunks()) if prepare else column)
            names.append(name)
        for name, array in extra.items():
            arrays.append(array)
            names.append(name)
        self.con.register(_BATCH, pa.Table.from_arrays(arrays, names=names))

    def _casts(self, table: MirroredTable, rows: pa.Table, alias: str = "") -> list[str]:
        """Select expressions for the table's columns: text is cast, typed values pass."""
        prefix = f"{alias}." if alias else ""
        casts = []
        for column in table.columns:
            index = rows.schema.get_field_index(column.name)
            if index < 0:
                casts.append("null")
                continue
            value = prefix + quote(column.name)
            kind = rows.schema.field(index).type
            is_text = (
                pa.types.is_large_string(kind)
                or pa.types.is_string(kind)
                or pa.types.is_string_view(kind)
            )
            casts.append(column.mirror_type.cast_sql(value) if is_text else value)
        return casts

    def _insert(self, table: MirroredTable, rows: Tuples) -> None:
        self._register(table, rows.values, {})
        columns = ", ".join(quote(c.name) for c in table.columns)
        casts = ", ".join(self._casts(table, rows.values))
        self.con.execute(f"insert into {table.qualified} ({columns}) select {casts} from {_BATCH}")
        self.con.unregister(_BATCH)

    def _delete(self, table: MirroredTable, old: Tuples) -> None:
        if not table.has_primary_key:
            for row in _rows(old.values):
                self._delete_one_row(table, row)
            return
        self._register(table, old.values, {})
        match = _key_match(table, "")
        self.con.execute(f"delete from {table.qualified} using {_BATCH} {_ALIAS} where {match}")
        self.con.unregister(_BATCH)

    def _update(self, table: MirroredTable, change: Updates) -> None:
        if not table.has_primary_key:
            for index, row in enumerate(_rows(change.rows.values)):
                old = None if change.old is None else _row_at(change.old.values, index)
                self._update_one_row(table, old or row, row, change.rows.unchanged, index)
            return
        for chunk in _unique_key_chunks(table, change):
            assert isinstance(chunk, Updates)
            self._update_chunk(table, chunk)

    def _update_chunk(self, table: MirroredTable, change: Updates) -> None:
        rows, old = change.rows, change.old
        extra: dict[str, pa.Array] = {}
        for column in table.keys:
            source = old.values if old is not None else rows.values
            extra[f"_old_{column.name}"] = source.column(column.name).combine_chunks()
        for name, mask in rows.unchanged.items():
            extra[f"_unchanged_{name}"] = pa.array(mask)
        self._register(table, rows.values, extra)
        sets = []
        for column, cast in zip(
            table.columns, self._casts(table, rows.values, _ALIAS), strict=True
        ):
            if column.name in rows.unchanged:
                flag = f"{_ALIAS}." + quote(f"_unchanged_{column.name}")
                cast = (
                    f"case when {flag} then {table.qualified}.{quote(column.name)} else {cast} end"
                )
            sets.append(f"{quote(column.name)} = {cast}")
        match = _key_match(table, "_old_")
        self.con.execute(
            f"update {table.qualified} set {', '.join(sets)} from {_BATCH} {_ALIAS} where {match}"
        )
        self.con.unregister(_BATCH)

    # -- tables without a primary key (REPLICA IDENTITY FULL): one row at a time ---------------

    def _match_row(self, table: MirroredTable, row: dict[str, str | None]) -> tuple[str, list[Any]]:
        conditions = []
        params: list[Any] = []
        for column in table.columns:
            if column.name not in row:
                continue
            conditions.append(f"{quote(column.name)} is not distinct from {_parameter(column)}")
            params.append(_prepared(column, row[column.name]))
        where = " and ".join(conditions) or "true"
        return f"rowid = (select rowid from {table.qualified} where {where} limit 1)", params

    def _delete_one_row(self, table: MirroredTable, row: dict[str, str | None]) -> None:
        where, params = self._match_row(table, row)
        self.con.execute(f"delete from {table.qualified} where {where}", params)

    def _update_one_row(
        self,
        table: MirroredTable,
        old: dict[str, str | None],
        new: dict[str, str | None],
        unchanged: Mapping[str, Any],
        index: int,
    ) -> None:
        where, params = self._match_row(table, old)
        sets = []
        values: list[Any] = []
        for column in table.columns:
            if column.name not in new or (
                column.name in unchanged and unchanged[column.name][index]
            ):
                continue
            sets.append(f"{quote(column.name)} = {_parameter(column)}")
            values.append(_prepared(column, new[column.name]))
        if sets:
            self.con.execute(
                f"update {table.qualified} set {', '.join(sets)} where {where}", values + params
            )

    # -- initial copy --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaPlan:
    """How a mirror table's columns become a relation's new columns, and whether they can.

    A Relation message names columns but not their identity, so a rename cannot be told from a
    drop and an add, nor a type change ``USING`` an expression from a cast; neither reaches the
    WAL. Only drops of non-key columns and additions are followed in place; for anything else
    ``copy_reason`` says why the table must be copied again.
    """

    drops: list[str]
    adds: list[MirrorColumn]
    copy_reason: str | None

    @property
    def empty(self) -> bool:
        return not (self.drops or self.adds or self.copy_reason)


def plan_schema(table: MirroredTable, relation: Relation, wanted: list[MirrorColumn]) -> SchemaPlan:
    old = {c.name: c for c in table.columns}
    new_names = {c.name for c in wanted}
    drops = [c.name for c in table.columns if c.name not in new_names]
    adds = [c for c in wanted if c.name not in old]
    reason = None
    if table.relid and table.relid != relation.oid:
        reason = "was dropped and created again"
    elif relation.replica_identity != table.identity or [c.name for c in wanted if c.is_key] != [
        c.name for c in table.columns if c.is_key
    ]:
        reason = "changed its key or replica identity"
    elif any(c.name in old and old[c.name].sql != c.sql for c in wanted):
        reason = "changed a column's type"
    elif drops and adds:
        reason = "renamed or replaced columns"
    elif any(old[name].is_key for name in drops):
        reason = "dropped a key column"
    return SchemaPlan(drops, adds, reason)


def schema_steps(
    table: MirroredTable, plan: SchemaPlan, fill: Mapping[str, str | None]
) -> list[str]:
    """ALTER TABLE statements carrying out ``plan``; ``fill`` gives added columns' values for
    the rows already there (Postgres' text form), as the source's fast defaults do."""
    assert plan.copy_reason is None
    target = table.qualified
    steps = [f"alter table {target} drop column {quote(name)}" for name in plan.drops]
    for column in plan.adds:
        value = fill.get(column.name)
        if value is None:
            steps.append(f"alter table {target} add column {quote(column.name)} {column.sql}")
            continue
        default = column.mirror_type.cast_sql(_sql_literal(_prepared(column, value)))
        steps.append(
            f"alter table {target} add column {quote(column.name)} {column.sql} default {default}"
        )
        steps.append(f"alter table {target} alter column {quote(column.name)} drop default")
    return steps


def _ipc(table: pa.Table) -> bytes:
    """A table as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _sql_literal(value: str | None) -> str:
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


def _events(values: pa.Table, names: list[str], first_seq: int, *, upsert: bool) -> pa.Table:
    """Row images as key events: text columns in table order, a sequence number and a kind.

    An update's delete of its old key sorts before its new image (even sequence numbers for
    deletes, odd for upserts)."""
    count = values.num_rows
    present = set(values.column_names)
    columns = [
        values.column(n) if n in present else pa.nulls(count, pa.large_string()) for n in names
    ]
    seq = pa.array(np.arange(first_seq + (1 if upsert else 0), first_seq + 2 * count, 2))
    flag = pa.array(np.full(count, upsert))
    return pa.Table.from_arrays([*columns, seq, flag], names=[*names, "_seq", "_upsert"])


def _has_unchanged(changes: list[RowChange]) -> bool:
    return any(isinstance(c, Updates) and c.rows.unchanged for c in changes)


def _change_rows(change: RowChange) -> int:
    return change.old.num_rows if isinstance(change, Deletes) else change.rows.num_rows


def _key_match(table: MirroredTable, prefix: str) -> str:
    """SQL matching the table's key to the batch's (``prefix``-named) key columns."""
    return " and ".join(
        f"{table.qualified}.{quote(c.name)} = "
        + c.mirror_type.cast_sql(f"{_ALIAS}.{quote(prefix + c.name)}")
        for c in table.keys
    )


def _parameter(column: MirrorColumn) -> str:
    """One ``?`` parameter cast to the column's type (the cast may name its value often)."""
    return f"(select {column.mirror_type.cast_sql('_pgml_value')} from (select ? as _pgml_value))"


def _unstorable(table: MirroredTable, exc: duckdb.Error) -> MirrorError:
    detail = str(exc).strip().splitlines()[0]
    return MirrorError(
        f"{table.schema}.{table.name} holds a value the mirror cannot store ({detail}); leave the"
        " table out of --tables (or change the value on the source) and start again"
    )


def _in_copy(table: MirroredTable, commit_lsn: Lsn | None) -> bool:
    """Whether a change committed at ``commit_lsn`` is already in the table's copy."""
    return table.state == "catchup" and commit_lsn is not None and commit_lsn < table.catchup_until


def _prepared(column: MirrorColumn, value: str | None) -> str | None:
    prepare = column.mirror_type.prepare
    if prepare is None or value is None:
        return value
    return str(prepare(pa.array([value], type=pa.string()))[0].as_py())


def _rows(values: pa.Table) -> list[dict[str, str | None]]:
    return values.to_pylist()


def _row_at(values: pa.Table, index: int) -> dict[str, str | None]:
    return values.slice(index, 1).to_pylist()[0]


def _unique_key_chunks(table: MirroredTable, change: Updates) -> Iterator[RowChange]:
    """Split an update run so that no key appears twice in a chunk (UPDATE ... FROM needs that)."""
    names = [c.name for c in table.keys]
    new_keys = list(zip(*(change.rows.values.column(n).to_pylist() for n in names), strict=True))
    old_keys = (
        new_keys
        if change.old is None
        else list(zip(*(change.old.values.column(n).to_pylist() for n in names), strict=True))
    )
    seen: set[tuple[Any, ...]] = set()
    start = 0
    for index, (old, new) in enumerate(zip(old_keys, new_keys, strict=True)):
        if old in seen or new in seen:
            yield slice_change(change, start, index)
            seen.clear()
            start = index
        seen.add(old)
        seen.add(new)
    yield slice_change(change, start, len(new_keys))
