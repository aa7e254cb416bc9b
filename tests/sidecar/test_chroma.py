"""Chroma collections kept equal to tables: load, stream, kill -9, drift and rebuild, outages.

Real servers only: PostgreSQL 16 with pgvector, ``chroma run``, the daemon as a process.
"""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from predictor.chroma_records import same_metadata
from sidecar.local_postgres import free_port
from tests.chroma_server import ChromaServer
from tests.replicator.mirror_check import execute, wait_for

DIMS = 384
CREATE = f"""
create table docs (
    id int primary key,
    embedding vector({DIMS}),
    body text,
    kind text,
    score double precision,
    published date,
    flag boolean
)"""


def vector_text(values: np.ndarray) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def doc_rows(rng: np.random.Generator, ids: range, version: int = 0) -> list[tuple[Any, ...]]:
    rows = []
    for i in ids:
        embedding = rng.standard_normal(DIMS).astype(np.float32)
        rows.append((
            i, vector_text(embedding), None if i % 17 == 0 else f"body {i} v{version}",
            None if i % 7 == 0 else f"kind{i % 5}", float(i) / 3 + version,
            datetime.date(2024, 1, 1) + datetime.timedelta(days=i % 300), i % 2 == 0,
        ))  # fmt: skip
    return rows


def load(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    statement = "copy docs (id, embedding, body, kind, score, published, flag) from stdin"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def update(dsn: str, rng: np.random.Generator, ids: list[int], version: int) -> None:
    with psycopg.connect(dsn) as conn:
        for i in ids:
            conn.execute(
                "update docs set embedding = %s, body = %s, score = %s, kind = null where id = %s",
                (vector_text(rng.standard_normal(DIMS).astype(np.float32)),
                 f"body {i} v{version}", float(version), i),
            )  # fmt: skip


def table_records(dsn: str) -> dict[str, tuple[Any, ...]]:
    """The table as Chroma records should be: id -> (float32 embedding, document, metadata)."""
    with psycopg.connect(dsn) as conn, conn.cursor(binary=True) as cur:
        rows = cur.execute(
            "select id, embedding::real[], body, kind, score, published, flag from docs"
        ).fetchall()
    found = {}
    for i, embedding, body, kind, score, published, flag in rows:
        metadata = {"kind": kind, "score": score, "published": published and published.isoformat(),
                    "flag": flag}  # fmt: skip
        found[str(i)] = (
            np.asarray(embedding, dtype=np.float32), body,
            {k: v for k, v in metadata.items() if v is not None},
        )  # fmt: skip
    return found


def collection_records(collection: Any) -> dict[str, tuple[Any, ...]]:
    found: dict[str, tuple[Any, ...]] = {}
    offset = 0
    while True:
        got = collection.get(
            include=["embeddings", "documents", "metadatas"], limit=1000, offset=offset
        )
        if not got["ids"]:
            return found
        for n, i in enumerate(got["ids"]):
            assert i not in found, f"id {i} twice"
            embedding = np.asarray(got["embeddings"][n], dtype=np.float32)
            found[i] = (embedding, got["documents"][n], dict(got["metadatas"][n] or {}))
        offset += len(got["ids"])


def differences(want: dict, got: dict, *, ulps: int = 0) -> list[str]:
    """What differs between two record maps (empty: equal; embeddings bit for bit unless
    ``ulps``)."""
    said = [f"missing {i}" for i in sorted(want.keys() - got.keys())[:3]]
    said += [f"extra {i}" for i in sorted(got.keys() - want.keys())[:3]]
    for i in sorted(want.keys() & got.keys()):
        (e1, d1, m1), (e2, d2, m2) = want[i], got[i]
        bits = np.abs(e1.view(np.int32).astype(np.int64) - e2.view(np.int32).astype(np.int64))
        if e1.shape != e2.shape or bits.max() > ulps:
            said.append(f"embedding of {i}")
        elif d1 != d2 or not same_metadata(m1, m2):
            said.append(f"{i}: {d1!r} {m1!r} != {d2!r} {m2!r}")
        if len(said) > 5:
            break
    return said


def equal(dsn: str, collection: Any, *, ulps: int = 0) -> bool:
    return not differences(table_records(dsn), collection_records(collection), ulps=ulps)


def write_config(path: Path, section: str) -> Path:
    config = path / "sidecar.toml"
    config.write_text(
        f"""[[chroma]]
table = "public.docs"
embedding = "embedding"
document = "body"
metadata = ["kind", "score", "published", "flag"]
verify_seconds = 0
{section}
"""
    )
    return config


class Daemon:
    """``pgml-sidecar run`` as a process."""

    def __init__(self, dsn: str, tmp: Path, config: Path) -> None:
        self.dsn, self.tmp, self.config = dsn, tmp, config
        self.port, self.metrics = free_port(), free_port()
        self.log = tmp / "run.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar.cli", "run", "--source", self.dsn,
                 "--mirror", str(self.tmp / "mirror.duckdb"), "--tables", "public.docs",
                 "--port", str(self.port), "--metrics-port", str(self.metrics),
                 "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def health(self) -> dict:
        try:
            url = f"http://127.0.0.1:{self.metrics}/healthz"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return dict(json.loads(reply.read()))
        except urllib.error.HTTPError as exc:
            with exc:
                return dict(json.loads(exc.read()))
        except OSError:
            return {}

    def collection(self, name: str = "public_docs") -> dict:
        return dict(self.health().get("chroma", {}).get(name, {}))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar.cli", *args, "--metrics-port", str(self.metrics)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        process.send_signal(sig)
        return process.wait(timeout=60)


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path / "chroma")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.kill()


