"""Debezium through Kafka: our consumer vs a bare confluent-kafka loop, and the Debezium path vs
the pgoutput path end to end.

A real Kafka broker, Kafka Connect and the Debezium PostgreSQL connector run from
``deploy/kafka/up.sh`` (jars from Maven Central, cached), beside a throwaway PostgreSQL.

Part 1 (``consumer``): Debezium snapshots a table of ``--rows`` rows (10 columns: integers,
numeric, text, boolean, double, date, timestamptz) into its topic, JSON with embedded schemas.
Then, order alternating per round, each reads every message from the start in a new consumer
group: ours, ``KafkaReplicator`` with catch-up into a fresh mirror (decode, apply, commit with
offsets); the reference, a bare ``confluent_kafka.Consumer`` loop that only deserialises each
message's value (orjson, the parser ours uses; stdlib json reported beside). Ratio =
t_reference / t_ours.

Part 2 (``end-to-end``): the same workload through each path, one after the other per round,
order alternating: pgbench inserting single-row transactions at ``--rate`` for ``--duration``
s, each row stamped with ``clock_timestamp()``; a row's latency is from that stamp to the
mirror commit that holds it. Then a bulk load of ``--bulk-rows`` rows in 10,000-row
transactions, timed from the first insert to the last row in the mirror (rows/s). pgoutput:
the replicator on its own slot; Debezium: the connector's slot, Kafka, our consumer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
from confluent_kafka import Consumer, TopicPartition

from bench import latency as lat
from bench import workload as w
from replicator.kafka import KafkaReplicator, KafkaSettings
from replicator.replicate import ReplicationSettings, Replicator
from sidecar.local_postgres import LocalPostgres

DEPLOY = w.CODE_ROOT / "deploy" / "kafka"
PARTS = ("consumer", "end-to-end")
WIDE = (
    "create table wide (id bigint primary key, a int, b bigint, amount numeric(12, 2),"
    " name text, flag boolean, score double precision, day date, created timestamptz,"
    " note text)"
)
WIDE_ROWS = (
    "insert into wide select g, g % 1000, g * 7919, (g % 100000) / 100.0, 'name ' || g,"
    " g % 3 = 0, g / 7.0, date '2020-01-01' + (g % 2000),"
    " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', md5(g::text)"
    " from generate_series({lo}, {hi}) g"
)
BULK_BATCH = 10_000
WAIT_TIMEOUT_S = 300.0


# -- the Kafka stack -------------------------------------------------------------------------------


class KafkaStack:
    """Broker, Kafka Connect and Debezium connectors, through the deploy/kafka scripts."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bootstrap = ""

    def _run(self, script: str, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(DEPLOY / script), "--workdir", str(self.workdir), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise w.BenchError(f"deploy/kafka/{script} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def up(self) -> None:
        self.bootstrap = self._run("up.sh").strip().splitlines()[-1]

    def add(self, dsn: str, tables: Sequence[str], prefix: str) -> None:
        self._run(
            "up.sh", "--pg-dsn", dsn, "--tables", ",".join(tables), "--topic-prefix", prefix,
            "--drop-slot-on-stop",
        )  # fmt: skip

    def remove(self, prefix: str) -> None:
        self._run("connector.sh", "remove", "--name", prefix)

    def down(self) -> None:
        self._run("down.sh")

    def published(self, topic: str) -> int:
        """Messages in ``topic`` (the sum of its partitions' end offsets)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-watch"})
        try:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                return 0
            return sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions
            )
        finally:
            consumer.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise w.BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


# -- part 1: the consumer vs a bare loop -----------------------------------------------------------


@dataclass
class ConsumerRound:
    order: str
    ours_s: float
    bare_s: float
    bare_json_s: float
    rows: int

    @property
    def ratio(self) -> float:
        return self.bare_s / self.ours_s


@dataclass
class ConsumerResult:
    rows: int
    message_bytes: int
    rounds: list[ConsumerRound] = field(default_factory=list)

    def table(self) -> str:
        ratio = statistics.median(r.ratio for r in self.rounds)
        json_ratio = statistics.median(r.bare_json_s / r.ours_s for r in self.rounds)
        headers = ["round", "order", "ours s", "bare (orjson) s", "bare (json) s"]
        headers += ["ours msg/s", "bare msg/s", "ratio", "rows in mirror"]
        rows = [
            [
                str(i), r.order, f"{r.ours_s:.2f}", f"{r.bare_s:.2f}", f"{r.bare_json_s:.2f}",
                f"{self.rows / r.ours_s:,.0f}", f"{self.rows / r.bare_s:,.0f}",
                f"{r.ratio:.2f}", f"{r.rows:,}",
            ]
            for i, r in enumerate(self.rounds, 1)
        ]  # fmt: skip
        return (
            f"**Debezium consumer** ({self.rows:,} snapshot messages of a 10-column table, JSON"
            f" with schemas, {self.message_bytes / self.rows:,.0f} bytes a message): median"
            f" ratio bare loop (orjson) / ours = **{ratio:.2f}** (target >= 0.7); against a"
            f" bare loop with stdlib json {json_ratio:.2f}.\n\n" + w.markdown_table(headers, rows)
        )


def bare_loop(bootstrap: str, topic: str, count: int, loads: Callable[[bytes], Any]) -> float:
    """Read ``count`` messages of ``topic`` from the start and deserialise each value."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
        }
    )
    started = time.perf_counter()
    consumer.subscribe([topic])
    seen = 0
    try:
        while seen < count:
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                if message.error() is None:
                    loads(message.value() or b"null")
                    seen += 1
        return time.perf_counter() - started
    finally:
        consumer.close()


