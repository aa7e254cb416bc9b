"""Typed changes: what the replicator hands the mirror, whatever the source.

Row values travel as Arrow tables of text (Postgres' text output of each value), one column per
source column; the mirror casts them to their DuckDB types in bulk. A column whose value was an
unchanged TOAST datum in an update is NULL in ``values`` and True in ``unchanged[name]``.

A batch lists its changes in order. A decoder may merge the interleaved runs of one kind of
change to one relation into one change (thousands of small transactions make thousands of
runs, each an Arrow table of its own otherwise): its rows then carry ``seq``, their places
among the rows decoded with them, and the rows of one relation apply in ``seq`` order.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

Lsn = int
"""A position in the source's WAL, as an unsigned 64-bit integer."""


def format_lsn(lsn: Lsn) -> str:
    """Format an LSN as Postgres does (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> Lsn:
    """Parse Postgres' ``X/Y`` LSN notation."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True, slots=True)
class Column:
    """A source column as the replication stream describes it."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """A source table: its identity, replica identity setting and columns in order."""

    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.is_key)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(slots=True)
class Tuples:
    """Row images of one relation: text values plus unchanged-TOAST markers."""

    values: pa.Table
    unchanged: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.values.num_rows

    def compact(self) -> Tuples:
        columns = [
            c.cast(pa.large_binary() if pa.types.is_binary_view(c.type) else pa.large_string())
            if pa.types.is_string_view(c.type) or pa.types.is_binary_view(c.type)
            else c
            for c in self.values.columns
        ]
        return Tuples(pa.Table.from_arrays(columns, names=self.values.column_names), self.unchanged)

    def slice(self, start: int, stop: int) -> Tuples:
        """Rows ``start`` to ``stop`` (exclusive)."""
        unchanged = {k: v[start:stop] for k, v in self.unchanged.items() if v[start:stop].any()}
        return Tuples(self.values.slice(start, stop - start), unchanged)


@dataclass(slots=True)
class SchemaChange:
    """The relation's current shape; sent before its first change and after every DDL."""

    relation: Relation


@dataclass(slots=True)
class Inserts:
    """New rows, in order.

    With ``replace`` each row replaces any row with its key: a source that delivers at least
    once (Debezium) may send a row the mirror already holds."""

    relation: Relation
    rows: Tuples
    replace: bool = False
    seq: np.ndarray | None = None
    """Each row's place in its batch, ascending (see the module's docstring)."""


@dataclass(slots=True)
class Updates:
    """New row images, in order; ``old`` holds the old key or old row where the source sent one."""

    relation: Relation
    rows: Tuples
    old: Tuples | None
    seq: np.ndarray | None = None


@dataclass(slots=True)
class Deletes:
    """Removed rows, identified by their key (or the whole old row for REPLICA IDENTITY FULL)."""

    relation: Relation
    old: Tuples
    seq: np.ndarray | None = None


@dataclass(slots=True)
class Truncate:
    """Tables emptied by TRUNCATE."""

    relations: tuple[Relation, ...]


RowChange = Inserts | Updates | Deletes
"""A change to rows of one relation."""

Change = SchemaChange | RowChange | Truncate
"""One step of a change batch; applied in order."""


def slice_change(change: RowChange, start: int, stop: int) -> RowChange:
    """The same kind of change for rows ``start`` to ``stop`` (exclusive) only."""
    seq = None if change.seq is None else change.seq[start:stop]
    if isinstance(change, Inserts):
        return Inserts(change.relation, change.rows.slice(start, stop), change.replace, seq)
    if isinstance(change, Deletes):
        return Deletes(change.relation, change.old.slice(start, stop), seq)
    old = None if change.old is None else change.old.slice(start, stop)
    return Updates(change.relation, change.rows.slice(start, stop), old, seq)


def in_order(changes: Sequence[RowChange]) -> list[RowChange]:
    """Changes to one relation as runs in the order their rows happened (their ``seq``), for
    what must go row by row; changes without ``seq`` are in order already."""
    if all(c.seq is None for c in changes):
        return list(changes)
    if any(c.seq is None for c in changes):
        raise ValueError("changes with and without seq cannot be ordered together")
    seqs = [c.seq for c in changes if c.seq is not None]
    counts = [len(s) for s in seqs]
    order = np.argsort(np.concatenate(seqs), kind="stable")
    which = np.repeat(np.arange(len(changes)), counts)[order]
    row = np.concatenate([np.arange(n) for n in counts])[order]
    bounds = [0, *(np.flatnonzero(which[1:] != which[:-1]) + 1).tolist(), len(order)]
    return [
        slice_change(changes[int(which[a])], int(row[a]), int(row[a]) + b - a)
        for a, b in itertools.pairwise(bounds)
    ]


def compact(change: Change) -> Change:
    """The change with its values in buffers of their own (view arrays point into a whole
    decoded block; this copies out just the values, for keeping or pickling)."""
    if isinstance(change, Inserts):
        return Inserts(change.relation, change.rows.compact(), change.replace, change.seq)
    if isinstance(change, Deletes):
        return Deletes(change.relation, change.old.compact(), change.seq)
    if isinstance(change, Updates):
        old = None if change.old is None else change.old.compact()
        return Updates(change.relation, change.rows.compact(), old, change.seq)
    return change
