"""Tests for the metrics, their HTTP server and the deployment files that use them."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirror.errors import ConfigError
from sidecar.metrics import (
    CHANGE_OPS,
    REPLICATION_LAG_ALERT_SECONDS,
    RETAINED_WAL_ALERT_BYTES,
    Metrics,
    MetricsServer,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

REQUIRED = [
    "pgml_sidecar_replication_lag_bytes",
    "pgml_sidecar_replication_lag_seconds",
    "pgml_sidecar_replication_changes_total",
    "pgml_sidecar_slot_retained_wal_bytes",
    "pgml_sidecar_replicator_up",
    "pgml_sidecar_training_runs_total",
    "pgml_sidecar_model_score",
    "pgml_sidecar_predictions_total",
    "pgml_sidecar_prediction_latency_seconds_bucket",
    "pgml_sidecar_prediction_latency_seconds_count",
    "pgml_sidecar_prediction_latency_seconds_sum",
    "pgml_sidecar_writeback_lag_seconds",
    "pgml_sidecar_writeback_rows_total",
    "pgml_sidecar_drift_score",
    "pgml_sidecar_drift_events_total",
    "pgml_sidecar_dead_letters_total",
    "pgml_sidecar_build_info",
    "process_cpu_seconds_total",
]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package"
            " (apt-get install prometheus; ./run test does it)",
            pytrace=False,
        )
    return path


def busy_metrics() -> Metrics:
    """Return a Metrics with a value on every metric and label."""
    m = Metrics()
    m.add_project("churn")
    m.replication_lag_bytes.set(123_456)
    m.replication_lag_seconds.set(0.25)
    for op in CHANGE_OPS:
        m.replication_changes.labels(op=op).inc(10)
    m.slot_retained_wal_bytes.set(64 * 1024**2)
    m.replicator_up.set(1)
    m.training_runs.labels(project="churn", status="successful").inc()
    m.training_runs.labels(project="churn", status="failed").inc()
    m.model_score.labels(project="churn", metric="f1").set(0.91)
    m.predictions.labels(project="churn").inc(2048)
    for seconds in (0.0002, 0.0008, 0.004, 0.3, 7.0):
        m.prediction_latency.observe(seconds)
    m.writeback_lag_seconds.set(0.12)
    m.writeback_rows.labels(project="churn").inc(2048)
    m.drift_score.labels(project="churn", feature="age").set(0.07)
    m.drift_events.labels(project="churn").inc()
    m.dead_letters.labels(topic="shop.public.orders").inc()
    return m


def sample_names(exposition: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def get(url: str) -> tuple[int, str, bytes]:
    """GET a URL; return status, content type and body, for errors too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read()


@pytest.fixture
def health_report() -> dict[str, Any]:
    return {"status": "ok", "replicator": "streaming", "lag_bytes": 123}


@pytest.fixture
def server(health_report: dict[str, Any]) -> Iterator[MetricsServer]:
    srv = MetricsServer(busy_metrics(), port=0, health=lambda: dict(health_report))
    srv.start()
    yield srv
    srv.stop()


def test_metrics_pass_promtool_over_http(server: MetricsServer, promtool: str) -> None:
    status, content_type, body = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == b"" and check.stderr.strip() == b"", check.stdout + check.stderr
    names = sample_names(body.decode())
    assert set(REQUIRED) <= names, set(REQUIRED) - names
    text = body.decode()
    for op in CHANGE_OPS:
        assert f'pgml_sidecar_replication_changes_total{{op="{op}"}} 10.0' in text
    assert 'pgml_sidecar_training_runs_total{project="churn",status="failed"} 1.0' in text
    assert 'pgml_sidecar_prediction_latency_seconds_bucket{le="0.0001"} 0.0' in text
    assert 'pgml_sidecar_prediction_latency_seconds_bucket{le="5.0"} 4.0' in text
    assert "pgml_sidecar_prediction_latency_seconds_count 5.0" in text


def test_exposition_is_per_instance() -> None:
    first, second = Metrics(), Metrics()
    first.replicator_up.set(1)
    assert b"pgml_sidecar_replicator_up 1.0" in first.exposition()
    assert b"pgml_sidecar_replicator_up 0.0" in second.exposition()


def test_new_project_counters_start_at_zero() -> None:
    m = Metrics()
    m.add_project("churn")
    text = m.exposition().decode()
    for status in ("successful", "failed"):
        line = f'pgml_sidecar_training_runs_total{{project="churn",status="{status}"}} 0.0'
        assert line in text
    assert 'pgml_sidecar_predictions_total{project="churn"} 0.0' in text


def test_model_scores_are_the_deployed_models() -> None:
    m = Metrics()
    m.show_scores("churn", {"f1": 0.9, "log_loss": 0.3})
    m.show_scores("churn", {"f1": 0.8, "accuracy": 0.85})  # another model deployed
    text = m.exposition().decode()
    assert 'pgml_sidecar_model_score{metric="f1",project="churn"} 0.8' in text
    assert 'pgml_sidecar_model_score{metric="accuracy",project="churn"} 0.85' in text
    assert "log_loss" not in text


