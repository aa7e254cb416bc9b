"""The daemon with the Debezium source: pgml.train() and pgml.writeback() requests reach it
through Debezium and Kafka, scores go back to the source, dead letters show in /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.fix_kafka import produce_raw
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, ROWS, _get, finished, one


def test_run_with_the_debezium_source(
    source_dsn: str, mirror_path: Path, debezium: Callable[..., Any]
) -> None:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS))
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    stack = debezium(source_dsn, ["public.accounts", "pgml.training_requests"], prefix="run")
    daemon = Daemon(
        DaemonSettings(
            source_dsn=source_dsn,
            mirror_path=mirror_path,
            tables=["public.accounts"],
            port=0,
            metrics_port=0,
            kafka=stack.bootstrap,
            topic_prefix=stack.topic_prefix,
            group_id="daemon-test",
        )
    )
    daemon.start()
    try:
        request = one(
            source_dsn,
            "select pgml.train('Churn', 'classification', 'public.accounts', 'churned',"
            " 'random_forest', '{\"n_estimators\": 20}')",
        )
        status, error, model_id = finished(source_dsn, request)
        assert (status, error) == ("done", None) and model_id == 1
        one(source_dsn, "select pgml.writeback('Churn')")
        count = "select count(*) from pgml_scores.churn"
        wait_for(lambda: one(source_dsn, "select to_regclass('pgml_scores.churn')") is not None
                 and one(source_dsn, count) == ROWS, timeout=60, what="the backfill")  # fmt: skip
        execute(
            source_dsn,
            FILL.format(lo=ROWS + 1, hi=ROWS + 50),
            "delete from accounts where id <= 10",
        )
        wait_for(lambda: one(source_dsn, count) == ROWS + 40, timeout=60, what="scores follow")

        topic = stack.topic("public.accounts")
        produce_raw(stack.bootstrap, topic, b"not json", b'{"id": 1}')
        port = daemon.metrics_server.port
        dead = f'pgml_sidecar_dead_letters_total{{topic="{topic}"}} 1.0'
        wait_for(lambda: dead in _get(port, "/metrics").decode(), what="the dead letter metric")
        body = _get(port, "/metrics")
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "pgml_sidecar_kafka_lag_messages" in body.decode()
        health = daemon.health()
        assert health["status"] == "ok", health
        assert health["kafka"]["dead_letters"] == 1
        assert health["kafka"]["partitions"] == sorted(f"{t}[0]" for t in stack.topics())
        status_command = [
            sys.executable, "-m", "sidecar.cli", "status", "--source", source_dsn,
            "--kafka", stack.bootstrap, "--topic-prefix", stack.topic_prefix,
            "--group-id", "daemon-test", "--metrics-port", str(port),
        ]  # fmt: skip
        done = subprocess.run(
            [*status_command, "--json"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert "slot" not in report and report["kafka"]["group_id"] == "daemon-test"
        assert report["daemon"]["kafka"]["dead_letters"] == 1
        shown = subprocess.run(status_command, capture_output=True, text=True, check=True).stdout
        assert f"kafka:   {stack.topic_prefix}.* on {stack.bootstrap}" in shown, shown
    finally:
        daemon.stop()
