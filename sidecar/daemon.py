"""The daemon: replicator, training worker, control requests, write-back, SQL endpoint, metrics.

Every part runs in a thread of this process (training in its worker process) around one mirror.
Data flows one way: the replicator commits batches to the mirror and hands the touched keys to
the control requests and the write-back, which never hold up the stream. A part that crashes is
logged and restarted with backoff; SIGTERM stops them all, the replicator committing what it
has applied, within seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from predictor.server import EndpointSettings, SqlEndpoint
from predictor.writeback import Writeback
from replicator.replicate import ReplicationSettings, Replicator
from sidecar import control
from sidecar.changes import Lsn
from sidecar.control import ControlRequests
from sidecar.mirror import Mirror, Touched
from trainer.train import Trainer, artifact_home

log = logging.getLogger("pgml_sidecar")

BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """Everything ``run`` needs; secrets come from the environment or files, never flags."""

    source_dsn: str
    mirror_path: Path
    tables: Sequence[str] = ()
    publication: str = "pgml_sidecar"
    slot: str = "pgml_sidecar"
    host: str = "127.0.0.1"
    port: int = 6433
    password: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    memory_limit: str = "1GB"


@dataclass
class Part:
    """A supervised thread: ``target(stop)`` runs until ``stop`` is set; a crash restarts it."""

    name: str
    target: Callable[[threading.Event], None]
    restarts: int = 0
    last_error: str | None = None
    thread: threading.Thread | None = None
    running: bool = False
    started_at: float = field(default_factory=time.monotonic)


class Daemon:
    """The parts of a running sidecar around one mirror."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.mirror = Mirror(settings.mirror_path, memory_limit=settings.memory_limit)
        self.trainer = Trainer(self.mirror.con, artifact_home(settings.mirror_path))
        self.writeback = Writeback(
            settings.source_dsn, self.mirror.con, self.trainer, watched=self.mirror.watched
        )
        self.control = ControlRequests(
            settings.source_dsn,
            self.mirror.con,
            self.trainer,
            writeback=self.writeback.enable,
        )
        self.mirror.watched.add(control.TABLE)
        self.mirror.on_commit = self._committed
        self.replicator = Replicator(self._replication_settings(), mirror=self.mirror)
        self.endpoint = SqlEndpoint(
            EndpointSettings(
                host=settings.host,
                port=settings.port,
                password=settings.password,
                tls_cert=settings.tls_cert,
                tls_key=settings.tls_key,
            ),
            self.mirror.con,
            self.trainer,
        )
        self.parts = [
            Part("replicator", self._replicate),
            Part("control", self.control.run),
            Part("writeback", self.writeback.run),
        ]

    def _replication_settings(self) -> ReplicationSettings:
        s = self.settings
        tables = list(s.tables)
        if _has_control_table(s.source_dsn) and "pgml.training_requests" not in tables:
            tables.append("pgml.training_requests")
        return ReplicationSettings(
            source_dsn=s.source_dsn,
            mirror_path=s.mirror_path,
            tables=tables,
            publication=s.publication,
            slot=s.slot,
            memory_limit=s.memory_limit,
        )

    def _committed(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        self.control.on_commit(lsn, touched)
        self.writeback.on_commit(lsn, touched)

    def _replicate(self, stop: threading.Event) -> None:
        self.replicator.stopping.clear()
        watcher = threading.Thread(target=self._relay_stop, args=(stop,), daemon=True)
        watcher.start()
        self.replicator.run()

    def _relay_stop(self, stop: threading.Event) -> None:
        stop.wait()
        self.replicator.stopping.set()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part; return at once."""
        self.trainer.worker.warm()
        self.endpoint.start()
        for part in self.parts:
            self._launch(part)

    def _launch(self, part: Part) -> None:
        part.thread = threading.Thread(target=self._supervise, args=(part,), name=part.name)
        part.thread.start()

    def _supervise(self, part: Part) -> None:
        while not self.stop_event.is_set():
            part.running = True
            part.started_at = time.monotonic()
            try:
                part.target(self.stop_event)
            except Exception as exc:
                part.last_error = f"{type(exc).__name__}: {exc}"
                log.error("%s stopped: %s", part.name, part.last_error)
            finally:
                part.running = False
            if self.stop_event.is_set():
                return
            delay = BACKOFF[min(part.restarts, len(BACKOFF) - 1)]
            part.restarts += 1
            log.warning("restarting %s in %.0f s (restart %d)", part.name, delay, part.restarts)
            self.stop_event.wait(delay)

    def stop(self) -> None:
        """Stop every part and close the mirror; the replicator commits what it applied."""
        self.stop_event.set()
        self.endpoint.stop()
        for part in self.parts:
            if part.thread is not None:
                part.thread.join(timeout=30)
        self.trainer.close()
        self.replicator.close()  # closes the mirror

    def run(self) -> None:
        """Start, wait for :meth:`stop` (from a signal handler), stop."""
        self.start()
        try:
            self.stop_event.wait()
        finally:
            self.stop()

    def health(self) -> dict[str, Any]:
        parts = {
            p.name: {"running": p.running, "restarts": p.restarts, "last_error": p.last_error}
            for p in self.parts
        }
        ok = all(p.running for p in self.parts)
        return {
            "status": "ok" if ok else "degraded",
            "parts": parts,
            "flushed_lsn": self.replicator.stats.flushed_lsn,
            "rows_applied": self.replicator.stats.rows_applied,
        }


def _has_control_table(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("select to_regclass('pgml.training_requests')").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] is not None
