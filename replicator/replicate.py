"""The pgoutput replicator: set up the source, copy the tables, stream changes into the mirror.

One source transaction is applied whole or not at all, and a mirror commit always stores the
end LSN of the last source transaction it holds; the server hears of a position only after
the mirror has committed it (``replicator/stream_session.py``). A restart therefore resumes
exactly after the last commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
from psycopg import sql

from mirror.changes import Change, Lsn, Relation, SchemaChange, format_lsn
from mirror.errors import (
    MirrorOutOfMemory,
    SlotBusyError,
    SourceConnectionLost,
    SourceError,
    SourceSetupError,
)
from mirror.store import Mirror
from mirror.tables import MirroredTable
from replicator import source
from replicator.initial_copy import Progress, copy_table
from replicator.source import first_line
from replicator.stream import ReplicationConnection
from replicator.stream_session import BatchLimits, StreamSession, touched_relations

log = logging.getLogger("pgml_sidecar.replicator")

MIN_BATCH_BYTES = 256 << 10
"""Below this, a batch that runs the mirror out of memory is not split further: the error
stands (one source transaction may need more than the memory limit)."""


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
    batch_bytes: int | None = None
    """Message bytes one batch may hold, pending and applied: its decoded rows take a few times
    that in this process, DuckDB's work on them some more. Default: an eighth of the mirror's
    memory limit. A batch DuckDB runs out of memory on is streamed again in halves."""
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
    replica_identity_full: bool = False
    """Set REPLICA IDENTITY FULL on mirrored tables that have no replica identity, instead of
    refusing them (publishing them as they are would break the application's UPDATEs)."""


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
    connected: bool = True
    """False while the source is out of reach and the replicator tries again (pgoutput)."""
    connection_error: str | None = None
    """Why the replicator lost the source, while it tries again."""
    memory_retries: int = 0
    """Batches streamed again in halves after the mirror ran out of memory applying them."""
    flushed_lsn: Lsn = 0
    copied_rows: dict[str, int] = field(default_factory=dict)
    prepared: bool = False
    """Whether the start got through: the source checked, the slot (or the Kafka consumer)
    and the mirror set up. An error that retrying cannot fix ends ``run`` only before."""


def identity_checked(
    conn: psycopg.Connection,
    publication: str | Sequence[str],
    tables: Sequence[tuple[str, str]],
    *,
    set_full: bool,
) -> source.ReplicaIdentityCheck:
    """:func:`source.check_replica_identity`, saying which tables were given FULL."""
    checked = source.check_replica_identity(conn, publication, tables, set_full=set_full)
    if checked.set_full:
        log.info("set REPLICA IDENTITY FULL on %s", ", ".join(m.name for m in checked.set_full))
    return checked


def check_source(conn: psycopg.Connection, settings: ReplicationSettings) -> list[tuple[str, str]]:
    """Check wal_level, the tables and their replica identity; return the tables to mirror.

    Nothing that would be published may lack a replica identity (the application's UPDATEs
    would fail): refused, or given REPLICA IDENTITY FULL with ``replica_identity_full``.
    """
    source.check_wal_level(conn)
    if settings.tables:
        tables = source.resolve_tables(conn, settings.tables)
    else:
        tables = source.publication_tables(conn, settings.publication)
        if not tables:
            raise SourceSetupError(
                f"publication {settings.publication} has no tables; name the tables to mirror"
                " with --tables schema.table,..."
            )
    checked = identity_checked(
        conn, settings.publication, tables, set_full=settings.replica_identity_full
    )
    if checked.published:
        log.warning("%s", source.replica_identity_advice(checked.published, published=True))
    return tables


class Replicator:
    """Mirror the source's published tables into DuckDB, exactly once."""

    def __init__(self, settings: ReplicationSettings, mirror: Mirror | None = None) -> None:
        self.settings = settings
        self._mirror = mirror
        self._owns_mirror = mirror is None
        self.stats = ReplicationStats()
        self.stopping = threading.Event()
        self._catalog: psycopg.Connection | None = None
        self.batch_scale = 1.0
        """Batch limits as a share of the settings': halved each time the mirror runs out of
        memory applying a batch, whole again once the stream is near the present."""
        self._memory_limit: int | None = None
        self._wanted: set[tuple[str, str]] = set()
        """Tables published at run time (:meth:`add_tables`), for the stream to copy."""
        self._copied = threading.Condition()
        self._copy_error: dict[tuple[str, str], str] = {}

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
        self.close_mirror()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def close_mirror(self) -> None:
        """Close the mirror; it opens again when next used."""
        if self._mirror is not None:
            mirror, self._mirror = self._mirror, None
            with contextlib.suppress(duckdb.FatalException):  # DuckDB gave up on it
                mirror.close()

    # -- set-up --------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise what would stop :meth:`prepare` whatever the retries: a login the source
        refuses, wal_level, a missing table or one without a replica identity, no REPLICATION.
        It changes nothing, except REPLICA IDENTITY FULL where asked for, as prepare would."""
        check_source(self._catalog_conn(), self.settings)
        ReplicationConnection(self.settings.source_dsn).close()

    def prepare(self) -> tuple[ReplicationConnection, Lsn]:
        """Check the source, create publication and slot, copy what needs copying."""
        s = self.settings
        conn = self._catalog_conn()
        tables = check_source(conn, s)
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
                self.learn_types([relation])
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
                rows = copy_table(
                    conn, relation, load, progress=progress, types=mirror.source_types
                )
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
            elif any(self.mirror.table_for(r) is None for r in touched_relations(change)):
                return True  # only a table lookup per run: this is on the hot path
        return False

    def learn_types(self, relations: Sequence[Relation]) -> None:
        unknown = {
            c.type_oid
            for r in relations
            for c in r.columns
            if c.type_oid >= 10000 and c.type_oid not in self.mirror.source_types
        }
        if unknown:
            self.mirror.source_types.update(source.source_types(self._catalog_conn(), unknown))

    # -- tables asked for at run time ------------------------------------------------------------

    def add_tables(self, tables: Sequence[tuple[str, str]], *, timeout: float = 600.0) -> None:
        """Publish ``tables`` and have the stream copy them; return once each is in the mirror.

        As a table added to the publication by hand, each is copied under a snapshot of its
        own while the stream goes on (it does not wait for the table's first change). A table
        without a replica identity is refused (or given FULL with ``replica_identity_full``),
        as at start; so is one the sidecar's role may not publish.
        """
        missing = [t for t in tables if not self._in_mirror(t)]
        if not missing:
            return
        s = self.settings
        with source.connect(s.source_dsn) as conn:
            source.resolve_tables(conn, [f"{schema}.{name}" for schema, name in missing])
            identity_checked(conn, s.publication, missing, set_full=s.replica_identity_full)
            try:
                source.ensure_publication(conn, s.publication, missing)
            except SourceSetupError:
                names = ", ".join(source.quoted_name(conn, *t) for t in missing)
                raise SourceSetupError(
                    f"the sidecar's role may not add {names} to publication {s.publication}:"
                    " have the owner of the tables and of the publication run ALTER"
                    f" PUBLICATION {s.publication} ADD TABLE {names}, then ask again"
                ) from None
        log.info("published %s: copying", ", ".join(".".join(t) for t in missing))
        deadline = time.monotonic() + timeout
        with self._copied:
            for table in missing:
                self._copy_error.pop(table, None)
            self._wanted.update(missing)
            while True:
                failed = [self._copy_error[t] for t in missing if t in self._copy_error]
                if failed:
                    raise SourceError(failed[0])
                if all(self._in_mirror(t) for t in missing):
                    return
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping.is_set():
                    raise SourceError(
                        f"{', '.join('.'.join(t) for t in missing)} not copied into the mirror"
                        f" within {timeout:.0f} s; the replicator is behind or stopped: ask again"
                        " later",
                        sqlstate="57014",
                    )
                self._copied.wait(min(left, 1.0))

    def _in_mirror(self, table: tuple[str, str]) -> bool:
        found = self.mirror.tables.get(table)
        return found is not None and found.state in ("ready", "catchup")

    def copy_wanted(self) -> None:
        """Copy the tables :meth:`add_tables` asked for (the stream calls this when nothing
        is applied and uncommitted), then commit at the stream's position."""
        with self._copied:
            wanted = sorted(t for t in self._wanted if not self._in_mirror(t))
            self._wanted.clear()
        if not wanted:
            return
        position = self.mirror.position(self.settings.slot)
        try:
            self.mirror.begin()
            self._copy_while_streaming(wanted, in_steps=True)
            if position is not None:
                self.mirror.commit(self.settings.slot, position)
        except (psycopg.Error, SourceError) as exc:
            self.mirror.rollback()
            with self._copied:
                for table in wanted:
                    self._copy_error[table] = f"cannot copy {'.'.join(table)}: {first_line(exc)}"
                self._copied.notify_all()
            return
        with self._copied:
            self._copied.notify_all()

    @property
    def wants_copies(self) -> bool:
        return bool(self._wanted)

    # -- running -------------------------------------------------------------------------------

    def run(self) -> ReplicationStats:
        """Prepare, then stream until stopped (or caught up); reconnect when the source drops."""
        repl: ReplicationConnection | None
        repl, start = self.prepare()
        self.stats.prepared = True
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
                self.stats.connected = False
                self.stats.connection_error = first_line(exc)
                log.warning("%s; reconnecting in %.1fs", first_line(exc), delay)
            except MirrorOutOfMemory as exc:
                self._after_out_of_memory(exc)
                if self.stopping.is_set():
                    break
            finally:
                repl.close()
            repl, start = self._reconnect(delay)
        return self.stats

    def batch_limits(self) -> BatchLimits:
        """The limits a stream session batches by, as they stand now."""
        s = self.settings
        if self._memory_limit is None:
            self._memory_limit = self.mirror.memory_limit_bytes
        budget = s.batch_bytes or self._memory_limit // 8
        scale = self.batch_scale
        return BatchLimits(
            messages=max(1, int(s.batch_messages * scale)),
            catch_up_messages=max(1, int(s.catch_up_messages * scale)),
            bytes=max(1, int(budget * scale)),
        )

    def _after_out_of_memory(self, exc: MirrorOutOfMemory) -> None:
        """The mirror ran out of memory on a batch, and committed none of it: stream it again
        from the stored position in batches half as big, on the mirror opened afresh (DuckDB
        may be left unusable). Below ``MIN_BATCH_BYTES``, or on a mirror this replicator was
        handed and DuckDB gave up on, the error stands."""
        self.mirror.rollback()
        if self._owns_mirror:
            self.close_mirror()
        elif exc.invalidated:
            raise exc
        size = self.batch_limits().bytes
        if size <= MIN_BATCH_BYTES:
            raise MirrorOutOfMemory(f"{exc} even in batches of {size >> 10} KiB") from None
        self.batch_scale /= 2
        self.stats.memory_retries += 1
        log.warning("%s; streaming it again in batches of at most %d KiB", exc, size >> 11)

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
                log.warning("%s; retrying in %.1fs", first_line(exc), delay)
                continue
            position = self.mirror.position(self.settings.slot)
            assert position is not None
            self.stats.connected, self.stats.connection_error = True, None
            return repl, position
        return None, 0

    def stream(self, repl: ReplicationConnection, start: Lsn) -> None:
        """Stream from ``start`` until stopped; raise SourceConnectionLost if the link drops."""
        s = self.settings
        try:
            streaming = s.stream_large_transactions and repl.server_version() >= 140000
            timeout = repl.sender_timeout()
            repl.start(s.slot, start, s.publication, streaming=streaming)
        except SlotBusyError as exc:
            raise SourceConnectionLost(str(exc)) from None  # an old walsender is still exiting
        target = source.catch_up_target(self._catalog_conn()) if s.catch_up else None
        log.info("streaming from %s", format_lsn(start))
        # A quarter of the server's timeout leaves room for a thread slow to be scheduled.
        every = min(s.status_interval, timeout / 4) if timeout else s.status_interval
        session = StreamSession(self, repl, start, status_every=every, limits=self.batch_limits())
        session.loop(target)
