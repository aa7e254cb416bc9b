"""The Debezium source end to end: a real PostgreSQL, a real Debezium connector in Kafka
Connect, a real Kafka broker, and the consumer mirroring its topics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from replicator.kafka import KafkaReplicator, KafkaSettings
from tests.fix_kafka import KafkaStack, unique_prefix
from tests.replicator.mirror_check import (
    InThread,
    assert_same_rows,
    execute,
    mirror_rows,
    source_rows,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)

EVERY_TYPE = """
create table public.every_type (
    id integer primary key,
    big bigint,
    small smallint,
    amount numeric(10, 2),
    name text,
    label varchar(20),
    flag boolean,
    score double precision,
    ratio real,
    day date,
    at_time time,
    stamp timestamp,
    stamp_tz timestamptz,
    uid uuid,
    doc jsonb,
    plain_json json,
    ints int[],
    words text[],
    raw bytea,
    notes text
)
"""
EVERY_TYPE_ROW = """
insert into public.every_type values ({id}, {id} * 10000000000, {id}, {id} * 1.25 - 7.5,
    'name ' || {id}, 'label', {id} % 2 = 0, {id} * 0.1, {id} / 4.0, date '2024-02-29' + {id},
    time '13:14:15.123456', timestamp '2024-01-02 03:04:05.678901' + {id} * interval '1 hour',
    timestamptz '2024-06-01 12:00:00+02' + {id} * interval '1 minute',
    md5({id}::text)::uuid, jsonb_build_object('id', {id}, 'tags', jsonb_build_array('a', 'b')),
    '{{"k": [1, 2]}}', array[{id}, null, 3], array['a b', 'q"x', null, 'c,d'],
    decode('00ff' || lpad(to_hex({id}), 4, '0'), 'hex'), repeat('n', 10))
"""
JSON_COLUMNS = ("doc", "plain_json")
TEXT_CASTS = {"plain_json": "::jsonb"}


class Consuming(InThread):
    """The Kafka consumer in a thread; its mirror is read through its own connection."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.consumer = KafkaReplicator(settings)
        self.con = self.consumer.mirror.con  # opened here, before the thread uses it
        super().__init__(self.consumer)

    def rows(self, table: str, order_by: str = "1") -> list:
        try:
            return mirror_rows(self.con, table, order_by, JSON_COLUMNS)
        except duckdb.CatalogException:
            return []  # not created yet


def settings_for(stack: Any, mirror: Path, tables: list[str], **options: Any) -> KafkaSettings:
    """Consumer settings for a test: a consumer group of its own unless one is given."""
    options.setdefault("group_id", unique_prefix("group"))
    return KafkaSettings(
        bootstrap=stack.bootstrap,
        topic_prefix=stack.topic_prefix,
        mirror_path=mirror,
        tables=tables,
        max_delay=0.05,
        **options,
    )


def wait_same(
    consuming: Consuming,
    dsn: str,
    table: str,
    order_by: str = "1",
    casts: dict[str, str] | None = None,
    timeout: float = 60,
) -> None:
    expected = source_rows(dsn, table, order_by, casts)
    last: list = []

    def same() -> bool:
        nonlocal last
        if consuming.error is not None:
            raise consuming.error
        last = consuming.rows(table, order_by)
        return last == expected

    try:
        wait_for(same, timeout=timeout, what=f"{table} in the mirror to equal the source")
    except AssertionError:
        missing = [_short(r) for r in expected if r not in last][:3]
        extra = [_short(r) for r in last if r not in expected][:3]
        raise AssertionError(
            f"{table}: mirror has {len(last)} rows, source {len(expected)};"
            f" missing {missing}, unexpected {extra}"
        ) from None


def _short(row: tuple[Any, ...]) -> str:
    return ", ".join(repr(v)[:60] for v in row)


