"""The endpoint speaks PostgreSQL to psql: its names, its errors, its search_path, its catalogs.

Each test runs psql (Debian's) against the endpoint and asserts on what psql prints: result
columns named as PostgreSQL names them, errors in PostgreSQL's words with its SQLSTATE and
position, unqualified names found along the search path, and psql's ``\\d`` commands.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from tests.predictor.endpoint_client import psql
from trainer.train import Trainer

CUSTOMERS = (
    "create schema if not exists public",
    "create table public.customers (id integer primary key, name varchar not null,"
    " spend decimal(10,2), tags varchar[])",
    "insert into public.customers values (1, 'ada', 10.50, ['a']), (2, 'bob', 20.25, null),"
    " (3, 'cy', null, ['b', 'c'])",
)


@pytest.fixture
def served(mirror: Mirror, trainer: Trainer) -> Iterator[SqlEndpoint]:
    """The endpoint over a mirror holding ``public.customers``."""
    for statement in CUSTOMERS:
        mirror.con.execute(statement)
    endpoint = SqlEndpoint(EndpointSettings(port=0), mirror.con, trainer)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def _psql(pg_bin: Path, endpoint: SqlEndpoint, script: str, *options: str) -> str:
    """What psql prints for ``script`` (aligned, with headers, as a user sees it)."""
    done = subprocess.run(
        [str(pg_bin / "psql"), "-X", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose",
         *options, "-h", "127.0.0.1", "-p", str(endpoint.port), "-U", "pgml", "-d", "pgml"],
        input=script, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.stdout + done.stderr


def test_result_columns_are_named_as_postgresql_names_them(
    pg_bin: Path, served: SqlEndpoint
) -> None:
    script = (
        "\\pset format unaligned\n"
        "select count(*), sum(spend), max(id), id + 1, upper(name), spend::int, 1::integer,"
        " case when id > 1 then 'x' end, coalesce(spend, 0), (select count(*) from customers),"
        " exists (select 1), array[1, 2], trim(both from name), nullif(id, 2),"
        " current_user, id::text::varchar as named"
        " from customers group by id, name, spend;\n"
    )
    header = psql(pg_bin, served, "\\pset tuples_only off\n" + script).stdout.splitlines()
    names = header[1] if header[0].startswith("Output format") else header[0]
    assert names.split("|") == [
        "count", "sum", "max", "?column?", "upper", "spend", "int4", "case", "coalesce",
        "count", "exists", "array", "btrim", "nullif", "current_user", "named",
    ]  # fmt: skip


def test_unqualified_names_are_found_along_the_search_path(
    pg_bin: Path, served: SqlEndpoint
) -> None:
    script = (
        "select count(*) from customers;\n"
        "select c.name from customers c join public.customers d using (id) where d.id = 2;\n"
        "select customers.id from customers order by 1 desc limit 1;\n"
        "create table scratch (id int);\n"  # in the workspace, found first
        "insert into scratch select id from customers where id > 1;\n"
        "select count(*), max(s.id) from scratch s join customers using (id);\n"
        "select count(*) from public.scratch;\n"
    )
    assert psql(pg_bin, served, script).stdout.splitlines() == [
        "3", "bob", "3", "CREATE TABLE", "INSERT 0 2", "2|3", "2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select * from nowhere;", ['ERROR:  42P01: relation "nowhere" does not exist',
                                    "LINE 1: select * from nowhere;", "                      ^"]),
        ("select nme from customers;", ['ERROR:  42703: column "nme" does not exist']),
        ("select customers.nme from customers;",
         ["ERROR:  42703: column customers.nme does not exist"]),
        ("select x.id from customers;",
         ['ERROR:  42P01: missing FROM-clause entry for table "x"']),
        ("select f(1) from customers;", ["ERROR:  42883: function f(integer) does not exist",
                                         "LINE 1: select f(1) from customers;",
                                         "               ^",
                                         "HINT:  No function matches the given name and"
                                         " argument types. You might need to add explicit type"
                                         " casts."]),
        ("select lower(id) from customers;",
         ["ERROR:  42883: function lower(integer) does not exist"]),
        ("select id @> 2 from customers;",
         ["ERROR:  42883: operator does not exist: integer @> integer"]),
        ("select id, count(*) from customers;", [
            'ERROR:  42803: column "id" must appear in the GROUP BY clause or be used in an'
            " aggregate function"]),
        ("select id from customers, customers c2;",
         ['ERROR:  42702: column reference "id" is ambiguous']),
        ("select 'abc'::int;", ['ERROR:  22P02: invalid input syntax for type integer: "abc"']),
        ("select 2147483647::int + 1;", ["ERROR:  22003: integer out of range"]),
        ("select 1 fro customers;", ['ERROR:  42601: syntax error at or near "customers"',
                                     "LINE 1: select 1 fro customers;",
                                     "                     ^"]),
        ("select (1", ["ERROR:  42601: syntax error at end of input",
                       "LINE 1: select (1", "                 ^"]),
    ],
)  # fmt: skip
def test_errors_are_postgresqls(
    pg_bin: Path, served: SqlEndpoint, sql: str, expected: list[str]
) -> None:
    lines = [line for line in _psql(pg_bin, served, sql).splitlines() if line]
    assert lines[: len(expected)] == expected
    shown = "\n".join(lines)
    duckdb_words = ("Did you mean", "not found in FROM clause", "Binder", "Catalog", "Candidate",
                    "_pgml_catalog", "pgml_workspace", "INTEGER_LITERAL")  # fmt: skip
    assert not [words for words in duckdb_words if words in shown]
