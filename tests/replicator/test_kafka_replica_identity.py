"""deploy/kafka/up.sh never publishes a table whose UPDATE and DELETE would then fail.

Debezium's ``publication.autocreate.mode=filtered`` publishes every table of the include list;
one without a replica identity then refuses the application's UPDATE and DELETE. ``up.sh``
checks with psql before it starts anything, in pgml-sidecar's own words, and with
``--replica-identity-full`` gives such tables REPLICA IDENTITY FULL instead.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from replicator import source
from tests.fix_kafka import KAFKA_DIR, TopicReader
from tests.replicator.mirror_check import execute
from tests.replicator.test_replica_identity import NAMES, REFUSING, TABLES, refuses_update
from tests.source_roles import MakeRole, as_role, make_role

__all__ = ["make_role"]  # the fixture, used by name

pytestmark = pytest.mark.timeout(300)

ASK = ", or pass --replica-identity-full to have up.sh run it"


def up(workdir: Path, dsn: str, tables: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(KAFKA_DIR / "up.sh"), "--workdir", str(workdir), "--pg-dsn", dsn,
         "--tables", tables, "--topic-prefix", "identity", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def the_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def identity(dsn: str, table: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select relreplident from pg_class where oid = %s::regclass", [table]
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_up_refuses_before_starting_anything(source_dsn: str, tmp_path: Path) -> None:
    """The same tables as pgml-sidecar's check, in the same words; no Kafka is needed."""
    execute(source_dsn, *TABLES)
    workdir = tmp_path / "stack"
    with psycopg.connect(source_dsn) as conn:
        missing = source.tables_without_replica_identity(conn, source.resolve_tables(conn, NAMES))
    assert {m.name for m in missing} == set(REFUSING)
    done = up(workdir, source_dsn, ",".join(f"public.{n}" for n in NAMES))
    assert the_line(done) == (
        "error: " + source.replica_identity_advice(missing, published=False) + ASK
    )

    single = the_line(up(workdir, source_dsn, "public.keyed, public.nopk"))
    assert single == (
        "error: public.nopk has no replica identity (no primary key): once published, the"
        " application's UPDATE and DELETE on it would fail; add a primary key, or run ALTER"
        " TABLE public.nopk REPLICA IDENTITY FULL (every UPDATE and DELETE then writes the"
        " whole old row to the WAL)" + ASK
    )

    # table.include.list holds regular expressions, matched whole and case-insensitively
    regex = the_line(up(workdir, source_dsn, "PUBLIC.parted.*"))
    assert regex.startswith(
        "error: public.parted_1 (a partition of public.parted; no primary key),"
        " public.parted_2b (a partition of public.parted; no primary key) have no replica"
        " identity: "
    ), regex

    gone = source_dsn.replace("dbname=", "dbname=no_such_")
    assert gone != source_dsn
    failed = the_line(up(workdir, gone, "public.keyed"))
    assert failed.startswith(
        "error: cannot check the tables' replica identity in database no_such_"
    )
    assert "does not exist" in failed, failed

    assert not workdir.exists()  # nothing started
    with psycopg.connect(source_dsn) as conn:
        assert conn.execute("select count(*) from pg_publication").fetchone() == (0,)
    assert not refuses_update(source_dsn, "nopk")


def test_up_sets_nothing_it_may_not(source_dsn: str, tmp_path: Path, make_role: MakeRole) -> None:
    """A role that owns one table but not the other: refused, both left as they were."""
    role = make_role("connector", "replication")
    execute(
        source_dsn,
        "create table theirs (a int, v int)",
        "create table mine (a int, v int)",
        f"alter table mine owner to {role}",
    )
    line = the_line(
        up(tmp_path / "stack", as_role(source_dsn, role), "public.mine,public.theirs",
           "--replica-identity-full")
    )  # fmt: skip
    assert line == (
        "error: cannot set REPLICA IDENTITY FULL on public.mine, public.theirs: must be owner"
        " of table theirs; have the tables' owner run ALTER TABLE public.mine REPLICA IDENTITY"
        " FULL; ALTER TABLE public.theirs REPLICA IDENTITY FULL (or add a primary key to"
        " each), then run up.sh again"
    )
    assert identity(source_dsn, "mine") == identity(source_dsn, "theirs") == "d"
    assert not (tmp_path / "stack").exists()


def test_up_sets_replica_identity_full_when_asked(
    source_dsn: str, debezium: Callable[..., Any]
) -> None:
    execute(
        source_dsn,
        "create table nopk (a int, v int)",
        "insert into nopk values (1, 10), (2, 20)",
        "create table events (a int, v int) partition by range (a)",
        "create table events_1 partition of events for values from (0) to (10)",
        "create table events_2 partition of events for values from (10) to (20)",
        'create table "Keyed" (id int primary key, v int)',
    )
    stack = debezium(
        source_dsn, ["public.nopk", "public.events", "public.Keyed"], replica_identity_full=True
    )
    assert [identity(source_dsn, t) for t in ("nopk", "events_1", "events_2")] == ["f"] * 3
    assert identity(source_dsn, 'public."Keyed"') == "d"  # it has a key: left alone
    assert not refuses_update(source_dsn, "nopk")
    assert not refuses_update(source_dsn, "events")
    execute(source_dsn, "delete from nopk where a = 1")
    with TopicReader(stack.bootstrap, stack.topic("public.nopk")) as reader:
        records = [r for r in reader.take(5) if r.value is not None]
    changes = [r.value_json()["payload"] for r in records]
    assert [c["op"] for c in changes] == ["r", "r", "u", "u", "d"]
    # FULL: the old row travels with each change
    assert changes[4]["before"] == {"a": 1, "v": 10}
    assert all(c["before"] is not None for c in changes[2:4]), changes
