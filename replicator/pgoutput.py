"""Decode pgoutput messages (protocol 1 and 2) into typed changes: bytes in, changes out.

The stream loop hands the decoder the payloads of XLogData frames in order. The data messages
of one kind for one relation between two schema messages are decoded column by column at once
(numpy offsets into one buffer, Arrow string arrays), which is what keeps a Python decoder level
with the server, and become one change whose ``seq`` orders its rows among the others: small
transactions interleave tables, and a change per run would cost more than its rows.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mirror.changes import (
    Change,
    Column,
    Deletes,
    Inserts,
    Lsn,
    Relation,
    RowChange,
    SchemaChange,
    Truncate,
    Tuples,
    Updates,
)
from replicator.columnar import be_uint32, padded, views

BEGIN = ord("B")
COMMIT = ord("C")
ORIGIN = ord("O")
RELATION = ord("R")
TYPE = ord("Y")
INSERT = ord("I")
UPDATE = ord("U")
DELETE = ord("D")
TRUNCATE = ord("T")
MESSAGE = ord("M")
STREAM_START = ord("S")
STREAM_STOP = ord("E")
STREAM_COMMIT = ord("c")
STREAM_ABORT = ord("A")

_DATA = {INSERT, UPDATE, DELETE}
_NULL, _UNCHANGED, _TEXT, _BINARY = ord("n"), ord("u"), ord("t"), ord("b")


class DecodeError(ValueError):
    """A message does not follow the pgoutput protocol."""


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: Lsn
    commit_time: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int


def parse_begin(payload: bytes | memoryview) -> Begin:
    final_lsn, commit_time, xid = struct.unpack_from(">QqI", payload, 1)
    return Begin(final_lsn, commit_time, xid)


def parse_commit(payload: bytes | memoryview) -> Commit:
    _flags, commit_lsn, end_lsn, commit_time = struct.unpack_from(">BQQq", payload, 1)
    return Commit(commit_lsn, end_lsn, commit_time)


def parse_stream_start(payload: bytes | memoryview) -> StreamStart:
    xid, first = struct.unpack_from(">IB", payload, 1)
    return StreamStart(xid, bool(first))


def parse_stream_commit(payload: bytes | memoryview) -> StreamCommit:
    xid, _flags, commit_lsn, end_lsn, commit_time = struct.unpack_from(">IBQQq", payload, 1)
    return StreamCommit(xid, commit_lsn, end_lsn, commit_time)


def parse_stream_abort(payload: bytes | memoryview) -> StreamAbort:
    xid, subxid = struct.unpack_from(">II", payload, 1)
    return StreamAbort(xid, subxid)


def streamed_xid(payload: bytes | memoryview) -> int:
    """The (sub)transaction id a message inside a stream block carries after its type byte."""
    return int(struct.unpack_from(">I", payload, 1)[0])


def streamed_xids(payloads: Sequence[bytes | memoryview], *, offset: int = 0) -> list[int]:
    """The transaction id of each message of a stream block (messages start at ``offset``)."""
    if not payloads:
        return []
    heads = np.frombuffer(
        b"".join(bytes(p[offset + 1 : offset + 5]) for p in payloads), dtype=">u4"
    )
    return [int(x) for x in heads]


def strip_streamed_xid(payload: bytes) -> bytes:
    """Turn a message from a stream block into its protocol 1 form (drop the xid)."""
    return payload[:1] + payload[5:]


def _cstring(payload: bytes, pos: int) -> tuple[str, int]:
    end = payload.index(b"\0", pos)
    return payload[pos:end].decode(), end + 1


class Decoder:
    """Turn pgoutput data messages into changes, remembering the relations it has been sent.

    >>> decoder = Decoder()
    >>> decoder.decode([])
    []
    """

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, tuple[str, str]] = {}
        self.learnt: set[int] = set()
        """Relation OIDs this decoder was sent a shape for (what ``adopt`` takes over)."""
        self.decoded = 0
        """Messages decoded so far: the ``seq`` of the next one."""

    def state(self) -> tuple[dict[int, Relation], dict[int, tuple[str, str]]]:
        """The shapes known now, to ``restore`` before decoding the same messages again."""
        return dict(self.relations), dict(self.types)

    def restore(self, state: tuple[dict[int, Relation], dict[int, tuple[str, str]]]) -> None:
        self.relations, self.types = dict(state[0]), dict(state[1])

    def fork(self) -> Decoder:
        """A decoder that starts from the shapes known now and learns on its own."""
        other = Decoder()
        other.restore(self.state())
        return other

    def adopt(self, other: Decoder) -> None:
        """Take on the shapes another decoder was sent (not those it started from)."""
        for oid in other.learnt:
            self.relations[oid] = other.relations[oid]
        self.types.update(other.types)

    def decode(
        self, payloads: Sequence[bytes | memoryview], *, offset: int = 0, streamed: bool = False
    ) -> list[Change]:
        """Decode data and schema messages in order (no Begin/Commit, no stream control).

        Each message starts ``offset`` bytes into its payload (the XLogData header before it is
        skipped, not sliced off). ``streamed`` messages come from a protocol 2 stream block and
        carry a transaction id after their type byte. The data messages of one kind for one
        relation between schema messages become one change, listed where the first of them
        was; its ``seq`` numbers them in the order this decoder was given messages.
        """
        count = len(payloads)
        if count == 0:
            return []
        shift = offset + (4 if streamed else 0)
        buf = padded(b"".join(payloads))
        lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=count)
        starts = np.zeros(count, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        kinds = buf[starts + offset].astype(np.int64)
        relids = be_uint32(buf, starts + 1 + shift)
        markers = np.where(kinds == UPDATE, buf[starts + 5 + shift], 0)
        is_data = (kinds == INSERT) | (kinds == UPDATE) | (kinds == DELETE)
        keys = (kinds << 40) | (relids << 8) | markers
        keys[~is_data] = -1 - np.flatnonzero(~is_data)  # every other message is a run of its own
        bounds = np.concatenate(([0], np.flatnonzero(keys[1:] != keys[:-1]) + 1, [count]))
        groups = _Groups(keys, is_data)
        changes: list[Change] = []
        decoded: set[int] = set()
        first_seq = self.decoded
        self.decoded += count
        for first in bounds[:-1].tolist():
            if not is_data[first]:
                payload = bytes(payloads[first][offset:])
                if streamed:
                    payload = strip_streamed_xid(payload)
                change = self._decode_other(payload)
                if change is not None:
                    changes.append(change)
                continue
            group = int(groups.ids[first])
            if group in decoded:
                continue
            decoded.add(group)
            # Every run of this kind and relation up to the next schema message, at once.
            members = groups.members(group)
            whole = self._decode_run(
                int(kinds[first]), int(relids[first]), buf, starts[members] + shift
            )
            whole.seq = members + first_seq
            changes.append(whole)
        return changes

    def _decode_other(self, payload: bytes) -> Change | None:
        kind = payload[0]
        if kind == RELATION:
            relation = decode_relation(payload)
            self.relations[relation.oid] = relation
            self.learnt.add(relation.oid)
            return SchemaChange(relation)
        if kind == TYPE:
            oid = struct.unpack_from(">I", payload, 1)[0]
            schema, pos = _cstring(payload, 5)
            name, _ = _cstring(payload, pos)
            self.types[oid] = (schema, name)
            return None
        if kind == TRUNCATE:
            count, _options = struct.unpack_from(">IB", payload, 1)
            oids = struct.unpack_from(f">{count}I", payload, 6)
            return Truncate(tuple(self._relation(oid) for oid in oids))
        if kind in (ORIGIN, MESSAGE, BEGIN, COMMIT):
            return None
        raise DecodeError(f"unexpected pgoutput message {chr(kind)!r}")

    def _relation(self, oid: int) -> Relation:
        try:
            return self.relations[oid]
        except KeyError:
            raise DecodeError(f"change for relation {oid} before its Relation message") from None

    def _decode_run(self, kind: int, relid: int, buf: np.ndarray, starts: np.ndarray) -> RowChange:
        """Decode a run of one kind of message for one relation; ``starts`` index type bytes."""
        relation = self._relation(relid)
        marker = int(buf[starts[0] + 5])
        pos = starts + 6  # type byte, relid, tuple marker
        if kind == INSERT:
            _expect(buf, starts + 5, ord("N"))
            rows, _ = decode_tuples(buf, pos, relation)
            return Inserts(relation, rows)
        if kind == DELETE:
            old, _ = decode_tuples(buf, pos, relation)
            return Deletes(relation, old)
        old_rows = None
        if marker in (ord("K"), ord("O")):
            old_rows, pos = decode_tuples(buf, pos, relation)
            _expect(buf, pos, ord("N"))
            pos = pos + 1
        elif marker != ord("N"):
            raise DecodeError(f"update message with tuple marker {chr(marker)!r}")
        rows, _ = decode_tuples(buf, pos, relation)
        return Updates(relation, rows, old_rows)


class _Groups:
    """Data messages grouped by kind, relation and tuple marker, between schema messages."""

    def __init__(self, keys: np.ndarray, is_data: np.ndarray) -> None:
        epochs = np.cumsum(~is_data)
        if epochs[-1] < 1 << 14:
            combined = (epochs << 49) | np.where(is_data, keys, 0)
        else:  # too many schema messages to pack: one group per message run
            combined = np.arange(len(keys))
        _, self.ids = np.unique(combined, return_inverse=True)
        self._order = np.argsort(self.ids, kind="stable")
        self._bounds = np.searchsorted(self.ids[self._order], np.arange(self.ids.max() + 2))

    def members(self, group: int) -> np.ndarray:
        """Indices of the group's messages, ascending."""
        return self._order[self._bounds[group] : self._bounds[group + 1]]


