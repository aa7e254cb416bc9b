"""Nothing the sidecar does may make the application's UPDATE or DELETE fail in the source.

A table without a replica identity, once published, refuses both. ``init``, ``replicate`` and
``run`` refuse to publish one (or set REPLICA IDENTITY FULL when asked); a published table that
loses its identity later shows in ``/healthz``, the metrics and ``status``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.replicator.mirror_check import execute, slot_active, wait_for
from tests.sidecar.test_daemon import one

TIMEOUT = 120


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def nothing_published(dsn: str) -> bool:
    return one(dsn, "select count(*) from pg_publication") == 0


def identity(dsn: str, table: str) -> str:
    found = one(dsn, "select relreplident from pg_class where oid = %s::regclass", table)
    assert isinstance(found, str)
    return found


def application_changes(dsn: str, table: str) -> None:
    """What the application does: these must not fail."""
    execute(dsn, f"update {table} set b = b || '!'", f"delete from {table} where a = 1")


def test_init_refuses_a_table_without_replica_identity(source_dsn: str) -> None:
    execute(
        source_dsn,
        "create table nopk (a int, b text)",
        "insert into nopk values (1, 'a'), (2, 'b')",
        "create table keyed (id int primary key)",
    )
    done = cli("init", "--source", source_dsn, "--tables", "public.keyed,public.nopk")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: public.nopk has no replica identity")
    assert "add a primary key" in lines[0]
    assert "ALTER TABLE public.nopk REPLICA IDENTITY FULL" in lines[0]
    assert "--replica-identity-full" in lines[0]
    # One transaction: no publication, and no schema pgml either.
    assert nothing_published(source_dsn)
    assert one(source_dsn, "select to_regnamespace('pgml')") is None
    application_changes(source_dsn, "nopk")


def test_run_refuses_it_at_start(source_dsn: str, tmp_path: Path) -> None:
    execute(source_dsn, "create table nopk (a int, b text)")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    done = cli("run", "--source", source_dsn, "--tables", "public.nopk", "--mirror",
               str(tmp_path / "m.duckdb"), "--port", "0", "--metrics-port", "0")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: public.nopk has no replica identity (no primary key)" in done.stderr
    assert nothing_published(source_dsn)
    assert one(source_dsn, "select count(*) from pg_replication_slots") == 0
    assert not (tmp_path / "m.duckdb").exists()


def test_replica_identity_full_when_asked(source_dsn: str) -> None:
    """``--replica-identity-full`` sets it on the table, and on each leaf of a partitioned one."""
    execute(
        source_dsn,
        "create table nopk (a int, b text)",
        "insert into nopk values (1, 'a'), (2, 'b')",
        "create table events (a int, b text) partition by range (a)",
        "create table events_1 partition of events for values from (0) to (10)",
        "create table events_2 partition of events for values from (10) to (20)",
        "insert into events values (1, 'x'), (11, 'y')",
    )
    done = cli("init", "--source", source_dsn, "--tables", "public.nopk,public.events",
               "--replica-identity-full")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "set REPLICA IDENTITY FULL on public.events_1, public.events_2, public.nopk" in (
        done.stdout
    )
    assert [identity(source_dsn, t) for t in ("nopk", "events_1", "events_2")] == ["f"] * 3
    published = one(source_dsn, "select array_agg(tablename::text order by tablename)"
                    " from pg_publication_tables where pubname = 'pgml_sidecar'")  # fmt: skip
    assert published == ["events_1", "events_2", "nopk", "training_requests"]
    application_changes(source_dsn, "nopk")
    application_changes(source_dsn, "events")


@pytest.fixture
def daemon(source_dsn: str, mirror_path: Path) -> Iterator[Daemon]:
    execute(
        source_dsn,
        "create table keyed (a int primary key, b text)",
        "insert into keyed values (1, 'a'), (2, 'b')",
        "create table parted (a int primary key, b text) partition by range (a)",
        "create table parted_1 partition of parted for values from (0) to (10)",
    )
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    running = Daemon(
        DaemonSettings(
            source_dsn=source_dsn, mirror_path=mirror_path,
            tables=["public.keyed", "public.parted"],
            port=0, metrics_port=0,
        )
    )  # fmt: skip
    running.start()
    try:
        yield running
    finally:
        running.stop()


def get(port: int, path: str) -> bytes:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return bytes(reply.read())
    except urllib.error.HTTPError as exc:  # 503 while a part is not running yet
        return bytes(exc.read())


def health(port: int) -> dict[str, Any]:
    found = json.loads(get(port, "/healthz"))
    assert isinstance(found, dict)
    return found


def gauge(port: int) -> float | None:
    for line in get(port, "/metrics").decode().splitlines():
        if line.startswith("pgml_sidecar_tables_without_replica_identity "):
            return float(line.split()[1])
    return None


def test_a_table_that_loses_its_key_is_reported(daemon: Daemon, source_dsn: str) -> None:
    port = daemon.metrics_server.port
    wait_for(lambda: slot_active(source_dsn), timeout=60, what="the replicator to stream")
    assert health(port)["tables_without_replica_identity"] == []
    assert gauge(port) == 0

    execute(
        source_dsn,
        "alter table keyed drop constraint keyed_pkey",  # a migration gone wrong
        "create table parted_2 (a int not null, b text)",
        "alter table parted_2 replica identity nothing",
    )
    execute(source_dsn, "alter table parted attach partition parted_2 for values from (10) to (20)")
    wait_for(
        lambda: (
            health(port).get("tables_without_replica_identity")
            == ["public.keyed", "public.parted_2"]
        ),
        what="the report",
    )
    assert gauge(port) == 2
    status = cli("status", "--source", source_dsn, "--metrics-port", str(port))
    assert status.returncode == 1, status.stderr  # degraded
    assert (
        "without replica identity: public.keyed, public.parted_2: the application's UPDATE and"
        " DELETE on them fail; add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL"
    ) in status.stdout
    assert status.stdout.splitlines()[-1] == (
        "status:  degraded: published without a replica identity: public.keyed, public.parted_2"
    )

    execute(source_dsn, "alter table keyed replica identity full",
            "alter table parted_2 replica identity default")  # fmt: skip
    wait_for(lambda: health(port).get("tables_without_replica_identity") == [], what="the fix")
    assert gauge(port) == 0
    assert (
        "without replica identity"
        not in cli("status", "--source", source_dsn, "--metrics-port", str(port)).stdout
    )
