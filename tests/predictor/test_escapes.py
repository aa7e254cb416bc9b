"""Escape routes out of the endpoint, tried by real clients against a locked endpoint: all refused.

The corpus holds the ways DuckDB under the endpoint could read a file, the environment, its own
settings or another database, run SQL text, or write: each is sent by psycopg (some through
psql) and must be refused with SQLSTATE 42501, never showing a byte of the file it aimed at.
Where PostgreSQL itself would answer otherwise the SQLSTATE is its answer, and says so: 42883
for a function it does not have (``list_value``), 42P01 for a relation that does not exist
(``information_schema.views``, which the endpoint does not answer), 55P02 for a setting that
cannot be changed. Beside the corpus: ordinary queries, psql, dblink and postgres_fdw still work
on the locked endpoint, the relation hook refuses what a restricted caller may not read, and
DuckDB itself refuses files when asked directly, as if the allow-list were bypassed.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pytest
from psycopg.conninfo import conninfo_to_dict

from mirror.changes import Column, Inserts, Relation, Tuples
from mirror.store import Mirror
from predictor import procedures
from predictor.allow_list import SESSION_SETTINGS, Refused
from predictor.catalog import ServedRelations
from predictor.execution import DEFAULT_SETTINGS
from predictor.server import EndpointSettings, SqlEndpoint
from predictor.statements import StatementError, split
from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.predictor.endpoint_client import connect, dsn
from tests.replicator.mirror_check import execute
from tests.sidecar.test_daemon import CREATE, FILL, finished, one
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker

MARKER = "pgml-escape-" + secrets.token_hex(8)
"""In the secret file and the environment: it must never come back to a client."""

SALARIES = Relation(
    101, "public", "salaries", "d",
    (Column("id", 20, -1, True), Column("dept", 23, -1, False), Column("salary", 701, -1, False)),
)  # fmt: skip
TEAMS = Relation(
    102, "public", "teams", "d", (Column("id", 20, -1, True), Column("name", 25, -1, False))
)


@dataclass
class Target:
    """A locked endpoint on a mirror with two mirrored tables, and files it must never read."""

    endpoint: SqlEndpoint
    mirror: Mirror
    trainer: Trainer
    secret: Path
    workdir: Path


def _mirror_tables(mirror: Mirror) -> None:
    for relation, rows in (
        (SALARIES, {"id": [str(i) for i in range(1, 201)],
                    "dept": [str(i % 5) for i in range(1, 201)],
                    "salary": [str(1000 + 10 * i) for i in range(1, 201)]}),
        (TEAMS, {"id": ["1", "2"], "name": ["red", "blue"]}),
    ):  # fmt: skip
        mirror.create_table(relation, state="ready")
        mirror.apply([Inserts(relation, Tuples(pa.table(rows)))])
    mirror.commit("pgml_sidecar", 1)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, fit_worker: FitWorker) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("escapes")
    secret = workdir / "secret.csv"
    secret.write_text(f"a,b\n{MARKER},1\n")
    mirror = Mirror(workdir / "mirror.duckdb")
    _mirror_tables(mirror)
    mirror.con.execute("create table public.by_hand as select 7 as a")  # not the replicator's
    trainer = Trainer(mirror.con, artifact_home(mirror.path), worker=fit_worker)
    endpoint = SqlEndpoint(EndpointSettings(port=0), mirror.con, trainer)
    mirror.lock_down(allowed_directories=[trainer.home])
    endpoint.start()
    try:
        with connect(endpoint) as conn:  # trains after the lock: snapshots and models still work
            conn.execute(
                "select * from pgml.train('Pay', 'regression', 'public.salaries', 'salary')"
            )
        yield Target(endpoint, mirror, trainer, secret, workdir)
    finally:
        endpoint.stop()
        trainer.close()
        mirror.close()


@pytest.fixture(autouse=True)
def marker_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGML_ESCAPE_MARKER", MARKER)  # /proc/self/environ and getenv() hold it


# (SQL with {secret} and {dir}, SQLSTATE): each one an escape route.
CORPUS: list[tuple[str, str]] = [
    # file readers
    ("select * from read_csv('{secret}')", "42501"),
    ("select * from read_csv_auto('{secret}')", "42501"),
    ("select * from read_parquet('{secret}')", "42501"),
    ("select * from parquet_scan('{secret}')", "42501"),
    ("select * from read_json('{secret}')", "42501"),
    ("select * from read_json_auto('{secret}')", "42501"),
    ("select * from read_ndjson_objects('{secret}')", "42501"),
    ("select content from read_text('{secret}')", "42501"),
    ("select content from read_blob('{secret}')", "42501"),
    ("select content from read_text('/proc/self/environ')", "42501"),
    ("select * from glob('{dir}/*')", "42501"),
    ("select * from parquet_metadata('{secret}')", "42501"),
    ("select * from parquet_schema('{secret}')", "42501"),
    ("select * from sniff_csv('{secret}')", "42501"),
    ("select * from read_duckdb('{dir}/mirror.duckdb')", "42501"),
    # replacement scans: a file named where a table goes
    ("select * from '{secret}'", "42501"),
    ('select * from "{secret}"', "42501"),
    ('select * from "secret.csv"', "42501"),
    ('select * from public."secret.csv"', "42501"),
    ("from '{secret}'", "42501"),
    ("select * from public.salaries, '{secret}'", "42501"),
    # SQL text run by DuckDB
    (
        "select * from json_execute_serialized_sql(json_serialize_sql("
        "'select content from read_text(''{secret}'')'))",
        "42501",
    ),
    ("select json_serialize_sql('select content from read_text(''{secret}'')')", "42501"),
    ("select * from query('select content from read_text(''{secret}'')')", "42501"),
    ("select * from query_table('public.salaries')", "42501"),
    ("select * from histogram('public.salaries', salary)", "42501"),
    # the environment, settings, secrets, extensions, databases
    ("select getenv('PGML_ESCAPE_MARKER')", "42501"),
    ("select current_setting('temp_directory')", "42501"),
    ("select current_setting('allowed_directories')", "42501"),
    ("select current_setting('home_directory')", "42501"),
    ("select * from duckdb_settings()", "42501"),
    ("select * from duckdb_secrets()", "42501"),
    ("select * from duckdb_extensions()", "42501"),
    ("select path from duckdb_databases()", "42501"),
    ("select * from duckdb_temporary_files()", "42501"),
    ("select * from pg_catalog.pg_settings", "42501"),
    ("select * from pragma_database_list", "42501"),
    ("select * from system.main.duckdb_settings", "42501"),
    ("select * from sqlite_master", "42501"),
    ("select * from _pgml_sidecar.positions", "42501"),
    ("select getvariable('x')", "42501"),
    # DuckDB's own statements
    ("PRAGMA database_list", "42501"),
    ("pragma version", "42501"),
    ("ATTACH '{dir}/other.duckdb' AS other", "42501"),
    ("attach ':memory:' as scratch", "42501"),
    ("DETACH mirror", "42501"),
    ("COPY public.salaries TO '{dir}/out.csv'", "42501"),
    ("COPY public.salaries FROM '{secret}'", "42501"),
    ("COPY (select 1) TO PROGRAM 'id'", "42501"),
    ("EXPORT DATABASE '{dir}/everything'", "42501"),
    ("IMPORT DATABASE '{dir}'", "42501"),
    ("INSTALL httpfs", "42501"),
    ("FORCE INSTALL httpfs", "42501"),
    ("LOAD httpfs", "42501"),
    ("LOAD 'httpfs'", "42501"),
    ("CALL pragma_version()", "42501"),
    ("USE memory", "42501"),
    ("SUMMARIZE public.salaries", "42501"),
    ("CHECKPOINT", "42501"),
    ("create secret (type s3, key_id 'k', secret 's')", "42501"),
    ("create macro steal(p) as (select content from read_text(p))", "42501"),
    # DuckDB's settings
    ("SET enable_external_access = true", "42501"),
    ("set allowed_directories = '/'", "42501"),
    ("RESET lock_configuration", "42501"),
    ("SET GLOBAL enable_external_access = true", "42501"),
    ("SET VARIABLE x = 1", "42501"),
    ("set role postgres", "42501"),
    ("select set_config('enable_external_access', 'true', false)", "42501"),
    ("set server_version = '9.0'", "55P02"),  # PostgreSQL's answer for a read-only setting
    # comments, spelling, quoting, unicode escapes, schemas
    ("select/**/content/**/from/**/read_text('{secret}')", "42501"),
    ("/* hello */ attach '{dir}/x.duckdb'", "42501"),
    ("-- hello\nPRAGMA database_list", "42501"),
    ("select * from U&\"\\0072ead_text\"('{secret}')", "42501"),
    ("select * from \"READ_TEXT\"('{secret}')", "42501"),
    ("select * from READ_TEXT('{secret}')", "42501"),
    ("select * from main.read_text('{secret}')", "42501"),
    ("select * from system.main.read_text('{secret}')", "42501"),
    ("select * from pg_catalog.read_text('{secret}')", "42501"),
    ('select * from "main"."read_text"(\'{secret}\')', "42501"),
    ("select p.read_text() from (values ('{secret}')) t(p)", "42501"),
    # where the call hides
    ("select * from public.teams t, lateral read_text(t.name)", "42501"),
    ("with f as (select * from read_text('{secret}')) select * from f", "42501"),
    ("with recursive f as (select content from read_text('{secret}')) select * from f", "42501"),
    ("select (select content from read_text('{secret}'))", "42501"),
    ("select lower((select content from read_text('{secret}')))", "42501"),
    ("values ((select content from read_text('{secret}')))", "42501"),
    ("select * from (select * from read_text('{secret}')) s", "42501"),
    ("select 1 where exists (select 1 from read_text('{secret}'))", "42501"),
    ("select * from public.teams join read_text('{secret}') r on true", "42501"),
    ("select * from public.teams order by (select content from read_text('{secret}'))", "42501"),
    (
        "select * from public.teams tablesample system ((select length(content)"
        " from read_text('{secret}')))",
        "42501",
    ),
    ("explain select * from read_text('{secret}')", "42501"),
    ('select * from (with "x.csv" as (select 1) select 1) s, "{secret}"', "42501"),
    (
        "select count(*) filter (where (select content from read_text('{secret}')) > '')"
        " from public.teams",
        "42501",
    ),
    # PostgreSQL's own ways out
    ("select pg_read_file('{secret}')", "42501"),
    ("select pg_read_binary_file('{secret}')", "42501"),
    ("select lo_import('{secret}')", "42501"),
    ("select * from pg_ls_dir('{dir}')", "42501"),
    ("select pg_stat_file('{secret}')", "42501"),
    ("select * from dblink('host=127.0.0.1', 'select 1') as t(a int)", "42501"),
    ("do $$ begin perform 1; end $$", "42501"),
    ("create extension dblink", "42501"),
    # writing through the endpoint
    # the caller's workspace takes CREATE TABLE AS and CREATE VIEW, never in another database
    ("create table mirror.public.copy as select * from public.salaries", "42501"),
    ("create view system.main.v as select 1", "42501"),
    ("create view pg_catalog.v as select 1", "42501"),
    ("insert into public.salaries values (999, 'x', 1)", "42501"),
    ("update public.salaries set salary = 0", "42501"),
    ("delete from public.salaries", "42501"),
    ("truncate public.salaries", "42501"),
    ("drop table public.salaries", "42501"),
    ("alter table public.salaries add column z int", "42501"),
    ("with x as (delete from public.salaries returning *) select * from x", "42501"),
    ("select * into public.copy from public.salaries", "42501"),
    ("insert or replace into public.salaries values (1, 'x', 1)", "42501"),
    ("select nextval('pgml.projects_id_seq')", "42501"),
    ("select * from mirror.public.salaries", "42501"),
    # the mirror's bookkeeping as a training relation
    ("select * from pgml.train('x', 'regression', '_pgml_sidecar.positions', 'lsn')", "42501"),
    ("select * from pgml.snapshot('_pgml_sidecar.tables')", "42501"),
    ('select pgml.snapshot(\'"_PGML_SIDECAR"."dead_letters"\')', "42501"),
    ("select * from pgml.snapshot(relation_name => '_pgml_catalog.pg_class')", "42501"),
    ("select * from pgml.snapshot('information_schema.columns')", "42501"),
    # PostgreSQL's answer: no such function, no such relation
    ("select list_value(1)", "42883"),
    ("select no_such_function()", "42883"),
    ("select * from public.nope", "42P01"),
    ("select * from information_schema.views", "42P01"),
    ("select * from public.teams tablesample read_text('{secret}')", "42704"),
    ("show temp_directory", "42704"),
]


def _sql(template: str, target: Target) -> str:
    return template.replace("{secret}", str(target.secret)).replace("{dir}", str(target.workdir))


def _refused(conn: psycopg.Connection, sql: str, sqlstate: str, *, params: bool) -> None:
    with pytest.raises(psycopg.Error) as caught:
        cursor = conn.execute(sql, ("unused",) if params else None, prepare=False)
        cursor.fetchall()  # a result that came back would hold the file
    error = caught.value
    assert error.sqlstate == sqlstate, (sql, error.sqlstate, str(error))
    text = " ".join(str(p) for p in (error, error.diag.message_detail, error.diag.message_hint))
    assert MARKER not in text
    assert "\n" not in (error.diag.message_primary or "")  # one line


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 60
    assert len({sql for sql, _ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("template", "sqlstate"), CORPUS, ids=range(len(CORPUS)))
def test_escape_is_refused(target: Target, template: str, sqlstate: str) -> None:
    sql = _sql(template, target)
    with connect(target.endpoint) as conn:
        _refused(conn, sql, sqlstate, params=False)  # the simple protocol
        _refused(conn, sql + " /* %s */", sqlstate, params=True)  # Parse, Bind, Execute
        assert conn.execute("select count(*) from public.salaries").fetchone() == (200,)


PSQL_CASES = [
    "select 1; attach '{dir}/o.duckdb' as o",
    "select 1 as one; select content from read_text('{secret}')",
    "select * from '{secret}'",
    "pragma database_list",
    "select json_execute_serialized_sql(json_serialize_sql('select 1'))",
    "copy public.salaries to '{dir}/x.csv'",
    "set enable_external_access = true",
]


@pytest.mark.parametrize("template", PSQL_CASES)
def test_escape_through_psql_is_refused(pg_bin: Path, target: Target, template: str) -> None:
    done = subprocess.run(
        [str(pg_bin / "psql"), "-X", "-A", "-t", "-v", "VERBOSITY=verbose", "-c",
         _sql(template, target), dsn(target.endpoint)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ERROR:  42501: " in done.stderr, done.stderr
    assert MARKER not in done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # the error line and its LOCATION


def test_deeply_nested_statements_are_refused_cleanly(target: Target) -> None:
    with connect(target.endpoint) as conn:
        for sql in (
            "select " + "lower(" * 2000 + "'x'" + ")" * 2000,
            "select 1 from " + "(select 1 from " * 2000 + "(values (1)) t" + ") s" * 2000,
        ):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(sql)
            assert caught.value.sqlstate in ("54001", "42601"), str(caught.value)  # ours, pglast's
        assert conn.execute("select 1").fetchone() == (1,)


def test_files_in_the_artifact_directory_are_not_readable_either(target: Target) -> None:
    snapshot = next((target.trainer.home / "snapshots").glob("*.parquet"))
    with connect(target.endpoint) as conn:
        for sql in (
            f"select * from read_parquet('{snapshot}')",
            f'select * from "{snapshot}"',
            f"select content from read_blob('{target.mirror.path}')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


def test_snapshot_paths_are_not_host_paths(target: Target) -> None:
    with connect(target.endpoint) as conn:
        paths = [r[0] for r in conn.execute("select path from pgml.snapshots").fetchall()]
        models = [r[0] for r in conn.execute("select path from pgml.models").fetchall()]
    assert paths and models
    for path in paths + models:
        assert not path.startswith("/") and str(target.workdir) not in path, path
        assert ".." not in Path(path).parts
    assert (target.trainer.home / paths[0]).is_file()


# -- the second wall: DuckDB itself ------------------------------------------------------------


def test_locked_duckdb_refuses_files_when_asked_directly(target: Target) -> None:
    cursor = target.mirror.con.cursor()  # as if the allow-list were bypassed
    try:
        for sql in (
            f"select content from read_text('{target.secret}')",
            f"select * from read_csv('{target.secret}')",
            f"select * from '{target.secret}'",
            "select content from read_text('/proc/self/environ')",
            f"copy (select 1) to '{target.workdir}/out.csv'",
            f"attach '{target.workdir}/other.duckdb'",
            f"select content from read_text('{target.trainer.home}/../secret.csv')",
            "install httpfs",
            "load httpfs",
        ):
            with pytest.raises(duckdb.Error) as caught:
                cursor.execute(sql).fetchall()
            assert MARKER not in str(caught.value)
            assert isinstance(caught.value, duckdb.PermissionException | duckdb.CatalogException)
        for setting in ("enable_external_access = true", "lock_configuration = false",
                        "allowed_directories = ['/']", "memory_limit = '1TB'"):  # fmt: skip
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                cursor.execute(f"set {setting}")
    finally:
        cursor.close()


def test_locked_duckdb_still_does_the_sidecars_own_work(target: Target) -> None:
    """Snapshots to Parquet and back in the artifact directory, spilling to the temp directory."""
    cursor = target.mirror.con.cursor()
    out = target.trainer.home / "snapshots" / "check.parquet"
    try:
        cursor.execute(f"copy (select * from public.salaries) to '{out}' (format parquet)")
        assert cursor.execute(f"select count(*) from read_parquet('{out}')").fetchone() == (200,)
        assert target.mirror.locked
        target.mirror.lock_down(allowed_directories=[target.trainer.home])  # twice: nothing
    finally:
        out.unlink(missing_ok=True)
        cursor.close()


# -- what still works ---------------------------------------------------------------------------


ORDINARY = """
with pay as (
    select id, 'person ' || id as name, salary,
           date_trunc('month', timestamp '2024-03-17 10:00') as month,
           ('{"team": "' || (id % 2) || '"}')::jsonb ->> 'team' as team
    from public.salaries where id <= 10
)
select team, count(*), string_agg(coalesce(nullif(name, 'person 1'), 'nobody'), ',' order by id),
       max(month)::date, percentile_cont(0.5) within group (order by salary),
       sum(sum(salary)) over (order by team rows between unbounded preceding and current row),
       (select count(*) from generate_series(1, 3)), (select sum(x) from unnest(array[1, 2]) u(x)),
       greatest(1, 2), upper(left(min(name), 3)), round(avg(salary)::numeric, 1),
       extract(year from max(month)), trim(both ' ' from '  x  ')