def metrics(daemon: Daemon) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics}/metrics") as reply:
        return str(reply.read().decode())


def start_daemon(dsn: str, tmp: Path, config: Path, daemons: list[Daemon]) -> Daemon:
    daemon = Daemon(dsn, tmp, config)
    daemons.append(daemon)
    daemon.start()
    return daemon


def loaded(daemon: Daemon, name: str = "public_docs") -> bool:
    state = daemon.collection(name)
    return bool(state) and state["lag_seconds"] == 0 and state["rows"] is not None


def test_collection_follows_table_across_kill_9(
    pgvector_dsn: str, chroma: ChromaServer, tmp_path: Path, daemons: list[Daemon]
):
    rng = np.random.default_rng(7)
    execute(pgvector_dsn, CREATE)
    rows = 2000
    load(pgvector_dsn, doc_rows(rng, range(1, rows + 1)))
    config = write_config(tmp_path, f'url = "{chroma.url}"\nspace = "l2"')
    started = time.monotonic()
    daemon = start_daemon(pgvector_dsn, tmp_path, config, daemons)
    wait_for(lambda: loaded(daemon), timeout=180, what="the initial load")
    print(f"\n{rows} rows of vector({DIMS}) loaded in {time.monotonic() - started:.1f} s"
          " (daemon start included)")  # fmt: skip
    collection = chroma.client().get_collection("public_docs")
    assert differences(table_records(pgvector_dsn), collection_records(collection)) == []

    # updates, deletes and inserts are in the collection within a second
    latencies = []
    for round_ in range(3):
        ids = [int(i) for i in rng.choice(rows, 20, replace=False) + 1]
        started = time.monotonic()
        update(pgvector_dsn, rng, ids, round_ + 1)
        execute(pgvector_dsn, f"delete from docs where id = {ids[0]}",
                f"insert into docs (id, embedding, body) values ({rows + 10 + round_},"
                f" '{vector_text(np.ones(DIMS, np.float32))}', 'new')")  # fmt: skip
        committed, new = time.monotonic(), str(rows + 10 + round_)
        wait_for(lambda new=new: collection.get(ids=[new])["ids"] == [new],  # type: ignore[misc]
                 timeout=1.0 + 20 * (round_ == 0), what="the insert in the collection")  # fmt: skip
        latencies.append(time.monotonic() - committed)
        wait_for(lambda: equal(pgvector_dsn, collection), what="the collection to follow")
        assert time.monotonic() - started < 30
    print(f"commit-to-visible (after 20 updates, a delete and an insert): {latencies}")

    # kill -9 while updates stream in, then restart: equal, nothing lost, twice or stale
    for version in range(10, 14):
        update(pgvector_dsn, rng, [int(i) for i in rng.choice(rows, 50) + 1], version)
        if version == 11:
            daemon.kill()
    execute(pgvector_dsn, "delete from docs where id between 100 and 120")
    daemon = start_daemon(pgvector_dsn, tmp_path, config, daemons)
    wait_for(lambda: loaded(daemon) and equal(pgvector_dsn, collection), timeout=60,
             what="the collection to catch up after kill -9")  # fmt: skip
    assert daemon.log.read_text().count("loading it whole") == 1  # replayed, not loaded again
    state = daemon.collection()
    assert state["connected"] and state["lag_bytes"] == 0 and state["count_mismatch"] is False
    assert daemon.kill(signal.SIGTERM) == 0


