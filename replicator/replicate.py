"""The replicator: set up the source, copy the tables, then stream changes into the mirror.

One source transaction is applied whole or not at all, and a mirror commit always stores the
end LSN of the last source transaction it holds; the server hears of a position only after
the mirror has committed it. A restart therefore resumes exactly after the last commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
import pyarrow as pa
from psycopg import sql

from mirror.changes import (
    Change,
    Lsn,
    Relation,
    SchemaChange,
    Truncate,
    compact,
    format_lsn,
)
from mirror.errors import SlotBusyError, SourceConnectionLost, SourceError, SourceSetupError
from mirror.store import Mirror
from mirror.tables import MirroredTable
from replicator import pgoutput as po
from replicator import source
from replicator.initial_copy import Progress, copy_table
from replicator.stream import (
    KEEPALIVE,
    XLOG_DATA,
    XLOG_HEADER,
    Keepalive,
    ReplicationConnection,
    parse_keepalive,
    standby_status,
)

log = logging.getLogger("pgml_sidecar.replicator")

_SCHEMA_MESSAGES = (po.RELATION, po.TYPE)
_POSTGRES_EPOCH = 946_684_800  # 2000-01-01 in Unix seconds
_ROW_MESSAGES = frozenset((po.INSERT, po.UPDATE, po.DELETE))


@dataclass
class ReplicationSettings:
    """What to replicate from where; defaults suit a sidecar beside one database."""

    source_dsn: str
    mirror_path: Path
    tables: Sequence[str] = ()
    publication: str = "pgml_sidecar"
    slot: str = "pgml_sidecar"
    catch_up: bool = False
    batch_messages: int = 100_000
    """Apply once this many messages are waiting (mid-transaction too, without committing)."""
    max_delay: float = 0.2
    """Commit at the first transaction end once changes have waited this many seconds."""
    behind_after: float = 0.5
    """A transaction that committed on the source this many seconds ago means catching up."""
    catch_up_messages: int = 250_000
    catch_up_delay: float = 1.0
    """Batch limits while catching up: throughput over latency."""
    min_delay: float = 0.02
    """When the server pauses, commit only changes that have waited this long, so that under
    a steady stream each commit carries several transactions."""
    status_interval: float = 5.0
    stream_large_transactions: bool = True
    """Ask for protocol 2 streaming of in-progress transactions (PostgreSQL 14+); protocol 1
    otherwise, where the server spills them to disk until they commit."""
    memory_limit: str = "256MB"
    """DuckDB's memory for the mirror in this process; raise it for very large tables."""
    slot_wait: float = 5.0
    """Seconds to wait at start for a slot still held by a previous run's walsender."""


@dataclass
class ReplicationStats:
    """Counters the daemon and the CLI report."""

    rows_applied: int = 0
    messages: int = 0
    """Kafka messages consumed into the mirror (the Debezium source)."""
    dead_letters: dict[str, int] = field(default_factory=dict)
    """Kafka messages kept in the dead-letter table instead, by topic (the Debezium source)."""
    last_commit_time: float = 0.0
    """Source commit time (Unix seconds) of the newest transaction seen complete."""
    transactions: int = 0
    batches: int = 0
    reconnects: int = 0
    flushed_lsn: Lsn = 0
    copied_rows: dict[str, int] = field(default_factory=dict)


