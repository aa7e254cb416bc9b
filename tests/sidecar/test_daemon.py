"""The daemon end to end against a real source: pgml.train() and pgml.writeback() in SQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings, Part
from tests.replicator.mirror_check import execute, wait_for

ROWS = 2000
CREATE = (
    "create table accounts (id bigint primary key, age int not null, plan text,"
    " spend double precision, churned boolean)"
)
FILL = (
    "insert into accounts select i, 18 + i % 60, (array['free','pro','team'])[1 + i % 3],"
    " (i % 97) * 1.5, (i % 60) > 40 or i % 3 = 0 from generate_series({lo}, {hi}) i"
)


def one(dsn: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, params or None).fetchone()
    return None if row is None else row[0] if len(row) == 1 else row


def request_status(dsn: str, request_id: int) -> tuple[str, str | None, int | None]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select status, error, model_id from pgml.training_requests where id = %s",
            (request_id,),
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def finished(dsn: str, request_id: int) -> tuple[str, str | None, int | None]:
    wait_for(
        lambda: request_status(dsn, request_id)[0] in ("done", "failed"),
        timeout=120,
        what=f"request {request_id} to finish",
    )
    return request_status(dsn, request_id)


@pytest.fixture
def daemon(source_dsn: str, mirror_path: Path) -> Iterator[Daemon]:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS))
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    running = Daemon(
        DaemonSettings(
            source_dsn=source_dsn,
            mirror_path=mirror_path,
            tables=["public.accounts"],
            port=0,
            metrics_port=0,
        )
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_train_and_write_back_from_the_source(daemon: Daemon, source_dsn: str) -> None:
    first = one(
        source_dsn,
        "select pgml.train('Churn', 'classification', 'public.accounts', 'churned',"
        " 'random_forest', '{\"n_estimators\": 20}')",
    )
    status, error, model_id = finished(source_dsn, first)
    assert (status, error) == ("done", None) and model_id == 1

    bad = one(
        source_dsn,
        "select pgml.train('Broken', 'classification', 'public.accounts', 'nope')",
    )
    status, error, _ = finished(source_dsn, bad)
    assert status == "failed" and error is not None and "column 'nope' does not exist" in error

    one(source_dsn, "select pgml.writeback('Churn')")
    count = "select count(*) from pgml_scores.churn"
    wait_for(lambda: one(source_dsn, "select to_regclass('pgml_scores.churn')") is not None
             and one(source_dsn, count) == ROWS, timeout=60, what="the backfill")  # fmt: skip
    assert one(source_dsn, "select count(distinct model_id) from pgml_scores.churn") == 1

    # The write-back's connection is lost: it reconnects and goes on.
    execute(
        source_dsn,
        "select pg_terminate_backend(pid) from pg_stat_activity"
        " where application_name = 'pgml-sidecar write-back'",
    )
    # New, changed and deleted rows are reflected.
    execute(
        source_dsn,
        FILL.format(lo=ROWS + 1, hi=ROWS + 100),
        "update accounts set age = 77 where id <= 10",
        "delete from accounts where id between 11 and 20",
    )
    wait_for(lambda: one(source_dsn, count) == ROWS + 90, timeout=60, what="new and gone rows")
    assert one(source_dsn, "select count(*) from pgml_scores.churn where id between 11 and 20") == 0
    joined = one(
        source_dsn,
        "select count(*) from accounts a join pgml_scores.churn s using (id)"
        " where (s.prediction = 1) = a.churned",
    )
    assert joined > (ROWS + 90) * 0.9

    # A better model is deployed: every row is rescored with it.
    second = one(
        source_dsn,
        "select pgml.train('Churn', algorithm => 'hist_gradient_boosting')",
    )
    status, _, new_model = finished(source_dsn, second)
    assert status == "done"
    daemon.trainer.deploy(model_id=new_model)  # whether or not it scored better
    wait_for(
        lambda: one(source_dsn, "select count(*) from pgml_scores.churn where model_id = %s",
                    new_model) == ROWS + 90,
        timeout=60, what="the rescore",
    )  # fmt: skip
    health = daemon.health()
    assert health["status"] == "ok", health
    assert_metrics(daemon)
    # No loop: scores are not published, and each request trained once.
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        published = conn.execute(
            "select schemaname || '.' || tablename from pg_publication_tables"
            " where pubname = 'pgml_sidecar' order by 1"
        ).fetchall()
    assert published == [("pgml.training_requests",), ("public.accounts",)]
    assert len(daemon.trainer.registry.models(1)) == 2


def test_train_takes_postgresmls_arguments_and_says_what_it_left_out(
    daemon: Daemon, source_dsn: str
) -> None:
    request = one(
        source_dsn,
        "select pgml.train('Plans', 'classification', 'public.accounts', 'churned', 'linear',"
        " test_size => 0.2, test_sampling => 'last', automatic_deploy => false,"
        ' preprocess => \'{"plan": {"encode": "ordinal"}, "age": {"scale":'
        ' "min_max"}}\')',
    )
    status, error, model_id = finished(source_dsn, request)
    assert (status, error) == ("done", None) and model_id is not None
    notice = one(source_dsn, "select notice from pgml.training_requests where id = %s", request)
    assert notice == (
        "column 'id' left out of the features: the primary key: it names rows, it does not"
        ' describe them; to use it anyway, name it in preprocess, e.g. {"id": {"encode":'
        ' "native"}}'
    )
    record, model = daemon.trainer.model(model_id)
    assert record.preprocess == {"plan": {"encode": "ordinal"}, "age": {"scale": "min_max"}}
    assert record.notes["columns"]["plan"]["encode"] == "ordinal"
    assert record.notes["columns"]["age"]["scale"] == "min_max"
    chosen = record.notes["scale"]["chosen"]  # linear: standard or not, as validates better
    assert record.notes["columns"]["spend"]["scale"] == chosen in ("standard", "preserve")
    assert [c.name for c in model.preprocessor.columns] == ["age", "plan", "spend"]
    snapshot = daemon.trainer.registry.snapshot(record.snapshot_id)
    assert snapshot is not None
    assert (snapshot.test_size, snapshot.test_sampling) == (0.2, "last")
    assert daemon.trainer.registry.deployed(record.project_id) is None  # automatic_deploy false

    search = one(
        source_dsn,
        "select pgml.train('Plans', algorithm => 'ridge', search => 'grid',"
        " search_params => '{\"alpha\": [0.1, 10]}', search_args => '{\"cv\": 2}')",
    )
    status, error, model_id = finished(source_dsn, search)
    assert (status, error) == ("done", None) and model_id is not None
    searched, _ = daemon.trainer.model(model_id)
    assert (searched.search, searched.search_args) == ("grid", {"cv": 2})
    assert [r["params"] for r in searched.search_results] == [{"alpha": 0.1}, {"alpha": 10}]
    assert searched.preprocess == record.preprocess  # kept with the snapshot, as PostgresML
    shown = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "status", "--source", source_dsn,
         "--metrics-port", str(daemon.metrics_server.port)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"project: Plans: train done, model {model_id};" in shown  # and what is deployed
    assert "\n         notice: column 'id' left out of the features: the primary key" in shown


def assert_metrics(daemon: Daemon) -> None:
    """/metrics passes promtool and shows what happened; /healthz says ok."""
    port = daemon.metrics_server.port
    wait_for(lambda: b'op="insert"' in _get(port, "/metrics"), what="sampled metrics")
    body = _get(port, "/metrics")
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = body.decode()
    assert 'pgml_sidecar_training_runs_total{project="Churn",status="successful"} 2.0' in text
    assert 'pgml_sidecar_training_runs_total{project="Broken",status="failed"} 1.0' in text
    assert 'pgml_sidecar_model_score{metric="f1",project="Churn"}' in text
    assert "pgml_sidecar_writeback_rows_total" in text
    assert "pgml_sidecar_slot_retained_wal_bytes" in text
    assert json.loads(_get(port, "/healthz"))["status"] == "ok"


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return bytes(reply.read())


def test_a_crashed_part_is_restarted_and_reported(daemon: Daemon) -> None:
    runs: list[int] = []

    def flaky(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")
        stop.wait()

    part = Part("flaky", flaky)
    daemon.parts.append(part)
    daemon._launch(part)
    wait_for(lambda: len(runs) == 2 and part.running, timeout=10, what="the restart")
    health = daemon.health()
    assert health["parts"]["flaky"]["restarts"] == 1
    assert health["parts"]["flaky"]["last_error"] == "RuntimeError: boom"


def test_status_reports_slot_requests_and_health(daemon: Daemon, source_dsn: str) -> None:
    request = one(source_dsn, "select pgml.train('Broken', 'regression', 'public.accounts', 'x')")
    assert finished(source_dsn, request)[0] == "failed"
    wait_for(lambda: one(source_dsn, "select count(*) from pg_replication_slots") == 1,
             what="the slot")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "status", "--source", source_dsn,
         "--metrics-port", str(daemon.metrics_server.port), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["slot"]["name"] == "pgml_sidecar" and report["slot"]["lag_bytes"] >= 0
    assert report["daemon"]["status"] == "ok"
    assert report["projects"][0]["project"] == "Broken"
    assert "column 'x' does not exist" in report["projects"][0]["error"]
    text = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "status", "--source", source_dsn,
         "--metrics-port", str(daemon.metrics_server.port)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "project: Broken: train failed" in text and "daemon:  ok" in text
