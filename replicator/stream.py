"""The replication connection: slot commands, START_REPLICATION and COPY BOTH framing.

Only socket work lives here; what the frames mean is the decoder's and the stream session's.
"""

from __future__ import annotations

import contextlib
import re
import select
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import pq

from mirror.changes import Lsn, format_lsn, parse_lsn
from mirror.errors import SlotBusyError, SourceConnectionLost, SourceError, SourceSetupError
from replicator.source import connection_error, source_conninfo

_EPOCH_OFFSET_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
XLOG_DATA = ord("w")
KEEPALIVE = ord("k")
XLOG_HEADER = 25


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: Lsn
    reply_requested: bool


def parse_keepalive(frame: bytes | memoryview) -> Keepalive:
    wal_end, _time, reply = struct.unpack_from(">QqB", frame, 1)
    return Keepalive(wal_end, bool(reply))


def standby_status(written: Lsn, flushed: Lsn, *, reply: bool = False) -> bytes:
    """A Standby Status Update ('r') reporting positions to the server."""
    now = int(time.time() * 1_000_000) - _EPOCH_OFFSET_US
    return b"r" + struct.pack(">QQQqB", written, flushed, flushed, now, 1 if reply else 0)


_DURATION = re.compile(r"(\d+)\s*(ms|s|min|h|d)?")
_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """Seconds in a duration as SHOW prints it (``60s``, ``1min``, ``500ms``, ``0``)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        return None
    return int(match[1]) * _SECONDS[match[2] or "ms"]


def _message(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class ReplicationConnection:
    """A ``replication=database`` connection driven through libpq's COPY BOTH mode."""

    def __init__(self, dsn: str) -> None:
        try:
            self.conn = psycopg.connect(
                source_conninfo(dsn), replication="database", autocommit=True
            )
        except psycopg.Error as exc:
            text = _message(exc)
            if "replication" in text and ("permission" in text or "must be" in text):
                raise SourceSetupError(
                    f"the source refused a replication connection: {text}; grant it with"
                    " ALTER ROLE <user> WITH REPLICATION (on RDS: GRANT rds_replication TO <user>)"
                ) from None
            raise connection_error(exc, "cannot connect for replication") from None
        self.pgconn = self.conn.pgconn

    def _command(self, command: str) -> pq.abc.PGresult:
        result = self.pgconn.exec_(command.encode())
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            error = (result.error_message or b"").decode(errors="replace").strip()
            if "must be superuser or replication role" in error or "permission denied" in error:
                raise SourceSetupError(
                    f"{error}; grant it with ALTER ROLE <user> WITH REPLICATION"
                    " (on RDS: GRANT rds_replication TO <user>)"
                )
            raise SourceError(f"{command.split()[0]} failed: {error}")
        return result

    def create_slot(self, slot: str, *, temporary: bool = False) -> tuple[Lsn, str]:
        """Create a pgoutput slot, exporting its snapshot; return (consistent point, snapshot).

        The snapshot stays usable until the next command on this connection; a temporary slot
        goes when the connection closes.
        """
        kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
        result = self._command(f'CREATE_REPLICATION_SLOT "{slot}" {kind} pgoutput EXPORT_SNAPSHOT')
        lsn = parse_lsn((result.get_value(0, 1) or b"").decode())
        snapshot = (result.get_value(0, 2) or b"").decode()
        return lsn, snapshot

    def start(self, slot: str, lsn: Lsn, publication: str, *, streaming: bool) -> None:
        """Enter COPY BOTH: the server streams pgoutput messages from ``lsn`` on."""
        options = f"proto_version '{2 if streaming else 1}', publication_names '{publication}'"
        if streaming:
            options += ", streaming 'on'"
        command = f'START_REPLICATION SLOT "{slot}" LOGICAL {format_lsn(lsn)} ({options})'
        self.pgconn.send_query(command.encode())
        result = self.pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            error = "" if result is None else (result.error_message or b"").decode().strip()
            if "is active for PID" in error:
                raise SlotBusyError(
                    f"{error}: another pgml-sidecar (or another consumer) is streaming from slot"
                    f" {slot}; stop it, or give this one its own --slot"
                )
            if "does not exist" in error and "publication" in error:
                raise SourceSetupError(f"{error}; run without --publication to create it")
            raise SourceConnectionLost(f"START_REPLICATION failed: {error}")
        self.pgconn.nonblocking = 1

    def server_version(self) -> int:
        return int(self.pgconn.server_version)

    def sender_timeout(self) -> float | None:
        """The server's ``wal_sender_timeout`` for this connection in seconds (0: none), or
        None if it does not say; ask before START_REPLICATION."""
        result = self.pgconn.exec_(b"SHOW wal_sender_timeout")
        if result.status != pq.ExecStatus.TUPLES_OK or result.ntuples != 1:
            return None
        return parse_duration((result.get_value(0, 0) or b"").decode())

    def wait(self, timeout: float) -> None:
        """Block until the socket is readable or ``timeout`` seconds pass, then take input."""
        try:
            readable, _, _ = select.select([self.pgconn.socket], [], [], timeout)
            if readable:
                self.pgconn.consume_input()
        except (OSError, psycopg.OperationalError) as exc:
            raise SourceConnectionLost(f"replication connection lost: {_message(exc)}") from None

    def send(self, frame: bytes) -> None:
        try:
            self.pgconn.put_copy_data(frame)
            while self.pgconn.flush() == 1:
                select.select([], [self.pgconn.socket], [], 1.0)
        except (OSError, psycopg.OperationalError) as exc:
            raise SourceConnectionLost(f"replication connection lost: {_message(exc)}") from None

    def lost(self) -> SourceConnectionLost:
        """The error for a stream the server ended, with its message."""
        result = self.pgconn.get_result()
        error = "" if result is None else (result.error_message or b"").decode().strip()
        error = error or (self.pgconn.error_message or b"").decode().strip() or "stream ended"
        return SourceConnectionLost(f"replication stream ended: {error.splitlines()[0]}")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection may fail
            self.conn.close()


