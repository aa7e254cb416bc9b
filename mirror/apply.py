"""Applying row changes to one mirror table in bulk: text values cast to the columns' types.

A keyed table takes a run of inserts in one statement and any mix of changes as its net
effect (one DELETE of the touched keys, one INSERT of each key's last image); a table without
a primary key (REPLICA IDENTITY FULL) is changed one row at a time, matched on every column.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from mirror.changes import (
    Deletes,
    Inserts,
    Lsn,
    RowChange,
    Tuples,
    Updates,
    in_order,
    slice_change,
)
from mirror.duckdb_sql import quote
from mirror.errors import MirrorError
from mirror.tables import MirrorColumn, MirroredTable, prepared_value

_BATCH = "_pgml_sidecar_batch"
_ALIAS = "_pgml_sidecar_change"


def apply_group(
    con: duckdb.DuckDBPyConnection, table: MirroredTable, group: list[RowChange]
) -> int:
    """Apply one table's row changes in order; return the rows they touch."""
    if all(isinstance(c, Inserts) and not c.replace for c in group):
        return insert_all(con, table, group)
    if table.has_primary_key and not _has_unchanged(group):
        return apply_net(con, table, group)
    return sum(apply_one(con, table, change) for change in in_order(group))


def apply_one(con: duckdb.DuckDBPyConnection, table: MirroredTable, change: RowChange) -> int:
    """Apply one row change; return the rows it touches."""
    if isinstance(change, Inserts):
        if change.replace and table.has_primary_key:
            return apply_net(con, table, [change])
        insert(con, table, change.rows)
        return change.rows.num_rows
    if isinstance(change, Updates):
        _update(con, table, change)
        return change.rows.num_rows
    _delete(con, table, change.old)
    return change.old.num_rows


def insert_all(
    con: duckdb.DuckDBPyConnection, table: MirroredTable, changes: list[RowChange]
) -> int:
    """Insert runs of new rows in one statement (a key is new until something deletes it)."""
    tables = [c.rows.values for c in changes if isinstance(c, Inserts)]
    rows = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    insert(con, table, Tuples(rows))
    return rows.num_rows


def apply_net(
    con: duckdb.DuckDBPyConnection, table: MirroredTable, changes: list[RowChange]
) -> int:
    """Delete every key the changes touch, then insert each key's last row image."""
    names = [c.name for c in table.columns]
    pieces: list[pa.Table] = []
    for change, seq in zip(changes, _event_seqs(changes), strict=True):
        old = None if isinstance(change, Inserts) else change.old
        if old is not None:
            pieces.append(_events(old.values, names, seq, upsert=False))
        if not isinstance(change, Deletes):
            pieces.append(_events(change.rows.values, names, seq + 1, upsert=True))
    events = pa.concat_tables(pieces)
    _register(con, table, events, {})
    keys = ", ".join(quote(c.name) for c in table.keys)
    con.execute(
        f"delete from {table.qualified} using (select distinct {keys} from {_BATCH})"
        f" {_ALIAS} where {_key_match(table, '')}"
    )
    columns = ", ".join(quote(c.name) for c in table.columns)
    casts = ", ".join(_casts(table, events))
    con.execute(
        f"insert into {table.qualified} ({columns}) select {casts} from (select * from {_BATCH}"
        f" qualify row_number() over (partition by {keys} order by _seq desc) = 1) {_BATCH}"
        " where _upsert"
    )
    con.unregister(_BATCH)
    return sum(change_rows(c) for c in changes)


def insert(con: duckdb.DuckDBPyConnection, table: MirroredTable, rows: Tuples) -> None:
    """Insert rows: typed columns as they are, text columns cast."""
    _register(con, table, rows.values, {})
    columns = ", ".join(quote(c.name) for c in table.columns)
    casts = ", ".join(_casts(table, rows.values))
    con.execute(f"insert into {table.qualified} ({columns}) select {casts} from {_BATCH}")
    con.unregister(_BATCH)


def change_rows(change: RowChange) -> int:
    """How many rows a change carries."""
    return change.old.num_rows if isinstance(change, Deletes) else change.rows.num_rows


def in_copy(table: MirroredTable, commit_lsn: Lsn | None) -> bool:
    """Whether a change committed at ``commit_lsn`` is already in the table's copy."""
    return table.state == "catchup" and commit_lsn is not None and commit_lsn < table.catchup_until


def unstorable(table: MirroredTable, exc: duckdb.Error) -> MirrorError:
    """The error for a value DuckDB refused to store in ``table``."""
    detail = str(exc).strip().splitlines()[0]
    return MirrorError(
        f"{table.schema}.{table.name} holds a value the mirror cannot store ({detail}); leave the"
        " table out of --tables (or change the value on the source) and start again"
    )


def _delete(con: duckdb.DuckDBPyConnection, table: MirroredTable, old: Tuples) -> None:
    if not table.has_primary_key:
        for row in old.values.to_pylist():
            _delete_one_row(con, table, row)
        return
    _register(con, table, old.values, {})
    match = _key_match(table, "")
    con.execute(f"delete from {table.qualified} using {_BATCH} {_ALIAS} where {match}")
    con.unregister(_BATCH)


