"""One START_REPLICATION session: pgoutput frames in, transactions committed to the mirror.

Changes are applied to an open mirror transaction (a large source transaction part by part)
and committed in batches of whole source transactions, each commit storing the end LSN of its
last one; only then does the server hear of that position. A transaction the server streams
before it commits (protocol 2) is held apart until its commit, in memory or in a spool file
beside the mirror.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import psycopg

from mirror.changes import Change, Lsn, Relation, SchemaChange, Truncate, compact, format_lsn
from mirror.errors import SourceConnectionLost
from replicator import pgoutput as po
from replicator import source
from replicator.source import first_line
from replicator.stream import (
    KEEPALIVE,
    XLOG_DATA,
    XLOG_HEADER,
    Keepalive,
    ReplicationConnection,
    StatusReporter,
    parse_keepalive,
)

if TYPE_CHECKING:
    from replicator.replicate import Replicator

log = logging.getLogger("pgml_sidecar.replicator")

_SCHEMA_MESSAGES = (po.RELATION, po.TYPE)
_POSTGRES_EPOCH = 946_684_800  # 2000-01-01 in Unix seconds
_ROW_MESSAGES = frozenset((po.INSERT, po.UPDATE, po.DELETE))


def touched_relations(change: Change) -> tuple[Relation, ...]:
    """The tables a change touches."""
    return change.relations if isinstance(change, Truncate) else (change.relation,)


@dataclass(frozen=True)
class BatchLimits:
    """How much of the stream one mirror transaction takes in (a source transaction whole)."""

    messages: int
    """Apply pending messages once this many wait (inside a source transaction too)."""
    catch_up_messages: int
    """Commit at a transaction's end once the batch holds this many messages, catching up."""
    bytes: int
    """Apply pending messages once they hold this many bytes, and commit at a transaction's end
    once the batch does: the memory a batch needs grows with its bytes, not its messages."""


class _Stopped(Exception):
    """Raised inside the stream loop once a stop was asked for at a transaction end."""


