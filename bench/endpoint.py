"""SQL endpoint: one-row ``pgml.predict`` over the wire vs FastAPI; a 1M-row scan vs the bare model.

Part 1 serves the same trained models two ways, each in its own process: ``pgml-sidecar serve``
(PostgreSQL wire protocol, psycopg clients with prepared statements) and a FastAPI app under
uvicorn with one worker (``POST /predict/{project}`` with ``{"features": [...]}``, clients on
``http.client`` keep-alive connections). Client load comes from separate processes, each with
one persistent connection doing the same number of requests on both sides; per-request
latency and aggregate throughput are measured for 1, 4 and 16 clients. Part 2 times
``select sum(pgml.predict(...)) from`` a 1M-row mirror table over the wire against the model's
``predict_matrix`` on the same matrix in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import psycopg
from pydantic import BaseModel

from bench import workload as w
from trainer.model import Model, load_model
from trainer.train import artifact_home

DSN = "host=127.0.0.1 port={port} user=pgml dbname=pgml"
PREDICT_SQL = "select pgml.predict(%s, %s)"
CLIENT_COUNTS = (1, 4, 16)
WARMUP_REQUESTS = 50
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Served:
    """A model both servers answer for: project, how it is trained, the rows clients send."""

    project: str
    dataset: str
    algorithm: str
    requests: int
    """Requests per side and client count, split evenly between the clients."""


SCAN_TABLE = "public.points"
SCAN_PROJECT = "points"
SCAN_FEATURES = [f"f{k}" for k in range(1, 11)]
SCAN_ARRAY = f"array[{', '.join(SCAN_FEATURES)}]"
SCAN_SUM_SQL = (
    f"select count(*), sum(pgml.predict('{SCAN_PROJECT}', {SCAN_ARRAY})) from {SCAN_TABLE}"
)
SCAN_FETCH_SQL = f"select pgml.predict('{SCAN_PROJECT}', {SCAN_ARRAY}) from {SCAN_TABLE}"


# -- the mirror and the two servers --------------------------------------------------------------


def build_points(path: Path, rows: int) -> np.ndarray:
    """Create the 10-feature table straight in DuckDB; return its features as a float matrix.

    ``f1..f10`` are hash-like arithmetic of the row number in [-1, 1); ``y`` is linear in five
    of them plus a product term. The endpoint cannot write mirrored tables, so the file is
    made here before the endpoint opens it.
    """
    features = ", ".join(
        f"((i * {2654435761 + 7919 * k} + {40503 * k}) % 1000003) / 1000003.0 * 2 - 1 as f{k}"
        for k in range(1, 11)
    )
    con = duckdb.connect(str(path))
    try:
        con.execute("create schema if not exists public")
        con.execute(
            f"create table {SCAN_TABLE} as select *, f1 + 2 * f2 - f3 + 0.5 * f4 + f5 * f6 as y"
            f" from (select {features} from range({int(rows)}) r(i))"
        )
        columns = con.execute(f"select {', '.join(SCAN_FEATURES)} from {SCAN_TABLE}").fetchnumpy()
    finally:
        con.close()
    return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in SCAN_FEATURES])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(w.CODE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


@dataclass
class Server:
    """A server process started by this benchmark, its port and its log."""

    label: str
    process: subprocess.Popen[str]
    port: int
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far, every thread included."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(
    label: str,
    command: list[str],
    log: Path,
    ready: re.Pattern[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    """Start ``command``; wait for the stdout line matching ``ready`` (group 1: the port)."""
    err = log.open("w")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=err,
        stdin=subprocess.DEVNULL,
        env=env or _env(),
        cwd=cwd,
        text=True,
    )
    err.close()
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    for line in process.stdout:
        found = ready.search(line)
        if found:
            return Server(label, process, int(found.group(1)), log)
        if time.monotonic() > deadline:
            break
    process.kill()
    process.wait()
    tail = log.read_text(errors="replace")[-3000:]
    raise w.BenchError(f"{label} did not start: {' '.join(command)}\n--- {log} ---\n{tail}")


def start_endpoint(mirror: Path, log: Path, source: str | None = None) -> Server:
    """``pgml-sidecar serve --mirror PATH --port 0`` (``--source DSN`` when given), as a user
    runs it."""
    script = Path(sys.executable).parent / "pgml-sidecar"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "sidecar.cli"]
    command = [*program, "serve", "--mirror", str(mirror), "--port", "0"]
    if source is not None:
        command += ["--source", source]
    return _start("pgml-sidecar serve", command, log, re.compile(r"^serving .* on [^ ]+:(\d+);"))


def start_fastapi(models: dict[str, tuple[str, str]], log: Path) -> Server:
    """The FastAPI app under uvicorn (one worker), loading the model files ``models`` names."""
    command = [sys.executable, "-m", "bench.endpoint", "--fastapi", json.dumps(models)]
    return _start("fastapi", command, log, re.compile(r"^serving on port (\d+)"))


class PredictRequest(BaseModel):
    features: list[float]


def fastapi_app(models: dict[str, Model]) -> Any:
    """``POST /predict/{project}`` with ``{"features": [...]}`` → ``{"prediction": x}``."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI()

    @app.post("/predict/{project}")
    async def predict(project: str, request: PredictRequest) -> dict[str, float]:
        model = models.get(project)
        if model is None:
            raise HTTPException(status_code=404, detail=f"no model {project!r}")
        return {"prediction": float(model.predict_matrix(np.array([request.features]))[0])}

    return app


