"""Decode pgoutput messages (protocol 1 and 2) into typed changes: bytes in, changes out.

The stream loop hands the decoder the payloads of XLogData frames in order. Consecutive data
messages of one kind for one relation form a run, and a run is decoded column by column over
all its messages at once (numpy offsets into one buffer, Arrow string arrays), which is what
keeps a Python decoder level with the server.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sidecar.changes import (
    Change,
    Column,
    Deletes,
    Inserts,
    Lsn,
    Relation,
    SchemaChange,
    Truncate,
    Tuples,
    Updates,
)

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


def parse_begin(payload: bytes) -> Begin:
    final_lsn, commit_time, xid = struct.unpack_from(">QqI", payload, 1)
    return Begin(final_lsn, commit_time, xid)


def parse_commit(payload: bytes) -> Commit:
    _flags, commit_lsn, end_lsn, commit_time = struct.unpack_from(">BQQq", payload, 1)
    return Commit(commit_lsn, end_lsn, commit_time)


def parse_stream_start(payload: bytes) -> StreamStart:
    xid, first = struct.unpack_from(">IB", payload, 1)
    return StreamStart(xid, bool(first))


def parse_stream_commit(payload: bytes) -> StreamCommit:
    xid, _flags, commit_lsn, end_lsn, commit_time = struct.unpack_from(">IBQQq", payload, 1)
    return StreamCommit(xid, commit_lsn, end_lsn, commit_time)


def parse_stream_abort(payload: bytes) -> StreamAbort:
    xid, subxid = struct.unpack_from(">II", payload, 1)
    return StreamAbort(xid, subxid)


def streamed_xid(payload: bytes) -> int:
    """The (sub)transaction id a message inside a stream block carries after its type byte."""
    return int(struct.unpack_from(">I", payload, 1)[0])


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

    def decode(self, payloads: Sequence[bytes]) -> list[Change]:
        """Decode protocol-1 messages in order (no Begin/Commit, no stream control)."""
        changes: list[Change] = []
        run: list[bytes] = []
        run_key: tuple[int, int, int] | None = None
        for payload in payloads:
            kind = payload[0]
            if kind in _DATA:
                key = (kind, _relid(payload), payload[5] if kind == UPDATE else 0)
                if key != run_key and run:
                    changes.append(self._decode_run(run_key, run))  # type: ignore[arg-type]
                    run = []
                run_key = key
                run.append(payload)
                continue
            if run:
                changes.append(self._decode_run(run_key, run))  # type: ignore[arg-type]
                run, run_key = [], None
            change = self._decode_other(payload)
            if change is not None:
                changes.append(change)
        if run:
            changes.append(self._decode_run(run_key, run))  # type: ignore[arg-type]
        return changes

    def _decode_other(self, payload: bytes) -> Change | None:
        kind = payload[0]
        if kind == RELATION:
            relation = decode_relation(payload)
            self.relations[relation.oid] = relation
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

    def _decode_run(self, key: tuple[int, int, int], run: list[bytes]) -> Change:
        kind, relid, marker = key
        relation = self._relation(relid)
        buf = np.frombuffer(b"".join(run), dtype=np.uint8)
        lengths = np.fromiter((len(p) for p in run), dtype=np.int64, count=len(run))
        starts = np.zeros(len(run), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        pos = starts + 6  # type byte, relid, 'N'/'K'/'O'
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


def _relid(payload: bytes) -> int:
    return int.from_bytes(payload[1:5], "big")


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
    last = len(buf) - 1
    arrays: list[pa.Array] = []
    unchanged: dict[str, np.ndarray] = {}
    for index in range(width):
        kind = buf[pos]
        has_value = (kind == _TEXT) | (kind == _BINARY)
        header = [buf[np.minimum(pos + k, last)].astype(np.int64) for k in range(1, 5)]
        length = (header[0] << 24) | (header[1] << 16) | (header[2] << 8) | header[3]
        length = np.where(has_value, length, 0)
        value_start = pos + 5
        arrays.append(_string_array(buf, value_start, length, has_value))
        pos = np.where(has_value, value_start + length, pos + 1)
        is_unchanged = kind == _UNCHANGED
        if is_unchanged.any():
            unchanged[relation.columns[index].name] = is_unchanged
        if not np.all(has_value | is_unchanged | (kind == _NULL)):
            raise DecodeError(f"bad tuple data in {relation.qualified_name}")
    names = [c.name for c in relation.columns[:width]]
    return Tuples(pa.Table.from_arrays(arrays, names=names), unchanged), pos


def _string_array(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, valid: np.ndarray
) -> pa.Array:
    count = len(starts)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total:
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
        values = buf[gather]
    else:
        values = np.zeros(0, dtype=np.uint8)
    null_count = count - int(np.count_nonzero(valid))
    validity = None if null_count == 0 else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        pa.large_string(),
        count,
        [validity, pa.py_buffer(offsets), pa.py_buffer(values)],
        null_count=null_count,
    )

