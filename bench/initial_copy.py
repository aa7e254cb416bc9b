"""Initial copy: ``replicate --catch-up`` on a fresh mirror vs ``psql \\copy ... to /dev/null``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg

from bench import workload as w
from sidecar.local_postgres import LocalPostgres

FILL_CHUNK = 1_000_000


def fill(dsn: str, rows: int, seed: int) -> None:
    """Create and fill the table, then vacuum it so no timed reader sets hint bits."""
    w.create_table(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for lo in range(1, rows + 1, FILL_CHUNK):
            conn.execute(w.insert_sql(lo, min(lo + FILL_CHUNK - 1, rows), seed).encode())
        conn.execute(f"vacuum (freeze, analyze) {w.TABLE}".encode())
        conn.execute("checkpoint")


def psql_command(server: LocalPostgres, dsn: str) -> list[str]:
    copy = f"\\copy (select * from {w.TABLE}) to /dev/null"
    return [
        str(server.bin_dir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        dsn,
        "-c",
        copy,
    ]


def run_round(
    server: LocalPostgres,
    scratch: Path,
    dsn: str,
    index: int,
    expected: tuple[int, ...],
) -> w.Round:
    mirror = scratch / f"copy_{index}.duckdb"
    slot = f"copy_{index}"
    ours = w.our_command(dsn, mirror, slot=slot)
    ref = psql_command(server, dsn)
    runs: dict[str, Callable[[], w.Timed]] = {
        "ours": lambda: w.run_timed("ours", ours, scratch / f"copy_{index}.ours.log"),
        "ref": lambda: w.run_timed("psql \\copy", ref, scratch / f"copy_{index}.ref.log"),
    }
    order = w.alternate(index)
    timed = {tool: runs[tool]() for tool in order}
    got = w.mirror_checksum(mirror)
    w.drop_slot(dsn, slot)
    mirror.unlink()
    note = "" if got == expected else f"source {expected} mirror {got}"
    return w.Round(order[0], timed["ref"], timed["ours"], got == expected, note)


def parser() -> argparse.ArgumentParser:
    p = w.base_parser("bench.initial_copy", __doc__ or "")
    p.add_argument("--rows", type=int, default=5_000_000, help="rows in the table")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run ours under cProfile once (untimed) and print the top entries",
    )
    return p


def run(args: argparse.Namespace) -> list[w.Comparison]:
    comparison = w.Comparison("initial copy", "psql", ">= 0.7; ours peak RSS < 500 MB", args.rows)
    with w.cluster("pgml-bench-copy-") as (server, scratch):
        dsn = server.create_database("copy")
        w.say(f"filling {args.rows:,} rows")
        fill(dsn, args.rows, args.seed)
        expected = w.source_checksum(dsn)
        for index in range(args.rounds):
            comparison.rounds.append(run_round(server, scratch, dsn, index, expected))
            last = comparison.rounds[-1]
            w.say(
                f"copy_{index}: psql {last.ref.seconds:.2f}s, ours {last.ours.seconds:.2f}s"
                f" ({last.ours.max_rss_mb:.0f} MB), ratio {last.ratio:.2f},"
                f" mirror {'matches' if last.matched else 'DIFFERS'}"
            )
        if args.profile:
            profile(dsn, scratch)
    return [comparison]


def profile(dsn: str, scratch: Path) -> None:
    """Run ours once more under cProfile (untimed) and print the top entries."""
    log = scratch / "copy_profiled.log"
    command = w.our_command(
        dsn, scratch / "copy_profiled.duckdb", slot=w.PROFILE_SLOT, profile=True
    )
    done = w.run_timed("ours under cProfile", command, log)
    print(f"### profile of ours, initial copy ({done.seconds:.2f}s under cProfile)\n", flush=True)
    print("```\n" + w.profile_top(log) + "\n```\n", flush=True)
    w.drop_slot(dsn, w.PROFILE_SLOT)


def main(argv: Sequence[str] | None = None) -> int:
    results = run(parser().parse_args(argv))
    for comparison in results:
        print(comparison.table() + "\n")
    return 0 if all(r.matched for c in results for r in c.rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
