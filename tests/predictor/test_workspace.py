"""Each endpoint user's workspace: views and tables of its own beside the read-only mirror.

Real clients (psql, psycopg) against a real endpoint on a real mirror: PostgresML's view
workflow, each statement kind, what survives a restart, two users who never see each other's
workspace, and the attacks: writing to the mirror or another user's workspace by catalog name,
DuckDB's own statements, a write larger than the workspace may hold, shadowing. The same with a
real source and real roles is in ``test_workspace_privileges.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from predictor.workspace import file_name
from tests.predictor.endpoint_client import connect, psql
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker

WORKFLOW = """\
SELECT * FROM pgml.load_dataset('iris');
DROP VIEW IF EXISTS pgml.iris_view;
CREATE VIEW pgml.iris_view AS
  SELECT sepal_length, sepal_width, petal_length, petal_width, target FROM pgml.iris;
SELECT count(*) FROM pgml.iris_view;
SELECT project, task, algorithm, deployed
  FROM pgml.train('Iris View', 'classification', 'pgml.iris_view', 'target');
SELECT pgml.predict('Iris View', ARRAY[sepal_length, sepal_width, petal_length, petal_width])
  = target FROM pgml.iris_view LIMIT 1;
CREATE TABLE public.iris_copy AS SELECT * FROM pgml.iris_view WHERE target = 1;
INSERT INTO public.iris_copy SELECT * FROM pgml.iris_view WHERE target = 2 LIMIT 5;
SELECT count(*) FROM iris_copy;
SELECT relation_name, num_rows FROM pgml.snapshots;
"""


@pytest.fixture
def served(mirror: Mirror, trainer: Trainer) -> Iterator[SqlEndpoint]:
    """The endpoint on a locked mirror (as serve and run lock it) with a table of its own."""
    mirror.con.execute(
        "create schema public; create table public.customers (id int primary key, age int)"
    )
    mirror.con.execute("insert into public.customers select i, 20 + i % 50 from range(100) r(i)")
    endpoint = SqlEndpoint(EndpointSettings(port=0), mirror.con, trainer)
    mirror.lock_down(allowed_directories=[trainer.home])
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def _rows(endpoint: SqlEndpoint, sql: str, *params: object, user: str = "alice") -> list[tuple]:
    with connect(endpoint, user=user) as conn:
        cursor = conn.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else []


def _error(endpoint: SqlEndpoint, sql: str, *, user: str = "alice") -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught, connect(endpoint, user=user) as conn:
        conn.execute(sql)
    return caught.value


def test_postgresml_view_workflow_through_psql(pg_bin: Path, served: SqlEndpoint) -> None:
    done = psql(pg_bin, served, WORKFLOW, user="alice")
    lines = done.stdout.splitlines()
    assert lines == [
        "pgml.iris|150", "DROP VIEW", "CREATE VIEW", "150",
        "Iris View|classification|linear|t", "t", "SELECT 50", "INSERT 0 5", "55",
        "pgml.iris_view|150",
    ]  # fmt: skip
    assert "ERROR" not in done.stderr
    # the workspace's file is where the README says
    home = served.trainer.home
    assert (home / "workspaces" / file_name("alice")).exists()
    # a second run of the script (DROP VIEW IF EXISTS first) works again
    again = psql(pg_bin, served, WORKFLOW.replace("public.iris_copy", "public.iris_copy2"),
                 user="alice")  # fmt: skip
    assert "ERROR" not in again.stderr


def test_each_statement_kind(served: SqlEndpoint) -> None:
    with connect(served, user="alice") as conn:

        def run(sql: str, *params: object) -> str:
            return conn.execute(sql, params or None).statusmessage or ""

        assert run("create schema if not exists pgml") == "CREATE SCHEMA"
        assert run("create schema work") == "CREATE SCHEMA"
        made = run("create table work.t (id int primary key, name text default 'x', doc jsonb,"
                   " score real[], amount numeric(10, 2), check (id > 0))")  # fmt: skip
        assert made == "CREATE TABLE"
        assert run("create table if not exists work.t (a int)") == "CREATE TABLE"
        assert run("insert into work.t (id, doc, score, amount) values (1, '{\"a\": 1}',"
                   " array[1.5, 2], 9.99), (2, null, null, 0)") == "INSERT 0 2"  # fmt: skip
        assert run("insert into work.t (id) values (%s)", 3) == "INSERT 0 1"
        assert run("insert into work.t select id + 10, 'c', null, null, age from"
                   " public.customers where id < 4") == "INSERT 0 4"  # fmt: skip
        assert run("update work.t set name = upper(name) where id >= 10") == "UPDATE 4"
        assert run("delete from work.t where id = 13") == "DELETE 1"
        assert conn.execute("select id, name, amount from work.t order by id").fetchall()[:3] == [
            (1, "x", Decimal("9.99")), (2, "x", 0), (3, "x", None)
        ]  # fmt: skip
        assert run("create view work.v (ident, label) as select id, name from work.t") == (
            "CREATE VIEW"
        )
        assert conn.execute("select label from work.v where ident = 12").fetchall() == [("C",)]
        assert run("create or replace view work.v as select id from work.t") == "CREATE VIEW"
        assert conn.execute("select count(*) from work.v").fetchall() == [(6,)]
        assert run("create table work.c as select * from public.customers where age = 20") == (
            "SELECT 2"
        )
        assert run("create table work.empty as select * from public.customers with no data") == (
            "SELECT 0"
        )
        assert run("truncate work.c") == "TRUNCATE TABLE"
        assert conn.execute("select count(*) from work.c").fetchall() == [(0,)]
        # a join of the workspace and the mirror, names qualified as PostgreSQL allows
        assert conn.execute(
            "select count(*) from work.t join public.customers c on c.id = work.t.id"
        ).fetchall() == [(6,)]
        assert run("drop view work.v") == "DROP VIEW"
        assert run("drop view if exists work.v") == "DROP VIEW"
        assert run("drop table work.c, work.empty") == "DROP TABLE"
        with pytest.raises(psycopg.errors.WrongObjectType, match="is not a view"):
            conn.execute("drop view work.t")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("drop table work.c")
        with pytest.raises(psycopg.errors.DuplicateTable):
            conn.execute("create table work.t (a int)")
        with pytest.raises(psycopg.errors.DuplicateSchema):
            conn.execute("create schema public")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("insert into work.t (id) values (1)")  # its primary key holds
        assert run("create table work.s (id serial, x text)") == "CREATE TABLE"
        assert conn.execute("insert into work.s (x) values ('a') returning id").fetchall() == [(1,)]
        assert conn.execute("insert into work.t (id) values (50) returning id").fetchall() == [
            (50,)
        ]


def test_transactions_commit_and_roll_back_workspace_changes(served: SqlEndpoint) -> None:
    with connect(served, user="alice") as conn:
        conn.execute("create table t (a int)")
        with conn.transaction():
            conn.execute("insert into t values (1)")
            conn.execute("create view v as select a * 2 as b from t")
            assert conn.execute("select b from v").fetchall() == [(2,)]  # seen inside
        with pytest.raises(psycopg.errors.UndefinedTable), conn.transaction():
            conn.execute("insert into t values (2)")
            conn.execute("select * from no_such_table")
    with connect(served, user="alice") as conn:
        assert conn.execute("select a from t").fetchall() == [(1,)]
        assert conn.execute("select b from v").fetchall() == [(2,)]
        conn.autocommit = False
        conn.execute("insert into t values (3)")
        conn.rollback()
        assert conn.execute("select count(*) from t").fetchall() == [(1,)]


def test_several_statements_in_one_query_see_each_other(served: SqlEndpoint) -> None:
    with connect(served, user="alice") as conn:
        conn.execute("create table t (a int); insert into t values (7); create view v as"
                     " select a from t")  # fmt: skip
        assert conn.execute("select a from v").fetchall() == [(7,)]


def test_the_workspace_survives_a_restart(
    mirror_path: Path, fit_worker: FitWorker, pg_bin: Path
) -> None:
    for attempt in range(2):
        mirror = Mirror(mirror_path)
        trainer = Trainer(mirror.con, artifact_home(mirror_path), worker=fit_worker)
        endpoint = SqlEndpoint(EndpointSettings(port=0), mirror.con, trainer)
        mirror.lock_down(allowed_directories=[trainer.home])
        endpoint.start()
        try:
            if attempt == 0:
                psql(pg_bin, endpoint, "CREATE TABLE pgml.kept AS SELECT 1 AS a;\n"
                     "CREATE VIEW pgml.kept_view AS SELECT a + 1 AS b FROM pgml.kept;")  # fmt: skip
            else:
                done = psql(pg_bin, endpoint, "SELECT b FROM pgml.kept_view;")
                assert done.stdout.strip() == "2"
        finally:
            endpoint.stop()
            trainer.close()
            mirror.close()


def test_two_users_never_see_each_others_workspace(served: SqlEndpoint) -> None:
    _rows(served, "create table public.mine as select 'alice' as who", user="alice")
    _rows(served, "create view pgml.v as select 1 as one", user="alice")
    assert isinstance(_error(served, "select * from public.mine", user="bob"),
                      psycopg.errors.UndefinedTable)  # fmt: skip
    assert isinstance(_error(served, "select * from pgml.v", user="bob"),
                      psycopg.errors.UndefinedTable)  # fmt: skip
    _rows(served, "create table public.mine as select 'bob' as who", user="bob")
    assert _rows(served, "select who from mine", user="alice") == [("alice",)]
    assert _rows(served, "select who from mine", user="bob") == [("bob",)]
    # by its catalog name, in any spelling: refused
    alice = served.workspaces.of("alice").catalog  # type: ignore[union-attr]
    for sql in (
        f"select * from {alice}.public.mine",
        f'select * from "{alice}".public.mine',
        f"insert into {alice}.public.mine values ('bob')",
        f"drop table {alice}.public.mine",
        f"create table {alice}.public.x (a int)",
        f"select * from {alice}.mine",  # DuckDB would read catalog.table
        f"insert into {alice}.mine values ('bob')",
    ):
        error = _error(served, sql, user="bob")
        assert error.sqlstate in ("42501", "42P01"), (sql, error)
    assert _rows(served, "select who from mine", user="alice") == [("alice",)]
    # and the catalog lists bob's own workspace, never alice's
    tables = _rows(served, "select relname from pg_catalog.pg_class", user="bob")
    assert tables.count(("mine",)) == 1 and ("customers",) in tables and ("v",) not in tables
    columns = _rows(served, "select table_name from information_schema.columns", user="bob")
    assert columns.count(("mine",)) == 1 and ("v",) not in columns
    views = _rows(served, "select relname from pg_class where relkind = 'v'", user="alice")
    assert ("v",) in views


def test_the_mirror_stays_read_only(served: SqlEndpoint, mirror: Mirror) -> None:
    refusals = {
        "insert into public.customers values (1000, 1)": "public.customers is a table of the",
        "update public.customers set age = 1": "read-only here",
        "delete from customers": "read-only here",  # unqualified: public first
        "drop table public.customers": "read-only here",
        "alter table public.customers add column x int": "read-only here",
        "truncate public.customers": "read-only here",
        "create table public.customers (a int)": 'relation "public.customers" already exists',
        "create view public.customers as select 1": "already exists",
        "insert into mirror.public.customers values (1000, 1)": "name relations as schema.name",
        "create table mirror.public.x (a int)": "name relations as schema.name",
        "drop table mirror.public.customers": "name relations as schema.name",
        "create table pgml.models (a int)": 'relation "pgml.models" already exists',
        "insert into pgml.models (id) values (1)": "the sidecar's registry",
        "drop view pgml.deployed_models": "the sidecar's registry",
        "create table pgml_scores.x (a int)": "score views",
        "create table _pgml_sidecar.x (a int)": "permission denied for schema",
        "create table pg_catalog.x (a int)": "permission denied for schema",
        "create temp table x (a int)": "temporary tables are not supported",
        "create materialized view m as select 1": "CREATE TABLE ... AS",
        "create table x (a int references public.customers (id))": "served from the mirror",
        "create function f() returns int as 'select 1' language sql": "CREATE FUNCTION is not",
        "create index i on public.customers (age)": "read-only here",
        "grant select on public.customers to bob": "GRANT is not allowed",
        "with d as (delete from public.customers returning *) select * from d": "in WITH",
        "select * into public.copy from public.customers": "SELECT INTO",
    }
    for sql, message in refusals.items():
        error = _error(served, sql)
        assert message in str(error), (sql, str(error))
        assert "Stmt" not in str(error) and "ALTERTABLE" not in str(error)
    assert mirror.con.execute("select count(*) from public.customers").fetchall() == [(100,)]


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH '/tmp/other.duckdb' AS other",
        "ATTACH 'workspaces/x.duckdb' AS x",
        "DETACH mirror",
        "COPY public.customers TO '/tmp/customers.csv'",
        "COPY (SELECT 1) TO '/tmp/one.csv'",
        "CREATE MACRO m(a) AS a + 1",
        "CREATE OR REPLACE MACRO read_text(a) AS a",
        "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET GLOBAL lock_configuration = false",
        "RESET lock_configuration",
        "PRAGMA database_list",
        "EXPORT DATABASE '/tmp/everything'",
        "IMPORT DATABASE '/tmp/everything'",
        "USE other",
        "CREATE TABLE z AS SELECT * FROM read_csv('/etc/passwd')",
        "CREATE VIEW v AS SELECT * FROM read_text('/proc/self/environ')",
        "CREATE VIEW v AS SELECT * FROM '/etc/passwd'",
        "INSERT INTO t SELECT * FROM glob('/*')",
        "CREATE TABLE z (a text DEFAULT getenv('HOME'))",
        "CREATE TABLE z (a int CHECK (a > length(current_setting('memory_limit'))))",
        "CREATE VIEW v AS SELECT * FROM duckdb_databases()",
        "CREATE VIEW v AS SELECT * FROM _pgml_sidecar.positions",
        "CREATE VIEW v AS SELECT pgml.train('x', 'regression', 'public.customers', 'age')",
        "CREATE TABLE z AS SELECT * FROM pgml.train('x', 'regression', 'public.customers', 'age')",
    ],
)
def test_duckdb_escapes_in_writes_are_refused(served: SqlEndpoint, sql: str) -> None:
    _rows(served, "create table t (a text)")  # so INSERT INTO t has a target
    error = _error(served, sql)
    assert error.sqlstate in ("42501", "42883", "0A000", "42601"), (sql, error)
    assert error.sqlstate != "42601" or "syntax" not in str(error) or sql.startswith("USE")


def test_a_write_larger_than_the_workspace_may_hold_is_undone(
    mirror: Mirror, trainer: Trainer
) -> None:
    endpoint = SqlEndpoint(
        EndpointSettings(port=0, workspace_size_limit=8 << 20), mirror.con, trainer
    )
    mirror.lock_down(allowed_directories=[trainer.home])
    endpoint.start()
    try:
        big = ("create table big as select i, md5(i::text) || md5((i + 1)::text) as t"
               " from generate_series(1, 3000000) i")  # fmt: skip
        error = _error(endpoint, big)
        assert error.sqlstate == "53100" and "over its limit of 8.0 MB" in str(error), error
        assert isinstance(_error(endpoint, "select * from big"), psycopg.errors.UndefinedTable)
        _rows(endpoint, "create table small (i int, t text)")
        error = _error(endpoint, big.replace("create table big as", "insert into small"))
        assert error.sqlstate == "53100"
        assert _rows(endpoint, "select count(*) from small") == [(0,)]
        assert _rows(endpoint, "insert into small values (1, 'a')") == []  # still works
        assert _rows(endpoint, "select count(*) from small") == [(1,)]
    finally:
        endpoint.stop()


def test_a_workspace_table_made_before_the_mirrored_one_shadows_it(
    served: SqlEndpoint, mirror: Mirror
) -> None:
    """PostgreSQL's search_path with the workspace first: a name the workspace has is its own,
    for its user only; the mirror's is everyone else's."""
    _rows(served, "create table public.later as select 'mine' as whose")
    mirror.con.execute("create table public.later as select 'mirror' as whose")
    served.relations.refresh()
    assert _rows(served, "select whose from public.later") == [("mine",)]
    assert _rows(served, "select whose from public.later", user="bob") == [("mirror",)]
    _rows(served, "drop table public.later")
    assert _rows(served, "select whose from public.later") == [("mirror",)]


def test_views_read_through_views_and_a_loop_is_refused(served: SqlEndpoint) -> None:
    with connect(served, user="alice") as conn:
        conn.execute("create view a as select id, age from public.customers")
        conn.execute("create view b as select age from a where id < 10")
        assert conn.execute("select count(*) from b").fetchall() == [(10,)]
        with pytest.raises(psycopg.errors.InvalidObjectDefinition, match="recursion"):
            conn.execute("create or replace view a as select age as id, age from b")
        assert conn.execute("select count(*) from b").fetchall() == [(10,)]
        # the view's text is its own: a reference to a column dropped later fails when read
        conn.execute("create table t (x int, y int)")
        conn.execute("create view ty as select y from t")
        conn.execute("drop table t")
        conn.execute("create table t (x int)")
        with pytest.raises(psycopg.errors.UndefinedColumn):
            conn.execute("select * from ty")


def test_the_mirrors_writes_never_wait_for_a_workspace_transaction(
    served: SqlEndpoint, mirror: Mirror
) -> None:
    with connect(served, user="alice") as conn:
        conn.execute("create table t (a int)")
        conn.autocommit = False
        conn.execute("insert into t select id from public.customers")
        conn.execute("create view v as select a from t")
        done = threading.Event()

        def replicate() -> None:  # as the replicator does, on the mirror's own connection
            mirror.begin()
            mirror.con.execute("insert into public.customers values (1000, 99)")
            mirror.commit("slot", 1)
            done.set()

        started = time.monotonic()
        thread = threading.Thread(target=replicate)
        thread.start()
        thread.join(timeout=10)
        assert done.is_set() and time.monotonic() - started < 5
        conn.commit()
    assert _rows(served, "select count(*) from t") == [(100,)]
    assert _rows(served, "select count(*) from public.customers") == [(101,)]