def ours(bootstrap: str, prefix: str, mirror: Path) -> tuple[float, int]:
    settings = KafkaSettings(
        bootstrap=bootstrap,
        topic_prefix=prefix,
        mirror_path=mirror,
        tables=["public.wide"],
        group_id=f"bench-ours-{time.monotonic_ns()}",
        catch_up=True,
    )
    started = time.perf_counter()
    replicator = KafkaReplicator(settings)
    try:
        replicator.run()
        seconds = time.perf_counter() - started
        row = replicator.mirror.con.execute("select count(*) from public.wide").fetchone()
    finally:
        replicator.close()
    return seconds, int(row[0]) if row else 0


def run_consumer(
    server: LocalPostgres, scratch: Path, stack: KafkaStack, args: argparse.Namespace
) -> ConsumerResult:
    dsn = server.create_database("dbz_consumer")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(WIDE)
        for lo in range(1, args.rows + 1, 100_000):
            conn.execute(WIDE_ROWS.format(lo=lo, hi=min(lo + 99_999, args.rows)).encode())
    prefix = "benchc"
    topic = f"{prefix}.public.wide"
    w.say(f"consumer: Debezium snapshots {args.rows:,} rows")
    stack.add(dsn, ["public.wide"], prefix)
    wait_until(lambda: stack.published(topic) >= args.rows, f"{args.rows} messages in {topic}")
    size = _message_bytes(stack.bootstrap, topic)
    result = ConsumerResult(args.rows, size * args.rows)
    for index in range(args.rounds):
        first, _ = w.alternate(index)
        timings: dict[str, float] = {}
        rows = 0
        for side in ("ours", "ref") if first == "ours" else ("ref", "ours"):
            if side == "ours":
                mirror = scratch / f"consumer_{index}.duckdb"
                timings["ours"], rows = ours(stack.bootstrap, prefix, mirror)
                mirror.unlink()
            else:
                timings["bare"] = bare_loop(stack.bootstrap, topic, args.rows, orjson.loads)
        timings["json"] = bare_loop(stack.bootstrap, topic, args.rows, json.loads)
        order = "ours bare" if first == "ours" else "bare ours"
        result.rounds.append(
            ConsumerRound(order, timings["ours"], timings["bare"], timings["json"], rows)
        )
        w.say(
            f"consumer round {index + 1}: ours {timings['ours']:.2f}s, bare {timings['bare']:.2f}s"
            f" (ratio {timings['bare'] / timings['ours']:.2f})"
        )
        if rows != args.rows:
            raise w.BenchError(f"the mirror holds {rows} rows, expected {args.rows}")
    stack.remove(prefix)
    w.drop_database(server, "dbz_consumer")
    return result