def _expect(buf: np.ndarray, pos: np.ndarray, byte: int) -> None:
    if not np.all(buf[pos] == byte):
        raise DecodeError(f"expected tuple marker {chr(byte)!r}")


def decode_relation(payload: bytes) -> Relation:
    """Decode a Relation ('R') message."""
    oid = struct.unpack_from(">I", payload, 1)[0]
    schema, pos = _cstring(payload, 5)
    name, pos = _cstring(payload, pos)
    identity = chr(payload[pos])
    (ncols,) = struct.unpack_from(">H", payload, pos + 1)
    pos += 3
    columns = []
    for _ in range(ncols):
        flags = payload[pos]
        column, pos = _cstring(payload, pos + 1)
        type_oid, modifier = struct.unpack_from(">Ii", payload, pos)
        pos += 8
        columns.append(Column(column, type_oid, modifier, bool(flags & 1)))
    return Relation(oid, schema or "pg_catalog", name, identity, tuple(columns))


def decode_tuples(
    buf: np.ndarray, pos: np.ndarray, relation: Relation
) -> tuple[Tuples, np.ndarray]:
    """Decode one TupleData per position in ``buf``, column by column; return the end positions."""
    count = len(pos)
    ncols = (buf[pos].astype(np.int64) << 8) | buf[pos + 1]
    if count and not np.all(ncols == ncols[0]):
        raise DecodeError(f"tuples of {relation.qualified_name} disagree on column count")
    width = int(ncols[0]) if count else len(relation.columns)
    if width > len(relation.columns):
        raise DecodeError(f"tuple has {width} columns, {relation.qualified_name} has fewer")
    pos = pos + 2
    arrays: list[pa.Array] = []
    unchanged: dict[str, np.ndarray] = {}
    for index in range(width):
        kind = buf[pos]
        has_value = (kind == _TEXT) | (kind == _BINARY)
        length = np.where(has_value, be_uint32(buf, pos + 1), 0)
        value_start = pos + 5
        arrays.append(views(buf, value_start, length, has_value))
        pos = np.where(has_value, value_start + length, pos + 1)
        is_unchanged = kind == _UNCHANGED
        if is_unchanged.any():
            unchanged[relation.columns[index].name] = is_unchanged
        if not np.all(has_value | is_unchanged | (kind == _NULL)):
            raise DecodeError(f"bad tuple data in {relation.qualified_name}")
    names = [c.name for c in relation.columns[:width]]
    return Tuples(pa.Table.from_arrays(arrays, names=names), unchanged), pos