def test_snapshot_then_stream_every_type(
    source_dsn: str, debezium: Callable[..., Any], mirror_path: Path
) -> None:
    execute(source_dsn, EVERY_TYPE, *(EVERY_TYPE_ROW.format(id=i) for i in range(1, 6)))
    execute(
        source_dsn,
        "insert into public.every_type (id) values (100)",  # every other column NULL
        # 64 kB that do not compress: stored out of line (TOASTed)
        "update public.every_type set notes = (select string_agg(md5(i::text), '')"
        " from generate_series(1, 2000) i) where id = 5",
    )
    stack = debezium(source_dsn, ["public.every_type"], prefix="types")
    with Consuming(settings_for(stack, mirror_path, ["public.every_type"])) as consuming:
        wait_same(consuming, source_dsn, "public.every_type", casts=TEXT_CASTS)
        snapshot = consuming.consumer.stats.messages
        execute(
            source_dsn,
            *(EVERY_TYPE_ROW.format(id=i) for i in range(6, 9)),
            "update public.every_type set score = -1.5, words = array['x'] where id = 2",
            # an update leaving the TOASTed notes unchanged: Debezium sends a placeholder
            "update public.every_type set big = 42 where id = 5",
            "delete from public.every_type where id = 3",
            "update public.every_type set id = 300 where id = 4",  # a key change
            "update public.every_type set name = null, doc = null where id = 1",
        )
        wait_same(consuming, source_dsn, "public.every_type", casts=TEXT_CASTS)
        notes = (
            consuming.con.cursor()
            .execute("select length(notes) from public.every_type where id = 5")
            .fetchone()
        )
        assert notes == (32 * 2000,), "the unchanged TOASTed value was kept"
        execute(
            source_dsn,
            "alter table public.every_type add column extra integer",
            "insert into public.every_type (id, extra) values (400, 7)",
        )
        wait_same(consuming, source_dsn, "public.every_type", casts=TEXT_CASTS)
        execute(
            source_dsn,
            "truncate public.every_type",
            "insert into public.every_type (id) values (1)",
        )
        wait_same(consuming, source_dsn, "public.every_type", casts=TEXT_CASTS)
        stats = consuming.stop()
    assert stats.messages > snapshot
    assert stats.dead_letters == {}
    types = dict(
        duckdb.connect(str(mirror_path), read_only=True)
        .execute(
            "select column_name, data_type from information_schema.columns"
            " where table_name = 'every_type'"
        )
        .fetchall()
    )
    assert types["amount"] == "DECIMAL(10,2)"
    assert types["stamp_tz"] == "TIMESTAMP WITH TIME ZONE"
    assert types["ints"] == "INTEGER[]"
    assert types["uid"] == "UUID"
    assert types["extra"] == "INTEGER"


def test_without_embedded_schemas(
    source_dsn: str, debezium: Callable[..., Any], mirror_path: Path
) -> None:
    execute(
        source_dsn,
        "create table public.plain (id bigint primary key, name text, flag boolean,"
        " score double precision, amount numeric(8, 3), tags text[], doc jsonb)",
        "insert into public.plain select i, 'n' || i, i % 2 = 0, i / 8.0, i * 1.001,"
        " array['t' || i], jsonb_build_object('i', i) from generate_series(1, 50) i",
    )
    stack = debezium(source_dsn, ["public.plain"], prefix="plain", schemas=False,
                     decimal_mode="string")  # fmt: skip
    with Consuming(settings_for(stack, mirror_path, ["public.plain"])) as consuming:
        execute(
            source_dsn,
            "insert into public.plain values (51, null, null, null, null, null, null)",
            "update public.plain set score = 0.25, name = 'changed' where id = 7",
            "delete from public.plain where id between 10 and 19",
        )
        wait_same(
            consuming, source_dsn, "public.plain", casts={"amount": "::text", "doc": "::text"}
        )
        stats = consuming.stop()
    assert stats.dead_letters == {}


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return max(tp.offset, 0)
    finally:
        consumer.close()