class StreamSession:
    """The state of one START_REPLICATION: pending messages, open transactions, positions."""

    def __init__(
        self,
        replicator: Replicator,
        repl: ReplicationConnection,
        start: Lsn,
        *,
        status_every: float,
        limits: BatchLimits,
    ) -> None:
        self.r = replicator
        self.limits = limits
        self.repl = repl
        self.resume_lsn = start
        self.decoder = po.Decoder()
        self.pending: list[bytes | memoryview] = []
        self.pending_bytes = 0
        self.txn_starts: list[tuple[int, Lsn | None]] = []
        """Where each transaction's messages begin in ``pending``, with its commit LSN."""
        self.txn_lsn: Lsn | None = None
        self.pending_end: Lsn | None = None
        self.pending_complete = 0
        """How many pending messages belong to transactions whose commit has arrived."""
        self.batch_started = 0.0
        """When the first change of the uncommitted batch arrived."""
        self.applied_uncommitted = 0
        """Messages applied to the open mirror transaction, not committed yet."""
        self.applied_bytes = 0
        """Their bytes."""
        self.behind = False
        """Whether the last transaction committed on the source long ago (catching up)."""
        self.pending_transactions = 0
        self.partially_applied = False
        self.in_transaction = False
        self.skip = False
        self.streams: dict[int, _StreamedTransaction] = {}
        self.stream_xid: int | None = None
        self.stream: _StreamedTransaction | None = None
        self.flushed = start
        self.server_sent = 0
        self.status = StatusReporter(repl, start, interval=status_every)
        """Reports positions; answers the server while the mirror holds this thread up."""

    def loop(self, target: source.CatchUpTarget | None) -> None:
        """Receive, apply and report until stopped or caught up; on a stop, commit first."""
        try:
            try:
                with contextlib.suppress(_Stopped):
                    self._loop(target)
            finally:
                for streamed in self.streams.values():
                    streamed.discard()
            if self.pending_end is not None and not (
                self.partially_applied and self.in_transaction
            ):
                self.flush()
        finally:
            self.status.close()

    def _loop(self, target: source.CatchUpTarget | None) -> None:
        try:
            self._receive(target)
        except psycopg.OperationalError as exc:
            raise SourceConnectionLost(f"replication connection lost: {first_line(exc)}") from None

    def _receive(self, target: source.CatchUpTarget | None) -> None:
        repl = self.repl
        read = repl.pgconn.get_copy_data
        settings = self.r.settings
        stopping = self.r.stopping
        pending = self.pending
        batch_messages, batch_bytes = self.limits.messages, self.limits.bytes
        while True:
            size, frame = read(1)
            if size > 0:
                kind = frame[0]
                if kind == XLOG_DATA:
                    if frame[XLOG_HEADER] in _ROW_MESSAGES:  # the hot path: one row change
                        stream = self.stream
                        if stream is not None:
                            stream.add(frame)
                            continue
                        if (
                            not self.skip
                            and pending
                            and len(pending) < batch_messages
                            and self.pending_bytes < batch_bytes
                        ):
                            pending.append(frame)  # whole frames: a slice costs more here
                            self.pending_bytes += size
                            continue
                    self.on_message(frame)
                elif kind == KEEPALIVE:
                    self.on_keepalive(parse_keepalive(frame))
                continue
            if size < 0:
                raise repl.lost()
            # Nothing buffered: a natural point to commit, report and check for the end.
            batch_messages, batch_bytes = self.limits.messages, self.limits.bytes
            now = time.monotonic()
            wait = 0.5
            if self.pending_end is not None and not (
                self.partially_applied and self.in_transaction
            ):
                age = now - self.batch_started
                delay = settings.max_delay if self.behind else settings.min_delay
                if age >= delay or stopping.is_set():
                    self.flush()
                else:
                    wait = delay - age  # let a few more transactions join
                    repl.wait(wait)
                    continue
            if stopping.is_set():
                return
            idle = self.idle
            if idle and self.r.wants_copies:
                with self.status.away():
                    self.r.copy_wanted()
            if target is not None and idle and target.reached(max(self.flushed, self.server_sent)):
                self.send_status()
                log.info(
                    "caught up: mirror at %s, server sent up to %s, target %s",
                    format_lsn(self.flushed),
                    format_lsn(self.server_sent),
                    format_lsn(target.lsn),
                )
                return
            if now - self.status.last >= settings.status_interval:
                self.send_status()
            repl.wait(wait)

    def on_keepalive(self, keepalive: Keepalive) -> None:
        """Learn how far the server has sent, and answer.

        A keepalive sent while the server waits for new WAL (no reply requested) follows all
        output for the WAL before ``wal_end``. One that asks for a reply can be sent in the
        middle of a transaction's output, before its Begin, so its ``wal_end`` proves nothing.
        """
        log.debug("keepalive %s reply=%s", format_lsn(keepalive.wal_end), keepalive.reply_requested)
        if not keepalive.reply_requested and keepalive.wal_end > self.server_sent:
            self.server_sent = keepalive.wal_end
        self.send_status()

    def on_message(self, frame: memoryview | bytes) -> None:
        """Handle one XLogData frame (its pgoutput message starts at ``XLOG_HEADER``)."""
        payload = frame[XLOG_HEADER:]
        kind = payload[0]
        if kind in (po.INSERT, po.UPDATE, po.DELETE, po.TRUNCATE):
            if self.stream_xid is not None:
                self.stream_message(frame)
            elif not self.skip:
                self.add_pending(frame)
        elif kind == po.BEGIN:
            begin = po.parse_begin(payload)
            self.in_transaction = True
            self.txn_lsn = begin.final_lsn
            self.txn_starts.append((len(self.pending), begin.final_lsn))
            self.skip = begin.final_lsn < self.resume_lsn
        elif kind == po.COMMIT:
            commit = po.parse_commit(payload)
            self.in_transaction = False
            if self.txn_starts and self.txn_starts[-1][0] == len(self.pending):
                self.txn_starts.pop()  # nothing of it is pending
            if not self.skip:
                self.transaction_done(commit.end_lsn, commit.commit_time)
            self.skip = False
            if self.r.stopping.is_set():
                raise _Stopped
        elif kind in _SCHEMA_MESSAGES:
            if self.stream_xid is not None:
                self.stream_message(frame)
            elif self.skip:
                self.decoder.decode([frame], offset=XLOG_HEADER)  # learn the shape only
            else:
                self.add_pending(frame)
        elif kind == po.STREAM_START:
            self.stream_xid = po.parse_stream_start(payload).xid
            self.stream = self.streams.get(self.stream_xid)
            if self.stream is None:
                spool_dir = self.r.settings.mirror_path.parent
                self.stream = _StreamedTransaction(
                    self.stream_xid,
                    self.decoder.fork(),
                    spool_dir,
                    memory_budget=self.limits.bytes,
                )
                self.streams[self.stream_xid] = self.stream
        elif kind == po.STREAM_STOP:
            if self.stream is not None:
                self.stream.block_done()
            self.stream_xid = self.stream = None
        elif kind == po.STREAM_COMMIT:
            done = po.parse_stream_commit(payload)
            streamed = self.streams.pop(done.xid, None)
            applies = done.commit_lsn >= self.resume_lsn
            self.apply_pending()
            if not self.applied_uncommitted:
                self.batch_started = time.monotonic()
            if streamed is not None:
                self.partially_applied = True  # from here on the mirror transaction holds it
                try:
                    with self.status.away():
                        for changes in streamed.blocks():
                            if not applies:
                                changes = [c for c in changes if isinstance(c, SchemaChange)]
                            applied = self.apply(changes, done.commit_lsn)
                            self.applied_uncommitted += applied
                            self.r.stats.rows_applied += applied
                    self.applied_bytes += streamed.held_bytes
                finally:
                    streamed.discard()
                self.decoder.adopt(streamed.decoder)  # the server takes these shapes as sent
            if applies:
                self.partially_applied = True
                self.transaction_done(done.end_lsn, done.commit_time)
        elif kind == po.STREAM_ABORT:
            abort = po.parse_stream_abort(payload)
            streamed = self.streams.get(abort.xid)
            if streamed is not None and abort.subxid != abort.xid:
                streamed.drop_subtransaction(abort.subxid)
            elif streamed is not None:
                del self.streams[abort.xid]
                streamed.discard()
        # Origin and logical decoding messages carry nothing for the mirror.

    def stream_message(self, frame: memoryview | bytes) -> None:
        assert self.stream is not None
        self.stream.add(frame)

    def add_pending(self, frame: memoryview | bytes) -> None:
        if not self.pending and not self.applied_uncommitted:
            self.batch_started = time.monotonic()
        self.pending.append(frame)
        self.pending_bytes += len(frame)
        full = len(self.pending) >= self.limits.messages or self.pending_bytes >= self.limits.bytes
        if full and self.in_transaction:
            self.apply_pending()  # bound memory inside a large transaction
            self.partially_applied = True

    def transaction_done(self, end_lsn: Lsn, commit_time: int) -> None:
        """A source transaction is complete; commit the batch if it is big or old enough.

        Close to the present, batches stay small for latency. Behind it (catching up), they
        grow to a DuckDB row group or more: bulk inserts skip DuckDB's WAL and cost a third.
        """
        self.pending_end = end_lsn
        self.pending_complete = len(self.pending)
        self.pending_transactions += 1
        settings = self.r.settings
        committed = commit_time / 1e6 + _POSTGRES_EPOCH
        self.r.stats.last_commit_time = committed
        self.behind = time.time() - committed > settings.behind_after
        size = len(self.pending) + self.applied_uncommitted
        held = self.pending_bytes + self.applied_bytes
        if self.behind:
            big, old = self.limits.catch_up_messages, settings.catch_up_delay
        else:
            big, old = self.limits.messages // 2, settings.max_delay
        if size >= big or held >= self.limits.bytes or time.monotonic() - self.batch_started >= old:
            self.flush()

    def apply_pending(self, upto: int | None = None) -> None:
        """Decode and apply pending messages (the first ``upto`` of them) into the open mirror
        transaction, and drop them from ``pending``."""
        pending = self.pending if upto is None else self.pending[:upto]
        if not pending:
            return
        with self.status.away():
            self._apply_pending(pending)

    def _apply_pending(self, pending: list[bytes | memoryview]) -> None:
        shapes = self.decoder.state()
        changes = self.decoder.decode(pending, offset=XLOG_HEADER)
        if self.r.mirror.catching_up or self.r.may_copy(changes):
            # Some table skips transactions older than its copy, or a copy may start: go one
            # transaction at a time, decoding again from the shapes known before this batch.
            self.decoder.restore(shapes)
            starts = (
                self.txn_starts
                if self.txn_starts and self.txn_starts[0][0] == 0
                else [
                    (0, None),
                    *self.txn_starts,
                ]
            )
            ends = [start for start, _ in starts[1:]] + [len(pending)]
            touched = 0
            for (start, lsn), end in zip(starts, ends, strict=True):
                if start < end:
                    changes = self.decoder.decode(pending[start:end], offset=XLOG_HEADER)
                    touched += self.apply(changes, lsn)
        else:
            touched = self.apply(changes, None)
        done = len(pending)
        done_bytes = sum(map(len, pending))
        self.applied_uncommitted += done
        self.applied_bytes += done_bytes
        self.pending_bytes -= done_bytes
        del self.pending[:done]
        self.pending_complete = max(0, self.pending_complete - done)
        kept = [(i - done, lsn) for i, lsn in self.txn_starts if i >= done]
        if self.in_transaction and (not kept or kept[0][0] > 0):
            kept.insert(0, (0, self.txn_lsn))  # the rest of the transaction under way
        self.txn_starts = kept
        self.r.stats.rows_applied += touched

    def apply(self, changes: list[Change], commit_lsn: Lsn | None) -> int:
        """Apply changes to the open mirror transaction; schema changes go through the
        replicator, which may need the source catalog or a fresh copy to follow them."""
        mirror = self.r.mirror
        relations = [c.relation for c in changes if isinstance(c, SchemaChange)]
        if not relations and not self.r.may_copy(changes):
            return mirror.apply(changes, commit_lsn)
        self.r.learn_types(relations)
        touched = 0
        start = 0
        for index, change in enumerate(changes):
            if isinstance(change, SchemaChange):
                touched += mirror.apply(changes[start:index], commit_lsn)
                start = index + 1
                self.r.follow(change.relation, commit_lsn)
            else:
                for relation in touched_relations(change):
                    if mirror.table_for(relation) is None:  # shape learnt in a skipped txn
                        touched += mirror.apply(changes[start:index], commit_lsn)
                        start = index
                        self.r.follow(relation, commit_lsn)
        return touched + mirror.apply(changes[start:], commit_lsn)

    def flush(self) -> None:
        """Apply the complete transactions pending and commit them with the end LSN of the
        last; messages of a transaction still arriving stay pending."""
        end = self.pending_end
        assert end is not None
        with self.status.away():
            self.apply_pending(self.pending_complete)
            self.r.mirror.commit(self.r.settings.slot, end)
        self.r.stats.transactions += self.pending_transactions
        self.r.stats.batches += 1
        self.r.stats.flushed_lsn = end
        self.flushed = max(self.flushed, end)
        self.pending_end = None
        self.pending_transactions = 0
        self.partially_applied = False
        self.applied_uncommitted = 0
        self.applied_bytes = 0
        if not self.behind and self.r.batch_scale < 1:
            self.r.batch_scale = 1.0  # caught up: the next backlog starts with whole batches
            self.limits = self.r.batch_limits()
        self.batch_started = time.monotonic()  # for what is left of a transaction under way
        self.send_status()

    @property
    def idle(self) -> bool:
        """Nothing received is waiting or applied but uncommitted."""
        return not (
            self.in_transaction
            or self.pending
            or self.partially_applied
            or self.applied_uncommitted
        )

    def send_status(self) -> None:
        """Report the mirror's position; when idle, the server's (nothing of it is ours)."""
        position = self.flushed
        if self.idle:
            position = max(position, self.server_sent)
        self.status.report(position)


