"""With the Debezium source too, nothing the sidecar mirrors may break the application's UPDATE.

``run --kafka`` refuses at start a mirrored table without a replica identity that no
publication has yet (or gives it FULL with ``--replica-identity-full``), as ``run`` does with
a slot of its own. While it runs it samples the mirrored tables and every table of the
publications that have one of them (Debezium's, whatever its name), into the same metric,
``/healthz`` and ``status``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.fix_kafka import KafkaStack
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import one
from tests.sidecar.test_replica_identity import application_changes, cli, gauge, health, identity

pytestmark = pytest.mark.timeout(300)

NOWHERE = "127.0.0.1:9"
"""A Kafka no one answers at: the refusal comes before the sidecar looks for Kafka."""


def run_kafka(dsn: str, mirror: Path, tables: str, *extra: str) -> list[str]:
    """``run --kafka``'s arguments."""
    return [
        "run", "--source", dsn, "--tables", tables,
        "--mirror", str(mirror), "--kafka", NOWHERE, "--topic-prefix", "shop",
        "--port", "0", "--metrics-port", "0", *extra,
    ]  # fmt: skip


def test_run_kafka_refuses_a_table_without_replica_identity(
    source_dsn: str, tmp_path: Path
) -> None:
    execute(
        source_dsn,
        "create table keyed (id int primary key, b text)",
        "create table nopk (a int, b text)",
        "create table events (a int, b text) partition by range (a)",
        "create table events_1 partition of events for values from (0) to (10)",
        "alter table events_1 add primary key (a)",
        "create table events_2 partition of events for values from (10) to (20)",
    )
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    mirror = tmp_path / "m.duckdb"
    done = cli(*run_kafka(source_dsn, mirror, "public.keyed,public.nopk"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "error: public.nopk has no replica identity (no primary key): once published, the"
        " application's UPDATE and DELETE on it would fail; add a primary key, or run ALTER"
        " TABLE public.nopk REPLICA IDENTITY FULL (every UPDATE and DELETE then writes the"
        " whole old row to the WAL), or pass --replica-identity-full to have pgml-sidecar run it"
    ) in done.stderr.splitlines(), done.stderr
    assert "Traceback" not in done.stderr

    done = cli(*run_kafka(source_dsn, mirror, "public.events"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "error: public.events_2 has no replica identity (a partition of public.events; no"
        " primary key)"
    ) in done.stderr, done.stderr
    assert not mirror.exists()
    assert one(source_dsn, "select count(*) from pg_publication") == 0
    assert identity(source_dsn, "nopk") == "d"


def test_run_kafka_sets_full_when_asked(source_dsn: str, tmp_path: Path) -> None:
    execute(
        source_dsn,
        "create table nopk (a int, b text)",
        "insert into nopk values (1, 'a'), (2, 'b')",
    )
    args = run_kafka(source_dsn, tmp_path / "m.duckdb", "public.nopk", "--replica-identity-full")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", *args], stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: identity(source_dsn, "nopk") == "f", timeout=60, what="FULL")
        time.sleep(1)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "set REPLICA IDENTITY FULL on public.nopk" in stderr
    application_changes(source_dsn, "nopk")


def test_one_already_published_is_reported_not_refused(
    source_dsn: str, mirror_path: Path, kafka_stack: KafkaStack
) -> None:
    """The sidecar did not publish it, and refusing to start would not help the application."""
    execute(
        source_dsn,
        "create table nopk (a int, b text)",
        "create publication by_hand for table nopk",  # another tool's, or Debezium's
    )
    daemon = Daemon(
        DaemonSettings(
            source_dsn=source_dsn, mirror_path=mirror_path, tables=["public.nopk"],
            port=0, metrics_port=0, kafka=kafka_stack.bootstrap, topic_prefix="by_hand",
        )
    )  # fmt: skip
    daemon.start()
    try:
        port = daemon.metrics_server.port
        wait_for(
            lambda: health(port).get("tables_without_replica_identity") == ["public.nopk"],
            what="the report",
        )
        assert gauge(port) == 1
    finally:
        daemon.stop()


def test_a_table_that_loses_its_key_behind_debezium_is_reported(
    source_dsn: str, mirror_path: Path, debezium: Callable[..., Any]
) -> None:
    execute(
        source_dsn,
        "create table keyed (a int primary key, b text)",
        "insert into keyed select i, 'x' from generate_series(1, 100) i",
        "create table parted (a int primary key, b text) partition by range (a)",
        "create table parted_1 partition of parted for values from (0) to (1000)",
        "create table other (a int primary key)",
    )
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    stack = debezium(
        source_dsn, ["public.keyed", "public.parted", "public.other", "pgml.training_requests"]
    )
    daemon = Daemon(
        DaemonSettings(
            source_dsn=source_dsn, mirror_path=mirror_path,
            tables=["public.keyed", "public.parted"], port=0, metrics_port=0,
            kafka=stack.bootstrap, topic_prefix=stack.topic_prefix, group_id="identity",
        )
    )  # fmt: skip
    daemon.start()
    try:
        port = daemon.metrics_server.port
        wait_for(lambda: health(port).get("status") == "ok", timeout=60, what="the daemon")
        assert health(port)["tables_without_replica_identity"] == []
        assert gauge(port) == 0

        # the key goes while the application writes (a migration gone wrong)
        writing = threading.Event()
        writer = threading.Thread(target=_insert_until, args=(source_dsn, writing), daemon=True)
        writer.start()
        try:
            time.sleep(0.5)
            execute(source_dsn, "alter table keyed drop constraint keyed_pkey")
            time.sleep(0.5)
        finally:
            writing.set()
            writer.join(timeout=30)
        execute(
            source_dsn,
            "create table parted_2 (a int not null, b text)",
            "alter table parted_2 replica identity nothing",
            "alter table parted attach partition parted_2 for values from (1000) to (2000)",
            # a publication made later, of a mirrored table and one the sidecar does not
            # mirror (Debezium's own publication is Debezium's: it sets it to its table list)
            "create table late (a int, b text)",
            "create publication later for table keyed, late",
            # not mirrored and in no publication: none of the sidecar's business
            "create table elsewhere (a int)",
        )
        expected = ["public.keyed", "public.late", "public.parted_2"]
        wait_for(
            lambda: health(port).get("tables_without_replica_identity") == expected,
            what="the report",
        )
        assert gauge(port) == 3
        assert all(p["running"] for p in health(port)["parts"].values()), health(port)
        status = cli(
            "status", "--source", source_dsn, "--kafka", stack.bootstrap,
            "--topic-prefix", stack.topic_prefix, "--group-id", "identity",
            "--metrics-port", str(port),
        )  # fmt: skip
        assert status.returncode == 1, status.stdout + status.stderr  # degraded
        assert (
            "tables:  without replica identity: public.keyed, public.late, public.parted_2"
        ) in status.stdout
        assert status.stdout.splitlines()[-1] == (
            "status:  degraded: published without a replica identity: public.keyed,"
            " public.late, public.parted_2"
        )

        execute(
            source_dsn,
            "alter table keyed replica identity full",
            "alter table parted_2 replica identity default",
            "alter table late add primary key (a)",
        )
        wait_for(lambda: health(port).get("tables_without_replica_identity") == [], what="fix")
        assert gauge(port) == 0
    finally:
        daemon.stop()


def _insert_until(dsn: str, stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = 1000
        while not stop.is_set():
            n += 1
            conn.execute("insert into keyed values (%s, 'y')", (n,))
            time.sleep(0.01)
