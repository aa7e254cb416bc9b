"""kill -9 during online learning: after restarts, every change has been learned exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import duckdb
import psycopg

from sidecar.local_postgres import free_port
from tests.replicator.mirror_check import current_lsn, execute, slot_confirmed, wait_for
from tests.sidecar.test_online_learning import CREATE, insert

INITIAL = 1000
TRAINED = 1000  # the initial fit learns every row of the table


def start(dsn: str, mirror: Path, port: int, metrics: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "run", "--source", dsn,
             "--mirror", str(mirror), "--tables", "public.readings", "--port", str(port),
             "--metrics-port", str(metrics), "--checkpoint-rows", "300"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def health(metrics: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=5) as reply:
            return dict(json.loads(reply.read()))
    except OSError:
        return {}


def caught_up(dsn: str) -> None:
    target = current_lsn(dsn)
    wait_for(lambda: slot_confirmed(dsn) >= target, timeout=60, what="the mirror to catch up")


def rows_learned(mirror: Path) -> int:
    con = duckdb.connect(str(mirror), read_only=True)
    try:
        row = con.execute(
            "select rows_learned from pgml.progress order by id desc limit 1"
        ).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else TRAINED


def test_kill_9_during_online_learning(source_dsn: str, mirror_path: Path, tmp_path: Path):
    execute(source_dsn, CREATE)
    insert(source_dsn, 1, INITIAL, shifted=False, chunk=INITIAL)
    subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "init", "--source", source_dsn,
         "--tables", "public.readings"],
        check=True, capture_output=True,
    )  # fmt: skip
    port, metrics, log = free_port(), free_port(), tmp_path / "run.log"
    process = start(source_dsn, mirror_path, port, metrics, log)
    try:
        wait_for(lambda: health(metrics).get("status") == "ok", timeout=60, what="the daemon")
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=pgml") as conn:
            conn.execute(
                "select * from pgml.train('Stream', 'classification', 'public.readings', 'y',"
                " 'online_hoeffding_tree')"
            )
        wait_for(lambda: "Stream" in health(metrics).get("watching", []), what="the monitor")
        insert(source_dsn, INITIAL + 1, 3000, shifted=False, chunk=100)
        caught_up(source_dsn)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        insert(source_dsn, 3001, 4000, shifted=True, chunk=100)  # while the sidecar is down

        expected = TRAINED + 4000 - INITIAL
        learned = []
        for _ in range(3):  # each stop checkpoints what was learned; a restart replays the rest
            process = start(source_dsn, mirror_path, port, metrics, log)
            wait_for(lambda: health(metrics).get("status") == "ok", timeout=60, what="restart")
            caught_up(source_dsn)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, log.read_text()
            learned.append(rows_learned(mirror_path))
            if learned[-1] >= expected:
                break
        assert all(n <= expected for n in learned), learned  # never a change twice
        assert learned[-1] == expected, learned  # and none lost
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
