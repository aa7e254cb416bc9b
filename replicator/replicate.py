"""The replicator: set up the source, copy the tables, then stream changes into the mirror.

One source transaction is applied whole or not at all, and a mirror commit always stores the
end LSN of the last source transaction it holds; the server hears of a position only after
the mirror has committed it. A restart therefore resumes exactly after the last commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from replicator import pgoutput as po
from replicator import source
from replicator.initial_copy import Progress, copy_rows
from replicator.stream import (
    KEEPALIVE,
    XLOG_DATA,
    XLOG_HEADER,
    Keepalive,
    ReplicationConnection,
    parse_keepalive,
    standby_status,
)
from sidecar.changes import Change, Lsn, Relation, SchemaChange, format_lsn
from sidecar.errors import SlotBusyError, SourceConnectionLost, SourceSetupError
from sidecar.mirror import Mirror

log = logging.getLogger("pgml_sidecar.replicator")

_SCHEMA_MESSAGES = (po.RELATION, po.TYPE)
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
    max_delay: float = 0.05
    """Commit at the first transaction end once changes have waited this many seconds."""
    status_interval: float = 5.0


@dataclass
class ReplicationStats:
    """Counters the daemon and the CLI report."""

    rows_applied: int = 0
    transactions: int = 0
    batches: int = 0
    reconnects: int = 0
    flushed_lsn: Lsn = 0
    copied_rows: dict[str, int] = field(default_factory=dict)


class Replicator:
    """Mirror the source's published tables into DuckDB, exactly once."""

    def __init__(self, settings: ReplicationSettings, mirror: Mirror | None = None) -> None:
        self.settings = settings
        self.mirror = mirror or Mirror(settings.mirror_path)
        self.stats = ReplicationStats()
        self.stopping = threading.Event()
        self._catalog: psycopg.Connection | None = None

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
        source.ensure_publication(conn, s.publication, tables)
        slot = source.slot_info(conn, s.slot)
        if slot is not None and slot.active_pid:
            raise SlotBusyError(
                f"replication slot {s.slot} is in use by process {slot.active_pid}; stop the"
                " other consumer, or give this sidecar its own --slot"
            )
        if slot is not None and slot.plugin != "pgoutput":
            raise SourceSetupError(
                f"replication slot {s.slot} uses plugin {slot.plugin}, not pgoutput;"
                " choose another --slot"
            )
        position = self.mirror.position(s.slot)
        if slot is None or position is None:
            if slot is not None:
                log.warning("slot %s exists but this mirror is new: recreating the slot", s.slot)
                source.drop_slot(conn, s.slot)
            elif position is not None:
                log.warning("slot %s is gone: copying every table again", s.slot)
            repl = ReplicationConnection(s.source_dsn)
            lsn, snapshot = repl.create_slot(s.slot)
            log.info("created slot %s at %s", s.slot, format_lsn(lsn))
            self.mirror.begin()
            self._copy(tables, snapshot=snapshot, state="ready")
            self.mirror.commit(s.slot, lsn)
            return repl, lsn
        late = [
            t
            for t in tables
            if t not in self.mirror.tables or self.mirror.tables[t].state == "copying"
        ]
        if late:
            self.mirror.begin()
            self._copy(late, snapshot=None, state="catchup")
            self.mirror.commit(s.slot, position)
        return ReplicationConnection(s.source_dsn), position

    def _catalog_conn(self) -> psycopg.Connection:
        if self._catalog is None or self._catalog.closed or self._catalog.broken:
            self._catalog = source.connect(self.settings.source_dsn)
        return self._catalog

    def _copy(self, tables: Sequence[tuple[str, str]], *, snapshot: str | None, state: str) -> None:
        """Copy tables into the open mirror transaction under one snapshot.

        ``ready`` copies use the slot's exported snapshot; ``catchup`` copies take their own
        and note the WAL position it was taken at, up to which streamed changes are applied
        idempotently.
        """
        with source.connect(self.settings.source_dsn) as conn:
            conn.execute("begin isolation level repeatable read")
            if snapshot:
                conn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
            until = source.current_wal_lsn(conn)
            for schema, name in tables:
                relation = source.describe_table(conn, schema, name)
                self._learn_types([relation])
                table = self.mirror.create_table(relation, state=state)
                estimate = conn.execute(
                    "select reltuples::bigint from pg_class where oid = %s", [relation.oid]
                ).fetchone()
                progress = Progress(relation.qualified_name, estimate[0] if estimate else None)
                rows = self.mirror.load(table, copy_rows(conn, relation, progress=progress))
                progress.finish()
                self.mirror.set_state(table, state, until if state == "catchup" else 0)
                self.stats.copied_rows[relation.qualified_name] = rows
                log.info("copied %s: %d rows", relation.qualified_name, rows)
            conn.execute("commit")

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
        repl, start = self.prepare()
        delay = 0.5
        try:
            while True:
                try:
                    self.stream(repl, start)
                    return self.stats
                except SourceConnectionLost as exc:
                    self.mirror.rollback()
                    repl.close()
                    if self.stopping.is_set():
                        return self.stats
                    self.stats.reconnects += 1
                    log.warning("%s; reconnecting in %.1fs", exc, delay)
                repl, start, delay = self._reconnect(delay)
        finally:
            repl.close()
            if self._catalog is not None:
                self._catalog.close()

    def _reconnect(self, delay: float) -> tuple[ReplicationConnection, Lsn, float]:
        while True:
            if self.stopping.wait(delay):
                raise SystemExit(0)
            delay = min(delay * 2, 30.0)
            try:
                self._catalog = None
                repl = ReplicationConnection(self.settings.source_dsn)
            except (SourceConnectionLost, psycopg.OperationalError) as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
                continue
            position = self.mirror.position(self.settings.slot)
            assert position is not None
            return repl, position, 0.5

    def stream(self, repl: ReplicationConnection, start: Lsn) -> None:
        """Stream from ``start`` until stopped; raise SourceConnectionLost if the link drops."""
        s = self.settings
        try:
            repl.start(s.slot, start, s.publication, streaming=repl.server_version() >= 140000)
        except SlotBusyError as exc:
            raise SourceConnectionLost(str(exc)) from None  # an old walsender is still exiting
        target = source.catch_up_target(self._catalog_conn()) if s.catch_up else None
        log.info("streaming from %s", format_lsn(start))
        session = _StreamSession(self, repl, start)
        session.loop(target)


