"""Streaming apply: ``replicate --catch-up`` vs ``pg_recvlogical`` reading the same WAL."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psycopg

from bench import workload as w
from sidecar.local_postgres import LocalPostgres

VARIANTS = {
    "a": "inserts, {batch:,} rows per transaction",
    "b": "inserts, one transaction",
    "c": "mixed: inserts, then updates and deletes, ~{mixed_batch:,} rows per transaction",
}


def batched_inserts(rows: int, batch: int, seed: int) -> Iterator[str]:
    for lo in range(1, rows + 1, batch):
        yield w.insert_sql(lo, min(lo + batch - 1, rows), seed)


def mixed_changes(inserts: int, batch: int, seed: int) -> Iterator[str]:
    """Insert ``inserts`` rows; then update the first 3/4 of them and delete every 4th row.

    Updates and deletes interleave, three update transactions to one delete transaction, each
    touching about ``batch`` rows through a set-based statement over an id range.
    """
    yield from batched_inserts(inserts, batch, seed)
    updated = inserts * 3 // 4
    update_ranges = [(lo, min(lo + batch - 1, updated)) for lo in range(1, updated + 1, batch)]
    span = batch * 4
    delete_ranges = [(lo, min(lo + span - 1, inserts)) for lo in range(1, inserts + 1, span)]
    while update_ranges or delete_ranges:
        for lo, hi in update_ranges[:3]:
            yield (
                f"update {w.TABLE} set a = a + 1, b = b * 2, c = upper(c)"
                f" where id between {lo} and {hi}"
            )
        del update_ranges[:3]
        if delete_ranges:
            lo, hi = delete_ranges.pop(0)
            yield f"delete from {w.TABLE} where id between {lo} and {hi} and id % 4 = 0"


def workload(variant: str, args: argparse.Namespace) -> tuple[int, Iterator[str]]:
    """(rows the variant writes, its transactions: one SQL statement each)."""
    if variant == "a":
        return args.rows, batched_inserts(args.rows, args.batch, args.seed)
    if variant == "b":
        return args.rows, iter([w.insert_sql(1, args.rows, args.seed)])
    inserts = args.mixed_inserts
    changed = inserts + inserts * 3 // 4 + inserts // 4
    return changed, mixed_changes(inserts, args.mixed_batch, args.seed)


def run_variant(
    server: LocalPostgres, scratch: Path, variant: str, args: argparse.Namespace
) -> w.Comparison:
    rows, _ = workload(variant, args)
    title = VARIANTS[variant].format(batch=args.batch, mixed_batch=args.mixed_batch)
    comparison = w.Comparison(f"streaming ({variant}) {title}", "pg_recvlogical", ">= 0.9", rows)
    for index in range(args.rounds):
        name = f"stream_{variant}_{index}"
        dsn = server.create_database(name)
        try:
            comparison.rounds.append(run_round(server, scratch, dsn, name, variant, index, args))
        finally:
            w.drop_database(server, name)
        last = comparison.rounds[-1]
        w.say(
            f"{name}: pg_recvlogical {last.ref.seconds:.2f}s, ours {last.ours.seconds:.2f}s,"
            f" ratio {last.ratio:.2f}, mirror {'matches' if last.matched else 'DIFFERS'}"
        )
    return comparison


def run_round(
    server: LocalPostgres,
    scratch: Path,
    dsn: str,
    name: str,
    variant: str,
    index: int,
    args: argparse.Namespace,
) -> w.Round:
    mirror = scratch / f"{name}.duckdb"
    w.create_table(dsn)
    ours = w.our_command(dsn, mirror)
    w.run_timed("ours (set-up on the empty table)", ours, scratch / f"{name}.setup.log")
    profiled = w.our_command(
        dsn, scratch / f"{name}.profiled.duckdb", slot=w.PROFILE_SLOT, profile=True
    )
    profiling = args.profile and index == 0
    if profiling:
        w.run_timed("ours (set-up for the profile)", profiled, scratch / f"{name}.psetup.log")
    w.create_ref_slot(dsn)
    w.create_ref_slot(dsn, w.WARM_SLOT)
    _, statements = workload(variant, args)
    w.say(f"{name}: writing the workload")
    with psycopg.connect(dsn) as conn:
        for statement in statements:
            conn.execute(statement.encode())
            conn.commit()
    end = w.workload_end(dsn)
    expected = w.source_checksum(dsn)
    # The first reader of fresh WAL pays ~0.4 s more than the next ones whichever tool it is,
    # so an untimed pg_recvlogical on a third slot goes first.
    warm = w.recvlogical_command(server, dsn, end, slot=w.WARM_SLOT)
    w.run_timed("pg_recvlogical (warm-up)", warm, scratch / f"{name}.warm.log")
    ref = w.recvlogical_command(server, dsn, end)
    runs: dict[str, Callable[[], w.Timed]] = {
        "ours": lambda: w.run_timed("ours", ours, scratch / f"{name}.ours.log"),
        "ref": lambda: w.run_timed("pg_recvlogical", ref, scratch / f"{name}.ref.log"),
    }
    order = w.alternate(index)
    timed = {tool: runs[tool]() for tool in order}
    got = w.mirror_checksum(mirror)
    if profiling:
        log = scratch / f"{name}.profile.log"
        done = w.run_timed("ours under cProfile", profiled, log)
        print(f"### profile of ours, {name} ({done.seconds:.2f}s under cProfile)\n", flush=True)
        print("```\n" + w.profile_top(log) + "\n```\n", flush=True)
    note = "" if got == expected else f"source {expected} mirror {got}"
    return w.Round(order[0], timed["ref"], timed["ours"], got == expected, note)


def parser() -> argparse.ArgumentParser:
    p = w.base_parser("bench.streaming", __doc__ or "")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows inserted in variants a, b")
    p.add_argument("--batch", type=int, default=10_000, help="rows per transaction in variant a")
    p.add_argument(
        "--mixed-inserts", type=int, default=400_000, help="rows inserted first in variant c"
    )
    p.add_argument(
        "--mixed-batch", type=int, default=5_000, help="rows per transaction in variant c"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run ours under cProfile once per variant (untimed) and print the top entries",
    )
    p.add_argument(
        "--variants", default="abc", help="which variants to run, e.g. 'ac' (default abc)"
    )
    return p


def run(args: argparse.Namespace) -> list[w.Comparison]:
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {''.join(sorted(unknown))} (choose from a, b, c)")
    with w.cluster("pgml-bench-streaming-") as (server, scratch):
        return [run_variant(server, scratch, v, args) for v in args.variants]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    results = run(args)
    for comparison in results:
        print(comparison.table() + "\n")
    return 0 if all(r.matched for c in results for r in c.rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
