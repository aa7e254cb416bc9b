"""Which rows each commit changed: reported to watchers, and logged for those that replay.

Consumers off the replication path (control requests, write-back, monitoring) watch tables:
at each commit they hear which keys of their tables changed (``Touched``). Online learning must
see each change exactly once across restarts, so the keys of its tables are also stored with
the batch in ``_pgml_sidecar.changes`` (one Arrow IPC stream per table and batch), replayed
from a model's checkpoint and forgotten once every consumer has taken them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.changes import Deletes, Lsn, RowChange, Updates
from mirror.duckdb_sql import META, quote
from mirror.tables import MirroredTable


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


def touch(touched: Touched, table: MirroredTable, group: Iterable[RowChange]) -> None:
    """Add the keys (every column, without a key) of the rows ``group`` changes."""
    names = [c.name for c in table.keys] or [c.name for c in table.columns]
    for change in group:
        images = [change.old] if isinstance(change, Deletes) else [change.rows]
        if isinstance(change, Updates) and change.old is not None:
            images.append(change.old)
        for image in images:
            if all(n in image.values.column_names for n in names):
                touched.keys.append(image.values.select(names))


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
        types = _column_types(cursor, schema, table)
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


_ORDER = "_pgml_sidecar_order"
_COMMIT = "_pgml_sidecar_commit"


def rows_in_change_order(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, keys: pa.Table, columns: list[str]
) -> pa.Table:
    """The committed rows of ``schema.table`` whose keys (text) are in ``keys``, which lists
    them in the order they changed (repeats allowed): each row once, in the order of its last
    change. Online learning reads rows this way, so the same changes always give the same
    model: a join alone returns rows in no promised order (DuckDB's threads reorder them)."""
    return rows_of_commits(con, schema, table, [keys], columns)[0]


def rows_of_commits(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    commits: list[pa.Table],
    columns: list[str],
) -> list[pa.Table]:
    """:func:`rows_in_change_order` of each commit's keys, read in one join: one table per
    commit, the same as reading each alone then (a row touched by two commits is in both).

    The join scans the table (a list of keys uses no index), so one for the commits waiting
    costs what one for a single commit does."""
    parts = []
    offset = 0
    for index, keys in enumerate(commits):
        order = pa.array(np.arange(offset, offset + keys.num_rows, dtype=np.int64))
        ordered = keys.append_column(_ORDER, order)
        if pc.count_distinct(_joined(keys)).as_py() < keys.num_rows:  # a key changed twice
            ordered = ordered.group_by(keys.column_names).aggregate([(_ORDER, "max")])
            ordered = ordered.rename_columns([*keys.column_names, _ORDER])
        commit = pa.array(np.full(ordered.num_rows, index, dtype=np.int64))
        parts.append(ordered.append_column(_COMMIT, commit))
        offset += keys.num_rows
    touched = pa.concat_tables(parts, promote_options="permissive")
    names = commits[0].column_names
    cursor = con.cursor()
    try:
        types = _column_types(cursor, schema, table)
        cursor.register("_pgml_touched", touched)
        match = " and ".join(
            f"r.{quote(k)} = try_cast(t.{quote(k)} as {types.get(k, 'varchar')})" for k in names
        )
        listed = ", ".join(f"r.{quote(c)}" for c in columns)
        found = cursor.sql(
            f"select {listed}, t.{_ORDER}, t.{_COMMIT} from {quote(schema)}.{quote(table)} r"
            f" join _pgml_touched t on {match}"
        ).to_arrow_table()
    finally:
        cursor.close()
    found = found.take(np.argsort(found[_ORDER].to_numpy(), kind="stable"))
    bounds = np.searchsorted(found[_COMMIT].to_numpy(), np.arange(len(commits) + 1))
    found = found.drop_columns([_ORDER, _COMMIT])
    return [found.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]


def _joined(keys: pa.Table) -> pa.Array:
    """One text value per key (the columns joined by NUL), to count distinct keys."""
    if keys.num_columns == 1:
        return keys.column(0).combine_chunks()
    parts = [pc.fill_null(keys.column(i), "") for i in range(keys.num_columns)]
    return pc.binary_join_element_wise(*parts, "\x00").combine_chunks()


def _column_types(cursor: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
    return dict(
        cursor.execute(
            "select column_name, data_type from duckdb_columns()"
            " where database_name = current_database() and schema_name = ? and table_name = ?",
            [schema, table],
        ).fetchall()
    )


def create_change_log(con: duckdb.DuckDBPyConnection) -> None:
    """The key log, each batch's keys as one Arrow IPC stream, and its coverage (see
    :func:`cover`). A log of an earlier version (keys as JSON) is converted in place, in one
    transaction."""
    con.execute(
        f"create table if not exists {META}.change_log_coverage (schema_name varchar,"
        " table_name varchar, logged_from ubigint not null, logged_upto ubigint not null,"
        " primary key (schema_name, table_name))"
    )
    kind = con.execute(
        "select data_type from information_schema.columns where table_schema = ?"
        " and table_catalog = current_database() and table_name = 'changes'"
        " and column_name = 'keys'",
        [META],
    ).fetchone()
    create = (
        f"create table if not exists {META}.changes ("
        " lsn ubigint not null, schema_name varchar not null, table_name varchar not null,"
        " keys blob not null)"
    )
    if kind is None or kind[0] == "BLOB":
        con.execute(create)
        return
    con.execute("begin")
    old = con.execute(f"select lsn, schema_name, table_name, keys from {META}.changes").fetchall()
    con.execute(f"drop table {META}.changes")
    con.execute(create)
    con.executemany(
        f"insert into {META}.changes values (?, ?, ?, ?)",
        [[lsn, schema, name, _ipc(pa.Table.from_pylist(json.loads(keys)))]
         for lsn, schema, name, keys in old],
    )  # fmt: skip
    con.execute("commit")


def log_changes(
    con: duckdb.DuckDBPyConnection,
    lsn: Lsn,
    touched: dict[tuple[str, str], Touched],
    logged: set[tuple[str, str]],
) -> None:
    """Store the keys touched in ``logged`` tables with the batch committing at ``lsn``."""
    for (schema, name), keys in touched.items():
        if (schema, name) in logged and keys.keys:
            con.execute(
                f"insert into {META}.changes values (?, ?, ?, ?)",
                # as touched: readers match rows by a semi join, a repeat costs nothing
                [lsn, schema, name, _ipc(touched_keys(keys, distinct=False))],
            )


def cover(con: duckdb.DuckDBPyConnection, lsn: Lsn, tables: set[tuple[str, str]]) -> None:
    """Record, with the batch committing at ``lsn``, that the log of ``tables`` covers it: a
    table's log is whole from ``logged_from`` to ``logged_upto`` (a commit made without
    logging it, by ``replicate`` or a ``run`` configured otherwise, leaves a gap that
    :func:`coverage` then shows)."""
    values = ", ".join("(?, ?, ?, ?)" for _ in tables)
    con.execute(
        f"insert into {META}.change_log_coverage values {values} on conflict do update"
        " set logged_upto = greatest(change_log_coverage.logged_upto, excluded.logged_upto)",
        [v for schema, name in sorted(tables) for v in (schema, name, lsn, lsn)],
    )


def coverage(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> tuple[Lsn, Lsn] | None:
    """The positions between which the log of ``schema.name`` is whole (None: never logged)."""
    cursor = con.cursor()
    try:
        row = cursor.execute(
            f"select logged_from, logged_upto from {META}.change_log_coverage"
            " where schema_name = ? and table_name = ?",
            [schema, name],
        ).fetchone()
    except duckdb.CatalogException:
        return None
    finally:
        cursor.close()
    return None if row is None else (int(row[0]), int(row[1]))


def restart_coverage(con: duckdb.DuckDBPyConnection, schema: str, name: str, lsn: Lsn) -> None:
    """Start the log of ``schema.name`` afresh at ``lsn`` (its coverage had a gap)."""
    cursor = con.cursor()
    try:
        cursor.execute(
            f"insert or replace into {META}.change_log_coverage values (?, ?, ?, ?)",
            [schema, name, lsn, lsn],
        )
    finally:
        cursor.close()


def logged_changes(
    con: duckdb.DuckDBPyConnection, schema: str, name: str, after: Lsn
) -> list[tuple[Lsn, pa.Table]]:
    """The logged keys of ``schema.name`` committed after ``after``, oldest first."""
    cursor = con.cursor()
    try:
        rows = cursor.execute(
            f"select lsn, keys from {META}.changes where schema_name = ? and table_name = ?"
            " and lsn > ? order by lsn",
            [schema, name, after],
        ).fetchall()
    finally:
        cursor.close()
    return [(int(lsn), pa.ipc.open_stream(keys).read_all()) for lsn, keys in rows]


def forget_changes(con: duckdb.DuckDBPyConnection, schema: str, name: str, upto: Lsn) -> None:
    """Drop logged keys of ``schema.name`` up to and including ``upto``."""
    cursor = con.cursor()
    try:
        cursor.execute(
            f"delete from {META}.changes where schema_name = ? and table_name = ? and lsn <= ?",
            [schema, name, upto],
        )
    finally:
        cursor.close()


def _ipc(table: pa.Table) -> bytes:
    """A table as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