class _StreamSession:
    """The state of one START_REPLICATION: pending messages, open transactions, positions."""

    def __init__(self, replicator: Replicator, repl: ReplicationConnection, start: Lsn) -> None:
        self.r = replicator
        self.repl = repl
        self.resume_lsn = start
        self.decoder = po.Decoder()
        self.pending: list[bytes | memoryview] = []
        self.pending_end: Lsn | None = None
        self.pending_since = 0.0
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
        repl = self.repl
        settings = self.r.settings
        stopping = self.r.stopping
        pending = self.pending
        batch_messages = settings.batch_messages
        while True:
            frame = repl.read()
            if frame is not None:
                kind = frame[0]
                if kind == XLOG_DATA:
                    payload = frame[XLOG_HEADER:]
                    if payload[0] in _ROW_MESSAGES:  # the hot path: one row change
                        stream = self.stream
                        if stream is not None:
                            stream.raw.append(payload)
                            continue
                        if not self.skip and pending and len(pending) < batch_messages:
                            pending.append(payload)
                            continue
                    self.on_message(payload)
                elif kind == KEEPALIVE:
                    self.on_keepalive(parse_keepalive(frame))
                continue
            # Nothing buffered: a natural point to commit, report and check for the end.
            if self.pending_end is not None:
                self.flush()
            now = time.monotonic()
            if stopping.is_set():
                return
            idle = not self.in_transaction and not self.pending and not self.partially_applied
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
            repl.wait(0.5)

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

    def on_message(self, payload: memoryview | bytes) -> None:
        kind = payload[0]
        if kind in (po.INSERT, po.UPDATE, po.DELETE, po.TRUNCATE):
            if self.stream_xid is not None:
                self.stream_message(payload)
            elif not self.skip:
                self.add_pending(payload)
        elif kind == po.BEGIN:
            begin = po.parse_begin(payload)
            self.in_transaction = True
            self.skip = begin.final_lsn < self.resume_lsn
        elif kind == po.COMMIT:
            commit = po.parse_commit(payload)
            self.in_transaction = False
            if not self.skip:
                self.transaction_done(commit.end_lsn)
            self.skip = False
        elif kind in _SCHEMA_MESSAGES:
            if self.stream_xid is not None:
                self.stream_message(payload)
            else:
                self.add_pending(bytes(payload))
        elif kind == po.STREAM_START:
            self.stream_xid = po.parse_stream_start(payload).xid
            self.stream = self.streams.setdefault(
                self.stream_xid, _StreamedTransaction(self.stream_xid)
            )
        elif kind == po.STREAM_STOP:
            if self.stream is not None:
                self.stream.block_done(self.decoder)
            self.stream_xid = self.stream = None
        elif kind == po.STREAM_COMMIT:
            done = po.parse_stream_commit(payload)
            streamed = self.streams.pop(done.xid, None)
            changes = [] if streamed is None else streamed.changes(self.decoder)
            applies = done.commit_lsn >= self.resume_lsn
            if not applies:
                changes = [c for c in changes if isinstance(c, SchemaChange)]
            self.apply_pending()
            self.r.stats.rows_applied += self.apply(changes)
            if applies:
                self.partially_applied = True
                self.transaction_done(done.end_lsn)
        elif kind == po.STREAM_ABORT:
            abort = po.parse_stream_abort(payload)
            streamed = self.streams.get(abort.xid)
            if streamed is not None and abort.subxid != abort.xid:
                streamed.drop_subtransaction(abort.subxid)
            elif streamed is not None:
                del self.streams[abort.xid]
        # Origin and logical decoding messages carry nothing for the mirror.

    def stream_message(self, payload: memoryview | bytes) -> None:
        assert self.stream is not None
        self.stream.raw.append(payload)

    def add_pending(self, payload: memoryview | bytes) -> None:
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(payload)
        if len(self.pending) >= self.r.settings.batch_messages and self.in_transaction:
            self.apply_pending()  # bound memory inside a large transaction
            self.partially_applied = True

    def transaction_done(self, end_lsn: Lsn) -> None:
        self.pending_end = end_lsn
        self.pending_transactions += 1
        settings = self.r.settings
        if (
            len(self.pending) >= settings.batch_messages // 2
            or time.monotonic() - self.pending_since >= settings.max_delay
        ):
            self.flush()

    def apply_pending(self) -> None:
        if not self.pending:
            return
        changes = self.decoder.decode(self.pending)
        self.pending.clear()
        self.r.stats.rows_applied += self.apply(changes)

    def apply(self, changes: list[Change]) -> int:
        mirror = self.r.mirror
        schema_changes = [c.relation for c in changes if isinstance(c, SchemaChange)]
        if schema_changes:
            self.r._learn_types(schema_changes)
        touched = 0
        start = 0
        for index, change in enumerate(changes):
            if isinstance(change, SchemaChange) and mirror.table_for(change.relation) is None:
                touched += mirror.apply(changes[start:index])
                start = index + 1
                relation = change.relation
                log.info("%s joined the publication: copying it", relation.qualified_name)
                self.r._copy([(relation.schema, relation.name)], snapshot=None, state="catchup")
        return touched + mirror.apply(changes[start:])

    def flush(self) -> None:
        """Apply what is pending and commit it with the end LSN of its last transaction."""
        end = self.pending_end
        assert end is not None
        self.apply_pending()
        self.r.mirror.commit(self.r.settings.slot, end)
        self.r.stats.transactions += self.pending_transactions
        self.r.stats.batches += 1
        self.r.stats.flushed_lsn = end
        self.flushed = max(self.flushed, end)
        self.pending_end = None
        self.pending_transactions = 0
        self.partially_applied = False
        self.send_status()

    def send_status(self) -> None:
        position = self.flushed
        if not self.in_transaction and not self.pending and not self.partially_applied:
            position = max(position, self.server_sent)
        self.repl.send(standby_status(position, position))
        self.last_status = time.monotonic()


class _StreamedTransaction:
    """A large transaction the server streams before it commits (protocol 2).

    Each stream block is decoded when it ends, so decoding overlaps with receiving; once a
    subtransaction shows up, messages stay raw so that its abort can drop them.
    """

    def __init__(self, xid: int) -> None:
        self.xid = xid
        self.raw: list[bytes | memoryview] = []
        self.decoded: list[Change] = []
        self.has_subtransactions = False

    def block_done(self, decoder: po.Decoder) -> None:
        if self.has_subtransactions or not self.raw:
            return
        if any(xid != self.xid for xid in po.streamed_xids(self.raw)):
            self.has_subtransactions = True
            return
        self.decoded.extend(decoder.decode(self.raw, streamed=True))
        self.raw = []

    def drop_subtransaction(self, subxid: int) -> None:
        xids = po.streamed_xids(self.raw)
        self.raw = [
            m
            for m, xid in zip(self.raw, xids, strict=True)
            if xid != subxid or m[0] in _SCHEMA_MESSAGES
        ]

    def changes(self, decoder: po.Decoder) -> list[Change]:
        return self.decoded + decoder.decode(self.raw, streamed=True)