class Replicator:
    """Mirror the source's published tables into DuckDB, exactly once."""

    def __init__(self, settings: ReplicationSettings, mirror: Mirror | None = None) -> None:
        self.settings = settings
        self._mirror = mirror
        self.stats = ReplicationStats()
        self.stopping = threading.Event()
        self._catalog: psycopg.Connection | None = None
        self._session: _StreamSession | None = None

    @property
    def mirror(self) -> Mirror:
        """The mirror, opened on first use: after the source checks, so a refused start
        leaves no file behind."""
        if self._mirror is None:
            self._mirror = Mirror(
                self.settings.mirror_path, memory_limit=self.settings.memory_limit
            )
        return self._mirror

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    # -- set-up --------------------------------------------------------------------------------

    def prepare(self) -> tuple[ReplicationConnection, Lsn]:
        """Check the source, create publication and slot, copy what needs copying."""
        s = self.settings
        conn = self._catalog_conn()
        source.check_wal_level(conn)
        if s.tables:
            tables = source.resolve_tables(conn, s.tables)
        else:
            tables = source.publication_tables(conn, s.publication)
            if not tables:
                raise SourceSetupError(
                    f"publication {s.publication} has no tables; name the tables to mirror"
                    " with --tables schema.table,..."
                )
        repl = ReplicationConnection(s.source_dsn)  # proves the REPLICATION privilege
        try:
            return repl, self._prepare_slot_and_mirror(conn, repl, tables)
        except BaseException:
            repl.close()
            raise

    def _prepare_slot_and_mirror(
        self,
        conn: psycopg.Connection,
        repl: ReplicationConnection,
        tables: Sequence[tuple[str, str]],
    ) -> Lsn:
        s = self.settings
        slot = self._idle_slot(conn)
        source.ensure_publication(conn, s.publication, tables)
        position = self.mirror.position(s.slot)
        if slot is None or position is None:
            if slot is not None:
                log.warning("slot %s exists but this mirror is new: recreating the slot", s.slot)
                source.drop_slot(conn, s.slot)
            elif position is not None:
                log.warning("slot %s is gone: copying every table again", s.slot)
            lsn, snapshot = repl.create_slot(s.slot)
            log.info("created slot %s at %s", s.slot, format_lsn(lsn))
            self.mirror.begin()
            self._copy(tables, snapshot=snapshot, state="ready", in_steps=True)
            self.mirror.commit(s.slot, lsn)
            return lsn
        late = [
            t
            for t in tables
            if t not in self.mirror.tables or self.mirror.tables[t].state == "copying"
        ]
        if late:
            self.mirror.begin()
            self._copy_while_streaming(late, in_steps=True)
            self.mirror.commit(s.slot, position)
        return position

    def _idle_slot(self, conn: psycopg.Connection) -> source.SlotInfo | None:
        """The slot if it exists; wait a little for a walsender of a previous run to exit."""
        s = self.settings
        deadline = time.monotonic() + s.slot_wait
        while True:
            slot = source.slot_info(conn, s.slot)
            if slot is None or not slot.active_pid:
                break
            if time.monotonic() >= deadline or self.stopping.wait(0.1):
                raise SlotBusyError(
                    f"replication slot {s.slot} is in use by process {slot.active_pid}; stop"
                    " the other consumer, or give this sidecar its own --slot"
                )
        if slot is not None and slot.plugin != "pgoutput":
            raise SourceSetupError(
                f"replication slot {s.slot} uses plugin {slot.plugin}, not pgoutput;"
                " choose another --slot"
            )
        return slot

    def _catalog_conn(self) -> psycopg.Connection:
        if self._catalog is None or self._catalog.closed or self._catalog.broken:
            self._catalog = source.connect(self.settings.source_dsn)
        return self._catalog

    def _copy(
        self,
        tables: Sequence[tuple[str, str]],
        *,
        snapshot: str,
        state: str,
        until: Lsn = 0,
        in_steps: bool = False,
    ) -> None:
        """Copy tables into the mirror under an exported snapshot.

        Without ``in_steps`` everything goes into the open mirror transaction. With it (only
        when no stream transaction is open) each chunk is committed as it lands, which keeps
        DuckDB's memory flat; the table stays ``copying`` until its last chunk, and a table
        found ``copying`` at start is copied again.
        """
        with source.connect(self.settings.source_dsn) as conn:
            conn.execute("begin isolation level repeatable read")
            conn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
            for schema, name in tables:
                relation = source.describe_table(conn, schema, name)
                self._learn_types([relation])
                mirror = self.mirror
                table = mirror.create_table(
                    relation, state="copying" if in_steps else state, key=False
                )
                estimate = conn.execute(
                    "select reltuples::bigint from pg_class where oid = %s", [relation.oid]
                ).fetchone()
                progress = Progress(relation.qualified_name, estimate[0] if estimate else None)
                if in_steps:
                    mirror.commit_step()

                load = self._loader(table, commit_each=in_steps)
                rows = copy_table(conn, relation, load, progress=progress, tick=self._answer_stream)
                mirror.add_primary_key(table)
                mirror.set_state(table, state, until)
                if in_steps:
                    mirror.commit_step()
                progress.finish()
                self.stats.copied_rows[relation.qualified_name] = rows
                log.info("copied %s: %d rows", relation.qualified_name, rows)
            conn.execute("commit")

    def _loader(self, table: MirroredTable, *, commit_each: bool) -> Callable[[pa.Table], None]:
        mirror = self.mirror

        def load(rows: pa.Table) -> None:
            mirror.insert_rows(table, rows)
            if commit_each:
                mirror.commit_step()

        return load

    def _copy_while_streaming(
        self, tables: Sequence[tuple[str, str]], *, in_steps: bool = False
    ) -> None:
        """Copy tables under the snapshot of a temporary slot, exact to one WAL position.

        Streamed changes of transactions committed before that position are in the copy; the
        mirror skips them (state ``catchup``) until the stream passes it.
        """
        repl = ReplicationConnection(self.settings.source_dsn)
        try:
            name = f"{self.settings.slot}_copy_{os.getpid()}"
            lsn, snapshot = repl.create_slot(name, temporary=True)
            self._copy(tables, snapshot=snapshot, state="catchup", until=lsn, in_steps=in_steps)
        finally:
            repl.close()

    def follow(self, relation: Relation, commit_lsn: Lsn | None) -> None:
        """Bring the mirror table in line with a Relation message from the stream."""
        table = self.mirror.table_for(relation)
        if table is None:
            log.info("%s joined the publication: copying it", relation.qualified_name)
            self._copy_while_streaming([(relation.schema, relation.name)])
            return
        if table.state == "catchup" and commit_lsn is not None and commit_lsn < table.catchup_until:
            return  # an older shape than the copy's
        plan = self.mirror.schema_plan(relation)
        assert plan is not None
        reason = plan.copy_reason
        fill: dict[str, str | None] | None = {}
        if reason is None and plan.adds:
            names = [c.name for c in plan.adds]
            fill = source.fast_defaults(self._catalog_conn(), relation.oid, names)
            if fill is None:
                reason = "gained a column whose values in existing rows never reach the WAL"
        if reason is not None:
            log.info("%s %s: copying it again", relation.qualified_name, reason)
            self._copy_while_streaming([(relation.schema, relation.name)])
            return
        self.mirror.follow_schema(relation, fill)

    def may_copy(self, changes: Sequence[Change]) -> bool:
        """Whether applying these changes could start a copy (a new table, a new column)."""
        for change in changes:
            if isinstance(change, SchemaChange):
                plan = self.mirror.schema_plan(change.relation)
                if plan is None or plan.adds or plan.copy_reason:
                    return True
            elif any(self.mirror.table_for(r) is None for r in _relations(change)):
                return True  # only a table lookup per run: this is on the hot path
        return False

    def _learn_types(self, relations: Sequence[Relation]) -> None:
        unknown = {
            c.type_oid
            for r in relations
            for c in r.columns
            if c.type_oid >= 10000 and c.type_oid not in self.mirror.source_types
        }
        if unknown:
            self.mirror.source_types.update(source.source_types(self._catalog_conn(), unknown))

    # -- running -------------------------------------------------------------------------------

    def run(self) -> ReplicationStats:
        """Prepare, then stream until stopped (or caught up); reconnect when the source drops."""
        repl: ReplicationConnection | None
        repl, start = self.prepare()
        delay = 0.5
        while repl is not None:
            try:
                self.stream(repl, start)
                break
            except (SourceError, psycopg.OperationalError) as exc:
                if isinstance(exc, SourceSetupError | SlotBusyError):
                    raise
                self.mirror.rollback()
                if self.stopping.is_set():
                    break
                self.stats.reconnects += 1
                log.warning("%s; reconnecting in %.1fs", _first_line(exc), delay)
            finally:
                repl.close()
            repl, start = self._reconnect(delay)
        return self.stats

    def _reconnect(self, delay: float) -> tuple[ReplicationConnection | None, Lsn]:
        """Connect again with growing pauses; (None, 0) once asked to stop."""
        while not self.stopping.wait(delay):
            delay = min(delay * 2, 30.0)
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None
            try:
                repl = ReplicationConnection(self.settings.source_dsn)
            except (SourceConnectionLost, psycopg.OperationalError) as exc:
                log.warning("%s; retrying in %.1fs", _first_line(exc), delay)
                continue
            position = self.mirror.position(self.settings.slot)
            assert position is not None
            return repl, position
        return None, 0

    def stream(self, repl: ReplicationConnection, start: Lsn) -> None:
        """Stream from ``start`` until stopped; raise SourceConnectionLost if the link drops."""
        s = self.settings
        try:
            streaming = s.stream_large_transactions and repl.server_version() >= 140000
            repl.start(s.slot, start, s.publication, streaming=streaming)
        except SlotBusyError as exc:
            raise SourceConnectionLost(str(exc)) from None  # an old walsender is still exiting
        target = source.catch_up_target(self._catalog_conn()) if s.catch_up else None
        log.info("streaming from %s", format_lsn(start))
        self._session = _StreamSession(self, repl, start)
        try:
            self._session.loop(target)
        finally:
            self._session = None

    def _answer_stream(self) -> None:
        """While a copy holds up the stream, keep its server from timing the connection out."""
        session = self._session
        if session is not None and time.monotonic() - session.last_status >= 1.0:
            session.send_status()


