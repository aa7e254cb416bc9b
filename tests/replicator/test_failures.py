"""The replicate command under failure: kill -9, SIGTERM, and sources it cannot use."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from sidecar.local_postgres import LocalPostgres
from tests.fix_pg import make_workdir
from tests.replicator.mirror_check import (
    assert_same_rows,
    current_lsn,
    slot_active,
    slot_confirmed,
    streaming,
    wait_for,
)


def replicate(dsn: str, mirror: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "replicate", "--source", dsn,
         "--mirror", str(mirror), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def replicate_once(dsn: str, mirror: Path, *args: str) -> subprocess.CompletedProcess[str]:
    process = replicate(dsn, mirror, "--catch-up", *args)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


class Writer(threading.Thread):
    """Random inserts, updates, deletes and key changes in small transactions until stopped."""

    def __init__(self, dsn: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.random = random.Random(seed)
        self.done = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                next_id = 100_000
                while not self.done.is_set():
                    with conn.transaction():
                        for _ in range(self.random.randint(1, 20)):
                            next_id += 1
                            self.statement(conn, next_id)
                    self.transactions += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def statement(self, conn: psycopg.Connection, next_id: int) -> None:
        r = self.random
        choice = r.random()
        target = r.randint(1, next_id)
        if choice < 0.5:
            conn.execute("insert into k values (%s, %s, md5(%s::text))", [next_id, target, target])
        elif choice < 0.8:
            conn.execute("update k set v = v + 1, t = %s where id = %s", [str(choice), target])
        elif choice < 0.95:
            conn.execute("delete from k where id = %s", [target])
        else:
            conn.execute("update k set id = %s where id = %s", [next_id + 1_000_000, target])

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error


@pytest.fixture
def writer(source_dsn: str) -> Iterator[Writer]:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("create table k (id int primary key, v int, t text)")
        conn.execute("insert into k select g, g, md5(g::text) from generate_series(1, 2000) g")
    writer = Writer(source_dsn, seed=7)
    writer.start()
    yield writer
    writer.stop()


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    source_dsn: str, mirror_path: Path, writer: Writer
):
    chaos = random.Random(11)
    for round_ in range(5):
        process = replicate(source_dsn, mirror_path, "--tables", "k")
        if round_ > 0:  # let it stream a little before the kill
            wait_for(advanced_from(source_dsn, slot_confirmed(source_dsn)), what="the slot to move")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=chaos.uniform(0.05, 1.5))
        assert process.poll() is None, process.communicate()[1]
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    before = writer.transactions
    writer.stop()
    assert writer.transactions > before
    result = replicate_once(source_dsn, mirror_path, "--tables", "k")
    assert result.returncode == 0, result.stderr
    assert assert_same_rows(source_dsn, mirror_path, "public.k", "id") > 2000


def test_sigterm_commits_what_it_has_and_exits_cleanly(source_dsn: str, mirror_path: Path):
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("create table k (id int primary key, v int, t text)")
    process = replicate(source_dsn, mirror_path, "--tables", "k")
    wait_for(lambda: streaming(source_dsn), what="the replicator to stream")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("insert into k select g, g, 'x' from generate_series(1, 5000) g")
    target = current_lsn(source_dsn)
    wait_for(lambda: slot_confirmed(source_dsn) >= target, what="the changes to be applied")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert assert_same_rows(source_dsn, mirror_path, "public.k", "id") == 5000


def advanced_from(dsn: str, position: int) -> Callable[[], bool]:
    return lambda: slot_confirmed(dsn) > position


def assert_clear_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_unknown_table_is_a_clear_error_and_leaves_no_mirror(source_dsn: str, mirror_path: Path):
    result = replicate_once(source_dsn, mirror_path, "--tables", "public.nope")
    assert_clear_error(result, "public.nope", "does not exist", "--tables")
    assert not mirror_path.exists()


def test_unreachable_source_is_a_clear_error(mirror_path: Path):
    result = replicate_once("host=127.0.0.1 port=1 connect_timeout=2", mirror_path)
    assert_clear_error(result, "cannot connect")
    assert not mirror_path.exists()


def test_missing_replication_privilege_is_a_clear_error(source_dsn: str, mirror_path: Path):
    dbname = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("do $$ begin create role app login; exception when duplicate_object then"
                     " null; end $$")  # fmt: skip
        conn.execute(f'grant create on database "{dbname}" to app')
        conn.execute("create table owned (id int primary key)")
        conn.execute("alter table owned owner to app")
    app_dsn = psycopg.conninfo.make_conninfo(source_dsn, user="app")
    result = replicate_once(app_dsn, mirror_path, "--tables", "owned")
    assert_clear_error(result, "REPLICATION")
    assert not mirror_path.exists()
    with psycopg.connect(source_dsn) as conn:
        assert conn.execute("select count(*) from pg_publication").fetchone() == (0,)


def test_slot_held_by_another_process_is_a_clear_error(
    source_dsn: str, mirror_path: Path, pg_bin: Path
):
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("create table t (id int primary key)")
        conn.execute("create publication pgml_sidecar for table t")
        conn.execute("select pg_create_logical_replication_slot('pgml_sidecar', 'pgoutput')")
    other = subprocess.Popen(
        [str(pg_bin / "pg_recvlogical"), "-d", source_dsn, "--slot", "pgml_sidecar", "--start",
         "-o", "proto_version=1", "-o", "publication_names=pgml_sidecar", "-f", "/dev/null"],
    )  # fmt: skip
    try:
        wait_for(lambda: slot_active(source_dsn), what="pg_recvlogical to hold the slot")
        result = replicate_once(source_dsn, mirror_path, "--tables", "t")
    finally:
        other.terminate()
        other.wait(timeout=30)
    assert_clear_error(result, "in use", "--slot")
    assert not mirror_path.exists()


def test_wal_level_below_logical_is_a_clear_error(mirror_path: Path):
    workdir = make_workdir("pgml-sidecar-replica-")
    server = LocalPostgres(workdir)
    try:
        server.start()
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("alter system set wal_level = replica")
        server.stop()
        server.start()
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("create table t (id int primary key)")
        result = replicate_once(server.dsn(), mirror_path, "--tables", "t")
    finally:
        server.stop()
    assert_clear_error(result, "wal_level", "logical")
    assert not mirror_path.exists()


def test_help_explains_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "replicate", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "100"},
    )
    for flag in ("--source", "--mirror", "--tables", "--publication", "--slot", "--catch-up"):
        assert flag in result.stdout


def test_a_value_duckdb_cannot_store_is_a_clear_error(source_dsn: str, mirror_path: Path):
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("create table grid (id int primary key, cells int[])")
    assert replicate_once(source_dsn, mirror_path, "--tables", "grid").returncode == 0
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("insert into grid values (1, '{{1,2},{3,4}}')")  # two dimensions
    result = replicate_once(source_dsn, mirror_path, "--tables", "grid")
    assert_clear_error(result, "public.grid", "cannot store", "--tables")