def _update(con: duckdb.DuckDBPyConnection, table: MirroredTable, change: Updates) -> None:
    if not table.has_primary_key:
        for index, row in enumerate(change.rows.values.to_pylist()):
            old = None if change.old is None else _row_at(change.old.values, index)
            _update_one_row(con, table, old or row, row, change.rows.unchanged, index)
        return
    for chunk in _unique_key_chunks(table, change):
        assert isinstance(chunk, Updates)
        _update_chunk(con, table, chunk)


def _update_chunk(con: duckdb.DuckDBPyConnection, table: MirroredTable, change: Updates) -> None:
    rows, old = change.rows, change.old
    extra: dict[str, pa.Array] = {}
    for column in table.keys:
        source = old.values if old is not None else rows.values
        extra[f"_old_{column.name}"] = source.column(column.name).combine_chunks()
    for name, mask in rows.unchanged.items():
        extra[f"_unchanged_{name}"] = pa.array(mask)
    _register(con, table, rows.values, extra)
    sets = []
    for column, cast in zip(table.columns, _casts(table, rows.values, _ALIAS), strict=True):
        if column.name in rows.unchanged:
            flag = f"{_ALIAS}." + quote(f"_unchanged_{column.name}")
            cast = f"case when {flag} then {table.qualified}.{quote(column.name)} else {cast} end"
        sets.append(f"{quote(column.name)} = {cast}")
    match = _key_match(table, "_old_")
    con.execute(
        f"update {table.qualified} set {', '.join(sets)} from {_BATCH} {_ALIAS} where {match}"
    )
    con.unregister(_BATCH)


def _register(
    con: duckdb.DuckDBPyConnection,
    table: MirroredTable,
    rows: pa.Table,
    extra: dict[str, pa.Array],
) -> None:
    arrays = []
    names = []
    by_name = {c.name: c for c in table.columns}
    for name in rows.column_names:
        column = rows.column(name)
        prepare = by_name[name].mirror_type.prepare if name in by_name else None
        array = column.combine_chunks()
        arrays.append(prepare(array) if prepare else array)
        names.append(name)
    for name, array in extra.items():
        arrays.append(array)
        names.append(name)
    con.register(_BATCH, pa.Table.from_arrays(arrays, names=names))


def _casts(table: MirroredTable, rows: pa.Table, alias: str = "") -> list[str]:
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


# -- tables without a primary key (REPLICA IDENTITY FULL): one row at a time -------------------


def _match_row(table: MirroredTable, row: dict[str, str | None]) -> tuple[str, list[Any]]:
    conditions = []
    params: list[Any] = []
    for column in table.columns:
        if column.name not in row:
            continue
        conditions.append(f"{quote(column.name)} is not distinct from {_parameter(column)}")
        params.append(prepared_value(column, row[column.name]))
    where = " and ".join(conditions) or "true"
    return f"rowid = (select rowid from {table.qualified} where {where} limit 1)", params


def _delete_one_row(
    con: duckdb.DuckDBPyConnection, table: MirroredTable, row: dict[str, str | None]
) -> None:
    where, params = _match_row(table, row)
    con.execute(f"delete from {table.qualified} where {where}", params)


def _update_one_row(
    con: duckdb.DuckDBPyConnection,
    table: MirroredTable,
    old: dict[str, str | None],
    new: dict[str, str | None],
    unchanged: Mapping[str, Any],
    index: int,
) -> None:
    where, params = _match_row(table, old)
    sets = []
    values: list[Any] = []
    for column in table.columns:
        if column.name not in new or (column.name in unchanged and unchanged[column.name][index]):
            continue
        sets.append(f"{quote(column.name)} = {_parameter(column)}")
        values.append(prepared_value(column, new[column.name]))
    if sets:
        con.execute(
            f"update {table.qualified} set {', '.join(sets)} where {where}", values + params
        )


def _event_seqs(changes: list[RowChange]) -> list[np.ndarray]:
    """Each change's rows' places among the changes, doubled: an update's delete of its old
    key sorts before its new image (even for deletes, odd for upserts)."""
    if all(c.seq is not None for c in changes):
        return [c.seq * 2 for c in changes if c.seq is not None]
    if any(c.seq is not None for c in changes):
        raise ValueError("changes with and without seq cannot be applied together")
    counts = np.array([change_rows(c) for c in changes], dtype=np.int64)
    firsts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return [2 * np.arange(f, f + n) for f, n in zip(firsts.tolist(), counts.tolist(), strict=True)]


def _events(values: pa.Table, names: list[str], seq: np.ndarray, *, upsert: bool) -> pa.Table:
    """Row images as key events: text columns in table order, a sequence number and a kind."""
    count = values.num_rows
    present = set(values.column_names)
    columns = [
        values.column(n) if n in present else pa.nulls(count, pa.large_string()) for n in names
    ]
    flag = pa.array(np.full(count, upsert))
    return pa.Table.from_arrays([*columns, pa.array(seq), flag], names=[*names, "_seq", "_upsert"])


def _has_unchanged(changes: list[RowChange]) -> bool:
    return any(isinstance(c, Updates) and c.rows.unchanged for c in changes)


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