def test_drift_detected_and_rebuilt(
    pgvector_dsn: str, chroma: ChromaServer, tmp_path: Path, daemons: list[Daemon]
):
    rng = np.random.default_rng(8)
    execute(pgvector_dsn, CREATE)
    load(pgvector_dsn, doc_rows(rng, range(1, 301)))
    config = write_config(tmp_path, f'url = "{chroma.url}"\ncollection = "docs-hand"')
    daemon = start_daemon(pgvector_dsn, tmp_path, config, daemons)
    wait_for(lambda: loaded(daemon, "docs-hand"), timeout=120, what="the load")
    collection = chroma.client().get_collection("docs-hand")
    # by hand: a record deleted, one changed, one metadata key added, one record added
    collection.delete(ids=["5"])
    collection.update(ids=["6"], embeddings=[np.zeros(DIMS, np.float32) + 0.5])
    collection.update(ids=["7"], metadatas=[{"by_hand": True}])
    collection.add(ids=["hand"], embeddings=[np.ones(DIMS, np.float32)], documents=["x"])

    verified = daemon.cli("chroma", "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    drift = json.loads(verified.stdout)["docs-hand"]
    assert (drift["missing"], drift["extra"], drift["changed"]) == (1, 1, 2), drift
    state = daemon.collection("docs-hand")
    assert state["drift"]["rows"] == 4
    status = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "status", "--source", pgvector_dsn,
         "--metrics-port", str(daemon.metrics)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "chroma:  docs-hand" in status.stdout and "drifted" in status.stdout, status.stdout

    rebuilt = daemon.cli("chroma", "rebuild", "--collection", "docs-hand")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "1 extra deleted, 2 changed added again, 1 missing added" in rebuilt.stdout
    assert "equal to its table" in rebuilt.stdout
    assert differences(table_records(pgvector_dsn), collection_records(collection), ulps=4) == []
    help_text = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "chroma", "rebuild", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--collection" in help_text


def test_server_down_then_back(
    pgvector_dsn: str, chroma: ChromaServer, tmp_path: Path, daemons: list[Daemon]
):
    rng = np.random.default_rng(9)
    execute(pgvector_dsn, CREATE)
    load(pgvector_dsn, doc_rows(rng, range(1, 201)))
    config = write_config(tmp_path, f'url = "{chroma.url}"')
    daemon = start_daemon(pgvector_dsn, tmp_path, config, daemons)
    wait_for(lambda: loaded(daemon), timeout=120, what="the load")
    chroma.stop()
    for version in range(1, 4):
        update(pgvector_dsn, rng, list(range(version * 10, version * 10 + 20)), version)
    execute(pgvector_dsn, "delete from docs where id < 5")
    wait_for(lambda: daemon.collection()["lag_seconds"] > 0 and
             not daemon.collection()["connected"], what="the lag to show")  # fmt: skip
    health = daemon.health()
    assert health["replication_lag_seconds"] < 5  # replication goes on without Chroma
    wait_for(lambda: 'pgml_sidecar_chroma_up{collection="public_docs"} 0.0' in metrics(daemon),
             what="chroma_up 0 in /metrics")  # fmt: skip
    chroma.start()
    collection = chroma.client().get_collection("public_docs")
    wait_for(lambda: daemon.collection()["lag_seconds"] == 0 and equal(pgvector_dsn, collection,
             ulps=4), timeout=60, what="the collection to catch up")  # fmt: skip


def test_embedded_directory(pgvector_dsn: str, tmp_path: Path, daemons: list[Daemon]):
    rng = np.random.default_rng(10)
    execute(pgvector_dsn, CREATE)
    load(pgvector_dsn, doc_rows(rng, range(1, 201)))
    directory = tmp_path / "embedded"
    config = write_config(tmp_path, f'path = "{directory}"')
    daemon = start_daemon(pgvector_dsn, tmp_path, config, daemons)
    wait_for(lambda: loaded(daemon), timeout=120, what="the load")
    update(pgvector_dsn, rng, list(range(1, 30)), 1)
    execute(pgvector_dsn, "delete from docs where id > 190")
    wait_for(lambda: daemon.collection()["rows"] == 190 and daemon.collection()["lag_seconds"]
             == 0, timeout=30, what="the changes")  # fmt: skip
    assert daemon.kill(signal.SIGTERM) == 0
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(directory), settings=Settings(
        anonymized_telemetry=False))  # fmt: skip
    collection = client.get_collection("public_docs")
    assert (collection.configuration.get("hnsw") or {}).get("space") == "cosine"
    # cosine keeps vectors normalised: what comes back may be a unit in the last place off
    assert differences(table_records(pgvector_dsn), collection_records(collection), ulps=1) == []