def serve_fastapi(spec: str) -> int:
    """Run the FastAPI app on a free loopback port (the child process of ``start_fastapi``)."""
    import uvicorn

    models = {name: load_model(Path(path), sha) for name, (path, sha) in json.loads(spec).items()}
    # proto IPPROTO_TCP as uvicorn's own bind gets it from getaddrinfo: asyncio sets TCP_NODELAY
    # only on sockets that say so (with proto 0 every response waited ~40 ms for delayed ACKs)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    config = uvicorn.Config(
        fastapi_app(models), workers=1, log_level="warning", access_log=False, lifespan="off"
    )
    print(f"serving on port {listener.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def deployed_file(conn: psycopg.Connection[Any], home: Path, project: str) -> tuple[str, str]:
    """The deployed model's file (absolute path) and SHA-256, read over the wire."""
    row = conn.execute(
        "select m.path, m.sha256 from pgml.deployed_models d join pgml.models m"
        " on m.id = d.model_id where d.name = %s",
        [project],
    ).fetchone()
    if row is None:
        raise w.BenchError(f"project {project} has no deployed model")
    return str(home / row[0]), str(row[1])


def feature_rows(conn: psycopg.Connection[Any], dataset: str) -> list[list[float]]:
    """Every row of a loaded dataset's features, as clients send them (arrays flattened)."""
    cursor = conn.execute(f"select * from pgml.{dataset}")
    names = [column.name for column in cursor.description or []]
    rows = []
    for values in cursor.fetchall():
        row: list[float] = []
        for name, value in zip(names, values, strict=True):
            if name != "target":
                row.extend(float(v) for v in (value if isinstance(value, list) else [value]))
        rows.append(row)
    return rows


# -- part 1: clients -----------------------------------------------------------------------------


class OursClient:
    """psycopg with a prepared statement, on one persistent connection."""

    def __init__(self, port: int) -> None:
        self.conn = psycopg.connect(DSN.format(port=port), autocommit=True)

    def predict(self, project: str, features: list[float]) -> float:
        row = self.conn.execute(PREDICT_SQL, (project, features), prepare=True).fetchone()
        assert row is not None
        return float(row[0])

    def close(self) -> None:
        self.conn.close()


class FastapiClient:
    """``http.client`` on one keep-alive connection; JSON encoded and decoded per request."""

    HEADERS = {"Content-Type": "application/json"}  # noqa: RUF012

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def predict(self, project: str, features: list[float]) -> float:
        body = json.dumps({"features": features}).encode()
        self.conn.request("POST", f"/predict/{project}", body, self.HEADERS)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise w.BenchError(f"FastAPI answered {response.status}: {data[:300]!r}")
        return float(json.loads(data)["prediction"])

    def close(self) -> None:
        self.conn.close()


def _client_loop(pipe: Connection) -> None:
    """A client process: per task connect, warm up, report ready, wait for go, time requests."""
    while True:
        task = pipe.recv()
        if task is None:
            return
        side, port, project, rows, count, offset = task
        client = OursClient(port) if side == "ours" else FastapiClient(port)
        try:
            for i in range(WARMUP_REQUESTS):
                client.predict(project, rows[(offset + i) % len(rows)])
            pipe.send("ready")
            pipe.recv()
            latencies = np.empty(count, dtype=np.int64)
            cpu = time.process_time()
            started = time.perf_counter()
            for i in range(count):
                features = rows[(offset + i) % len(rows)]
                t0 = time.perf_counter_ns()
                client.predict(project, features)
                latencies[i] = time.perf_counter_ns() - t0
            finished = time.perf_counter()
            cpu = time.process_time() - cpu
        finally:
            client.close()
        pipe.send((started, finished, cpu, latencies.tobytes()))


class ClientPool:
    """Client processes started once (spawned: no state shared with this one), reused per task."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(size):
            ours, theirs = context.Pipe()
            process = context.Process(target=_client_loop, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def run(
        self, side: str, server: Server, served: Served, rows: list[list[float]], clients: int
    ) -> Load:
        """``served.requests`` requests from ``clients`` processes started together."""
        pipes = self.pipes[:clients]
        count = served.requests // clients
        for index, pipe in enumerate(pipes):
            pipe.send((side, server.port, served.project, rows, count, index * 7919))
        for pipe in pipes:
            if pipe.recv() != "ready":
                raise w.BenchError("a client process failed")
        server_cpu = server.cpu_seconds()
        for pipe in pipes:
            pipe.send("go")
        answers = [pipe.recv() for pipe in pipes]
        server_cpu = server.cpu_seconds() - server_cpu
        latencies = np.concatenate([np.frombuffer(a[3], dtype=np.int64) for a in answers])
        wall = max(a[1] for a in answers) - min(a[0] for a in answers)
        client_cpu = sum(a[2] for a in answers)
        return Load.of(latencies, wall, server_cpu, client_cpu)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


@dataclass
class Load:
    """One side under one client count: latency percentiles (ms) and requests per second."""

    requests: int
    p50_ms: float
    p99_ms: float
    per_second: float
    server_cpu_ms: float
    """CPU time of the server process (every thread) per request."""
    client_cpu_ms: float
    """CPU time of the client processes per request (they share the machine's 2 cores)."""

    @classmethod
    def of(cls, latencies_ns: np.ndarray, wall_s: float, server_s: float, client_s: float) -> Load:
        n = len(latencies_ns)
        p50, p99 = np.percentile(latencies_ns, [50, 99]) / 1e6
        return cls(n, float(p50), float(p99), n / wall_s, 1e3 * server_s / n, 1e3 * client_s / n)


@dataclass
class LoadRound:
    round: int
    clients: int
    first: str
    ours: Load
    ref: Load

    @property
    def ratio(self) -> float:
        return self.ours.per_second / self.ref.per_second


@dataclass
class LatencyComparison:
    """Part 1 for one model; reported figures are medians over rounds per client count."""

    served: Served
    features: int
    matched: bool
    rounds: list[LoadRound] = field(default_factory=list)

    def median(self, clients: int, what: str) -> float:
        chosen = [r for r in self.rounds if r.clients == clients]
        if what == "ratio":
            return statistics.median(r.ratio for r in chosen)
        side, name = what.split(".")
        return statistics.median(getattr(getattr(r, side), name) for r in chosen)

    def summary(self, clients: int) -> str:
        m = self.median
        return (
            f"{clients} client{'s' if clients > 1 else ''}: p50"
            f" {m(clients, 'ours.p50_ms'):.2f}/{m(clients, 'ref.p50_ms'):.2f} ms, p99"
            f" {m(clients, 'ours.p99_ms'):.2f}/{m(clients, 'ref.p99_ms'):.2f} ms,"
            f" {m(clients, 'ours.per_second'):,.0f}/{m(clients, 'ref.per_second'):,.0f} req/s,"
            f" ratio **{m(clients, 'ratio'):.2f}**"
        )

    def table(self) -> str:
        s = self.served
        summary = "; ".join(self.summary(c) for c in sorted({r.clients for r in self.rounds}))
        headers = ["round", "clients", "first", "ours p50 ms", "ours p99 ms", "ours req/s"]
        headers += ["FastAPI p50 ms", "FastAPI p99 ms", "FastAPI req/s", "ratio"]
        headers += ["server CPU ms/req ours, FastAPI", "client CPU ms/req ours, FastAPI"]
        rows = [
            [
                str(r.round),
                str(r.clients),
                r.first,
                f"{r.ours.p50_ms:.3f}",
                f"{r.ours.p99_ms:.3f}",
                f"{r.ours.per_second:,.0f}",
                f"{r.ref.p50_ms:.3f}",
                f"{r.ref.p99_ms:.3f}",
                f"{r.ref.per_second:,.0f}",
                f"{r.ratio:.2f}",
                f"{r.ours.server_cpu_ms:.2f}, {r.ref.server_cpu_ms:.2f}",
                f"{r.ours.client_cpu_ms:.2f}, {r.ref.client_cpu_ms:.2f}",
            ]
            for r in self.rounds
        ]
        return (
            f"**one-row pgml.predict, {s.project}** ({s.dataset}, {s.algorithm},"
            f" {self.features} features; {s.requests:,} requests per side and client count;"
            f" medians, ours/FastAPI; targets: ours p50 < 1 ms, throughput ratio > 1):"
            f" {summary}; predictions {'match' if self.matched else 'DO NOT match'}\n\n"
            + w.markdown_table(headers, rows)
        )


def check_same(ours: OursClient, ref: FastapiClient, project: str, rows: list[list[float]]) -> bool:
    """Both servers give the same prediction for the first 100 rows."""
    return all(ours.predict(project, row) == ref.predict(project, row) for row in rows[:100])


def load_rounds(
    pool: ClientPool, sides: dict[str, Server], served: Served, rows: list[list[float]], rounds: int
) -> list[LoadRound]:
    done = []
    for index in range(rounds):
        for clients in CLIENT_COUNTS:
            order = w.alternate(index)
            loads = {side: pool.run(side, sides[side], served, rows, clients) for side in order}
            done.append(LoadRound(index + 1, clients, order[0], loads["ours"], loads["ref"]))
            r = done[-1]
            w.say(
                f"{served.project} round {index + 1}, {clients} clients: ours p50"
                f" {r.ours.p50_ms:.3f} ms {r.ours.per_second:,.0f}/s, FastAPI p50"
                f" {r.ref.p50_ms:.3f} ms {r.ref.per_second:,.0f}/s, ratio {r.ratio:.2f}; server"
                f" CPU ms/req {r.ours.server_cpu_ms:.2f} vs {r.ref.server_cpu_ms:.2f}"
            )
    return done


# -- part 2: scoring a table ---------------------------------------------------------------------


@dataclass
class ScanRound:
    first: str
    ours_sum_s: float
    ours_fetch_s: float
    bare_s: float
    matched: bool

    @property
    def ratio(self) -> float:
        return self.bare_s / self.ours_sum_s


@dataclass
class ScanComparison:
    """Part 2: rows/s of ``sum(pgml.predict(..))`` over the wire vs ``predict_matrix``."""

    rows: int
    rounds: list[ScanRound] = field(default_factory=list)

    def table(self) -> str:
        headers = ["round", "first", "ours sum s", "ours fetch-all s", "bare model s", "ratio"]
        headers += ["sums"]
        rows = [
            [
                str(i),
                r.first,
                f"{r.ours_sum_s:.3f}",
                f"{r.ours_fetch_s:.3f}",
                f"{r.bare_s:.3f}",
                f"{r.ratio:.2f}",
                "match" if r.matched else "MISMATCH",
            ]
            for i, r in enumerate(self.rounds, 1)
        ]
        ratio = statistics.median(r.ratio for r in self.rounds)
        ours = self.rows / statistics.median(r.ours_sum_s for r in self.rounds)
        fetch = self.rows / statistics.median(r.ours_fetch_s for r in self.rounds)
        bare = self.rows / statistics.median(r.bare_s for r in self.rounds)
        return (
            f"**pgml.predict over a table** ({self.rows:,} rows x {len(SCAN_FEATURES)} float"
            f" features, linear regression): median ratio ours/bare model = **{ratio:.2f}**"
            f" (target >= 0.5); median rows/s ours (sum over the wire) {ours:,.0f}, bare"
            f" `predict_matrix` {bare:,.0f}; ours fetching every prediction {fetch:,.0f}\n\n"
            + w.markdown_table(headers, rows)
        )


def _seconds(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def scan_rounds(
    conn: psycopg.Connection[Any], model: Model, matrix: np.ndarray, rounds: int
) -> ScanComparison:
    result = ScanComparison(len(matrix))
    conn.execute(SCAN_SUM_SQL).fetchall()  # untimed: warm both
    model.predict_matrix(matrix)
    for index in range(rounds):
        order = w.alternate(index)
        timed: dict[str, tuple[float, Any]] = {}
        for side in order:
            if side == "ours":
                timed["sum"] = _seconds(lambda: conn.execute(SCAN_SUM_SQL).fetchone())
                timed["fetch"] = _seconds(lambda: conn.execute(SCAN_FETCH_SQL).fetchall())
            else:
                timed["bare"] = _seconds(lambda: model.predict_matrix(matrix))
        (count, ours_sum), fetched, bare = timed["sum"][1], timed["fetch"][1], timed["bare"][1]
        bare_sum = float(np.sum(bare))
        matched = count == len(matrix) == len(fetched) and bool(
            np.isclose(ours_sum, bare_sum, rtol=1e-9, atol=1e-6)
            and np.isclose(sum(row[0] for row in fetched), bare_sum, rtol=1e-9, atol=1e-6)
        )
        result.rounds.append(
            ScanRound(order[0], timed["sum"][0], timed["fetch"][0], timed["bare"][0], matched)
        )
        r = result.rounds[-1]
        w.say(
            f"scan round {index + 1}: ours sum {r.ours_sum_s:.3f}s, fetch {r.ours_fetch_s:.3f}s,"
            f" bare {r.bare_s:.3f}s, ratio {r.ratio:.2f}, {'match' if matched else 'MISMATCH'}"
        )
    return result


# -- running it ----------------------------------------------------------------------------------


def served_models(args: argparse.Namespace) -> list[Served]:
    served = [Served("bench_iris", "iris", "linear", args.requests)]
    if args.large_requests > 0:
        served.append(Served("bench_digits", "digits", args.large_algorithm, args.large_requests))
    return served


@contextlib.contextmanager
def servers(
    mirror: Path, scratch: Path, with_source: bool = False
) -> Iterator[tuple[Server, list[Server]]]:
    """The endpoint, and a list the caller appends the FastAPI server to; all stopped after.

    ``with_source``: the endpoint asks a throwaway PostgreSQL (role ``pgml``) what its user may
    read and score with, as ``run`` does, so every statement goes through the privilege checks.
    """
    with contextlib.ExitStack() as stack:
        source = None
        if with_source:
            from sidecar.local_postgres import LocalPostgres

            w.say("starting a throwaway PostgreSQL as the endpoint's source")
            pg = stack.enter_context(LocalPostgres(scratch / "source"))
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                conn.execute("create role pgml login")
            source = pg.dsn()
        endpoint = start_endpoint(mirror, scratch / "serve.log", source)
        others: list[Server] = []
        try:
            yield endpoint, others
        finally:
            for server in [*others, endpoint]:
                server.stop()


def train_all(conn: psycopg.Connection[Any], served: list[Served], scan: bool = True) -> None:
    for s in served:
        conn.execute("select * from pgml.load_dataset(%s)", [s.dataset])
        conn.execute(
            "select * from pgml.train(%s, 'classification', %s, 'target', %s)",
            [s.project, f"pgml.{s.dataset}", s.algorithm],
        )
    if scan:
        conn.execute(
            f"select * from pgml.train('{SCAN_PROJECT}', 'regression', '{SCAN_TABLE}', 'y',"
            " 'linear')"
        )


def compare_latency(
    pool: ClientPool,
    conn: psycopg.Connection[Any],
    sides: dict[str, Server],
    s: Served,
    rounds: int,
) -> LatencyComparison:
    """Part 1 for one model: check both servers agree, then the rounds."""
    rows = feature_rows(conn, s.dataset)
    ours, ref = OursClient(sides["ours"].port), FastapiClient(sides["ref"].port)
    try:
        matched = check_same(ours, ref, s.project, rows)
    finally:
        ours.close()
        ref.close()
    comparison = LatencyComparison(s, len(rows[0]), matched)
    comparison.rounds = load_rounds(pool, sides, s, rows, rounds)
    return comparison


def compare_scan(
    conn: psycopg.Connection[Any], home: Path, matrix: np.ndarray, rounds: int
) -> ScanComparison:
    """Part 2, with the deployed model loaded here from its file."""
    path, sha256 = deployed_file(conn, home, SCAN_PROJECT)
    model = load_model(Path(path), sha256)
    if model.feature_names != SCAN_FEATURES:
        raise w.BenchError(f"model features {model.feature_names} != {SCAN_FEATURES}")
    return scan_rounds(conn, model, matrix, rounds)


def run(args: argparse.Namespace) -> list[LatencyComparison | ScanComparison]:
    scratch = w.make_workdir("pgml-bench-endpoint-")
    mirror = scratch / "endpoint.duckdb"
    w.say(f"building {args.rows:,} rows in {mirror}")
    matrix = build_points(mirror, args.rows)
    served = served_models(args)
    results: list[LatencyComparison | ScanComparison] = []
    pool = ClientPool(max(CLIENT_COUNTS)) if not args.skip_latency else None
    try:
        with servers(mirror, scratch, args.source) as (endpoint, others):
            conn = psycopg.connect(DSN.format(port=endpoint.port), autocommit=True)
            w.say("training over the wire")
            scan = not args.skip_scan and not args.source  # its table is no source table
            train_all(conn, served, scan)
            if pool is not None:
                home = artifact_home(mirror)
                files = {s.project: deployed_file(conn, home, s.project) for s in served}
                others.append(start_fastapi(files, scratch / "fastapi.log"))
                sides = {"ours": endpoint, "ref": others[0]}
                results += [compare_latency(pool, conn, sides, s, args.rounds) for s in served]
            if scan:
                results.append(compare_scan(conn, artifact_home(mirror), matrix, args.rounds))
            conn.close()
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def parser() -> argparse.ArgumentParser:
    p = w.base_parser("bench.endpoint", __doc__ or "", seed=False)
    p.add_argument(
        "--requests", type=int, default=10_000, help="iris requests per side and client count"
    )
    p.add_argument(
        "--large-requests",
        type=int,
        default=2_000,
        help="digits requests per side and client count (0: skip the larger model)",
    )
    p.add_argument("--large-algorithm", default="random_forest", help="the digits model")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the scanned table")
    p.add_argument("--skip-latency", action="store_true", help="part 2 only")
    p.add_argument("--skip-scan", action="store_true", help="part 1 only")
    p.add_argument(
        "--source",
        action="store_true",
        help="serve with --source (a throwaway PostgreSQL): every statement passes the privilege"
        " checks, as under run; part 2 is skipped (its table is made in the mirror, not mirrored)",
    )
    p.add_argument("--fastapi", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.fastapi:
        return serve_fastapi(args.fastapi)
    for result in run(args):
        print(result.table() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
