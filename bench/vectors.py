"""Vector search: pgvector's HNSW in the source vs the endpoint's index path vs Chroma.

The same 20,000 clustered 384-dimension embeddings and the same 200 queries (cosine distance,
top 10) in each: pgvector 0.x in a PostgreSQL 16 (pgserver's binaries) with ``hnsw (embedding
vector_cosine_ops) with (m = 16, ef_construction = 64)``, ``hnsw.ef_search`` raised until its
recall@10 reaches 0.98; the sidecar's ``run`` (a daemon in this process: replication, mirror,
usearch index, endpoint), queried over the wire with ``ORDER BY embedding <=> $1 LIMIT 10``;
Chroma (``chromadb``, an embedded client, ``hnsw:space`` cosine, its default M 16 and
construction ef 100). Recall@10 against the exact answer, queries/s with 1 and 8 clients
(client processes for the two servers; threads for embedded Chroma), p99 latency, index build
time, and the time from a change to an answer that has it (for the sidecar: source commit to
the endpoint's answer; for pgvector: commit to its answer; for Chroma: upsert to its answer).
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from predictor.vector_index import IndexName
from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from sidecar.local_postgres import LocalPostgres
from tests.fix_pgvector import pgserver_bin_dir
from tests.vectors.corpus import DOCS, copy_docs, embeddings, vector_text

K = 10


def _client(args: tuple[str, str, list[str]]) -> list[float]:
    dsn, sql, queries = args
    latencies = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for q in queries:
            started = time.perf_counter()
            conn.execute(sql, (q,)).fetchall()
            latencies.append(time.perf_counter() - started)
    return latencies


def load(dsn: str, sql: str, queries: list[str], clients: int) -> dict[str, float]:
    """Queries/s and p99 latency of ``clients`` processes, each running every query."""
    args = [(dsn, sql, queries) for _ in range(clients)]
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        pool.map(_client, args[:clients])  # warm: connections, caches
        started = time.perf_counter()
        results = pool.map(_client, args)
        elapsed = time.perf_counter() - started
    latencies = sorted(x for r in results for x in r)
    return {"qps": len(latencies) / elapsed, "p99_ms": 1000 * latencies[int(0.99 * len(latencies))]}


def threaded(
    run: Callable[[np.ndarray], Any], queries: np.ndarray, clients: int
) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        mine = []
        for q in queries:
            started = time.perf_counter()
            run(q)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"qps": len(latencies) / elapsed, "p99_ms": 1000 * latencies[int(0.99 * len(latencies))]}


def recall(truth: list[list[int]], found: list[list[int]]) -> float:
    return float(np.mean([len(set(t) & set(f)) / K for t, f in zip(truth, found, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    options = parser.parse_args()
    rng = np.random.default_rng(2026)
    vectors = embeddings(rng, options.rows + options.queries + 20)
    data, queries = vectors[: options.rows], vectors[options.rows : options.rows + options.queries]
    spare = vectors[options.rows + options.queries :]
    texts = [vector_text(q) for q in queries]
    normed = data / np.linalg.norm(data, axis=1, keepdims=True)
    truth = [list(np.argsort(-(normed @ (q / np.linalg.norm(q))))[:K] + 1) for q in queries]
    report: dict[str, dict[str, Any]] = {"pgvector": {}, "sidecar": {}, "chroma": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-vectors-"))
    work.chmod(0o755)
    server = LocalPostgres(work / "pg", bin_dir=pgserver_bin_dir())
    server.start()
    try:
        dsn = server.create_database("vectors")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create extension vector")
            conn.execute(DOCS)
            source_schema.install(conn)
        copy_docs(dsn, range(1, options.rows + 1), data)
        bench_sidecar(dsn, work, texts, truth, spare, report["sidecar"], options.rows)
        bench_pgvector(dsn, texts, truth, spare, report["pgvector"])
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    bench_chroma(data, queries, truth, spare, report["chroma"])
    print_report(report, options)


def sql_for(cast: str = "") -> str:
    return f"select id from docs order by embedding <=> %s{cast} limit {K}"


def bench_sidecar(dsn: str, work: Path, texts: list[str], truth: list[list[int]],
                  spare: np.ndarray, out: dict[str, Any], rows: int) -> None:  # fmt: skip
    settings = DaemonSettings(source_dsn=dsn, mirror_path=work / "mirror.duckdb",
                              tables=["public.docs"], port=0, metrics_port=0)  # fmt: skip
    daemon = Daemon(settings)
    daemon.start()
    try:
        port = daemon.endpoint.port
        user = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
        endpoint = f"host=127.0.0.1 port={port} user={user} dbname=pgml"
        while True:
            try:
                with psycopg.connect(endpoint) as conn:
                    row = conn.execute("select count(*) from docs").fetchone()
                if row and row[0] == rows:
                    break
            except psycopg.Error:
                pass
            time.sleep(0.2)
        name = IndexName("public", "docs", "embedding", "cosine_distance")
        started = time.perf_counter()
        with psycopg.connect(endpoint) as conn:
            conn.execute(sql_for(), (texts[0],)).fetchall()
        while name not in daemon.vector_indexes.graphs:
            time.sleep(0.05)
        out["build_s"] = time.perf_counter() - started
        with psycopg.connect(endpoint) as conn:
            found = [[r[0] for r in conn.execute(sql_for(), (t,)).fetchall()] for t in texts]
        out["recall"] = recall(truth, found)
        for clients in (1, 8):
            out[f"c{clients}"] = load(endpoint, sql_for(), texts, clients)
        out["visible_ms"] = visible(dsn, endpoint, texts, spare)
    finally:
        daemon.stop()


def visible(dsn: str, reader: str, texts: list[str], spare: np.ndarray, setup: str = "") -> float:
    """Median ms from the commit of an update making row i the nearest to a query to an
    answer with it first."""
    times = []
    with (
        psycopg.connect(dsn, autocommit=True) as source,
        psycopg.connect(reader, autocommit=True) as conn,
    ):
        if setup:
            conn.execute(setup)
        for i, text in enumerate(texts[:10]):
            row = 100 + i
            source.execute("update docs set embedding = %s where id = %s", (text, row))
            started = time.perf_counter()
            while conn.execute(sql_for(), (text,)).fetchone() != (row,):
                pass
            times.append(time.perf_counter() - started)
            source.execute(
                "update docs set embedding = %s where id = %s", (vector_text(spare[i]), row)
            )
    return 1000 * statistics.median(times)


def bench_pgvector(dsn: str, texts: list[str], truth: list[list[int]], spare: np.ndarray,
                   out: dict[str, Any]) -> None:  # fmt: skip
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set maintenance_work_mem = '512MB'")
        started = time.perf_counter()
        conn.execute(
            "create index on docs using hnsw (embedding vector_cosine_ops)"
            " with (m = 16, ef_construction = 64)"
        )
        out["build_s"] = time.perf_counter() - started
        for ef in (40, 64, 100, 150, 200, 300, 400, 600, 800):
            conn.execute(f"set hnsw.ef_search = {ef}")
            found = [[r[0] for r in conn.execute(sql_for("::vector"), (t,)).fetchall()]
                     for t in texts]  # fmt: skip
            out["ef_search"], out["recall"] = ef, recall(truth, found)
            if out["recall"] >= 0.98:
                break
    tuned = f"{dsn} options='-c hnsw.ef_search={out['ef_search']}'"
    for clients in (1, 8):
        out[f"c{clients}"] = load(tuned, sql_for("::vector"), texts, clients)
    out["visible_ms"] = visible(dsn, tuned, texts, spare)


def bench_chroma(data: np.ndarray, queries: np.ndarray, truth: list[list[int]],
                 spare: np.ndarray, out: dict[str, Any]) -> None:  # fmt: skip
    import chromadb

    client = chromadb.EphemeralClient()
    collection = client.create_collection("docs", metadata={"hnsw:space": "cosine"})
    started = time.perf_counter()
    ids = [str(i) for i in range(1, len(data) + 1)]
    for lo in range(0, len(data), 5000):
        collection.add(ids=ids[lo : lo + 5000], embeddings=data[lo : lo + 5000])
    out["build_s"] = time.perf_counter() - started

    def top(q: np.ndarray) -> list[int]:
        found = collection.query(query_embeddings=[q], n_results=K)
        return [int(i) for i in found["ids"][0]]

    out["recall"] = recall(truth, [top(q) for q in queries])
    for clients in (1, 8):
        out[f"c{clients}"] = threaded(top, queries, clients)
    times = []
    for i, q in enumerate(queries[:10]):
        collection.upsert(ids=[str(100 + i)], embeddings=[q])
        started = time.perf_counter()
        while top(q)[0] != 100 + i:
            pass
        times.append(time.perf_counter() - started)
        collection.upsert(ids=[str(100 + i)], embeddings=[spare[i]])
    out["visible_ms"] = 1000 * statistics.median(times)


def print_report(report: dict[str, dict[str, Any]], options: argparse.Namespace) -> None:
    day, cores = time.strftime("%Y-%m-%d"), multiprocessing.cpu_count()
    print(f"## vectors ({day}, {platform.node()}, {cores} cores, {options.rows} x 384,"
          f" {options.queries} queries, cosine, top {K})")  # fmt: skip
    print()
    print(
        "| | recall@10 | q/s 1 client | q/s 8 clients | p99 ms (8) | build s | change visible ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in report.items():
        extra = f" (ef_search {r['ef_search']})" if "ef_search" in r else ""
        print(f"| {name}{extra} | {r['recall']:.3f} | {r['c1']['qps']:.0f}"
              f" | {r['c8']['qps']:.0f} | {r['c8']['p99_ms']:.1f} | {r['build_s']:.1f}"
              f" | {r['visible_ms']:.1f} |")  # fmt: skip
    ours, ref = report["sidecar"], report["pgvector"]
    print()
    print(f"sidecar / pgvector: q/s 1 client {ours['c1']['qps'] / ref['c1']['qps']:.2f}x,"
          f" 8 clients {ours['c8']['qps'] / ref['c8']['qps']:.2f}x,"
          f" build {ref['build_s'] / ours['build_s']:.2f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
