"""Metrics one can alert on, across a restart: every project's counters exist at 0 from the
start, the deployed model's scores are exported again, and the write-back's backfill counts."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, finished, one

ROWS = 3000
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(daemon: Daemon) -> Samples:
    """Every sample /metrics shows now, by name and labels."""
    url = f"http://127.0.0.1:{daemon.metrics_server.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@contextmanager
def running(source_dsn: str, mirror_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(
        DaemonSettings(source_dsn=source_dsn, mirror_path=mirror_path,
                       tables=["public.accounts"], port=0, metrics_port=0)
    )  # fmt: skip
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def deployed_scores(daemon: Daemon, project: str) -> dict[str, float]:
    model = daemon.deployed_models()[project]
    return {k: v for k, v in model.metrics.items() if not k.endswith("_time")}


def test_counters_scores_and_backfill_from_the_start_and_after_a_restart(
    source_dsn: str, mirror_path: Path
) -> None:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS))
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    train = "select pgml.train('{}', 'classification', 'public.accounts', '{}', 'linear')"
    with running(source_dsn, mirror_path) as daemon:
        assert finished(source_dsn, one(source_dsn, train.format("Churn", "churned")))[0] == "done"
        assert finished(source_dsn, one(source_dsn, train.format("Broken", "nope")))[0] == "failed"
        one(source_dsn, "select pgml.writeback('Churn')")
        count = "select count(*) from pgml_scores.churn"
        wait_for(lambda: one(source_dsn, "select to_regclass('pgml_scores.churn')") is not None
                 and one(source_dsn, count) == ROWS, timeout=60, what="the backfill")  # fmt: skip
        wait_for(lambda: value(samples(daemon), "pgml_sidecar_writeback_rows_total",
                               project="Churn") == ROWS, what="the backfill's rows")  # fmt: skip
        before = deployed_scores(daemon, "Churn")
        found = samples(daemon)
        for metric, score in before.items():
            assert value(found, "pgml_sidecar_model_score", project="Churn", metric=metric) == score

    with running(source_dsn, mirror_path) as daemon:
        found = samples(daemon)  # at once: before any training, scoring or sampling
        for project in ("Churn", "Broken"):  # Broken only ever failed: it is no registry project
            for status in ("successful", "failed"):
                assert value(found, "pgml_sidecar_training_runs_total", project=project,
                             status=status) == 0, (project, status)  # fmt: skip
            for name in ("predictions_total", "writeback_rows_total", "drift_events_total"):
                assert value(found, f"pgml_sidecar_{name}", project=project) is not None, name
        for metric, score in before.items():
            assert value(found, "pgml_sidecar_model_score", project="Churn", metric=metric) == score
        assert value(found, "pgml_sidecar_model_score", project="Broken", metric="f1") is None
        wait_for(lambda: value(samples(daemon), "pgml_sidecar_writeback_rows_total",
                               project="Churn") == ROWS, what="the rescore at start")  # fmt: skip

        # a model trained but not deployed leaves the deployed one's scores
        daemon.trainer.train("Churn", algorithm="random_forest", hyperparams={"n_estimators": 5},
                             automatic_deploy=False)  # fmt: skip
        found = samples(daemon)
        assert value(found, "pgml_sidecar_training_runs_total", project="Churn",
                     status="successful") == 1  # fmt: skip
        for metric, score in before.items():
            assert value(found, "pgml_sidecar_model_score", project="Churn", metric=metric) == score
        # deploying it exports its scores
        daemon.trainer.deploy("Churn", strategy="most_recent")
        after = deployed_scores(daemon, "Churn")
        assert after != before
        wait_for(lambda: all(
            value(samples(daemon), "pgml_sidecar_model_score", project="Churn", metric=m) == s
            for m, s in after.items()), what="the new deployment's scores")  # fmt: skip
        # the failure of a project that existed before the restart counts from 0
        assert finished(source_dsn, one(source_dsn, train.format("Churn", "nope")))[0] == "failed"
        assert value(samples(daemon), "pgml_sidecar_training_runs_total", project="Churn",
                     status="failed") == 1  # fmt: skip
        # the deployment rescored every row again: counted too
        wait_for(lambda: value(samples(daemon), "pgml_sidecar_writeback_rows_total",
                               project="Churn") == 2 * ROWS, what="the rescore")  # fmt: skip


def test_each_topics_dead_letters_start_at_zero(source_dsn: str, mirror_path: Path) -> None:
    execute(source_dsn, CREATE)
    daemon = Daemon(
        DaemonSettings(source_dsn=source_dsn, mirror_path=mirror_path, kafka="127.0.0.1:1",
                       topic_prefix="shop", tables=["public.accounts"], port=0, metrics_port=0)
    )  # fmt: skip
    try:
        text = daemon.metrics.exposition().decode()
    finally:
        daemon.stop()
    assert 'pgml_sidecar_dead_letters_total{topic="shop.public.accounts"} 0.0' in text
