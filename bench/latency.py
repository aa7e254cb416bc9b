"""Commit-to-mirror latency at a fixed transaction rate (pgbench -R), the replicator in-process."""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from bench import workload as w
from mirror.changes import Lsn
from mirror.store import Mirror
from replicator.replicate import ReplicationSettings, Replicator
from sidecar.local_postgres import LocalPostgres

TABLE = ("public", "events")
CREATE = (
    "create table events (id bigserial primary key, committed_at timestamptz not null,"
    " payload text)"
)
SCRIPT = "insert into events(committed_at, payload) values (clock_timestamp(), 'x');\n"
CATCH_UP_TIMEOUT_S = 60.0


class LatencyMirror(Mirror):
    """A mirror that, right after each commit, timestamps the rows the commit made visible.

    ``committed_at`` is the source's ``clock_timestamp()`` at insert (same machine clock), so
    a row's latency is the time from its insert (just before its commit) to its mirror commit.
    Ids commit out of order with several clients, so every id above the lowest one not seen
    yet is checked.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.latencies_us: list[int] = []
        self.commits = 0
        self.rows_seen = 0
        self.changed = threading.Condition()
        self._floor = 0
        self._seen: set[int] = set()

    def commit(
        self, source: str, lsn: Lsn, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        super().commit(source, lsn, offsets)
        now_us = time.time_ns() // 1000
        fresh: list[tuple[int, int]] = []
        if TABLE in self.tables:
            rows = self.con.execute(
                "select id, epoch_us(committed_at) from public.events where id > ?", [self._floor]
            ).fetchall()
            fresh = [(int(i), int(at)) for i, at in rows if i not in self._seen]
            self._seen.update(i for i, _ in fresh)
            while self._floor + 1 in self._seen:
                self._floor += 1
                self._seen.discard(self._floor)
        with self.changed:
            self.latencies_us.extend(now_us - at for _, at in fresh)
            self.rows_seen += len(fresh)
            self.commits += 1
            self.changed.notify_all()

    def wake(self) -> None:
        with self.changed:
            self.changed.notify_all()


@dataclass
class LatencyRound:
    rows: int
    seconds: float
    commits: int
    pgbench_tps: float
    cpu_share: float
    latencies_ms: np.ndarray

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


@dataclass
class LatencyResult:
    rate: int
    duration: int
    synchronous_commit: str
    rounds: list[LatencyRound] = field(default_factory=list)

    @property
    def median_p99(self) -> float:
        return statistics.median(r.percentile(99) for r in self.rounds)

    def table(self) -> str:
        headers = ["round", "rows", "rows/s", "pgbench tps", "mirror commits", "rows/commit"]
        headers += ["p50 ms", "p95 ms", "p99 ms", "max ms", "process CPU"]
        rows = [
            [
                str(index),
                f"{r.rows:,}",
                f"{r.rows / r.seconds:,.0f}",
                f"{r.pgbench_tps:,.0f}",
                f"{r.commits:,}",
                f"{r.rows / max(r.commits, 1):.1f}",
                f"{r.percentile(50):.1f}",
                f"{r.percentile(95):.1f}",
                f"{r.percentile(99):.1f}",
                f"{float(r.latencies_ms.max()):.1f}",
                f"{r.cpu_share:.0%}",
            ]
            for index, r in enumerate(self.rounds, 1)
        ]
        return (
            f"**latency** commit-to-mirror at {self.rate} transactions/s for {self.duration}s"
            f" (pgbench, synchronous_commit={self.synchronous_commit}): median p99 ="
            f" **{self.median_p99:.1f} ms** (target <= 100 ms). No reference ratio:"
            " pg_recvlogical has no apply step.\n\n" + w.markdown_table(headers, rows)
        )


def run_round(
    server: LocalPostgres, scratch: Path, name: str, args: argparse.Namespace
) -> LatencyRound:
    dsn = server.create_database(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(CREATE)
        mirror = LatencyMirror(scratch / f"{name}.duckdb")
        settings = ReplicationSettings(
            source_dsn=dsn,
            mirror_path=mirror.path,
            tables=["public.events"],
            publication=w.PUBLICATION,
            slot=w.OUR_SLOT,
        )
        replicator = Replicator(settings, mirror=mirror)
        errors: list[BaseException] = []

        def replicate() -> None:
            try:
                replicator.run()
            except BaseException as exc:
                errors.append(exc)
                mirror.wake()

        thread = threading.Thread(target=replicate, name="replicator", daemon=True)
        thread.start()
        try:
            with mirror.changed:  # the initial copy (empty) is committed: the slot exists
                mirror.changed.wait_for(lambda: mirror.commits > 0 or bool(errors), 60)
            _raise(errors, "setting up")
            cpu_before, started = time.process_time(), time.perf_counter()
            tps = _pgbench(server, scratch, name, args)
            with psycopg.connect(dsn) as conn:
                row = conn.execute("select count(*) from events").fetchone()
            written = int(row[0]) if row else 0
            with mirror.changed:
                mirror.changed.wait_for(
                    lambda: mirror.rows_seen >= written or bool(errors), CATCH_UP_TIMEOUT_S
                )
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu_before
            _raise(errors, "streaming")
            if mirror.rows_seen != written:
                raise w.BenchError(
                    f"the mirror shows {mirror.rows_seen} of {written} rows after"
                    f" {CATCH_UP_TIMEOUT_S:.0f}s"
                )
        finally:
            replicator.stopping.set()
            thread.join(30)
            mirror.close()
        latencies = np.asarray(mirror.latencies_us, dtype=np.float64) / 1000
        return LatencyRound(written, seconds, mirror.commits - 1, tps, cpu / seconds, latencies)
    finally:
        w.drop_database(server, name)


def _raise(errors: list[BaseException], stage: str) -> None:
    if errors:
        raise w.BenchError(f"the replicator failed while {stage}: {errors[0]!r}") from errors[0]


def _pgbench(server: LocalPostgres, scratch: Path, dbname: str, args: argparse.Namespace) -> float:
    """Insert single-row transactions at the fixed rate; return the tps pgbench reports."""
    script = scratch / "insert_event.sql"
    script.write_text(SCRIPT)
    return w.run_pgbench(server, script, dbname, args)


def parser() -> argparse.ArgumentParser:
    p = w.base_parser("bench.latency", __doc__ or "", seed=False)
    p.add_argument("--rate", type=int, default=500, help="transactions/s (pgbench -R)")
    p.add_argument("--duration", type=int, default=20, help="seconds (pgbench -T)")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j")
    p.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="on",
        help="for pgbench's sessions (default on, as in production; the throwaway cluster's"
        " default is off, which holds WAL back from the walsender until the WAL writer wakes)",
    )
    return p


def run(args: argparse.Namespace) -> list[LatencyResult]:
    result = LatencyResult(args.rate, args.duration, args.synchronous_commit)
    with w.cluster("pgml-bench-latency-") as (server, scratch):
        for index in range(args.rounds):
            result.rounds.append(run_round(server, scratch, f"latency_{index}", args))
            last = result.rounds[-1]
            w.say(
                f"latency_{index}: {last.rows} rows, p50 {last.percentile(50):.1f} ms,"
                f" p99 {last.percentile(99):.1f} ms, max {float(last.latencies_ms.max()):.1f} ms"
            )
    return [result]


def main(argv: Sequence[str] | None = None) -> int:
    for result in run(parser().parse_args(argv)):
        print(result.table() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