class _StreamedTransaction:
    """A large transaction the server streams before it commits (protocol 2).

    Each stream block is decoded when it ends, or once its messages hold ``memory_budget``
    bytes, with a decoder of its own (the shapes it learns become everyone's only at its
    commit). Past ``memory_budget``, what is decoded goes to a spool file beside the mirror in
    parts of at most that, so memory stays bounded however large the transaction and the
    server's stream blocks. Once a subtransaction shows up, messages stay raw so that its
    abort can drop them.
    """

    def __init__(
        self, xid: int, decoder: po.Decoder, spool_dir: Path, *, memory_budget: int
    ) -> None:
        self.xid = xid
        self.memory_budget = memory_budget
        """Message bytes held decoded in memory before blocks go to the spool file."""
        self.decoder = decoder
        self.held: list[Change] = []
        self.held_bytes = 0
        self.raw: list[bytes | memoryview] = []
        self.raw_bytes = 0
        self.has_subtransactions = False
        self._spool_dir = spool_dir
        self._spool: IO[bytes] | None = None

    def add(self, frame: bytes | memoryview) -> None:
        self.raw.append(frame)
        self.raw_bytes += len(frame)
        if self.raw_bytes >= self.memory_budget:
            self.block_done()

    def block_done(self) -> None:
        """Decode the messages received so far (keep them, or spool them past the budget)."""
        if self.has_subtransactions or not self.raw:
            return
        if any(xid != self.xid for xid in po.streamed_xids(self.raw, offset=XLOG_HEADER)):
            self.has_subtransactions = True
            return
        self.held_bytes += self.raw_bytes
        changes = self.decoder.decode(self.raw, offset=XLOG_HEADER, streamed=True)
        self.raw = []
        self.raw_bytes = 0
        if self.held_bytes <= self.memory_budget:
            self.held.extend(changes)
            return
        if self._spool is None:
            # Lives across stream blocks until blocks() or discard() closes it.
            self._spool = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="pgml-sidecar-stream-", dir=self._spool_dir
            )
        pickle.dump([compact(c) for c in changes], self._spool, protocol=pickle.HIGHEST_PROTOCOL)

    def drop_subtransaction(self, subxid: int) -> None:
        xids = po.streamed_xids(self.raw, offset=XLOG_HEADER)
        self.raw = [
            m
            for m, xid in zip(self.raw, xids, strict=True)
            if xid != subxid or m[XLOG_HEADER] in _SCHEMA_MESSAGES
        ]
        self.raw_bytes = sum(map(len, self.raw))

    def blocks(self) -> Iterator[list[Change]]:
        """The transaction's changes block by block, in order; the spool goes afterwards."""
        yield self.held
        if self._spool is not None:
            self._spool.seek(0)
            while True:
                try:
                    yield pickle.load(self._spool)
                except EOFError:
                    break
        yield self.decoder.decode(self.raw, offset=XLOG_HEADER, streamed=True)
        self.discard()

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self.raw = []
        self.raw_bytes = 0
        self.held = []
