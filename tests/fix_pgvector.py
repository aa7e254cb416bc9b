"""Pytest plugin: a PostgreSQL 16 server with pgvector (pgserver's binaries), started lazily.

Debian's PostgreSQL comes without pgvector; the ``pgserver`` wheel (a test dependency) ships
PostgreSQL 16 with pgvector and pgoutput. Only tests that ask for ``pgvector_dsn`` start it,
once per session; each gets a fresh database with ``create extension vector``.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mirror.errors import SidecarError
from sidecar.local_postgres import LocalPostgres
from tests.fix_pg import database_name_for, fresh_database, make_workdir


def pgserver_bin_dir() -> Path:
    """The bin directory inside the installed pgserver package (found without importing it)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        pytest.exit(
            "the pgvector tests need the pgserver package (PostgreSQL 16 with pgvector):"
            " pip install pgserver (./run test installs it)",
            returncode=3,
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[LocalPostgres]:
    """Start one pgvector-enabled PostgreSQL server (wal_level = logical) for the session."""
    workdir = make_workdir("pgml-sidecar-pgvector-")
    try:
        server = LocalPostgres(workdir, bin_dir=pgserver_bin_dir())
        server.start()
    except SidecarError as e:
        if not (workdir / "postgres.log").exists():
            shutil.rmtree(workdir, ignore_errors=True)
        pytest.exit(f"cannot start the pgvector PostgreSQL server in {workdir}: {e}", returncode=3)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def pgvector_version(pgvector_server: LocalPostgres) -> tuple[int, ...]:
    """The pgvector version the server offers (halfvec and sparsevec came in 0.7)."""
    with psycopg.connect(pgvector_server.dsn()) as conn:
        row = conn.execute(
            "select default_version from pg_available_extensions where name = 'vector'"
        ).fetchone()
    assert row is not None, "pgserver's PostgreSQL offers no vector extension"
    return tuple(int(part) for part in str(row[0]).split("."))


@pytest.fixture
def pgvector_dsn(pgvector_server: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a fresh database with the vector extension, dropped after the test."""
    with fresh_database(pgvector_server, database_name_for(request.node.name)) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create extension vector")
        yield dsn
