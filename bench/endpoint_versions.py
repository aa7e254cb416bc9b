"""The SQL endpoint of an earlier revision and of this checkout, side by side in one run.

One-row ``pgml.predict`` latency and throughput, as part 1 of :mod:`bench.endpoint` measures
them, but against the endpoint of another git revision instead of FastAPI: a change that must
not make the endpoint slower (an allow-list, privilege checks) is measured on the same machine,
at the same moments, with the same clients. The revision is checked out in a temporary
worktree; each side serves its own copy of one mirror file and trains the same model over the
wire. With ``--source``, this checkout's endpoint serves with ``--source`` (a throwaway
PostgreSQL), so every statement passes its privilege checks as under ``run``. Rounds alternate
which side goes first; the report gives medians of this checkout over the revision.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg

from bench import workload as w
from bench.endpoint import (
    CLIENT_COUNTS,
    DSN,
    SCAN_FETCH_SQL,
    SCAN_PROJECT,
    SCAN_SUM_SQL,
    SCAN_TABLE,
    ClientPool,
    Load,
    OursClient,
    Served,
    Server,
    _env,
    _seconds,
    _start,
    build_points,
    feature_rows,
)

READY = re.compile(r"^serving .* on [^ ]+:(\d+);")


def start_serve(code: Path, mirror: Path, log: Path, source: str | None) -> Server:
    """``serve --mirror PATH --port 0`` from the code in ``code``."""
    env = _env()
    env["PYTHONPATH"] = str(code)
    command = [sys.executable, "-m", "sidecar.cli", "serve", "--mirror", str(mirror)]
    command += ["--port", "0"] + (["--source", source] if source else [])
    return _start(f"serve ({code})", command, log, READY, env=env, cwd=code)


@contextlib.contextmanager
def worktree(revision: str, scratch: Path) -> Iterator[Path]:
    """``revision`` checked out in a temporary worktree of this repository."""
    path = scratch / f"code-{revision[:12]}"
    subprocess.run(
        ["git", "-C", str(w.CODE_ROOT), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
        text=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(w.CODE_ROOT), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )


def train(port: int, served: Served) -> None:
    with psycopg.connect(DSN.format(port=port), autocommit=True) as conn:
        conn.execute("select * from pgml.load_dataset(%s)", [served.dataset])
        conn.execute(
            "select * from pgml.train(%s, 'classification', %s, 'target', %s)",
            [served.project, f"pgml.{served.dataset}", served.algorithm],
        )


def run(args: argparse.Namespace) -> str:
    scratch = w.make_workdir("pgml-bench-versions-")
    served = Served("bench_iris", "iris", "linear", args.requests)
    loads: dict[tuple[str, int], list[Load]] = {}
    scans: dict[tuple[str, str], list[float]] = {}
    scan = args.scan_rows > 0 and not args.source  # the scanned table is no source table
    if scan:
        w.say(f"building {args.scan_rows:,} rows in each side's mirror")
        build_points(scratch / "before.duckdb", args.scan_rows)
        shutil.copy(scratch / "before.duckdb", scratch / "after.duckdb")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        before_code = stack.enter_context(worktree(args.before, scratch))
        source = None
        if args.source:
            from sidecar.local_postgres import LocalPostgres

            w.say("starting a throwaway PostgreSQL as this checkout's source")
            pg = stack.enter_context(LocalPostgres(scratch / "source"))
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                conn.execute("create role pgml login")
            source = pg.dsn()
        sides = {
            "before": start_serve(before_code, scratch / "before.duckdb", scratch / "b.log", None),
            "after": start_serve(w.CODE_ROOT, scratch / "after.duckdb", scratch / "a.log", source),
        }
        for server in sides.values():
            stack.callback(server.stop)
            train(server.port, served)
            if scan:
                with psycopg.connect(DSN.format(port=server.port), autocommit=True) as conn:
                    conn.execute(
                        f"select * from pgml.train('{SCAN_PROJECT}', 'regression',"
                        f" '{SCAN_TABLE}', 'y', 'linear')"
                    )
        with psycopg.connect(DSN.format(port=sides["after"].port), autocommit=True) as conn:
            rows = feature_rows(conn, served.dataset)
        clients = {side: OursClient(server.port) for side, server in sides.items()}
        same = all(
            clients["before"].predict(served.project, row)
            == clients["after"].predict(served.project, row)
            for row in rows[:100]
        )
        for client in clients.values():
            client.close()
        pool = ClientPool(max(CLIENT_COUNTS))
        stack.callback(pool.close)
        for index in range(0 if args.skip_latency else args.rounds):
            for count in CLIENT_COUNTS:
                order = ("before", "after") if index % 2 == 0 else ("after", "before")
                for side in order:
                    load = pool.run("ours", sides[side], served, rows, count)
                    loads.setdefault((side, count), []).append(load)
                    w.say(
                        f"round {index + 1}, {count} clients, {side}: p50 {load.p50_ms:.3f} ms,"
                        f" p99 {load.p99_ms:.3f} ms, {load.per_second:,.0f}/s"
                    )
        if scan:
            scans = scan_rounds(sides, args.rounds)
    latency = "" if args.skip_latency else report(args, served, loads, same)
    return latency + (scan_report(args, scans) if scan else "")


def scan_rounds(sides: dict[str, Server], rounds: int) -> dict[tuple[str, str], list[float]]:
    """Seconds of the 1M-row sum and fetch of ``pgml.predict`` on each side, alternating."""
    timed: dict[tuple[str, str], list[float]] = {}
    conns = {s: psycopg.connect(DSN.format(port=v.port), autocommit=True) for s, v in sides.items()}
    try:
        sums = {
            side: conn.execute(SCAN_SUM_SQL).fetchone() or (0, 0.0) for side, conn in conns.items()
        }
        (count_b, sum_b), (count_a, sum_a) = sums["before"], sums["after"]
        if count_b != count_a or not math.isclose(sum_b, sum_a, rel_tol=1e-9, abs_tol=1e-6):
            raise w.BenchError(f"the two sides' sums differ: {sums}")
        for index in range(rounds):
            order = ("before", "after") if index % 2 == 0 else ("after", "before")
            for side in order:
                conn = conns[side]
                sum_s = _seconds(lambda c=conn: c.execute(SCAN_SUM_SQL).fetchone())[0]
                fetch_s = _seconds(lambda c=conn: c.execute(SCAN_FETCH_SQL).fetchall())[0]
                timed.setdefault((side, "sum"), []).append(sum_s)
                timed.setdefault((side, "fetch"), []).append(fetch_s)
                w.say(f"scan round {index + 1}, {side}: sum {sum_s:.3f} s, fetch {fetch_s:.3f} s")
    finally:
        for conn in conns.values():
            conn.close()
    return timed


def scan_report(args: argparse.Namespace, timed: dict[tuple[str, str], list[float]]) -> str:
    rows = []
    for what in ("sum", "fetch"):
        before = statistics.median(timed[("before", what)])
        after = statistics.median(timed[("after", what)])
        rows.append([what, f"{before:.3f}", f"{after:.3f}", f"**{after / before:.3f}**"])
    return (
        f"\n\n**{args.scan_rows:,}-row scan of pgml.predict over the wire** (medians of"
        f" {args.rounds} rounds, seconds)\n\n"
        + w.markdown_table(["query", "before s", "after s", "time after/before"], rows)
    )


def report(
    args: argparse.Namespace,
    served: Served,
    loads: dict[tuple[str, int], list[Load]],
    same: bool,
) -> str:
    def median(side: str, count: int, what: str) -> float:
        return statistics.median(getattr(load, what) for load in loads[(side, count)])

    rows = []
    for count in CLIENT_COUNTS:
        measures = ("p50_ms", "p99_ms", "per_second", "server_cpu_ms")
        b = {what: median("before", count, what) for what in measures}
        a = {what: median("after", count, what) for what in measures}
        rows.append(
            [
                str(count),
                f"{b['p50_ms']:.3f} / {a['p50_ms']:.3f}",
                f"{b['p99_ms']:.3f} / {a['p99_ms']:.3f}",
                f"{b['per_second']:,.0f} / {a['per_second']:,.0f}",
                f"**{a['per_second'] / b['per_second']:.3f}**",
                f"{a['p50_ms'] / b['p50_ms']:.3f}",
                f"{b['server_cpu_ms']:.3f} / {a['server_cpu_ms']:.3f}",
                f"**{a['server_cpu_ms'] / b['server_cpu_ms']:.3f}**",
            ]
        )
    headers = ["clients", "p50 ms before / after", "p99 ms before / after"]
    headers += ["req/s before / after", "throughput after/before", "p50 after/before"]
    headers += ["server CPU ms/req before / after", "server CPU after/before"]
    return (
        f"**one-row pgml.predict, {args.before[:12]} vs this checkout"
        f"{' with --source' if args.source else ''}** ({served.dataset}, {served.algorithm};"
        f" {served.requests:,} requests per side, client count and round; medians of"
        f" {args.rounds} rounds; predictions {'match' if same else 'DO NOT match'})\n\n"
        + w.markdown_table(headers, rows)
    )


def parser() -> argparse.ArgumentParser:
    p = w.base_parser("bench.endpoint_versions", __doc__ or "", seed=False)
    p.add_argument("--before", required=True, help="the git revision to compare with")
    p.add_argument("--requests", type=int, default=10_000, help="requests per side and count")
    p.add_argument("--skip-latency", action="store_true", help="the scan only")
    p.add_argument(
        "--scan-rows",
        type=int,
        default=1_000_000,
        help="rows of the scanned table (0: no scan; none with --source)",
    )
    p.add_argument(
        "--source",
        action="store_true",
        help="serve this checkout with --source (a throwaway PostgreSQL): privilege checks on",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    print(run(parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
