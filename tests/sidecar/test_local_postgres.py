"""Tests for the throwaway PostgreSQL cluster and the fixtures built on it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mirror.errors import SidecarError
from sidecar.local_postgres import LocalPostgres, find_bin_dir
from tests.fix_pg import database_name_for, fresh_database, make_workdir


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_workdir("pgml-sidecar-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_source_database_is_fresh_and_logical(source_dsn: str) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        assert conn.execute("show wal_level").fetchone() == ("logical",)
        assert conn.execute("select current_database()").fetchone() != ("postgres",)
        tables = conn.execute("select count(*) from pg_tables where schemaname = 'public'")
        assert tables.fetchone() == (0,)


def test_replication_connections_are_trusted(source_dsn: str) -> None:
    with psycopg.connect(source_dsn, replication="database", autocommit=True) as conn:
        conn.execute("CREATE_REPLICATION_SLOT s LOGICAL pgoutput")
        system = conn.execute("IDENTIFY_SYSTEM").fetchone()
        assert system is not None and system[3] == conn.info.dbname


def test_database_names_are_unique_and_valid() -> None:
    long_name = "test_x[" + "Ünïcode-and spaces " * 10 + "]"
    names = {database_name_for(long_name) for _ in range(50)}
    assert len(names) == 50
    assert all(len(n) <= 63 and n.isascii() and n.isidentifier() for n in names)


def test_fresh_database_is_dropped_with_active_slot(pg_server: LocalPostgres) -> None:
    name = database_name_for("dropped")
    with fresh_database(pg_server, name) as dsn:
        repl = psycopg.connect(dsn, replication="database", autocommit=True)
        repl.execute("CREATE_REPLICATION_SLOT busy LOGICAL test_decoding")
        repl.pgconn.send_query(b"START_REPLICATION SLOT busy LOGICAL 0/0")
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        dbs = conn.execute("select count(*) from pg_database where datname = %s", (name,))
        assert dbs.fetchone() == (0,)
        slots = conn.execute("select count(*) from pg_replication_slots where slot_name = 'busy'")
        assert slots.fetchone() == (0,)
    repl.close()


def test_restart_in_long_workdir_and_idempotent_stop(workdir: Path) -> None:
    deep = workdir / ("d" * 60) / ("e" * 60)
    server = LocalPostgres(deep)
    with server:
        server.create_database("kept")
        with psycopg.connect(server.dsn()) as conn:
            row = conn.execute("show unix_socket_directories").fetchone()
        assert row is not None and len(row[0]) < 100
    server.stop()
    with server, psycopg.connect(server.dsn("kept")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    server.stop()
    assert not server.is_running()


def test_start_failure_reports_the_log(pg_server: LocalPostgres, workdir: Path) -> None:
    server = LocalPostgres(workdir, port=pg_server.port)
    with pytest.raises(SidecarError, match="could not bind"):
        server.start()
    assert not server.is_running()
    server.stop()


def test_bin_dir_override_must_hold_postgres(
    monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    monkeypatch.setenv("PGML_SIDECAR_PG_BIN", str(workdir))
    with pytest.raises(SidecarError, match="PGML_SIDECAR_PG_BIN"):
        find_bin_dir()