def test_healthz_ok_and_not_ok(server: MetricsServer, health_report: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{server.port}/healthz"
    status, content_type, body = get(url)
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == health_report

    health_report.update(status="degraded", replicator="reconnecting")
    status, _, body = get(url)
    assert status == 503
    assert json.loads(body)["replicator"] == "reconnecting"


def test_healthz_when_the_check_raises() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("mirror closed")

    with MetricsServer(Metrics(), port=0, health=broken) as srv:
        status, _, body = get(f"http://127.0.0.1:{srv.port}/healthz")
    assert status == 503
    assert json.loads(body) == {"status": "error", "error": "mirror closed"}


def test_healthz_without_a_check_is_ok() -> None:
    with MetricsServer(Metrics(), port=0) as srv:
        status, _, body = get(f"http://127.0.0.1:{srv.port}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_unknown_path_is_404(server: MetricsServer) -> None:
    for path in ("/", "/metrics/x", "/health"):
        status, _, _ = get(f"http://127.0.0.1:{server.port}{path}")
        assert status == 404, path


def test_stop_frees_the_port() -> None:
    srv = MetricsServer(Metrics(), port=0)
    port = srv.start()
    assert port > 0
    assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    srv.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    again = MetricsServer(Metrics(), port=port)
    assert again.start() == port
    again.stop()
    srv.stop()  # a second stop does nothing


def test_busy_port_is_a_clear_error(server: MetricsServer) -> None:
    other = MetricsServer(Metrics(), port=server.port)
    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"):
        other.start()
    other.stop()


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60
    )


def test_alert_rules_pass_promtool(promtool: str) -> None:
    check = run_promtool(promtool, "check", "rules", "alerts.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    config = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_alert_rules_fire_as_tested(promtool: str) -> None:
    """alerts_test.yml: every alert, each from a restart of the sidecar."""
    tested = run_promtool(promtool, "test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_each_alert_is_tested_firing_after_a_restart() -> None:
    """A test of each alert whose series go stale (the old process stops) and come back, and
    which expects the alert to fire."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    restarted = {
        check["alertname"]
        for test in tests
        if any("stale" in series["values"].split() for series in test["input_series"])
        for check in test["alert_rule_test"]
        if check["exp_alerts"]
    }
    alerts = {rule["alert"] for rule in rules["rules"]}
    assert alerts <= restarted, alerts - restarted


def test_status_judges_by_the_alerts_thresholds() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]
    exprs = {rule["alert"]: rule["expr"] for rule in rules["rules"]}

    def threshold(alert: str) -> float:
        number = re.fullmatch(r"[a-z_]+ > ([0-9 *^]+)", exprs[alert].strip())
        assert number is not None, exprs[alert]
        return float(eval(number.group(1).replace("^", "**")))  # digits, * and ^ only

    assert threshold("PgmlSidecarReplicationLagHigh") == REPLICATION_LAG_ALERT_SECONDS
    assert threshold("PgmlSidecarRetainedWalHigh") == RETAINED_WAL_ALERT_BYTES


def test_alert_texts_say_where_to_look() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]
    described = {rule["alert"]: rule["annotations"]["description"] for rule in rules["rules"]}
    failed = described["PgmlSidecarTrainingFailed"]
    for where in ("leaves no row in pgml.models", "pgml-sidecar status",
                  "pgml.training_requests", "journalctl -u pgml-sidecar"):  # fmt: skip
        assert where in failed, where
    assert "pgml.drift_events" in described["PgmlSidecarDriftDetected"]
    assert "last line of its log" in described["PgmlSidecarAbsent"]
    assert "parts.replicator.last_error" in described["PgmlSidecarReplicatorDown"]
    assert "_pgml_sidecar.dead_letters" in described["PgmlSidecarDeadLetters"]


def test_alert_rules_cover_the_required_cases() -> None:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    assert [g["name"] for g in groups] == ["pgml-sidecar"]
    rules = groups[0]["rules"]
    exprs = " ".join(r["expr"] for r in rules)
    for needle in (
        "pgml_sidecar_slot_retained_wal_bytes",
        "pgml_sidecar_replication_lag_seconds",
        "pgml_sidecar_replicator_up == 0",
        "absent(pgml_sidecar_replicator_up)",
        'pgml_sidecar_training_runs_total{status="failed"}',
        "pgml_sidecar_writeback_lag_seconds",
        "pgml_sidecar_tables_without_replica_identity > 0",
    ):
        assert needle in exprs, needle
    for rule in rules:
        assert "for" in rule and rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_and_dashboard_use_only_defined_metrics() -> None:
    defined = sample_names(busy_metrics().exposition().decode())
    dashboard = json.loads((DEPLOY / "grafana" / "pgml-sidecar.json").read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["definition"] for v in variables.values() if v["type"] == "query"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for r in rules["groups"][0]["rules"]]
    used = {name for e in exprs for name in re.findall(r"\bpgml_sidecar_[a-z_]+", e)}
    assert used <= defined, used - defined
    for needle in ("replication_changes", "histogram_quantile(0.99", "drift_score"):
        assert any(needle in e for e in exprs), needle
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_grafana_provisioning_parses() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "pgml-sidecar.yml").read_text())
    assert providers["providers"][0]["options"]["path"].startswith("/var/lib/grafana/dashboards")


def test_systemd_unit_runs_the_daemon() -> None:
    unit = (DEPLOY / "systemd" / "pgml-sidecar.service").read_text()
    lines = set(unit.splitlines())
    for line in (
        "ExecStart=/opt/pgml-sidecar/venv/bin/pgml-sidecar run"
        " --config /etc/pgml-sidecar/sidecar.toml",
        "EnvironmentFile=/etc/pgml-sidecar/env",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/pgml-sidecar",
        "NoNewPrivileges=true",
        "User=pgml-sidecar",
    ):
        assert line in lines, line
