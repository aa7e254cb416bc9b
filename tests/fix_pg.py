"""Pytest plugin: one PostgreSQL server per session, a fresh database per test."""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mirror.errors import SidecarError
from sidecar.local_postgres import LocalPostgres

MAX_IDENTIFIER = 63
SLOT_DROP_TIMEOUT_S = 10.0


def make_workdir(prefix: str) -> Path:
    """Create an empty directory the postgres OS user can reach (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def database_name_for(test_name: str) -> str:
    """Return a unique, valid database name derived from a test's name."""
    suffix = "_" + secrets.token_hex(4)
    stem = re.sub(r"[^a-z0-9_]+", "_", test_name.lower()).strip("_") or "test"
    return stem[: MAX_IDENTIFIER - len(suffix)] + suffix


@contextmanager
def fresh_database(server: LocalPostgres, name: str) -> Iterator[str]:
    """Create database ``name``, yield its DSN, then drop it with its replication slots."""
    dsn = server.create_database(name)
    try:
        yield dsn
    finally:
        drop_database(server, name)


def drop_database(server: LocalPostgres, name: str) -> None:
    """Drop a database, its sessions and walsenders, and the replication slots it holds."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = %s and pid <> pg_backend_pid()",
            (name,),
        )
        deadline = time.monotonic() + SLOT_DROP_TIMEOUT_S
        while True:
            slots = conn.execute(
                "select slot_name, active_pid from pg_replication_slots where database = %s",
                (name,),
            ).fetchall()
            if not slots:
                break
            for slot_name, active_pid in slots:
                if active_pid is not None:
                    conn.execute("select pg_terminate_backend(%s)", (active_pid,))
                    continue
                try:
                    conn.execute("select pg_drop_replication_slot(%s)", (slot_name,))
                except psycopg.errors.ObjectInUse:
                    pass  # a walsender grabbed it again; terminate it on the next round
                except psycopg.errors.UndefinedObject:
                    pass  # dropped by someone else meanwhile
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication slots in {name} stay in use: {slots}")
            time.sleep(0.05)
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    """Start one PostgreSQL server (wal_level = logical) for the whole test session."""
    workdir = make_workdir("pgml-sidecar-pg-")
    try:
        server = LocalPostgres(workdir)
        server.start()
    except SidecarError as e:
        if not (workdir / "postgres.log").exists():
            shutil.rmtree(workdir, ignore_errors=True)
        pytest.exit(f"cannot start the test PostgreSQL server in {workdir}: {e}", returncode=3)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def source_dsn(pg_server: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """Return the DSN of a fresh database, dropped with its replication slots after the test."""
    with fresh_database(pg_server, database_name_for(request.node.name)) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def pg_bin(pg_server: LocalPostgres) -> Path:
    """Return the bin directory of the test server (pg_recvlogical, pgbench, psql...)."""
    return pg_server.bin_dir


@pytest.fixture
def mirror_path(tmp_path: Path) -> Path:
    """Return a path for a DuckDB mirror file, inside the test's tmp dir."""
    return tmp_path / "mirror.duckdb"
