"""The Debezium path's own code on hand-made events (the real ones are in test_debezium.py):
odd JSON never stops the stream; events of an older shape never drop a mirrored column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replicator.debezium import Message
from replicator.kafka import KafkaReplicator, KafkaSettings

TOPIC = "p.public.t"


def field(name: str, kind: str, optional: bool = True) -> dict[str, Any]:
    return {"type": kind, "optional": optional, "field": name}


V1 = [field("id", "int32", optional=False), field("a", "string")]
V2 = [*V1, field("c", "string")]


def event(columns: list[dict[str, Any]], after: dict[str, Any], lsn: int) -> bytes:
    row = {"type": "struct", "fields": columns, "optional": True, "name": "p.public.t.Value"}
    schema = {
        "type": "struct",
        "fields": [{**row, "field": "before"}, {**row, "field": "after"},
                   {"type": "struct", "fields": [], "field": "source"}, field("op", "string")],
    }  # fmt: skip
    payload = {"before": None, "after": after, "op": "c",
               "source": {"schema": "public", "table": "t", "lsn": lsn, "ts_ms": 1}}  # fmt: skip
    return json.dumps({"schema": schema, "payload": payload}, separators=(",", ":")).encode()


def message(partition: int, offset: int, value: bytes, key: int = 1) -> Message:
    return Message(TOPIC, partition, offset, json.dumps({"id": key}).encode(), value)


def apply(replicator: KafkaReplicator, messages: list[Message]) -> None:
    """Commit messages as the consumer loop does after a poll."""
    replicator._pending = messages
    replicator._uncommitted = {(m.topic, m.partition): m.offset + 1 for m in messages}
    replicator.flush()


def consumer(mirror: Path) -> KafkaReplicator:
    return KafkaReplicator(KafkaSettings("127.0.0.1:9", "p", mirror, tables=["public.t"]))


def test_events_of_the_shape_before_an_add_column_keep_the_column(mirror_path: Path) -> None:
    replicator = consumer(mirror_path)
    try:
        # partition 1 is behind partition 0, which already sends the new column
        apply(replicator, [message(1, 0, event(V1, {"id": 1, "a": "one"}, 100), key=1)])
        apply(replicator, [message(0, 0, event(V2, {"id": 2, "a": "two", "c": "kept"}, 200), 2)])
        mixed = [
            message(1, 1, event(V1, {"id": 3, "a": "three"}, 150), key=3),
            message(0, 1, event(V2, {"id": 4, "a": "four", "c": "x"}, 250), key=4),
            message(1, 2, event(V1, {"id": 5, "a": "five"}, 160), key=5),
        ]
        apply(replicator, mixed)
        rows = replicator.mirror.con.execute("select * from public.t order by id").fetchall()
        dead = replicator.mirror.con.execute("select count(*) from _pgml_sidecar.dead_letters")
        assert dead.fetchone() == (0,)
    finally:
        replicator.close()
    assert rows == [
        (1, "one", None), (2, "two", "kept"), (3, "three", None), (4, "four", "x"),
        (5, "five", None),
    ]  # fmt: skip


def test_json_of_odd_shapes_is_a_dead_letter_and_the_stream_goes_on(mirror_path: Path) -> None:
    odd = [
        json.dumps({"op": "c", "source": {"schema": ["public"], "table": "t"}}).encode(),
        json.dumps({"schema": {"type": "struct", "fields": [
            {"type": "struct", "field": "after", "fields": [{"type": "int32"}]}]},
            "payload": {"op": "c", "after": {"id": 1},
                        "source": {"schema": "public", "table": "t"}}}).encode(),
        json.dumps([1, 2, 3]).encode(),
        json.dumps({"op": "c", "after": {"id": "x"}, "source": "public.t"}).encode(),
    ]  # fmt: skip
    replicator = consumer(mirror_path)
    try:
        good = message(0, len(odd), event(V1, {"id": 7, "a": "seven"}, 300), key=7)
        apply(replicator, [message(0, i, value) for i, value in enumerate(odd)] + [good])
        con = replicator.mirror.con
        letters = con.execute(
            'select "offset", reason from _pgml_sidecar.dead_letters order by "offset"'
        ).fetchall()
        rows = con.execute("select * from public.t").fetchall()
        stored = replicator.mirror.kafka_offsets()
    finally:
        replicator.close()
    assert [offset for offset, _ in letters] == list(range(len(odd)))
    assert all("not a Debezium change event" in reason for _, reason in letters), letters
    assert rows == [(7, "seven")]
    assert stored == {(TOPIC, 0): len(odd) + 1}


def test_a_batch_too_big_for_the_memory_limit_is_committed_in_halves(mirror_path: Path) -> None:
    # A batch budget far above the memory limit: DuckDB runs out before the budget does.
    replicator = KafkaReplicator(
        KafkaSettings(
            "127.0.0.1:9", "p", mirror_path, tables=["public.t"], memory_limit="16MB",
            batch_bytes=1 << 30,
        )
    )  # fmt: skip
    count = 100_000
    try:
        apply(
            replicator,
            [
                message(0, i, event(V1, {"id": i, "a": "x" * 200}, 100 + i), key=i)
                for i in range(count)
            ],
        )
        con = replicator.mirror.con
        rows = con.execute("select count(*), count(distinct id) from public.t").fetchone()
        dead = con.execute("select count(*) from _pgml_sidecar.dead_letters").fetchone()
        stored = replicator.mirror.kafka_offsets()
    finally:
        replicator.close()
    assert replicator.stats.memory_retries >= 1
    assert rows == (count, count)
    assert dead == (0,)
    assert stored == {(TOPIC, 0): count}