def _replicate_cli(stack: Any, mirror: Path, tables: str, group: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "sidecar.cli", "replicate", "--kafka", stack.bootstrap,
        "--topic-prefix", stack.topic_prefix, "--mirror", str(mirror), "--tables", tables,
        "--group-id", group, *extra,
    ]  # fmt: skip


def test_kill_9_during_the_stream_loses_and_duplicates_nothing(
    source_dsn: str, debezium: Callable[..., Any], mirror_path: Path
) -> None:
    execute(
        source_dsn,
        "create table public.orders (id integer primary key, qty integer, note text)",
        # no key: a message applied twice would show as a second row
        "create table public.audit (order_id integer, what text)",
        "alter table public.audit replica identity full",
        "insert into public.orders select i, i, 'first' from generate_series(1, 2000) i",
    )
    tables = "public.orders,public.audit"
    stack = debezium(source_dsn, tables.split(","), prefix="crash")
    writer = threading.Thread(
        target=execute,
        args=(
            source_dsn,
            *(
                f"with o as (update public.orders set qty = qty + 1 where id % 7 = {i % 7}"
                f" returning id) insert into public.audit select id, 'bump {i}' from o"
                for i in range(40)
            ),
            "insert into public.orders select i, i, 'late' from generate_series(2001, 4000) i",
        ),
    )
    writer.start()
    group = unique_prefix("crash")
    process = subprocess.Popen(
        _replicate_cli(stack, mirror_path, tables, group), stderr=subprocess.PIPE, text=True
    )
    try:
        topic = f"{stack.topic_prefix}.public.audit"
        wait_for(
            lambda: _committed(stack.bootstrap, group, topic) > 500,
            timeout=120,
            what="the consumer to commit part of the stream",
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    writer.join(timeout=120)
    assert not writer.is_alive()
    assert process.returncode == -signal.SIGKILL
    # the same mirror and group: a static member back at once, at the mirror's offsets
    restarted = settings_for(stack, mirror_path, tables.split(","), group_id=group)
    with Consuming(restarted) as consuming:
        wait_same(consuming, source_dsn, "public.orders")
        wait_same(consuming, source_dsn, "public.audit", "1, 2")
    # everything published is in the mirror: --catch-up has nothing left to do
    done = subprocess.run(
        [*_replicate_cli(stack, mirror_path, tables, group), "--catch-up"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert assert_same_rows(source_dsn, mirror_path, "public.orders") == 4000
    audit = assert_same_rows(source_dsn, mirror_path, "public.audit", "1, 2")
    assert audit == sum(1 for i in range(40) for id_ in range(1, 2001) if id_ % 7 == i % 7)


def test_malformed_messages_go_to_the_dead_letter_table(
    source_dsn: str, debezium: Callable[..., Any], mirror_path: Path
) -> None:
    execute(
        source_dsn,
        "create table public.items (id integer primary key, name text)",
        "insert into public.items values (1, 'one'), (2, 'two')",
    )
    stack = debezium(source_dsn, ["public.items"], prefix="bad")
    topic = f"{stack.topic_prefix}.public.items"
    with Consuming(settings_for(stack, mirror_path, ["public.items"])) as consuming:
        wait_same(consuming, source_dsn, "public.items")
        producer = Producer({"bootstrap.servers": stack.bootstrap})
        good = {"op": "c", "source": {"schema": "public", "table": "items"}}
        bad = [
            b"this is not json",
            json.dumps({"hello": "world"}).encode(),  # JSON, but no Debezium envelope
            json.dumps(
                {**good, "source": {"schema": "public", "table": "secret"}, "after": {"id": 9}}
            ).encode(),
            json.dumps({**good, "after": {"id": "not a number", "name": "x"}}).encode(),
        ]
        for value in bad:
            producer.produce(topic, value=value, key=b'{"id": 1}')
        producer.flush(10)
        execute(source_dsn, "insert into public.items values (3, 'three')")
        wait_same(consuming, source_dsn, "public.items")

        def dead() -> list[tuple[Any, ...]]:
            return (
                consuming.con.cursor()
                .execute(
                    'select topic, "partition", "offset", reason, value'
                    ' from _pgml_sidecar.dead_letters order by "offset"'
                )
                .fetchall()
            )

        wait_for(lambda: len(dead()) == len(bad), what="four dead letters")
        stats = consuming.stop()
    letters = dead_letters(mirror_path)
    assert [value for *_, value in letters] == bad
    assert [t for t, *_ in letters] == [topic] * len(bad)
    offsets = [offset for _, _, offset, _, _ in letters]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(bad)
    reasons = [reason for _, _, _, reason, _ in letters]
    assert reasons[0].startswith("not JSON")
    assert "not a Debezium change event" in reasons[1]
    assert "public.secret is not mirrored" in reasons[2]
    assert "id" in reasons[3]
    assert stats.dead_letters == {topic: len(bad)}


def dead_letters(mirror: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(mirror), read_only=True)
    try:
        return con.execute(
            'select topic, "partition", "offset", reason, value'
            ' from _pgml_sidecar.dead_letters order by "offset"'
        ).fetchall()
    finally:
        con.close()


def test_two_consumers_in_one_group_split_the_partitions(
    source_dsn: str, debezium: Callable[..., Any], kafka_stack: KafkaStack, tmp_path: Path
) -> None:
    execute(
        source_dsn,
        "create table public.events (id integer primary key, v integer)",
        "insert into public.events select i, i from generate_series(1, 1000) i",
    )
    # The topic first, so that both consumers hold a partition before any row arrives: a
    # partition that moved would leave its rows in the mirror of the consumer that lost it.
    prefix = unique_prefix("split")
    topic = f"{prefix}.public.events"
    admin = AdminClient({"bootstrap.servers": kafka_stack.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result()
    first, second = (
        Consuming(
            KafkaSettings(
                bootstrap=kafka_stack.bootstrap, topic_prefix=prefix, tables=["public.events"],
                mirror_path=tmp_path / name, max_delay=0.05, group_id="shards",
            )
        )
        for name in ("a.duckdb", "b.duckdb")
    )  # fmt: skip
    with first, second:
        wait_for(
            lambda: len(first.consumer.assignment) == len(second.consumer.assignment) == 1,
            timeout=60,
            what="a partition for each consumer",
        )
        debezium(source_dsn, ["public.events"], prefix=prefix, exact_prefix=True)
        execute(source_dsn, "update public.events set v = -v where id % 10 = 0")

        def split() -> bool:
            a, b = first.rows("public.events"), second.rows("public.events")
            return len(a) + len(b) == 1000 and all(v == (-i if i % 10 == 0 else i)
                                                   for i, v in a + b)  # fmt: skip

        wait_for(split, timeout=90, what="the two mirrors to hold the table between them")
        a, b = first.rows("public.events"), second.rows("public.events")
        first.stop()
        second.stop()
    assert a and b, "each consumer mirrors the rows of its partition"
    assert not {r[0] for r in a} & {r[0] for r in b}, "no row is in both mirrors"
    assert sorted(a + b) == source_rows(source_dsn, "public.events", "1")
    offsets_a = stored_offsets(tmp_path / "a.duckdb")
    offsets_b = stored_offsets(tmp_path / "b.duckdb")
    assert {p for _, p in offsets_a} | {p for _, p in offsets_b} == {0, 1}
    assert not set(offsets_a) & set(offsets_b)


def stored_offsets(mirror: Path) -> dict[tuple[str, int], int]:
    con = duckdb.connect(str(mirror), read_only=True)
    try:
        rows = con.execute(
            'select topic, "partition", next_offset from _pgml_sidecar.kafka_offsets'
        ).fetchall()
    finally:
        con.close()
    return {(t, p): o for t, p, o in rows}
