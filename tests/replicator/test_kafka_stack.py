"""deploy/kafka on its own: a real broker, Kafka Connect and Debezium over a real PostgreSQL.

What these tests pin down is what the Debezium consumer gets to read: the envelope, the ops
(r, c, u, d, the tombstone after d, t for TRUNCATE), how values arrive, and that the scripts
start, reuse and stop the stack as they say.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar.local_postgres import free_port
from tests.fix_kafka import (
    KAFKA_DIR,
    DebeziumFactory,
    KafkaStack,
    Record,
    TopicReader,
    produce_raw,
    start_stack,
    stop_stack,
)

pytestmark = pytest.mark.timeout(300)

UNAVAILABLE = "__debezium_unavailable_value"
ITEMS = """
create table public.items (
    id integer primary key,
    name text,
    qty bigint,
    price numeric(10, 2),
    day date,
    stamp timestamptz,
    notes text
)"""


def execute(dsn: str, *statements: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode(), params if "%s" in statement else None)


def payload(record: Record) -> Any:
    value = record.value_json()
    return value if value is None else value["payload"]


def field_schema(record: Record, side: str, column: str) -> dict[str, Any]:
    fields = {f["field"]: f for f in record.value_json()["schema"]["fields"]}
    by_column = {f["field"]: f for f in fields[side]["fields"]}
    schema: dict[str, Any] = by_column[column]
    return schema


def decimal_of(encoded: str, scale: int) -> Decimal:
    """Debezium's precise decimal: big-endian two's complement unscaled value, in base64."""
    unscaled = int.from_bytes(base64.b64decode(encoded), "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def test_snapshot_then_every_kind_of_change(source_dsn: str, debezium: DebeziumFactory):
    big_notes = os.urandom(16_000).hex()  # incompressible: stored out of line (TOAST)
    execute(
        source_dsn,
        ITEMS,
        "insert into public.items values"
        " (1, 'one', 10, 1.50, '2024-02-29', '2024-06-01 12:00:00.5+02', %s),"
        " (2, 'two', 9007199254740993, -0.05, '1970-01-01', '1999-12-31 23:59:59+00', 'short'),"
        " (3, 'three', null, 12345678.91, null, null, null)",
        params=(big_notes,),
    )
    stack = debezium(source_dsn, ["public.items"], prefix="items")
    status = stack.status()
    assert status["connector"]["state"] == "RUNNING"
    assert [t["state"] for t in status["tasks"]] == ["RUNNING"]

    with TopicReader(stack.bootstrap, stack.topic("public.items")) as reader:
        snapshot = reader.take(3)
        assert [payload(r)["op"] for r in snapshot] == ["r", "r", "r"]
        assert [r.key_json()["payload"] for r in snapshot] == [{"id": 1}, {"id": 2}, {"id": 3}]
        rows = {payload(r)["after"]["id"]: payload(r)["after"] for r in snapshot}
        assert all(payload(r)["before"] is None for r in snapshot)
        assert payload(snapshot[0])["source"]["table"] == "items"
        assert payload(snapshot[0])["source"]["schema"] == "public"

        price = field_schema(snapshot[0], "after", "price")
        assert price["name"] == "org.apache.kafka.connect.data.Decimal"
        scale = int(price["parameters"]["scale"])
        assert scale == 2
        assert decimal_of(rows[1]["price"], scale) == Decimal("1.50")
        assert decimal_of(rows[2]["price"], scale) == Decimal("-0.05")
        assert decimal_of(rows[3]["price"], scale) == Decimal("12345678.91")
        assert rows[2]["qty"] == 9007199254740993  # int64 as a JSON number, exact
        assert field_schema(snapshot[0], "after", "day")["name"] == "io.debezium.time.Date"
        assert rows[1]["day"] == 19782  # days since 1970-01-01
        assert rows[2]["day"] == 0
        assert rows[1]["stamp"] == "2024-06-01T10:00:00.500000Z"  # ZonedTimestamp, in UTC
        assert rows[1]["notes"] == big_notes
        assert rows[3] == {
            "id": 3, "name": "three", "qty": None, "price": rows[3]["price"], "day": None,
            "stamp": None, "notes": None,
        }  # fmt: skip

        execute(
            source_dsn,
            "insert into public.items (id, name, qty) values (4, 'four', 40)",
            "update public.items set name = 'ONE' where id = 1",  # notes: TOASTed, unchanged
            "delete from public.items where id = 2",
            "truncate public.items",
        )
        changes = reader.take(5)

    created, updated, deleted, tombstone, truncated = changes
    assert payload(created)["op"] == "c"
    assert payload(created)["before"] is None
    assert payload(created)["after"]["id"] == 4
    assert payload(created)["after"]["qty"] == 40
    assert payload(created)["source"]["snapshot"] == "false"

    assert payload(updated)["op"] == "u"
    assert payload(updated)["before"] is None  # REPLICA IDENTITY DEFAULT: no old row
    assert payload(updated)["after"]["name"] == "ONE"
    assert payload(updated)["after"]["notes"] == UNAVAILABLE  # unchanged TOAST: not sent

    assert payload(deleted)["op"] == "d"
    assert deleted.key_json()["payload"] == {"id": 2}
    assert payload(deleted)["after"] is None
    assert payload(deleted)["before"]["id"] == 2
    assert payload(deleted)["before"]["name"] is None  # only the key is known

    assert tombstone.key_json()["payload"] == {"id": 2}
    assert tombstone.value is None

    assert truncated.key is None
    assert payload(truncated)["op"] == "t"
    assert payload(truncated)["before"] is None
    assert payload(truncated)["after"] is None
    lsns = [payload(r)["source"]["lsn"] for r in (created, updated, deleted, truncated)]
    assert lsns == sorted(lsns)


def test_plain_json_on_several_partitions(source_dsn: str, debezium: DebeziumFactory):
    execute(
        source_dsn,
        "create table public.events (id bigint primary key, kind text, amount numeric(8, 3))",
        "insert into public.events select g, 'k' || g % 3, g / 8.0 from generate_series(1, 30) g",
    )
    stack = debezium(
        source_dsn, "events", prefix="events", schemas=False, partitions=3, decimal_mode="string"
    )
    with TopicReader(stack.bootstrap, stack.topic("events")) as reader:
        snapshot = reader.take(30)
        execute(source_dsn, "update public.events set kind = 'changed' where id <= 10")
        updates = reader.take(10)
        meta = reader.consumer.list_topics(reader.topic, timeout=10).topics[reader.topic]
        assert len(meta.partitions) == 3

    values = [r.value_json() for r in snapshot]
    assert all(set(v) >= {"before", "after", "source", "op"} for v in values)  # no schema
    assert {v["after"]["id"]: v["after"]["amount"] for v in values}[5] == "0.625"
    assert sorted(r.key_json()["id"] for r in snapshot) == list(range(1, 31))
    assert len({r.partition for r in snapshot}) > 1  # spread by key
    partition_of = {r.key_json()["id"]: r.partition for r in snapshot}
    assert all(r.partition == partition_of[r.key_json()["id"]] for r in updates)
    assert {r.value_json()["after"]["kind"] for r in updates} == {"changed"}

    # a raw message (not Debezium's) lands where the consumer will read it
    partition, offset = produce_raw(
        stack.bootstrap, stack.topic("events"), b"{not json", key=b"\xff", partition=2
    )
    assert partition == 2
    with TopicReader(stack.bootstrap, stack.topic("events")) as reader:
        everything = reader.take(41)
    raw = [r for r in everything if r.partition == 2 and r.offset == offset]
    assert [(r.key, r.value) for r in raw] == [(b"\xff", b"{not json")]


def test_up_reports_what_connect_refuses(kafka_stack: KafkaStack, source_dsn: str):
    execute(source_dsn, "create table public.t (id int primary key)")
    done = subprocess.run(
        [
            "bash", str(KAFKA_DIR / "up.sh"), "--workdir", str(kafka_stack.workdir),
            "--pg-dsn", source_dsn, "--tables", "public.t", "--topic-prefix", "refused",
            "--set", "snapshot.mode=sometimes",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "refused connector refused" in done.stderr
    assert "snapshot.mode" in done.stderr, done.stderr
    assert "refused" not in kafka_stack.connectors()


def test_up_checks_its_options_before_starting_anything(tmp_path: Path):
    def up(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA_DIR / "up.sh"), "--workdir", str(tmp_path / "w"), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    dsn = "host=127.0.0.1 port=5 dbname='my db' user=bob password='it\\'s'"
    shown = up("--dry-run", "--pg-dsn", dsn, "--tables", "public.a, s.b", "--topic-prefix", "A.b-1")
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout.splitlines()[-1])
    assert config["database.dbname"] == "my db"
    assert config["database.password"] == "it's"
    assert config["table.include.list"] == "public.a,s.b"
    assert config["slot.name"] == config["publication.name"] == "dbz_a_b_1"
    assert config["skipped.operations"] == "none"
    assert config["decimal.handling.mode"] == "precise"

    uri = "postgresql://al%40ice@127.0.0.1:6543/shop?sslmode=disable"
    shown = up("--dry-run", "--pg-dsn", uri, "--tables", "public.a", "--topic-prefix", "p")
    config = json.loads(shown.stdout.splitlines()[-1])
    assert (config["database.user"], config["database.port"]) == ("al@ice", "6543")
    assert (config["database.dbname"], config["database.sslmode"]) == ("shop", "disable")

    for args, message in [
        (("--tables", "t"), "go together"),
        (("--pg-dsn", "host=x", "--tables", "t", "--topic-prefix", "p"), "schema.table"),
        (("--pg-dsn", "host=/tmp", "--tables", "a.t", "--topic-prefix", "p"), "over TCP"),
        (("--schemas", "yes"), "true or false"),
        (("--bogus",), "unknown option --bogus"),
    ]:
        failed = up(*args)
        assert failed.returncode == 1
        assert message in failed.stderr
    assert not (tmp_path / "w").exists()
    assert "--heartbeat-ms" in up("--help").stdout


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_down_stops_everything_and_runs_twice(kafka_jars: Path, source_dsn: str, tmp_path: Path):
    execute(source_dsn, "create table public.t (id int primary key)")
    workdir = tmp_path / "stack"
    taken = free_port()
    try:
        stack = start_stack(workdir, "--connect-port", str(taken))
        assert stack.connect_url == f"http://127.0.0.1:{taken}"
        again = start_stack(
            workdir, "--pg-dsn", source_dsn, "--tables", "public.t", "--topic-prefix", "downer"
        )
        assert again.bootstrap == stack.bootstrap  # reused, not started twice
        assert stack.connectors() == ["downer"]
        pids = stack.pids()
        ports = stack.ports()
    finally:
        first = stop_stack(workdir)
    assert "connector downer: deleted" in first
    assert "pg_drop_replication_slot('dbz_downer')" in first  # says what stays behind
    assert f"stopped Kafka Connect (pid {pids['connect']})" in first
    assert f"stopped the Kafka broker (pid {pids['broker']})" in first
    for pid in pids.values():
        assert not running(pid)
    for port in ports.values():
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not (workdir / "bootstrap").exists()
    assert (workdir / "broker" / "broker.log").exists()  # logs stay

    second = stop_stack(workdir)
    assert "nothing was running" in second
    with psycopg.connect(source_dsn) as conn:
        slots = conn.execute("select slot_name from pg_replication_slots").fetchall()
    assert ("dbz_downer",) in slots  # registered without --drop-slot-on-stop: it stays
