"""Roles of a test's own in the test server (roles are the cluster's): made, then dropped."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sidecar.local_postgres import LocalPostgres

MakeRole = Callable[..., str]


@pytest.fixture
def make_role(pg_server: LocalPostgres, source_dsn: str) -> Iterator[MakeRole]:
    """``make_role("analyst", "replication")``: a LOGIN role named ``analyst_<random>``.

    After the test, what the roles own or were granted in the test's database goes, then the
    roles.
    """
    made: list[str] = []

    def make(stem: str, *attributes: str) -> str:
        name = f"{stem}_{secrets.token_hex(3)}"
        options = sql.SQL(" ").join(sql.SQL(a) for a in ("login", *attributes))
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("create role {} {}").format(sql.Identifier(name), options))
        made.append(name)
        return name

    yield make
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where usename = any(%s) and pid <> pg_backend_pid()",
            [made],
        )
        for name in made:
            conn.execute(sql.SQL("drop owned by {} cascade").format(sql.Identifier(name)))
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        for name in reversed(made):
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def as_role(dsn: str, role: str) -> str:
    """The DSN ``dsn`` logging in as ``role`` (the test server trusts every login)."""
    return make_conninfo(dsn, user=role)


def run(dsn: str, *statements: str | sql.Composed) -> None:
    """Run statements in autocommit, each on its own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