def _message_bytes(bootstrap: str, topic: str) -> int:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-size", "auto.offset.reset": "earliest"}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        while True:
            message = consumer.poll(10)
            if message is not None and message.error() is None:
                return len(message.value() or b"") + len(message.key() or b"")
    finally:
        consumer.close()


# -- part 2: end to end ----------------------------------------------------------------------------


@dataclass
class PathRound:
    rows: int
    seconds: float
    latencies_ms: np.ndarray
    bulk_rows: int
    bulk_seconds: float

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


@dataclass
class EndToEndResult:
    rate: int
    duration: int
    bulk_rows: int
    rounds: list[dict[str, PathRound]] = field(default_factory=list)

    def table(self) -> str:
        headers = ["round", "path", "stream rows/s", "p50 ms", "p99 ms", "max ms"]
        headers += ["bulk rows/s"]
        rows = []
        for index, paths in enumerate(self.rounds, 1):
            for name, r in paths.items():
                rows.append(
                    [
                        str(index), name, f"{r.rows / r.seconds:,.0f}", f"{r.p(50):.1f}",
                        f"{r.p(99):.1f}", f"{float(r.latencies_ms.max()):.1f}",
                        f"{r.bulk_rows / r.bulk_seconds:,.0f}",
                    ]
                )  # fmt: skip

        def median(name: str, value: Callable[[PathRound], float]) -> float:
            return statistics.median(value(r[name]) for r in self.rounds)

        p99 = {n: median(n, lambda r: r.p(99)) for n in ("pgoutput", "debezium")}
        bulk = {n: median(n, lambda r: r.bulk_rows / r.bulk_seconds) for n in p99}
        return (
            f"**end to end, Debezium vs pgoutput** (pgbench single-row inserts at {self.rate}/s"
            f" for {self.duration}s, then {self.bulk_rows:,} rows in {BULK_BATCH:,}-row"
            f" transactions): median p99 latency pgoutput **{p99['pgoutput']:.0f} ms**, Debezium"
            f" **{p99['debezium']:.0f} ms**; bulk pgoutput **{bulk['pgoutput']:,.0f} rows/s**,"
            f" Debezium **{bulk['debezium']:,.0f} rows/s** (ratio Debezium / pgoutput"
            f" {bulk['debezium'] / bulk['pgoutput']:.2f}).\n\n" + w.markdown_table(headers, rows)
        )


class _Path:
    """One path from the source into a LatencyMirror, started and stopped around a round."""

    def __init__(self, mirror: lat.LatencyMirror, runner: Replicator | KafkaReplicator) -> None:
        self.mirror = mirror
        self.runner = runner
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            self.errors.append(exc)
            self.mirror.wake()

    def wait_rows(self, count: int) -> None:
        with self.mirror.changed:
            self.mirror.changed.wait_for(
                lambda: self.mirror.rows_seen >= count or bool(self.errors), WAIT_TIMEOUT_S
            )
        if self.errors:
            raise w.BenchError(f"the path failed: {self.errors[0]!r}") from self.errors[0]
        if self.mirror.rows_seen < count:
            raise w.BenchError(f"the mirror shows {self.mirror.rows_seen} of {count} rows")

    def stop(self) -> None:
        self.runner.stopping.set()
        self.thread.join(30)
        self.mirror.close()


