"""kill -9 of ``run`` while it keeps a vector index: after a restart the index equals the table."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict

from mirror.store import Mirror
from predictor.vector_index import VectorIndexes
from sidecar.local_postgres import free_port
from tests.replicator.mirror_check import current_lsn, execute, slot_confirmed, wait_for
from tests.sidecar.test_online_restart import health
from tests.vectors.corpus import DOCS, copy_docs, embeddings, vector_text
from trainer.train import artifact_home

ROWS = 3000


def start(dsn: str, mirror: Path, port: int, metrics: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "run", "--source", dsn,
             "--mirror", str(mirror), "--tables", "public.docs", "--port", str(port),
             "--metrics-port", str(metrics)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def caught_up(dsn: str) -> None:
    target = current_lsn(dsn)
    wait_for(lambda: slot_confirmed(dsn) >= target, timeout=60, what="the mirror to catch up")


def change(dsn: str, rng: np.random.Generator, first: int) -> None:
    """Updates, deletes, NULLs and inserts, a transaction each."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(first, first + 200, 3):
            moved = embeddings(rng, 1)[0]
            conn.execute("update docs set embedding = %s where id = %s", (vector_text(moved), i))
        conn.execute("delete from docs where id between %s and %s", (first + 300, first + 340))
        conn.execute("update docs set embedding = null where id = %s", (first + 400,))
        conn.execute("update docs set id = id + 100000 where id = %s", (first + 401,))
        for i, vector in enumerate(embeddings(rng, 50)):
            conn.execute(
                "insert into docs values (%s, %s, 'new', 0, 0)",
                (ROWS + first + i, vector_text(vector)),
            )


def mirrored(port: int, user: str) -> bool:
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user={user} dbname=pgml") as conn:
            row = conn.execute("select count(*) from docs").fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        return False  # not mirrored yet, or the endpoint's privileges not read since
    return row is not None and row[0] == ROWS


def nearest(port: int, user: str, query: str) -> int:
    with psycopg.connect(f"host=127.0.0.1 port={port} user={user} dbname=pgml") as conn:
        row = conn.execute(
            "select id from docs order by embedding <-> %s limit 1", (query,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_kill_9_leaves_the_index_equal_to_the_table(
    pgvector_dsn: str, mirror_path: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(9)
    execute(pgvector_dsn, DOCS)
    copy_docs(pgvector_dsn, range(1, ROWS + 1), embeddings(rng, ROWS))
    subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "init", "--source", pgvector_dsn,
         "--tables", "public.docs"],
        check=True, capture_output=True,
    )  # fmt: skip
    user = str(conninfo_to_dict(pgvector_dsn)["user"])
    files = artifact_home(mirror_path) / "vector_indexes"
    port, metrics, log = free_port(), free_port(), tmp_path / "run.log"
    process = start(pgvector_dsn, mirror_path, port, metrics, log)
    try:
        wait_for(lambda: health(metrics).get("status") == "ok", timeout=60, what="the daemon")
        wait_for(lambda: mirrored(port, user), timeout=60, what="the copy of docs")
        probe = vector_text(embeddings(rng, 1)[0])
        nearest(port, user, probe)  # asks for the index
        wait_for(lambda: any(files.glob("*.usearch")), timeout=120, what="the index file")
        change(pgvector_dsn, rng, 1)
        caught_up(pgvector_dsn)
        process.send_signal(signal.SIGKILL)  # the file saved at most a few seconds ago
        process.wait(timeout=30)
        change(pgvector_dsn, rng, 1000)  # while the sidecar is down
        process = start(pgvector_dsn, mirror_path, port, metrics, log)
        wait_for(lambda: health(metrics).get("status") == "ok", timeout=60, what="the restart")
        change(pgvector_dsn, rng, 2000)
        caught_up(pgvector_dsn)
        with psycopg.connect(pgvector_dsn) as conn:
            row = conn.execute("select id, embedding::text from docs where id = 2001").fetchone()
        assert row is not None
        wait_for(lambda: nearest(port, user, row[1]) == 2001, timeout=10, what="the index")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert_index_equals_table(pgvector_dsn, mirror_path)


def assert_index_equals_table(dsn: str, mirror_path: Path) -> None:
    """Every row with a vector in the index under its key, with its vector bit for bit, and
    nothing else."""
    with psycopg.connect(dsn) as conn, conn.cursor(binary=True) as cur:
        rows = cur.execute(
            "select id, embedding::real[] from docs where embedding is not null order by id"
        ).fetchall()
    mirror = Mirror(mirror_path, read_only=True)
    try:
        indexes = VectorIndexes(mirror, artifact_home(mirror_path))
        (path,) = indexes.directory.glob("*.usearch")
        graph = indexes._load(path)
    finally:
        mirror.close()
    assert graph is not None
    index = graph.index
    assert len(index) == len(rows)
    keys = np.array([r[0] for r in rows], dtype=np.int64)
    assert all(int(k) in index for k in keys)
    stored = np.asarray(index.get(keys.view(np.uint64)), dtype=np.float32)
    want = np.array([r[1] for r in rows], dtype=np.float32)
    assert stored.view(np.uint32).tolist() == want.view(np.uint32).tolist()
