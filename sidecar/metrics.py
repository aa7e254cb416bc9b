"""Prometheus metrics of the sidecar and the HTTP server for ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from mirror.errors import ConfigError, SidecarError
from sidecar import masking

__all__ = [
    "CHANGE_OPS",
    "PREDICTION_LATENCY_BUCKETS",
    "REPLICATION_LAG_ALERT_SECONDS",
    "RETAINED_WAL_ALERT_BYTES",
    "TRAINING_STATUSES",
    "Metrics",
    "MetricsServer",
]

log = logging.getLogger("pgml_sidecar.metrics")

NAMESPACE = "pgml_sidecar"

CHANGE_OPS = ("insert", "update", "delete", "truncate")
"""Values of the ``op`` label of ``pgml_sidecar_replication_changes_total``."""

TRAINING_STATUSES = ("successful", "failed")
"""Values of the ``status`` label of ``pgml_sidecar_training_runs_total`` (the registry's)."""

PREDICTION_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Seconds: from a one-row predict answered from a loaded model to a large batch."""

REPLICATION_LAG_ALERT_SECONDS = 60
"""Replication lag over which the PgmlSidecarReplicationLagHigh alert fires (after 5 minutes)
and ``status`` says degraded (deploy/prometheus/alerts.yml holds the same number)."""

RETAINED_WAL_ALERT_BYTES = 5 * 1024**3
"""WAL the slot may retain before PgmlSidecarRetainedWalHigh fires and ``status`` says
degraded."""


def _version() -> str:
    try:
        return metadata.version("pgml-sidecar")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """Every metric the sidecar exports, on a registry of its own.

    Counters with a fixed set of label values (``op``) start at zero for each value, so
    ``rate()`` sees the first change. Call `add_project` when a project becomes known (the
    daemon does at start for every project it knows), so its counters exist at zero before its
    first training, prediction or failure; `show_scores` when a deployment changes.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        ns = NAMESPACE

        self.build = Info(
            "build", "Version of the running pgml-sidecar.", namespace=ns, registry=reg
        )
        self.build.info({"version": _version()})

        self.replication_lag_bytes = Gauge(
            "replication_lag_bytes",
            "WAL bytes between the source's current position and the last position"
            " committed to the mirror.",
            namespace=ns,
            registry=reg,
        )
        self.replication_lag_seconds = Gauge(
            "replication_lag_seconds",
            "Seconds between the commit on the source of the last applied transaction and"
            " its apply to the mirror (0 when caught up).",
            namespace=ns,
            registry=reg,
        )
        self.replication_changes = Counter(
            "replication_changes",
            "Row changes applied to the mirror, by operation.",
            ["op"],
            namespace=ns,
            registry=reg,
        )
        for op in CHANGE_OPS:
            self.replication_changes.labels(op=op)
        self.slot_retained_wal_bytes = Gauge(
            "slot_retained_wal_bytes",
            "WAL the source keeps for the replication slot (pg_current_wal_lsn() minus the"
            " slot's restart_lsn).",
            namespace=ns,
            registry=reg,
        )
        self.kafka_lag_messages = Gauge(
            "kafka_lag_messages",
            "With the Debezium source: messages in the assigned partitions not yet in the mirror.",
            namespace=ns,
            registry=reg,
        )
        self.tables_without_replica_identity = Gauge(
            "tables_without_replica_identity",
            "Published tables without a replica identity: the source refuses the application's"
            " UPDATE and DELETE on them (/healthz lists them).",
            namespace=ns,
            registry=reg,
        )
        self.replicator_up = Gauge(
            "replicator_up",
            "1 while the replicator is connected and streaming, 0 otherwise.",
            namespace=ns,
            registry=reg,
        )

        self.training_runs = Counter(
            "training_runs",
            "Finished trainings, by project and status (successful or failed).",
            ["project", "status"],
            namespace=ns,
            registry=reg,
        )
        self.model_score = Gauge(
            "model_score",
            "Metrics of each project's deployed model (r2, f1, accuracy, ...).",
            ["project", "metric"],
            namespace=ns,
            registry=reg,
        )
        self.predictions = Counter(
            "predictions",
            "Rows scored, by project.",
            ["project"],
            namespace=ns,
            registry=reg,
        )
        self.prediction_latency = Histogram(
            "prediction_latency_seconds",
            "Time to score one request (one row or one batch).",
            namespace=ns,
            registry=reg,
            buckets=PREDICTION_LATENCY_BUCKETS,
        )
        self.writeback_lag_seconds = Gauge(
            "writeback_lag_seconds",
            "Seconds between a change's commit on the source and its score's commit there.",
            namespace=ns,
            registry=reg,
        )
        self.writeback_rows = Counter(
            "writeback_rows",
            "Scores written back to the source, by project.",
            ["project"],
            namespace=ns,
            registry=reg,
        )

        self.drift_score = Gauge(
            "drift_score",
            "Drift of a feature's distribution from the deployed model's training data.",
            ["project", "feature"],
            namespace=ns,
            registry=reg,
        )
        self.drift_events = Counter(
            "drift_events",
            "Times drift was detected for a project.",
            ["project"],
            namespace=ns,
            registry=reg,
        )
        self.progressive_score = Gauge(
            "progressive_score",
            "An online model's progressive metrics as it learns: each row predicted before it is"
            " learned, as River's progressive validation scores them.",
            ["project", "metric"],
            namespace=ns,
            registry=reg,
        )
        self.online_rows_learned = Gauge(
            "online_rows_learned",
            "Labelled rows an online model has learned, its training rows included.",
            ["project"],
            namespace=ns,
            registry=reg,
        )
        self.model_failed = Gauge(
            "model_failed",
            "1 for a deployed model quarantined because it failed (to load, learn, predict or"
            " be checkpointed), with the reason; it learns no more, the others go on.",
            ["project", "model_id", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.dead_letters = Counter(
            "dead_letters",
            "Messages set aside as unreadable, by source topic.",
            ["topic"],
            namespace=ns,
            registry=reg,
        )

        self.chroma_up = Gauge(
            "chroma_up",
            "1 while a Chroma collection's server (or directory) answers, by collection.",
            ["collection"],
            namespace=ns,
            registry=reg,
        )
        self.chroma_lag_seconds = Gauge(
            "chroma_lag_seconds",
            "Seconds a Chroma collection has been behind its mirrored table (0: equal).",
            ["collection"],
            namespace=ns,
            registry=reg,
        )
        self.chroma_lag_bytes = Gauge(
            "chroma_lag_bytes",
            "WAL bytes between the mirror's position and the one a Chroma collection applied.",
            ["collection"],
            namespace=ns,
            registry=reg,
        )
        self.chroma_records = Gauge(
            "chroma_records",
            "Records in a Chroma collection, as last counted.",
            ["collection"],
            namespace=ns,
            registry=reg,
        )
        self.chroma_drift_rows = Gauge(
            "chroma_drift_rows",
            "Records of a Chroma collection unlike its table at the last check (missing, extra"
            " or changed; -1: the counts differ, not yet verified).",
            ["collection"],
            namespace=ns,
            registry=reg,
        )

        self._scored: dict[str, set[str]] = {}
        """The ``metric`` labels of ``model_score`` shown for each project."""

        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)

    def add_project(self, project: str) -> None:
        """Create a project's counters at zero, so ``increase()`` sees their first step."""
        for status in TRAINING_STATUSES:
            self.training_runs.labels(project=project, status=status)
        self.predictions.labels(project=project)
        self.writeback_rows.labels(project=project)
        self.drift_events.labels(project=project)

    def show_scores(self, project: str, scores: Mapping[str, float]) -> None:
        """Export the metrics of ``project``'s deployed model as ``model_score``, dropping
        those of the model deployed before that this one lacks."""
        for metric in self._scored.get(project, set()) - set(scores):
            self.model_score.remove(project, metric)
        for metric, score in scores.items():
            self.model_score.labels(project=project, metric=metric).set(score)
        self._scored[project] = set(scores)

    def show_chroma(self, collections: Mapping[str, Mapping[str, Any]]) -> None:
        """Each Chroma collection's state, as ``ChromaSync.report`` gives it."""
        for name, c in collections.items():
            self.chroma_up.labels(collection=name).set(1 if c["connected"] else 0)
            self.chroma_lag_seconds.labels(collection=name).set(c["lag_seconds"])
            self.chroma_lag_bytes.labels(collection=name).set(c["lag_bytes"])
            if c["rows"] is not None:
                self.chroma_records.labels(collection=name).set(c["rows"])
            drift = c["drift"]["rows"] if c["drift"] else 0
            self.chroma_drift_rows.labels(collection=name).set(-1 if c["count_mismatch"] else drift)

    def exposition(self) -> bytes:
        """Return every metric in Prometheus' text format."""
        return generate_latest(self.registry)


HealthCheck = Callable[[], dict[str, Any]]
Action = Callable[[dict[str, str]], dict[str, Any]]
"""A POST route: called with the query's parameters, answers JSON (SidecarError: 400)."""


class MetricsServer:
    """/metrics and /healthz over HTTP, in a daemon thread."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        health: HealthCheck | None = None,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.health = health
        self.actions: dict[str, Action] = {}
        """POST routes by path (``/chroma/rebuild``)."""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen and serve in a daemon thread; return the bound port (port 0: a free one).

        An address that cannot be bound raises `ConfigError`.
        """
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        try:
            server = _Server((self.host, self.port), self.metrics, self.health)
            server.actions = self.actions
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc};"
                " set metrics_host and metrics_port to a free address"
            ) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="pgml-sidecar-metrics",
            daemon=True,
        )
        self._thread.start()
        self.port = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self.port

    def stop(self) -> None:
        """Stop serving and close the listening socket; a no-op when not started."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding what its handlers answer with."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], metrics: Metrics, health: HealthCheck | None
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.metrics = metrics
        self.health = health
        self.actions: dict[str, Action] = {}
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Answer GET /metrics and GET /healthz; 404 for anything else."""

    server: _Server
    server_version = "pgml-sidecar"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = _masked_labels(self.server.metrics.exposition())
            self._reply(HTTPStatus.OK, CONTENT_TYPE_PLAIN_0_0_4, body)
        elif path == "/healthz":
            status, body = self._health()
            self._reply(status, "application/json", body)
        else:
            self._reply(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        action = self.server.actions.get(path)
        if action is None:
            self._reply(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")
            return
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        try:
            status, answer = HTTPStatus.OK, action(params)
        except SidecarError as exc:
            status, answer = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        body = json.dumps(masking.mask_values(json.loads(json.dumps(answer, default=str))))
        self._reply(status, "application/json", body.encode() + b"\n")

    def _health(self) -> tuple[HTTPStatus, bytes]:
        try:
            health = self.server.health
            report = health() if health is not None else {"status": "ok"}
        except Exception as exc:
            log.warning("health check failed: %s", exc)
            report = {"status": "error", "error": str(exc)}
        status = HTTPStatus.OK if report.get("status") == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        report = masking.mask_values(json.loads(json.dumps(report, default=str)))
        return status, json.dumps(report).encode() + b"\n"

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


_LABEL_VALUE = re.compile(rb'="((?:[^"\\\n]|\\.)*)"')


def _masked_labels(exposition: bytes) -> bytes:
    """Prometheus' text format with every label value masked (names and numbers kept)."""

    def hide(match: re.Match[bytes]) -> bytes:
        escaped = match.group(1).decode()
        value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), escaped)
        hidden = masking.mask(value)
        if hidden == value:
            return match.group(0)
        again = hidden.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return b'="' + again.encode() + b'"'

    return _LABEL_VALUE.sub(hide, exposition)