def run_path(
    name: str,
    server: LocalPostgres,
    scratch: Path,
    stack: KafkaStack,
    index: int,
    args: argparse.Namespace,
) -> PathRound:
    dbname = f"e2e_{name}_{index}"
    dsn = server.create_database(dbname)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(lat.CREATE)
    mirror = lat.LatencyMirror(scratch / f"{dbname}.duckdb")
    prefix = f"e2e{index}"
    runner: Replicator | KafkaReplicator
    if name == "pgoutput":
        runner = Replicator(
            ReplicationSettings(
                source_dsn=dsn, mirror_path=mirror.path, tables=["public.events"],
                publication=w.PUBLICATION, slot=w.OUR_SLOT,
            ),
            mirror=mirror,
        )  # fmt: skip
    else:
        stack.add(dsn, ["public.events"], prefix)
        runner = KafkaReplicator(
            KafkaSettings(
                bootstrap=stack.bootstrap, topic_prefix=prefix, mirror_path=mirror.path,
                tables=["public.events"], group_id=f"bench-e2e-{index}",
            ),
            mirror=mirror,
        )  # fmt: skip
    path = _Path(mirror, runner)
    path.thread.start()
    try:
        # one row first, untimed: the slot streams, the topic exists and is assigned
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("insert into events (committed_at, payload) values (now(), 'warm')")
        path.wait_rows(1)
        mirror.latencies_us.clear()
        started = time.perf_counter()
        lat._pgbench(server, scratch, dbname, args)
        written = _count(dsn)
        path.wait_rows(written)
        written -= 1  # the warm-up row
        seconds = time.perf_counter() - started
        latencies = np.asarray(mirror.latencies_us, dtype=np.float64) / 1000
        bulk_started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(0, args.bulk_rows, BULK_BATCH):
                conn.execute(
                    "insert into events (committed_at, payload) select clock_timestamp(), 'x'"
                    " from generate_series(1, %s)",
                    [BULK_BATCH],
                )
        total = _count(dsn) - 1
        path.wait_rows(total + 1)
        bulk_seconds = time.perf_counter() - bulk_started
    finally:
        path.stop()
        if name == "debezium":
            stack.remove(prefix)
        w.drop_database(server, dbname)
    return PathRound(written, seconds, latencies, total - written, bulk_seconds)


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select count(*) from events").fetchone()
    return int(row[0]) if row else 0


def run_end_to_end(
    server: LocalPostgres, scratch: Path, stack: KafkaStack, args: argparse.Namespace
) -> EndToEndResult:
    result = EndToEndResult(args.rate, args.duration, args.bulk_rows)
    for index in range(args.rounds):
        first, _ = w.alternate(index)
        order = ("pgoutput", "debezium") if first == "ours" else ("debezium", "pgoutput")
        paths = {}
        for name in order:
            paths[name] = run_path(name, server, scratch, stack, index, args)
            r = paths[name]
            w.say(
                f"end-to-end round {index + 1} {name}: p50 {r.p(50):.1f} ms, p99 {r.p(99):.1f}"
                f" ms, bulk {r.bulk_rows / r.bulk_seconds:,.0f} rows/s"
            )
        result.rounds.append({n: paths[n] for n in ("pgoutput", "debezium")})
    return result


# -- running ---------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = w.base_parser("bench.debezium", __doc__ or "", seed=False)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--rows", type=int, default=200_000, help="part 1: snapshot rows")
    p.add_argument("--rate", type=int, default=500, help="part 2: transactions/s (pgbench -R)")
    p.add_argument("--duration", type=int, default=20, help="part 2: seconds (pgbench -T)")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j")
    p.add_argument("--synchronous-commit", choices=["on", "off"], default="on")
    p.add_argument("--bulk-rows", type=int, default=200_000, help="part 2: bulk-loaded rows")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    results: list[Any] = []
    with w.cluster("pgml-bench-debezium-") as (server, scratch):
        stack = KafkaStack(scratch / "kafka")
        w.say("starting Kafka and Kafka Connect")
        stack.up()
        try:
            if "consumer" in args.parts:
                results.append(run_consumer(server, scratch, stack, args))
            if "end-to-end" in args.parts:
                results.append(run_end_to_end(server, scratch, stack, args))
        finally:
            stack.down()
    print(w.machine_info() + "\n")
    for result in results:
        print(result.table() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
