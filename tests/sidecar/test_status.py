"""``status`` for people and scripts: its exit code, the URL it tried, a failed training beside
the model still deployed, slots earlier runs left, and --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar import source_schema, status_report
from sidecar.daemon import Daemon, DaemonSettings, Part
from sidecar.local_postgres import free_port
from sidecar.metrics import REPLICATION_LAG_ALERT_SECONDS, RETAINED_WAL_ALERT_BYTES
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, finished, one


def status(dsn: str, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "status", "--source", dsn,
         "--metrics-port", str(port), *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def status_json(dsn: str, port: int) -> tuple[int, dict[str, Any]]:
    done = status(dsn, port, "--json")
    report = json.loads(done.stdout)
    assert report["exit_code"] == done.returncode, done.stdout
    return done.returncode, report


@pytest.fixture
def daemon(source_dsn: str, mirror_path: Path) -> Iterator[Daemon]:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=500))
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    running = Daemon(
        DaemonSettings(source_dsn=source_dsn, mirror_path=mirror_path,
                       tables=["public.accounts"], port=0, metrics_port=0)
    )  # fmt: skip
    running.start()
    try:
        yield running
    finally:
        running.stop()


def leave_slots(dsn: str) -> None:
    """An inactive slot an earlier run left, and one of another program."""
    execute(
        dsn,
        "select pg_create_logical_replication_slot('pgml_sidecar_old', 'pgoutput')",
        "select pg_create_logical_replication_slot('other_app', 'pgoutput')",
    )


def test_ok_then_a_failed_training_beside_the_deployed_model_then_degraded(
    daemon: Daemon, source_dsn: str
) -> None:
    port = daemon.metrics_server.port
    leave_slots(source_dsn)
    trained = one(source_dsn, "select pgml.train('Churn', 'classification', 'public.accounts',"
                              " 'churned', 'linear')")  # fmt: skip
    assert finished(source_dsn, trained)[0] == "done"
    failed = one(source_dsn, "select pgml.train('Churn', 'classification', 'public.accounts',"
                             " 'nope', 'linear')")  # fmt: skip
    assert finished(source_dsn, failed)[0] == "failed"
    wait_for(lambda: status_json(source_dsn, port)[0] == 0, timeout=60, what="status ok")

    code, report = status_json(source_dsn, port)
    assert report["status"] == "ok" and report["problems"] == []
    assert report["slot"]["name"] == "pgml_sidecar" and report["slot"]["active"] is True
    assert report["daemon"]["replication_lag_seconds"] < REPLICATION_LAG_ALERT_SECONDS
    (churn,) = report["projects"]
    assert (churn["project"], churn["status"]) == ("Churn", "failed")
    assert "column 'nope' does not exist" in churn["error"]
    assert churn["deployed"] == {"model_id": 1, "algorithm": "linear"}
    others = {slot["name"]: slot for slot in report["other_slots"]}
    assert set(others) == {"pgml_sidecar_old", "other_app"}
    assert others["pgml_sidecar_old"]["active"] is False
    assert others["pgml_sidecar_old"]["retained_wal_bytes"] >= 0

    text = status(source_dsn, port)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[-1] == "status:  ok"
    churn_line = next(line for line in lines if line.startswith("project: Churn:"))
    assert "train failed" in churn_line and "column 'nope' does not exist" in churn_line
    assert churn_line.endswith("; model 1 (linear) still deployed")
    old = "slot:    pgml_sidecar_old (another slot in this database) INACTIVE, retains "
    leftover = next(line for line in lines if line.startswith(old))
    assert leftover.endswith("of WAL; if nothing uses it: SELECT"
                             " pg_drop_replication_slot('pgml_sidecar_old')")  # fmt: skip

    def broken(stop: threading.Event) -> None:
        raise RuntimeError("cannot reach something")

    part = Part("broken", broken)
    daemon.parts.append(part)
    daemon._launch(part)
    wait_for(lambda: part.restarts >= 1, what="the part to fail")
    code, report = status_json(source_dsn, port)
    assert (code, report["status"]) == (1, "degraded")
    assert report["problems"] == ["parts not running: broken"]
    text = status(source_dsn, port)
    assert text.returncode == 1
    assert text.stdout.splitlines()[-1] == "status:  degraded: parts not running: broken"
    stopped = r"; broken not running \(restarts: \d+\): RuntimeError: cannot reach something"
    assert re.search(stopped, text.stdout), text.stdout


def test_down_says_which_url_it_tried(source_dsn: str) -> None:
    leave_slots(source_dsn)
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    code, report = status_json(source_dsn, port)
    assert (code, report["status"]) == (2, "down")
    assert report["daemon"]["url"] == url
    assert {slot["name"] for slot in report["other_slots"]} == {"pgml_sidecar_old", "other_app"}
    text = status(source_dsn, port)
    assert text.returncode == 2
    assert f"daemon:  unreachable at {url} (" in text.stdout
    assert text.stdout.splitlines()[-1].startswith(f"status:  down: no daemon answers at {url}:")
    assert "start pgml-sidecar run" in text.stdout


def test_a_source_that_does_not_answer_is_said_and_the_daemon_still_asked(
    daemon: Daemon,
) -> None:
    closed = f"host=127.0.0.1 port={free_port()} dbname=x user=x"
    done = status(closed, daemon.metrics_server.port, "--json")
    assert done.returncode == 1  # degraded: the daemon answers
    report = json.loads(done.stdout)
    assert report["problems"] == ["the source does not answer"]
    assert "Connection refused" in report["source_error"]
    assert done.stderr.startswith("error: cannot connect to the source database:")
    assert len(done.stderr.splitlines()) == 1


def report(**changes: Any) -> dict[str, Any]:
    healthy: dict[str, Any] = {
        "source": "host=db",
        "slot": {"name": "pgml_sidecar", "active": True, "lag_bytes": 0, "retained_wal_bytes": 0},
        "daemon": {"status": "ok", "parts": {"replicator": {"running": True}},
                   "replication_lag_seconds": 0.5},
    }  # fmt: skip
    for key, value in changes.items():
        healthy[key] = {**healthy[key], **value}
    return healthy


@pytest.mark.parametrize(
    ("changes", "code", "problem"),
    [
        ({}, 0, None),
        ({"slot": {"active": False}}, 1, "slot pgml_sidecar is not active"),
        ({"daemon": {"replication_lag_seconds": REPLICATION_LAG_ALERT_SECONDS + 1}}, 1,
         f"replication lag 61 s is over the alert's {REPLICATION_LAG_ALERT_SECONDS} s"),
        ({"daemon": {"replication_lag_seconds": REPLICATION_LAG_ALERT_SECONDS}}, 0, None),
        ({"slot": {"retained_wal_bytes": RETAINED_WAL_ALERT_BYTES + 1}}, 1,
         "slot pgml_sidecar retains 5.0 GiB of WAL, over the alert's 5.0 GiB"),
        ({"slot": {"missing": True}}, 1, "slot pgml_sidecar does not exist"),
        ({"daemon": {"tables_without_replica_identity": ["public.t"]}}, 1,
         "published without a replica identity: public.t"),
        ({"daemon": {"status": "unreachable", "url": "http://h:1/healthz"}}, 2,
         "no daemon answers at http://h:1/healthz: start pgml-sidecar run, or give the"
         " --metrics-host and --metrics-port it serves on"),
    ],
)  # fmt: skip
def test_the_verdict_follows_the_alerts_thresholds(
    changes: dict[str, Any], code: int, problem: str | None
) -> None:
    judged = report(**changes)
    assert status_report.judge(judged) == code == judged["exit_code"]
    assert judged["problems"] == ([problem] if problem else [])
    assert status_report.lines(judged)[-1].startswith(f"status:  {judged['status']}")


def test_help_explains_the_exit_codes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "status", "--help"],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    text = " ".join(done.stdout.split())
    for words in ("0 ok:", "1 degraded:", "2 down:", "3 status could not look"):
        assert words in text, text
    assert f"under {REPLICATION_LAG_ALERT_SECONDS} s" in text
