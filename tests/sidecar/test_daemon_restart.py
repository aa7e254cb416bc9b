"""kill -9 of ``pgml-sidecar run`` during write-back, then a restart: every score is right."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from sidecar.local_postgres import free_port
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, finished, one

ROWS = 150_000  # three write-back batches: the kill lands inside the backfill


def start(dsn: str, mirror: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "run", "--source", dsn,
             "--mirror", str(mirror), "--tables", "public.accounts", "--port", str(port),
             "--metrics-port", "0"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_kill_9_during_write_back(source_dsn: str, mirror_path: Path, tmp_path: Path) -> None:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS))
    init = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "init", "--source", source_dsn,
         "--tables", "public.accounts"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    port, log = free_port(), tmp_path / "run.log"
    process = start(source_dsn, mirror_path, port, log)
    try:
        request = one(
            source_dsn,
            "select pgml.train('Churn', 'classification', 'public.accounts', 'churned',"
            " 'random_forest', '{\"n_estimators\": 10}')",
        )
        assert finished(source_dsn, request)[0] == "done", log.read_text()
        one(source_dsn, "select pgml.writeback('Churn')")
        count = "select count(*) from pgml_scores.churn"
        # The backfill is one source transaction: kill while it is open.
        in_transaction = (
            "select count(*) from pg_stat_activity where application_name ="
            " 'pgml-sidecar write-back' and state in ('active', 'idle in transaction')"
        )
        wait_for(lambda: one(source_dsn, in_transaction) > 0, timeout=60,
                 what="the backfill to be under way")  # fmt: skip
        execute(source_dsn, "update accounts set age = age + 1 where id % 7 = 0",
                "delete from accounts where id % 11 = 0")  # fmt: skip
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert one(source_dsn, count) < ROWS  # killed before the backfill finished
        execute(source_dsn, "update accounts set spend = spend + 1 where id % 5 = 0")

        process = start(source_dsn, mirror_path, port, log)
        remaining = one(source_dsn, "select count(*) from accounts")
        wait_for(lambda: one(source_dsn, count) == remaining, timeout=120,
                 what="every row to be scored again")  # fmt: skip
        fresh = fresh_scores(port)
        wait_for(lambda: written_scores(source_dsn) == fresh, timeout=60,
                 what="the written scores to equal a fresh scoring")  # fmt: skip
        assert len(fresh) == remaining
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()


def fresh_scores(port: int) -> dict[int, float]:
    """Every row scored now by the deployed model, through the endpoint's score view."""
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=pgml"
    wait_for(lambda: _reachable(dsn), what="the SQL endpoint")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("select id, prediction from pgml_scores.churn").fetchall()
    return {int(i): float(p) for i, p in rows}


def written_scores(dsn: str) -> dict[int, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("select id, prediction from pgml_scores.churn").fetchall()
    return {int(i): float(p) for i, p in rows}


def _reachable(dsn: str) -> bool:
    try:
        psycopg.connect(dsn).close()
    except psycopg.OperationalError:
        return False
    return True
