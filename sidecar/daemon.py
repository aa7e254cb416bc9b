"""The daemon: replicator, training worker, control requests, write-back, SQL endpoint, metrics.

Every part runs in a thread of this process (training in its worker process) around one mirror.
Data flows one way: the replicator commits batches to the mirror and hands the touched keys to
the control requests and the write-back, which never hold up the stream. A part that crashes is
logged and restarted with backoff; SIGTERM stops them all, the replicator committing what it
has applied, within seconds. What retrying cannot fix (a login refused, wal_level, a missing
table or privilege, bad settings) ends it at start instead, with one line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from mirror.change_log import Touched
from mirror.changes import Lsn, format_lsn
from mirror.errors import (
    ConfigError,
    MirrorError,
    SlotBusyError,
    SourceConnectionLost,
    SourceSetupError,
)
from mirror.registry import ModelRecord
from mirror.store import Mirror
from predictor.chroma_sync import ChromaSync, ChromaTarget
from predictor.server import EndpointSettings, SqlEndpoint, check_settings
from predictor.vector_index import VectorIndexes
from predictor.writeback import Writeback
from replicator import source
from replicator.kafka import KafkaReplicator, KafkaSettings
from replicator.replicate import ReplicationSettings, Replicator, identity_checked
from sidecar import config, control
from sidecar.control import ControlRequests
from sidecar.metrics import Metrics, MetricsServer
from trainer.drift import DriftEvent
from trainer.monitoring import Monitor
from trainer.retraining import Retrainer
from trainer.train import Trainer, artifact_home

log = logging.getLogger("pgml_sidecar")

BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
SAMPLE_SECONDS = 2.0
_IDLE_BYTES = 1 << 16
"""Slot lag below this is keepalive traffic, not changes waiting: lag seconds reads 0."""


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
    users_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    statement_timeout: str = "0"
    authentication_timeout: str = "10s"
    training_time_limit: str = "1h"
    """The longest a training may run ('30min', '2h'; 0: no limit); requests may ask for less."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    memory_limit: str = "1GB"
    checkpoint_rows: int = 100_000
    replica_identity_full: bool = False
    """Give mirrored tables without a replica identity FULL instead of refusing to start."""
    kafka: str | None = None
    """Kafka bootstrap servers: mirror from Debezium's topics instead of a replication slot."""
    topic_prefix: str | None = None
    group_id: str = "pgml-sidecar"
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    chroma: Sequence[ChromaTarget] = ()
    """Chroma collections kept equal to mirrored tables (``[[chroma]]`` sections)."""

    def endpoint(self) -> EndpointSettings:
        """The SQL endpoint's share of these settings."""
        return EndpointSettings(
            host=self.host,
            port=self.port,
            password=self.password,
            users_file=self.users_file,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            statement_timeout=self.statement_timeout,
            authentication_timeout=self.authentication_timeout,
        )


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
        self.fatal: Exception | None = None
        """What ended the daemon at start, if retrying could not fix it."""
        self._exported_generation = -1
        self.lag_seconds = 0.0
        """Replication lag as last sampled (``pgml_sidecar_replication_lag_seconds``)."""
        time_limit = config.training_time_limit(settings.training_time_limit)
        check_settings(settings.endpoint())  # settings first, then the source, then the mirror
        self._check_source()
        self.without_replica_identity: list[str] = []
        """Published tables whose UPDATE and DELETE fail in the source (sampled)."""
        self.mirror = Mirror(settings.mirror_path, memory_limit=settings.memory_limit)
        self.trainer = Trainer(
            self.mirror.con, artifact_home(settings.mirror_path), time_limit=time_limit
        )
        self.writeback = Writeback(settings.source_dsn, self.mirror.con, self.trainer)
        self.control = ControlRequests(
            settings.source_dsn,
            self.mirror.con,
            self.trainer,
            writeback=self.writeback.enable,
        )
        control_tables = {control.TABLE}
        self.retrainer = Retrainer(self.trainer)
        self.monitor = Monitor(
            self.mirror.con,
            self.trainer,
            mirror=self.mirror,
            on_drift=self._drifted,
            checkpoint_rows=settings.checkpoint_rows,
        )
        self.vector_indexes = VectorIndexes(self.mirror, artifact_home(settings.mirror_path))
        self.mirror.watched = [
            control_tables,
            self.writeback.watched,
            self.monitor.watched,
            self.vector_indexes.watched,
        ]
        self.chroma = ChromaSync(self.mirror, list(settings.chroma)) if settings.chroma else None
        self.mirror.holds.append(self.monitor.held)
        if self.chroma is not None:  # a derived copy that replays the change log
            self.mirror.watched.append(self.chroma.watched)
            self.mirror.logs.append(self.chroma.watched)
            self.mirror.holds.append(self.chroma.held)
        self.trainer.before_snapshot = self.monitor.expect
        # retraining on drift and pgml.deploy's best_recent_score judge on the rows it sees
        self.retrainer.recent_rows = self.trainer.recent_rows = self.monitor.recent_rows
        self.mirror.on_commit = self._committed
        self.replicator: Replicator | KafkaReplicator = self._replicator()
        if isinstance(self.replicator, Replicator):  # views' base tables, published as asked
            self.control.add_tables = self.replicator.add_tables
        self.endpoint = SqlEndpoint(
            settings.endpoint(),
            self.mirror.con,
            self.trainer,
            source_dsn=settings.source_dsn,  # each session reads what its source role may
            vector_indexes=self.vector_indexes,
        )
        self.metrics = Metrics()
        self.metrics_server = MetricsServer(
            self.metrics,
            host=settings.metrics_host,
            port=settings.metrics_port,
            health=self.health,
        )
        self._wire_metrics()
        self.parts = [
            Part("replicator", self._replicate),
            Part("control", self.control.run),
            Part("writeback", self.writeback.run),
            Part("monitor", self.monitor.run),
            Part("vector indexes", self.vector_indexes.run),
            Part("retrainer", self.retrainer.run),
            Part("sampler", self._sample),
        ]
        if self.chroma is not None:
            self.parts.append(Part("chroma", self.chroma.run))
            self.metrics_server.actions["/chroma/rebuild"] = self._chroma_request("rebuild")
            self.metrics_server.actions["/chroma/verify"] = self._chroma_request("verify")

    def _chroma_request(self, kind: str) -> Callable[[dict[str, str]], dict[str, Any]]:
        def carry_out(query: dict[str, str]) -> dict[str, Any]:
            assert self.chroma is not None
            return self.chroma.ask(kind, query.get("collection") or None)

        return carry_out

    def _wire_metrics(self) -> None:
        m = self.metrics

        def trained(project: str, status: str, metrics: dict[str, float]) -> None:
            m.add_project(project)
            m.training_runs.labels(project=project, status=status).inc()
            self._export_projects()  # the deployed model's scores, whether or not it is new

        def scored(key: str, rows: int, seconds: float) -> None:
            m.predictions.labels(project=key).inc(rows)
            m.prediction_latency.observe(seconds)

        def written(project: str, rows: int, lag: float | None) -> None:
            m.writeback_rows.labels(project=project).inc(rows)
            if lag is not None:  # None: every row scored again, no change to measure from
                m.writeback_lag_seconds.set(lag)

        def progressed(project: str, model_id: int, rows: int, progressive: dict) -> None:
            m.online_rows_learned.labels(project=project).set(rows)
            for name, value in progressive.items():
                m.progressive_score.labels(project=project, metric=name).set(value)

        def failed(project: str, model_id: int, reason: str) -> None:
            m.model_failed.labels(project=project, model_id=str(model_id), reason=reason).set(1)

        self.trainer.on_trained = trained
        self.endpoint.scorer.on_scored = scored
        self.writeback.on_written = written
        self.monitor.on_progress = progressed
        self.monitor.on_failed = failed
        if isinstance(self.replicator, KafkaReplicator):  # each topic's dead letters from 0
            for topic in sorted(self.replicator.topics):
                m.dead_letters.labels(topic=topic)

    def _export_projects(self) -> None:
        """Every project known, in the registry or in a request, with its counters at zero
        until they count; each deployed model's scores as ``model_score``."""
        generation = self.trainer.generation
        names = {p.name for p in self.trainer.registry.projects()} | self._requested_projects()
        for name in sorted(names):
            self.metrics.add_project(name)
        for name, model in self.deployed_models().items():
            self.metrics.show_scores(
                name, {k: v for k, v in model.metrics.items() if not k.endswith("_time")}
            )
        self._exported_generation = generation

    def _requested_projects(self) -> set[str]:
        """The projects named in the mirrored control table (a project whose trainings all
        failed is in no registry)."""
        cursor = self.mirror.con.cursor()
        try:
            rows = cursor.execute(
                "select distinct project_name from pgml.training_requests"
                " where project_name is not null"  # pgml.deploy(model_id) names none
            ).fetchall()
        except duckdb.CatalogException:  # not mirrored (yet)
            return set()
        finally:
            cursor.close()
        return {r[0] for r in rows}

    def _sample(self, stop: threading.Event) -> None:
        """Every few seconds: replication lag (the slot's, or Kafka's), changes applied,
        dead letters, liveness, drift scores."""
        m = self.metrics
        seen = dict(self.mirror.changes_applied)
        dead_seen: dict[str, int] = {}
        conn: psycopg.Connection | None = None
        try:
            while not stop.wait(SAMPLE_SECONDS):
                if self._exported_generation != self.trainer.generation:
                    self._export_projects()  # a deployment by the endpoint or a retrain
                replicator = self.replicator
                if isinstance(replicator, KafkaReplicator):
                    behind = replicator.lag_messages > 0
                    m.kafka_lag_messages.set(replicator.lag_messages)
                    for topic, count in replicator.stats.dead_letters.items():
                        m.dead_letters.labels(topic=topic).inc(count - dead_seen.get(topic, 0))
                        dead_seen[topic] = count
                    _, conn = self._sample_source(conn)  # the tables' replica identity
                else:
                    behind, conn = self._sample_source(conn)
                last = replicator.stats.last_commit_time
                self.lag_seconds = max(time.time() - last, 0.0) if behind and last else 0.0
                m.replication_lag_seconds.set(self.lag_seconds)
                applied = dict(self.mirror.changes_applied)
                for op, count in applied.items():
                    if count > seen.get(op, 0):
                        m.replication_changes.labels(op=op).inc(count - seen.get(op, 0))
                seen = applied
                connected = getattr(replicator.stats, "connected", True)
                m.replicator_up.set(1 if self.parts[0].running and connected else 0)
                if self.chroma is not None:
                    m.show_chroma(self.chroma.report())
                for watch in list(self.monitor.watches.values()):
                    scores = watch.features.scores if watch.features is not None else {}
                    for feature, score in scores.items():
                        if score == score:  # NaN until the window holds enough rows
                            m.drift_score.labels(project=watch.project, feature=feature).set(score)
        finally:
            if conn is not None:
                conn.close()

    def _sample_source(
        self, conn: psycopg.Connection | None
    ) -> tuple[bool, psycopg.Connection | None]:
        """The slot's lag (none with the Debezium source) and the tables' replica identity
        from the source; whether changes are waiting, and the connection to use next time
        (None: the source did not answer, and the lag is counted on as the source's silence
        goes on)."""
        try:
            if conn is None or conn.closed or conn.broken:
                conn = psycopg.connect(self.settings.source_dsn, autocommit=True, connect_timeout=5)
            behind = False if self.settings.kafka else self._sample_slot(conn)
            self._sample_replica_identity(conn)
            return behind, conn
        except psycopg.Error as exc:
            log.debug("metrics: the source does not answer: %s", exc)
            if conn is not None:
                conn.close()
            return True, None

    def _sample_slot(self, conn: psycopg.Connection) -> bool:
        """Record the slot's lag and retained WAL; whether changes are waiting."""
        m = self.metrics
        row = conn.execute(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
            " from pg_replication_slots where slot_name = %s",
            (self.settings.slot,),
        ).fetchone()
        if row is None:
            return False
        lag = max(int(row[0] or 0), 0)
        m.replication_lag_bytes.set(lag)
        m.slot_retained_wal_bytes.set(max(int(row[1] or 0), 0))
        return lag > _IDLE_BYTES

    def _check_source(self) -> None:
        """Raise, before anything starts (the mirror file included), what about the source
        retrying cannot fix, as the one line ``replicate`` prints for it: a login refused,
        wal_level, a missing table or one without a replica identity, a role without
        REPLICATION. A source that does not answer yet is only logged: the parts retry it."""
        try:
            if self.settings.kafka:  # Debezium reads the source; the write-back logs in to it
                with source.connect(self.settings.source_dsn) as conn:
                    self._check_debezium_tables(conn)
                return
            checker = Replicator(self._replication_settings())
            try:
                checker.check()
            finally:
                checker.close()
        except SourceConnectionLost as exc:
            log.warning("%s; starting anyway, and retrying with backoff", exc)

    def _check_debezium_tables(self, conn: psycopg.Connection) -> None:
        """With the Debezium source: refuse a mirrored table without a replica identity that
        no publication has yet (Debezium's publication of it would make the application's
        UPDATE and DELETE on it fail), or give it FULL with ``replica_identity_full``; one
        already published is reported, as with a slot of the sidecar's own."""
        tables = source.existing_tables(conn, self._mirrored_tables())
        checked = identity_checked(
            conn,
            source.publications_of(conn, tables),
            tables,
            set_full=self.settings.replica_identity_full,
        )
        if checked.published:
            log.warning("%s", source.replica_identity_advice(checked.published, published=True))

    def _mirrored_tables(self) -> list[str]:
        tables = list(self.settings.tables)
        if _has_control_table(self.settings.source_dsn) and "pgml.training_requests" not in tables:
            tables.append("pgml.training_requests")
        return tables

    def _replication_settings(self) -> ReplicationSettings:
        s = self.settings
        return ReplicationSettings(
            source_dsn=s.source_dsn,
            mirror_path=s.mirror_path,
            tables=self._mirrored_tables(),
            publication=s.publication,
            slot=s.slot,
            memory_limit=s.memory_limit,
            replica_identity_full=s.replica_identity_full,
        )

    def _sample_replica_identity(self, conn: psycopg.Connection) -> None:
        """Record the published tables whose UPDATE and DELETE the source now refuses.

        With the Debezium source, the sidecar has no publication: the mirrored tables are
        sampled, and every table of each publication that has one of them (Debezium's among
        them, whatever its name).
        """
        if isinstance(self.replicator, KafkaReplicator):
            tables = source.existing_tables(conn, self.replicator.settings.tables)
            plan = source.replica_identity_plan(conn, source.publications_of(conn, tables), tables)
            missing, unpublished = plan.to_fix(), {m.name for m in plan.new}
        else:
            missing = source.published_without_replica_identity(conn, self.settings.publication)
            unpublished = set()
        names = [m.name for m in missing]
        new = [m for m in missing if m.name not in self.without_replica_identity]
        for published in (True, False):
            if said := [m for m in new if (m.name not in unpublished) == published]:
                log.error("%s", source.replica_identity_advice(said, published=published))
        self.without_replica_identity = names
        self.metrics.tables_without_replica_identity.set(len(names))

    def _replicator(self) -> Replicator | KafkaReplicator:
        s = self.settings
        if s.kafka:
            tables = self._mirrored_tables()
            if not s.topic_prefix:
                raise ConfigError("kafka needs topic_prefix: the Debezium connector's topic.prefix")
            return KafkaReplicator(
                KafkaSettings(
                    bootstrap=s.kafka,
                    topic_prefix=s.topic_prefix,
                    mirror_path=s.mirror_path,
                    tables=tables,
                    group_id=s.group_id,
                    memory_limit=s.memory_limit,
                    consumer_config=s.kafka_config,
                ),
                mirror=self.mirror,
            )
        return Replicator(self._replication_settings(), mirror=self.mirror)

    def _committed(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        self.control.on_commit(lsn, touched)
        self.writeback.on_commit(lsn, touched)
        self.monitor.on_commit(lsn, touched)
        self.vector_indexes.on_commit(lsn, touched)
        if self.chroma is not None:
            self.chroma.on_commit(lsn, touched)

    def _drifted(self, project: str, model_id: int, event: DriftEvent) -> None:
        """Count a drift, copy it to the source's pgml.drift_events, maybe retrain."""
        self.metrics.drift_events.labels(project=project).inc()
        if event.feature is not None:
            self.metrics.drift_score.labels(project=project, feature=event.feature).set(
                event.statistic
            )
        try:
            with psycopg.connect(self.settings.source_dsn, autocommit=True) as conn:
                columns = {
                    name
                    for (name,) in conn.execute(
                        "select attname from pg_attribute where attrelid ="
                        " to_regclass('pgml.drift_events') and attnum > 0 and not attisdropped"
                    )
                }
                if columns:
                    where = {"lsn": format_lsn(event.lsn) if event.lsn else None,
                             "rows_since_deployment": event.rows}  # fmt: skip
                    kept = {k: v for k, v in where.items() if k in columns}  # schema version 2
                    names = ", ".join(["project_name", "model_id", "detector", "feature",
                                       "statistic", "threshold", *kept])  # fmt: skip
                    conn.execute(
                        f"insert into pgml.drift_events ({names})"  # names from this code
                        f" values ({', '.join(['%s'] * (6 + len(kept)))})",
                        (project, model_id, event.detector, event.feature,
                         float(event.statistic), float(event.threshold), *kept.values()),
                    )  # fmt: skip
        except psycopg.Error as exc:
            log.warning("cannot copy a drift event to the source: %s", exc)
        self.retrainer.drifted(project, model_id, event)

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
        self.monitor.prepare()
        self.vector_indexes.prepare()  # graphs loaded and caught up before the stream starts
        if self.chroma is not None:
            self.chroma.prepare()  # before the replicator commits anything
        # set up: lock DuckDB before the first client connects (only the artifacts are files)
        self.mirror.lock_down(allowed_directories=[self.trainer.home])
        self.endpoint.start()
        self._export_projects()  # before the first scrape
        self.metrics_server.start()
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
                if self._cannot_start(part, exc):
                    self.fatal = exc
                    self.stop_event.set()  # run() stops everything, then raises it
                    return
                log.error("%s stopped: %s", part.name, part.last_error)
            finally:
                part.running = False
            if self.stop_event.is_set():
                return
            delay = BACKOFF[min(part.restarts, len(BACKOFF) - 1)]
            part.restarts += 1
            log.warning("restarting %s in %.0f s (restart %d)", part.name, delay, part.restarts)
            self.stop_event.wait(delay)

    def _cannot_start(self, part: Part, exc: Exception) -> bool:
        """Whether ``exc`` ends the daemon: the replicator's, before its start got through,
        and of a kind that retrying cannot fix."""
        return (
            part.name == "replicator"
            and not self.replicator.stats.prepared
            and isinstance(exc, CANNOT_HEAL)
        )

    def stop(self) -> None:
        """Stop every part and close the mirror; the replicator commits what it applied."""
        self.stop_event.set()
        self.endpoint.stop()
        self.metrics_server.stop()
        self.trainer.worker.close()  # its own worker: a fit in flight is abandoned, not awaited
        for part in self.parts:
            if part.thread is not None:
                part.thread.join(timeout=30)
        deadline = time.monotonic() + 5
        while self.endpoint.sessions and time.monotonic() < deadline:  # out of DuckDB first
            time.sleep(0.05)
        self.monitor.close()
        self.trainer.close()
        self.replicator.close()  # closes the mirror

    def run(self) -> None:
        """Start, wait for :meth:`stop` (from a signal handler), stop.

        Raise the error that ended it when the replicator could not start for a reason
        retrying cannot fix (`CANNOT_HEAL`).
        """
        self.start()
        try:
            self.stop_event.wait()
        finally:
            self.stop()
        if self.fatal is not None:
            raise self.fatal

    def health(self) -> dict[str, Any]:
        parts = {
            p.name: {"running": p.running, "restarts": p.restarts, "last_error": p.last_error}
            for p in self.parts
        }
        stats = self.replicator.stats
        if not getattr(stats, "connected", True):  # running, but the source is out of reach
            parts[self.parts[0].name].update(connected=False, last_error=stats.connection_error)
        ok = all(p.running for p in self.parts) and getattr(stats, "connected", True)
        health: dict[str, Any] = {
            "status": "ok" if ok else "degraded",
            "parts": parts,
            "watching": sorted(self.monitor.watches),
            "failed": {
                project: f"model {model_id}: {reason}"
                for model_id, (project, reason) in sorted(self.monitor.failed.items())
            },
            "flushed_lsn": self.replicator.stats.flushed_lsn,
            "rows_applied": self.replicator.stats.rows_applied,
            "tables_without_replica_identity": list(self.without_replica_identity),
        }
        if isinstance(self.replicator, KafkaReplicator):
            health["kafka"] = {
                "partitions": sorted(f"{t}[{p}]" for t, p in self.replicator.assignment),
                "lag_messages": self.replicator.lag_messages,
                "dead_letters": sum(self.replicator.stats.dead_letters.values()),
            }
        health["replication_lag_seconds"] = round(self.lag_seconds, 3)
        if self.chroma is not None:
            health["chroma"] = self.chroma.report()
        health["deployed"] = {
            name: {"model_id": model.id, "algorithm": model.algorithm}
            for name, model in self.deployed_models().items()
        }
        return health

    def deployed_models(self) -> dict[str, ModelRecord]:
        """Each project's deployed model, by project name (projects without one left out)."""
        registry = self.trainer.registry
        found = {}
        for project in registry.projects():
            model = registry.deployed(project.id)
            if model is not None:
                found[project.name] = model
        return found


CANNOT_HEAL = (
    SourceSetupError,
    SlotBusyError,
    ConfigError,
    MirrorError,
    psycopg.errors.InsufficientPrivilege,
)
"""Errors retrying cannot fix: raised by the replicator before its start got through, they
end ``run`` (see `Daemon._check_source`); later they are retried with backoff like any other."""


def _has_control_table(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("select to_regclass('pgml.training_requests')").fetchone()
    except psycopg.Error:
        return False
    return row is not None and row[0] is not None