class StatusReporter:
    """Standby status updates: sent by the reader, and by a thread while the reader is away.

    A walsender ends a connection it has heard nothing from for ``wal_sender_timeout``. The
    reader reports between frames; while it is away from the connection (applying a batch,
    committing it, copying a table: seconds, more on a busy machine), a thread repeats its
    last report every ``interval`` seconds. Only one of them uses the connection at a time:
    the thread sends only while the reader is away, and the reader comes back only once a
    send under way has ended.
    """

    def __init__(self, repl: ReplicationConnection, position: Lsn, *, interval: float) -> None:
        self.repl = repl
        self.position = position
        """The position last reported (written and flushed alike)."""
        self.interval = interval
        self.last = time.monotonic()
        """When a report was last sent."""
        self._changed = threading.Condition()
        self._away = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def report(self, position: Lsn) -> None:
        """Send ``position`` as written and flushed (from the reader, when not away)."""
        self.repl.send(standby_status(position, position))
        self.position = position
        self.last = time.monotonic()

    @contextlib.contextmanager
    def away(self) -> Iterator[None]:
        """Leave the connection to the thread for the duration (nesting is fine)."""
        with self._changed:
            self._away += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._answer, name="pgml-sidecar-status", daemon=True
                )
                self._thread.start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._away -= 1

    def _answer(self) -> None:
        with self._changed:
            while not self._closed:
                wait = self.last + self.interval - time.monotonic() if self._away else None
                if wait is None or wait > 0:
                    self._changed.wait(wait)
                    continue
                try:
                    self.report(self.position)
                except SourceConnectionLost:
                    return  # the reader finds out at its next read

    def close(self) -> None:
        """Stop the thread (call it from the reader, not away)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