from pay group by team order by team
"""


def test_ordinary_functions_still_run(target: Target) -> None:
    with connect(target.endpoint) as conn:
        rows = conn.execute(ORDINARY).fetchall()
        assert [r[0] for r in rows] == ["0", "1"]
        team0 = rows[0]
        assert team0[1] == 5 and team0[2] == "person 2,person 4,person 6,person 8,person 10"
        assert str(team0[3]) == "2024-03-01" and team0[4] == 1060.0
        assert team0[6:9] == (3, 3, 2) and team0[9] == "PER" and team0[11] == 2024
        assert team0[12] == "x"
        assert rows[1][2].startswith("nobody,")
        lagged = conn.execute(
            "select id, lag(salary) over (order by id), row_number() over w, rank() over w"
            " from public.salaries window w as (order by salary desc) order by id limit 2"
        ).fetchall()
        assert lagged == [(1, None, 200, 200), (2, 1010.0, 199, 199)]
        assert conn.execute("select current_setting('server_version_num')").fetchone() == (
            DEFAULT_SETTINGS["server_version_num"],
        )


def test_information_schema_shows_the_mirror_not_the_sidecars_bookkeeping(target: Target) -> None:
    with connect(target.endpoint) as conn:
        tables = conn.execute(
            "select table_schema || '.' || table_name from information_schema.tables"
        ).fetchall()
        schemas = conn.execute("select schema_name from information_schema.schemata").fetchall()
        columns = conn.execute(
            "select c.column_name from information_schema.columns c"
            " where c.table_schema = 'public' and c.table_name = 'salaries'"
            " order by c.ordinal_position"
        ).fetchall()
    assert ("public.salaries",) in tables and ("pgml.projects",) in tables
    assert not [t for (t,) in tables if t.startswith("_pgml")]
    assert not [s for (s,) in schemas if s.startswith("_pgml")]
    assert columns == [("id",), ("dept",), ("salary",)]


def test_postgresml_session_through_psql_on_the_locked_endpoint(
    pg_bin: Path, target: Target
) -> None:
    script = """