def _relations(change: Change) -> tuple[Relation, ...]:
    return change.relations if isinstance(change, Truncate) else (change.relation,)


class _Stopped(Exception):
    """Raised inside the stream loop once a stop was asked for at a transaction end."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _StreamSession:
    """The state of one START_REPLICATION: pending messages, open transactions, positions."""

    def __init__(self, replicator: Replicator, repl: ReplicationConnection, start: Lsn) -> None:
        self.r = replicator
        self.repl = repl
        self.resume_lsn = start
        self.decoder = po.Decoder()
        self.pending: list[bytes | memoryview] = []
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
        self.last_status = time.monotonic()

    def loop(self, target: source.CatchUpTarget | None) -> None:
        """Receive, apply and report until stopped or caught up; on a stop, commit first."""
        try:
            with contextlib.suppress(_Stopped):
                self._loop(target)
        finally:
            for streamed in self.streams.values():
                streamed.discard()
        if self.pending_end is not None and not (self.partially_applied and self.in_transaction):
            self.flush()

    def _loop(self, target: source.CatchUpTarget | None) -> None:
        try:
            self._receive(target)
        except psycopg.OperationalError as exc:
            raise SourceConnectionLost(f"replication connection lost: {_first_line(exc)}") from None

    def _receive(self, target: source.CatchUpTarget | None) -> None:
        repl = self.repl
        read = repl.pgconn.get_copy_data
        settings = self.r.settings
        stopping = self.r.stopping
        pending = self.pending
        batch_messages = settings.batch_messages
        while True:
            size, frame = read(1)
            if size > 0:
                kind = frame[0]
                if kind == XLOG_DATA:
                    if frame[XLOG_HEADER] in _ROW_MESSAGES:  # the hot path: one row change
                        stream = self.stream
                        if stream is not None:
                            stream.raw.append(frame)
                            continue
                        if not self.skip and pending and len(pending) < batch_messages:
                            pending.append(frame)  # whole frames: a slice costs more here
                            continue
                    self.on_message(frame)
                elif kind == KEEPALIVE:
                    self.on_keepalive(parse_keepalive(frame))
                continue
            if size < 0:
                raise repl.lost()
            # Nothing buffered: a natural point to commit, report and check for the end.
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
            if target is not None and idle and target.reached(max(self.flushed, self.server_sent)):
                self.send_status()
                log.info(
                    "caught up: mirror at %s, server sent up to %s, target %s",
                    format_lsn(self.flushed),
                    format_lsn(self.server_sent),
                    format_lsn(target.lsn),
                )
                return
            if now - self.last_status >= settings.status_interval:
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
                self.stream = _StreamedTransaction(self.stream_xid, self.decoder.fork(), spool_dir)
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
                    for changes in streamed.blocks():
                        if not applies:
                            changes = [c for c in changes if isinstance(c, SchemaChange)]
                        applied = self.apply(changes, done.commit_lsn)
                        self.applied_uncommitted += applied
                        self.r.stats.rows_applied += applied
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
        self.stream.raw.append(frame)

    def add_pending(self, frame: memoryview | bytes) -> None:
        if not self.pending and not self.applied_uncommitted:
            self.batch_started = time.monotonic()
        self.pending.append(frame)
        if len(self.pending) >= self.r.settings.batch_messages and self.in_transaction:
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
        if self.behind:
            big, old = settings.catch_up_messages, settings.catch_up_delay
        else:
            big, old = settings.batch_messages // 2, settings.max_delay
        if size >= big or time.monotonic() - self.batch_started >= old:
            self.flush()

    def apply_pending(self, upto: int | None = None) -> None:
        """Decode and apply pending messages (the first ``upto`` of them) into the open mirror
        transaction, and drop them from ``pending``."""
        pending = self.pending if upto is None else self.pending[:upto]
        if not pending:
            return
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
        self.applied_uncommitted += done
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
        self.r._learn_types(relations)
        touched = 0
        start = 0
        for index, change in enumerate(changes):
            if isinstance(change, SchemaChange):
                touched += mirror.apply(changes[start:index], commit_lsn)
                start = index + 1
                self.r.follow(change.relation, commit_lsn)
            else:
                for relation in _relations(change):
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
        self.repl.send(standby_status(position, position))
        self.last_status = time.monotonic()


class _StreamedTransaction:
    """A large transaction the server streams before it commits (protocol 2).

    Each stream block is decoded when it ends, with a decoder of its own (the shapes it learns
    become everyone's only at its commit). Past ``memory_budget``, decoded blocks go to a spool
    file beside the mirror, so memory stays bounded however large the transaction. Once a
    subtransaction shows up, messages stay raw so that its abort can drop them.
    """

    memory_budget = 256 << 20
    """Message bytes held decoded in memory before blocks go to the spool file: below it the
    spool only costs time, as DuckDB's own storage for the transaction dominates memory."""

    def __init__(self, xid: int, decoder: po.Decoder, spool_dir: Path) -> None:
        self.xid = xid
        self.decoder = decoder
        self.held: list[Change] = []
        self.held_bytes = 0
        self.raw: list[bytes | memoryview] = []
        self.has_subtransactions = False
        self._spool_dir = spool_dir
        self._spool: IO[bytes] | None = None

    def block_done(self) -> None:
        if self.has_subtransactions or not self.raw:
            return
        if any(xid != self.xid for xid in po.streamed_xids(self.raw, offset=XLOG_HEADER)):
            self.has_subtransactions = True
            return
        self.held_bytes += sum(len(m) for m in self.raw)
        changes = self.decoder.decode(self.raw, offset=XLOG_HEADER, streamed=True)
        self.raw = []
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
        self.held = []