SELECT * FROM pgml.load_dataset('iris');
SELECT * FROM pgml.train('Iris', 'classification', 'pgml.iris', 'target', 'linear');
SELECT pgml.predict('Iris', ARRAY[5.1, 3.5, 1.4, 0.2]);
SELECT count(*) FROM pgml.iris i JOIN pgml.deployed_models d ON d.name = 'Iris';
SELECT count(*) FROM pgml_scores.pay WHERE prediction > 0;
SET application_name = 'psql session';
SHOW application_name;
"""
    done = subprocess.run(
        [str(pg_bin / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", dsn(target.endpoint)],
        input=script, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == ["pgml.iris|150", "Iris|classification|linear|t", "0", "150", "200",
                     "SET", "psql session"]  # fmt: skip


def test_dblink_and_postgres_fdw_on_the_locked_endpoint(target: Target, source_dsn: str) -> None:
    port = target.endpoint.port
    with psycopg.connect(source_dsn, autocommit=True) as source:
        source.execute("create extension if not exists dblink")
        row = source.execute(
            "select * from dblink(%s, 'select pgml.predict(''Pay'', ARRAY[0]) > 0')"
            " as t(positive bool)",
            (f"host=127.0.0.1 port={port} dbname=pgml user=pgml",),
        ).fetchone()
        assert row == (True,)
        source.execute("create extension if not exists postgres_fdw")
        source.execute(
            "create server sidecar foreign data wrapper postgres_fdw"
            f" options (host '127.0.0.1', port '{port}', dbname 'pgml')"
        )
        source.execute("create user mapping for current_user server sidecar options (user 'pgml')")
        source.execute("create schema mirrored")
        source.execute("import foreign schema public from server sidecar into mirrored")
        count = source.execute("select count(*) from mirrored.salaries where salary > 2000")
        assert count.fetchone() == (100,)
        source.execute("analyze mirrored.teams")
        source.execute("create schema scores")
        source.execute("import foreign schema pgml_scores from server sidecar into scores")
        assert source.execute("select count(*) from scores.pay where id < 11").fetchone() == (10,)


def test_a_newly_mirrored_table_is_readable_at_once(target: Target) -> None:
    relation = Relation(103, "public", "latecomer", "d", (Column("id", 20, -1, True),))
    with connect(target.endpoint) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from public.latecomer")
        target.mirror.create_table(relation, state="ready")
        target.mirror.commit("pgml_sidecar", 2)
        assert conn.execute("select count(*) from public.latecomer").fetchone() == (0,)


def test_run_locks_duckdb_before_it_serves(source_dsn: str, mirror_path: Path) -> None:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=300))
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    daemon = Daemon(
        DaemonSettings(source_dsn=source_dsn, mirror_path=mirror_path,
                       tables=["public.accounts"], port=0, metrics_port=0)
    )  # fmt: skip
    secret = mirror_path.parent / "beside-the-mirror.txt"
    secret.write_text(MARKER)
    daemon.start()
    try:
        assert daemon.mirror.locked
        with pytest.raises(duckdb.PermissionException):
            daemon.mirror.con.cursor().execute(f"select * from read_text('{secret}')")
        request = one(
            source_dsn,
            "select pgml.train('Churn', 'classification', 'public.accounts', 'churned')",
        )
        assert finished(source_dsn, request)[:2] == ("done", None)  # a snapshot under the lock
        user = conninfo_to_dict(source_dsn)["user"]  # the endpoint user acts for that role
        with connect(daemon.endpoint, user=str(user)) as conn:
            count = conn.execute("select count(*) from public.accounts").fetchone()
            assert count == (300,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select * from read_text('{secret}')")
    finally:
        daemon.stop()


def test_an_unknown_relation_is_refused_at_parse_as_postgresql_does(target: Target) -> None:
    with connect(target.endpoint) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select nope from public.nowhere where id = %s", (1,), prepare=True)
        assert conn.execute("select 1").fetchone() == (1,)


# -- the hook for per-user privileges ----------------------------------------------------------


@pytest.mark.parametrize(
    "readable",
    [
        {("public", "teams"), ("pgml_scores", "nothing")},
        {("public", "teams"): "every column"},  # a mapping keyed by (schema, name)
        lambda schema, name: (schema, name) == ("public", "teams"),
    ],
    ids=["set", "mapping", "callable"],
)
def test_a_restricted_caller_reads_only_its_relations(target: Target, readable: object) -> None:
    relations = target.endpoint.relations

    def check(sql: str) -> list[str]:
        statements = split(sql, relations=relations, readable=readable)  # type: ignore[arg-type]
        return [f"{r.schema}.{r.name}" for s in statements for r in s.reads]

    assert check("select * from public.teams") == ["public.teams"]
    assert check('select * from "PUBLIC"."TEAMS"') == ["public.teams"]
    assert check("select name, task from pgml.projects") == ["pgml.projects"]  # the registry
    for sql in (
        "select * from public.salaries",
        "select * from public.by_hand",
        'select * from "Public"."Salaries"',
        "select * from public.teams t join public.salaries s using (id)",
        "select (select max(salary) from public.salaries)",
        "with s as (select * from public.salaries) select * from s",
        "declare c cursor for select * from public.salaries",
        "explain select * from public.salaries",
        "select * from pgml_scores.pay",
    ):
        with pytest.raises(Refused) as caught:
            check(sql)
        assert caught.value.sqlstate == "42501", sql
        assert "permission denied for table" in str(caught.value)


def test_a_restricted_caller_trains_only_on_its_relations(target: Target) -> None:
    call = "select * from pgml.train('Pay 2', 'regression', 'public.salaries', 'salary')"
    (statement,) = split(call, relations=target.endpoint.relations, readable={("public", "teams")})
    assert statement.procedure is not None
    with pytest.raises(Refused, match=r"permission denied for table public\.salaries"):
        procedures.call(target.trainer, statement.procedure)
    assert statement.procedure.check_relation is not None
    statement.procedure.check_relation("teams")  # a bare name, found as the trainer finds it
    with connect(target.endpoint) as conn:  # a $1 parameter is checked once bound
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from pgml.snapshot(%s)", ("_pgml_sidecar.tables",))
        names = conn.execute("select name from pgml.projects order by name").fetchall()
    assert ("Pay 2",) not in names and ("Pay",) in names


def test_by_default_every_mirrored_table_and_score_view_is_readable(target: Target) -> None:
    statements = split(
        "select * from public.salaries s join pgml_scores.pay p using (id)",
        relations=target.endpoint.relations,
    )
    reads = {(r.schema, r.name, r.kind) for r in statements[0].reads}
    assert reads == {("public", "salaries", "mirrored"), ("pgml_scores", "pay", "scores")}
    with connect(target.endpoint) as conn:  # a table made in the file by hand is served too
        assert conn.execute("select a from public.by_hand").fetchone() == (7,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from _pgml_sidecar.tables")


def test_without_served_relations_nothing_mirrored_can_be_named() -> None:
    with pytest.raises(Refused) as caught:
        split("select * from public.salaries")
    assert caught.value.sqlstate == "42P01"
    assert split("with t as (select 1) select * from t, pg_class")[0].kind == "select"


def test_served_relations_follow_the_mirror(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m.duckdb")
    try:
        served = ServedRelations(mirror.con)
        assert served.find("public", "salaries") is None
        _mirror_tables(mirror)
        found = served.find("PUBLIC", "Salaries")  # a miss reads the mirror again
        assert found is not None and (found.schema, found.name) == ("public", "salaries")

        def broken_views() -> None:
            raise duckdb.CatalogException("a score view that cannot be made")

        served = ServedRelations(mirror.con, before_refresh=broken_views)
        assert served.find("public", "teams") is not None  # queries go on regardless
    finally:
        mirror.close()


def test_the_session_settings_cover_what_the_session_keeps() -> None:
    assert set(DEFAULT_SETTINGS) <= SESSION_SETTINGS
    with pytest.raises(StatementError) as caught:
        split("set transaction isolation level serializable")
    assert caught.value.sqlstate == "0A000"
