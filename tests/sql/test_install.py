"""sql/install.sql, uninstall.sql and role.sql in a real PostgreSQL, applied by source_schema."""

from __future__ import annotations

import functools
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mirror.errors import SourceSetupError
from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from sidecar import source_schema
from sidecar.local_postgres import LocalPostgres
from tests.fix_pg import database_name_for, drop_database, fresh_database
from tests.source_roles import MakeRole, as_role, make_role
from trainer.train import Trainer

SQL_DIR = Path(__file__).resolve().parents[2] / "sidecar" / "sql"
VERSION_1_COMMIT = "f0ec365"  # its sql/install.sql created schema version 1
VERSION_2_COMMIT = "8428d18"  # and this one's version 2
IRIS_SETOSA = "array[5.1, 3.5, 1.4, 0.2]"
__all__ = ["make_role"]  # the fixture, used by name


@pytest.fixture
def source(source_dsn: str) -> Iterator[psycopg.Connection]:
    """A superuser connection to a fresh database with the pgml schema installed."""
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
        yield conn


@pytest.fixture
def role_name(pg_server: LocalPostgres) -> Iterator[str]:
    """A role name of this test's own; the role, if made, is dropped with what it owns."""
    name = "sidecar_" + secrets.token_hex(4)
    yield name
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", [name]).fetchone()
        if not exists:
            return
        databases = conn.execute(
            "select datname from pg_database where datallowconn and datname <> 'template1'"
        ).fetchall()
    for (database,) in databases:
        with psycopg.connect(pg_server.dsn(database), autocommit=True) as db:
            db.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@pytest.fixture
def owner_dsn(pg_server: LocalPostgres, role_name: str) -> Iterator[str]:
    """The DSN of a database owned by a plain LOGIN role (no superuser), connecting as it."""
    database = role_name + "_db"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role_name)))
        conn.execute(
            sql.SQL("create database {} owner {}").format(
                sql.Identifier(database), sql.Identifier(role_name)
            )
        )
    try:
        yield pg_server.dsn(database, user=role_name)
    finally:
        drop_database(pg_server, database)


def as_user(dsn: str, user: str) -> str:
    return make_conninfo(dsn, user=user)


def psql(
    pg_bin: Path, dsn: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    params = conninfo_to_dict(dsn)
    done = subprocess.run(
        [str(pg_bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-h", str(params["host"]), "-p", str(params["port"]),
         "-U", str(params["user"]), "-d", str(params["dbname"]), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"psql failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    return done


def schemas(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "select nspname from pg_namespace where nspname in ('pgml', 'pgml_scores')"
    ).fetchall()
    return {r[0] for r in rows}


def dsn_of(conn: psycopg.Connection) -> str:
    info = conn.info
    return make_conninfo("", host=info.host, port=info.port, user=info.user, dbname=info.dbname)


def request(conn: psycopg.Connection, request_id: int) -> dict[str, object]:
    cur = conn.execute("select * from pgml.training_requests where id = %s", [request_id])
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


# --- install, versions, uninstall ---------------------------------------------------------


def test_database_owner_installs_without_superuser_or_extensions(owner_dsn: str) -> None:
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        is_superuser = conn.execute("select rolsuper from pg_roles where rolname = current_user")
        assert is_superuser.fetchone() == (False,)
        assert source_schema.installed_version(conn) is None

        assert source_schema.install(conn) == source_schema.SCHEMA_VERSION == 3
        assert source_schema.installed_version(conn) == 3
        assert schemas(conn) == {"pgml", "pgml_scores"}
        extensions = conn.execute("select extname from pg_extension").fetchall()
        assert extensions == [("plpgsql",)]
        functions = conn.execute(
            "select p.proname, l.lanname from pg_proc p join pg_language l on l.oid = p.prolang"
            " where p.pronamespace = 'pgml'::regnamespace order by 1"
        ).fetchall()
        assert functions == [
            ("call_endpoint", "plpgsql"),
            ("check_project", "plpgsql"),
            ("check_relation", "plpgsql"),
            ("decompose", "sql"),
            ("deploy", "plpgsql"),
            ("deploy", "plpgsql"),
            ("endpoint_call", "sql"),
            ("may_see_project", "plpgsql"),
            ("predict", "sql"),
            ("predict_joint", "sql"),
            ("predict_proba", "sql"),
            ("refuse_direct_requests", "plpgsql"),
            ("request_training", "plpgsql"),
            ("requesting_role", "sql"),
            ("retrain_on_drift", "plpgsql"),
            ("schedule", "plpgsql"),
            ("train", "sql"),
            ("train_joint", "plpgsql"),
            ("writeback", "plpgsql"),
        ]
        conn.execute("select pgml.train('fraud', 'classification', 'public.tx', 'is_fraud')")

        assert source_schema.install(conn, endpoint_dsn="host=10.0.0.5 port=6433") == 3
        assert source_schema.install(conn) == 3  # the same version again: nothing changes
        settings = conn.execute("select name, value from pgml.settings order by 1").fetchall()
        assert settings == [("endpoint_dsn", "host=10.0.0.5 port=6433"), ("schema_version", "3")]
        assert conn.execute("select count(*) from pgml.training_requests").fetchone() == (1,)
        functions_now = conn.execute(
            "select count(*) from pg_proc where pronamespace = 'pgml'::regnamespace"
        ).fetchone()
        assert functions_now == (len(functions),)

        source_schema.uninstall(conn)
        assert schemas(conn) == set()
        assert source_schema.installed_version(conn) is None
        source_schema.uninstall(conn)  # nothing left to drop: no error


def test_install_without_create_on_the_database_says_what_to_run(
    source_dsn: str, role_name: str
) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role_name)))
    with psycopg.connect(as_user(source_dsn, role_name), autocommit=True) as conn:
        with pytest.raises(SourceSetupError, match="`pgml-sidecar init --print-sql`") as caught:
            source_schema.install(conn)
        assert role_name in str(caught.value)
        assert schemas(conn) == set()


def test_psql_applies_install_sql_twice_and_uninstall_sql(pg_bin: Path, owner_dsn: str) -> None:
    install = ["--single-transaction", "-f", str(SQL_DIR / "install.sql")]
    psql(pg_bin, owner_dsn, *install)
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("select pgml.train('fraud')")
        psql(pg_bin, owner_dsn, *install)  # again: the same schema, the request kept
        assert source_schema.installed_version(conn) == 3
        assert conn.execute("select count(*) from pgml.training_requests").fetchone() == (1,)
        assert conn.execute("select count(*) from pgml.settings").fetchone() == (1,)
        psql(pg_bin, owner_dsn, "--single-transaction", "-f", str(SQL_DIR / "uninstall.sql"))
        assert schemas(conn) == set()


def test_a_newer_schema_version_is_refused(pg_bin: Path, source: psycopg.Connection) -> None:
    source.execute("update pgml.settings set value = '4' where name = 'schema_version'")
    with pytest.raises(SourceSetupError, match="version 4, newer than this release's 3"):
        source_schema.install(source)
    dsn = dsn_of(source)
    done = psql(pg_bin, dsn, "-1", "-f", str(SQL_DIR / "install.sql"), check=False)
    assert done.returncode != 0
    assert "schema version 4 is installed, this is version 3" in done.stderr
    for step, version in (("1_to_2.sql", 1), ("2_to_3.sql", 2)):
        done = psql(pg_bin, dsn, "-1", "-f", str(SQL_DIR / "upgrade" / step), check=False)
        assert done.returncode != 0
        assert f"upgrades schema version {version}, and version 4 is installed" in done.stderr
    assert source_schema.installed_version(source) == 4


def test_a_schema_pgml_of_another_tool_is_left_alone(source_dsn: str) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("create schema pgml")
        conn.execute("create table pgml.models (id bigint)")
        with pytest.raises(SourceSetupError, match="not created by pgml-sidecar"):
            source_schema.install(conn)
        source_schema.uninstall(conn)
        assert conn.execute("select to_regclass('pgml.models') is not null").fetchone() == (True,)


@functools.cache
def old_install_sql(version: int) -> str:
    """sql/install.sql as it was at an older schema version, from this checkout's git history."""
    commit = {1: VERSION_1_COMMIT, 2: VERSION_2_COMMIT}[version]
    done = subprocess.run(
        ["git", "-C", str(SQL_DIR.parent), "show", f"{commit}:sql/install.sql"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"cannot read version {version} of sql/install.sql from git: {done.stderr}")
    assert f"schema version {version}." in done.stdout
    return done.stdout


def install_version(conn: psycopg.Connection, version: int) -> None:
    with conn.transaction():
        conn.execute(old_install_sql(version))
    assert source_schema.installed_version(conn) == version


def pgml_catalog(conn: psycopg.Connection) -> dict[str, list[tuple[object, ...]]]:
    """What schema pgml is made of: tables, columns, constraints, indexes, functions, comments,
    triggers and privileges."""
    queries = {
        "columns": "select table_name, ordinal_position, column_name, data_type, is_nullable,"
        " column_default, is_identity, identity_generation from information_schema.columns"
        " where table_schema = 'pgml' order by 1, 2",
        "constraints": "select conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        " from pg_constraint where connamespace = 'pgml'::regnamespace order by 1, 2",
        "indexes": "select indexname, indexdef from pg_indexes where schemaname = 'pgml'"
        " order by 1",
        "relations": "select relname, relkind, relreplident, obj_description(oid, 'pg_class'),"
        " relacl::text from pg_class where relnamespace = 'pgml'::regnamespace order by 1",
        "column comments": "select c.relname, a.attname, col_description(c.oid, a.attnum)"
        " from pg_class c join pg_attribute a on a.attrelid = c.oid"
        " where c.relnamespace = 'pgml'::regnamespace and col_description(c.oid, a.attnum)"
        " is not null order by 1, 2",
        "functions": "select oid::regprocedure::text, pg_get_functiondef(oid),"
        " obj_description(oid, 'pg_proc'), proacl::text from pg_proc"
        " where pronamespace = 'pgml'::regnamespace order by 1",
        "triggers": "select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger"
        " where tgrelid = 'pgml.training_requests'::regclass and not tgisinternal order by 2",
        "settings": "select name, value from pgml.settings where name = 'schema_version'",
    }
    return {name: [tuple(r) for r in conn.execute(q).fetchall()] for name, q in queries.items()}


def test_install_upgrades_version_1_keeping_its_requests(source_dsn: str) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        install_version(conn, 1)
        trained = conn.execute("select pgml.train('fraud', 'classification', 'public.tx', 'y')")
        train_id = trained.fetchone()
        conn.execute("select pgml.writeback('fraud', false)")
        conn.execute(
            "update pgml.training_requests set status = 'done', model_id = 3,"
            " finished_at = now() where id = %s",
            train_id,
        )
        conn.execute("insert into pgml.settings values ('endpoint_dsn', 'host=10.0.0.5')")
        conn.execute("create publication pub for table pgml.training_requests")
        with pytest.raises(psycopg.errors.CheckViolation, match="training_requests_kind_check"):
            conn.execute(
                "insert into pgml.training_requests (kind, project_name) values ('schedule', 'p')"
            )
        before = conn.execute("select * from pgml.training_requests order by id").fetchall()

        assert source_schema.install(conn) == 3

        assert source_schema.installed_version(conn) == 3
        cur = conn.execute("select * from pgml.training_requests order by id")
        assert cur.description is not None
        added = [
            "cron", "requested_by", "time_limit", "search", "search_params", "search_args",
            "test_size", "test_sampling", "automatic_deploy", "preprocess", "notice", "strategy",
        ]  # fmt: skip
        assert [c.name for c in cur.description[-len(added) :]] == added
        after = [dict(zip([c.name for c in cur.description], r, strict=True)) for r in cur]
        done, pending = after
        assert tuple(done.values())[: -len(added)] == before[0]
        assert (done["cron"], done["requested_by"]) == (None, "postgres")
        assert (done["preprocess"], done["search_params"], done["notice"]) == ({}, {}, None)
        # Nobody recorded who asked for it: failed rather than carried out as the upgrader.
        assert (pending["status"], pending["enabled"]) == ("failed", False)
        assert "made before pgml-sidecar schema version 3" in str(pending["error"])
        settings = conn.execute("select name, value from pgml.settings order by 1").fetchall()
        assert settings == [("endpoint_dsn", "host=10.0.0.5"), ("schema_version", "3")]
        assert publication_tables(conn, "pub") == [("pgml", "training_requests")]

        scheduled = conn.execute("select pgml.schedule('fraud', '0 3 * * *')").fetchone()
        drifting = conn.execute("select pgml.retrain_on_drift('fraud')").fetchone()
        assert scheduled is not None and drifting is not None
        assert request(conn, scheduled[0])["cron"] == "0 3 * * *"
        assert request(conn, drifting[0])["enabled"] is True
        assert scheduled[0] > max(row["id"] for row in after)
        assert conn.execute("select count(*) from pgml.drift_events").fetchone() == (0,)
        assert source_schema.install(conn) == 3  # the current version: nothing more to do


def test_install_upgrades_version_2_revoking_what_version_2_granted(
    source_dsn: str, role_name: str
) -> None:
    """Version 2's README had users GRANT INSERT on the control table: version 3 takes it back."""
    analyst = sql.Identifier(role_name)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        install_version(conn, 2)
        conn.execute(sql.SQL("create role {} login").format(analyst))
        conn.execute(sql.SQL("grant usage on schema pgml to {}").format(analyst))
        grant = sql.SQL("grant select, insert on pgml.training_requests to {}")
        conn.execute(grant.format(analyst))
        conn.execute("grant insert on pgml.training_requests to public")
        conn.execute("create table public.salaries (id int primary key, salary int)")
        conn.execute("create publication pub for table pgml.training_requests")
    with psycopg.connect(as_user(source_dsn, role_name), autocommit=True) as conn:
        old = conn.execute("select pgml.schedule('payroll', '0 3 * * *')").fetchone()
        assert old is not None
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        assert source_schema.install(conn) == 3
        assert request(conn, old[0])["status"] == "failed"
        assert publication_tables(conn, "pub") == [("pgml", "training_requests")]
        granted = conn.execute(
            "select a.grantee::regrole::text, a.privilege_type from pg_class c,"
            " aclexplode(c.relacl) a where c.oid = 'pgml.training_requests'::regclass"
            " and a.grantee <> c.relowner"
        ).fetchall()
        assert granted == [(role_name, "SELECT")]  # INSERT taken from the role and from PUBLIC
    with psycopg.connect(as_user(source_dsn, role_name), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "insert into pgml.training_requests (project_name, requested_by)"
                " values ('payroll', 'postgres')"
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="table salaries"):
            conn.execute("select pgml.train('payroll', 'regression', 'salaries', 'salary')")
        mine = conn.execute("select pgml.train('mine', 'regression', 'pgml.iris', 'target')")
        row = mine.fetchone()
        assert row is not None and request(conn, row[0])["requested_by"] == role_name


def test_the_upgrade_by_hand_gives_what_a_fresh_install_gives(
    pg_bin: Path, pg_server: LocalPostgres, source_dsn: str
) -> None:
    steps = {
        n: ["--single-transaction", "-f", str(SQL_DIR / "upgrade" / f"{n}_to_{n + 1}.sql")]
        for n in (1, 2)
    }
    with fresh_database(pg_server, database_name_for("fresh_version_3")) as fresh_dsn:
        for step in steps.values():
            done = psql(pg_bin, fresh_dsn, *step, check=False)
            assert done.returncode != 0
            assert "not installed in this database: nothing to upgrade" in done.stderr
        with psycopg.connect(fresh_dsn, autocommit=True) as fresh:
            assert source_schema.install(fresh) == 3
            fresh_catalog = pgml_catalog(fresh)
            psql(pg_bin, fresh_dsn, *steps[2])  # on version 3: changes nothing
            assert pgml_catalog(fresh) == fresh_catalog
            done = psql(pg_bin, fresh_dsn, *steps[1], check=False)
            assert "upgrades schema version 1, and version 3 is installed" in done.stderr

    with psycopg.connect(source_dsn, autocommit=True) as conn:
        install_version(conn, 1)
        conn.execute("select pgml.train('fraud')")
        done = psql(pg_bin, source_dsn, "-1", "-f", str(SQL_DIR / "install.sql"), check=False)
        assert done.returncode != 0
        assert "schema version 1 is installed, this is version 3" in done.stderr
        assert "sql/upgrade/<n>_to_<n+1>.sql" in done.stderr
        done = psql(pg_bin, source_dsn, *steps[2], check=False)
        assert "upgrades schema version 2, and version 1 is installed" in done.stderr
        psql(pg_bin, source_dsn, *steps[1])
        psql(pg_bin, source_dsn, *steps[2])
        upgraded = pgml_catalog(conn)
        for step in steps.values():  # again: changes nothing (1_to_2 refuses version 3)
            psql(pg_bin, source_dsn, *step, check=False)
        assert pgml_catalog(conn) == upgraded
        assert conn.execute("select count(*) from pgml.training_requests").fetchone() == (1,)

    assert upgraded == fresh_catalog
    assert ("training_requests", 15, "cron", "text", "YES", None, "NO", None) in upgraded["columns"]
    assert (
        "training_requests",
        16,
        "requested_by",
        "text",
        "NO",
        "CURRENT_USER",
        "NO",
        None,
    ) in upgraded["columns"]
    assert [name for _, name, _ in upgraded["triggers"]] == ["training_requests_by_functions_only"]
    checks = {str(name) for _, name, _ in upgraded["constraints"] if str(name).endswith("_check")}
    assert checks == {
        "training_requests_cron_check",
        "training_requests_enabled_check",
        "training_requests_hyperparams_check",
        "training_requests_kind_check",
        "training_requests_preprocess_check",
        "training_requests_project_check",
        "training_requests_project_name_check",
        "training_requests_search_args_check",
        "training_requests_search_params_check",
        "training_requests_status_check",
        "training_requests_strategy_check",
    }
    trains = [f for f, *_ in upgraded["functions"] if str(f).startswith("pgml.train(")]
    assert trains == [
        "pgml.train(text,text,text,text,text,jsonb,text,jsonb,jsonb,real,text,text,boolean,"
        "boolean,jsonb)"
    ]


def test_upgrade_steps_are_taken_in_order(tmp_path: Path) -> None:
    (tmp_path / "upgrade").mkdir()
    for name in ("1_to_2.sql", "2_to_3.sql"):
        (tmp_path / "upgrade" / name).write_text("-- step\n")
    steps = source_schema.upgrade_steps(1, target=3, sql_dir=tmp_path)
    assert [p.name for p in steps] == ["1_to_2.sql", "2_to_3.sql"]
    assert source_schema.upgrade_steps(3, target=3, sql_dir=tmp_path) == []
    with pytest.raises(SourceSetupError, match="newer"):
        source_schema.upgrade_steps(4, target=3, sql_dir=tmp_path)
    with pytest.raises(Exception, match=r"3_to_4\.sql is missing"):
        source_schema.upgrade_steps(1, target=4, sql_dir=tmp_path)


# --- requests ------------------------------------------------------------------------------


def test_train_leaves_a_pending_request(source: psycopg.Connection) -> None:
    row = source.execute(
        "select pgml.train('fraud', 'classification', 'public.tx', 'is_fraud', 'xgboost',"
        " '{\"n_estimators\": 10}')"
    ).fetchone()
    assert row is not None and isinstance(row[0], int)
    first = request(source, row[0])
    assert first["kind"] == "train" and first["status"] == "pending"
    assert (first["project_name"], first["task"], first["relation_name"]) == (
        "fraud",
        "classification",
        "public.tx",
    )
    assert (first["y_column_name"], first["algorithm"]) == ("is_fraud", "xgboost")
    assert first["hyperparams"] == {"n_estimators": 10}
    assert first["requested_at"] is not None and first["enabled"] is None
    assert first["error"] is None and first["model_id"] is None and first["finished_at"] is None

    retrain = source.execute("select pgml.train('fraud')").fetchone()
    assert retrain is not None and retrain[0] > row[0]
    again = request(source, retrain[0])
    assert (again["task"], again["relation_name"], again["algorithm"]) == (None, None, "linear")
    assert again["hyperparams"] == {}
    named = source.execute("select pgml.train('fraud', algorithm => 'ridge')").fetchone()
    assert named is not None and request(source, named[0])["algorithm"] == "ridge"


def test_train_takes_postgresmls_arguments(source: psycopg.Connection) -> None:
    named = source.execute(
        "select pgml.train('churn', 'classification', 'public.customers', 'churned',"
        ' preprocess => \'{"name": {"encode": "target"}}\', automatic_deploy => false,'
        " test_size => 0.2, test_sampling => 'last', materialize_snapshot => true)"
    ).fetchone()
    assert named is not None
    row = request(source, named[0])
    assert row["preprocess"] == {"name": {"encode": "target"}}
    assert (row["automatic_deploy"], row["test_size"], row["test_sampling"]) == (False, 0.2, "last")
    assert (row["search"], row["search_params"], row["search_args"]) == (None, {}, {})
    assert row["notice"] is None
    # PostgresML's positions: project, task, relation, y, algorithm, hyperparams, search,
    # search_params, search_args, test_size, test_sampling, runtime, automatic_deploy,
    # materialize_snapshot, preprocess.
    positional = source.execute(
        "select pgml.train('churn', null, null, null, 'ridge', '{}', 'grid',"
        " '{\"alpha\": [0.1, 1]}', '{\"cv\": 3}', 0.25, 'random', 'python', true, false,"
        ' \'{"age": {"impute": "median"}}\')'
    ).fetchone()
    assert positional is not None
    row = request(source, positional[0])
    assert (row["search"], row["search_params"], row["search_args"]) == (
        "grid", {"alpha": [0.1, 1]}, {"cv": 3}
    )  # fmt: skip
    assert row["preprocess"] == {"age": {"impute": "median"}}
    retrain = source.execute("select pgml.train('churn')").fetchone()
    assert retrain is not None
    defaults = request(source, retrain[0])
    assert (defaults["preprocess"], defaults["automatic_deploy"]) == ({}, True)
    assert (defaults["test_size"], defaults["test_sampling"]) == (0.25, "stratified")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("pgml.train('p', search => 'bayes')", "unknown search 'bayes'"),
        ("pgml.train('p', search_params => '[]')", "search_params must be a JSON object"),
        ("pgml.train('p', search_args => null)", "search_args must be a JSON object"),
        ("pgml.train('p', test_size => 0)", "test_size must be a positive number, not 0"),
        ("pgml.train('p', test_size => 'NaN')", "test_size must be a positive number, not NaN"),
        ("pgml.train('p', test_sampling => 'first')", "unknown test_sampling 'first'"),
        ("pgml.train('p', runtime => 'go')", "runtime 'go' does not exist"),
        ("pgml.train('p', automatic_deploy => null)", "automatic_deploy must be true or false"),
        ("pgml.train('p', preprocess => '\"scale\"')", "preprocess must be a JSON object"),
        ("pgml.train('')", "needs a project name"),
        ("pgml.train('  ')", "needs a project name"),
        ("pgml.train(null)", "needs a project name"),
        ("pgml.train('p', 'forecasting')", "unknown task 'forecasting'"),
        ("pgml.train('p', algorithm => null)", "needs an algorithm"),
        ("pgml.train('p', hyperparams => '[1]')", "must be a JSON object"),
        ("pgml.writeback('')", "needs a project name"),
        ("pgml.writeback('p', null)", "enabled must be true or false"),
        ("pgml.schedule('', '0 3 * * *')", "needs a project name"),
        ("pgml.schedule(null, null)", "needs a project name"),
        ("pgml.schedule('p', '0 3 * *')", r"'0 3 \* \*' does not have 5 fields.*'0 3 \* \* \*'"),
        ("pgml.schedule('p', '0 3 * * * *')", "does not have 5 fields"),
        ("pgml.schedule('p', '')", "does not have 5 fields"),
        ("pgml.schedule('p', '@daily')", "does not have 5 fields"),
        ("pgml.retrain_on_drift(' ')", "needs a project name"),
        ("pgml.retrain_on_drift('p', null)", "enabled must be true or false"),
    ],
)
def test_bad_requests_are_refused_and_leave_no_row(
    source: psycopg.Connection, call: str, message: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        source.execute(f"select {call}")
    assert source.execute("select count(*) from pgml.training_requests").fetchone() == (0,)


def test_writeback_requests(source: psycopg.Connection) -> None:
    on = source.execute("select pgml.writeback('fraud')").fetchone()
    off = source.execute("select pgml.writeback('fraud', false)").fetchone()
    assert on is not None and off is not None
    rows = [request(source, on[0]), request(source, off[0])]
    assert [(r["kind"], r["project_name"], r["enabled"], r["status"]) for r in rows] == [
        ("writeback", "fraud", True, "pending"),
        ("writeback", "fraud", False, "pending"),
    ]


def test_schedule_requests(source: psycopg.Connection) -> None:
    calls = [
        "pgml.schedule('fraud', '0 3 * * *')",
        "pgml.schedule('fraud', E' */15  9-17\\t* *\\n1-5 ')",  # spaces, a tab, a newline
        "pgml.schedule('fraud', null)",  # clears the schedule
        "pgml.schedule(project_name => 'churn', cron => '30 2 1 * *')",
    ]
    ids = []
    for call in calls:
        row = source.execute(f"select {call}").fetchone()
        assert row is not None and isinstance(row[0], int)
        ids.append(row[0])
    rows = [request(source, i) for i in ids]
    assert [(r["kind"], r["project_name"], r["cron"], r["status"]) for r in rows] == [
        ("schedule", "fraud", "0 3 * * *", "pending"),
        ("schedule", "fraud", "*/15 9-17 * * 1-5", "pending"),
        ("schedule", "fraud", None, "pending"),
        ("schedule", "churn", "30 2 1 * *", "pending"),
    ]
    for r in rows:
        assert (r["enabled"], r["task"], r["algorithm"], r["model_id"]) == (None, None, None, None)


def test_retrain_on_drift_requests(source: psycopg.Connection) -> None:
    on = source.execute("select pgml.retrain_on_drift('fraud')").fetchone()
    off = source.execute("select pgml.retrain_on_drift('fraud', enabled => false)").fetchone()
    assert on is not None and off is not None
    rows = [request(source, on[0]), request(source, off[0])]
    assert [(r["kind"], r["project_name"], r["enabled"], r["cron"], r["status"]) for r in rows] == [
        ("retrain_on_drift", "fraud", True, None, "pending"),
        ("retrain_on_drift", "fraud", False, None, "pending"),
    ]


@pytest.mark.parametrize(
    ("kind", "enabled", "cron", "constraint"),
    [
        ("predict", None, None, "training_requests_kind_check"),
        ("retrain_on_drift", None, None, "training_requests_enabled_check"),
        ("writeback", None, None, "training_requests_enabled_check"),
        ("schedule", True, "0 3 * * *", "training_requests_enabled_check"),
        ("train", True, None, "training_requests_enabled_check"),
        ("train", None, "0 3 * * *", "training_requests_cron_check"),
        ("writeback", True, "0 3 * * *", "training_requests_cron_check"),
    ],
)
def test_the_table_refuses_rows_no_function_makes(
    source: psycopg.Connection, kind: str, enabled: bool | None, cron: str | None, constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        source.execute(
            "insert into pgml.training_requests (kind, project_name, enabled, cron)"
            " values (%s, 'p', %s, %s)",
            [kind, enabled, cron],
        )
    assert caught.value.diag.constraint_name == constraint


def test_drift_events_take_the_sidecars_rows(source: psycopg.Connection) -> None:
    for model_id, feature in ((7, "amount"), (None, None)):
        source.execute(  # the sidecar's own statement (sidecar/daemon.py)
            "insert into pgml.drift_events (project_name, model_id, detector,"
            " feature, statistic, threshold) values (%s, %s, %s, %s, %s, %s)",
            ("fraud", model_id, "ks", feature, 0.42, 0.3),
        )
    rows = source.execute(
        "select id, project_name, model_id, detector, feature, statistic, threshold,"
        " detected_at > now() - interval '1 minute' from pgml.drift_events order by id"
    ).fetchall()
    assert [r[1:] for r in rows] == [
        ("fraud", 7, "ks", "amount", 0.42, 0.3, True),
        ("fraud", None, "ks", None, 0.42, 0.3, True),
    ]
    assert rows[0][0] < rows[1][0]
    with pytest.raises(psycopg.errors.NotNullViolation):
        source.execute(
            "insert into pgml.drift_events (project_name, detector, threshold)"
            " values ('fraud', 'ks', 0.3)"
        )
    with pytest.raises(psycopg.errors.GeneratedAlways):
        source.execute(
            "insert into pgml.drift_events (id, project_name, detector, statistic, threshold)"
            " values (1, 'fraud', 'ks', 1, 0.3)"
        )


def test_the_sidecar_updates_requests_by_primary_key(source: psycopg.Connection) -> None:
    identity = source.execute(
        "select relreplident from pg_class where oid = 'pgml.training_requests'::regclass"
    ).fetchone()
    assert identity == ("d",)
    row = source.execute("select pgml.train('fraud')").fetchone()
    assert row is not None
    source.execute(
        "update pgml.training_requests set status = 'done', model_id = 7, finished_at = now()"
        " where id = %s",
        [row[0]],
    )
    assert request(source, row[0])["status"] == "done"
    with pytest.raises(psycopg.errors.CheckViolation):
        source.execute("update pgml.training_requests set status = 'lost'")


# --- pgml.predict --------------------------------------------------------------------------


def test_predict_without_dblink_says_what_to_enable(source: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
        source.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})")
    assert caught.value.sqlstate == "0A000"
    assert "needs the dblink extension" in str(caught.value)
    assert "CREATE EXTENSION dblink" in (caught.value.diag.message_hint or "")


def test_train_joint_leaves_a_request_with_its_labels(source: psycopg.Connection) -> None:
    row = source.execute(
        "select pgml.train_joint('Exercise', 'regression', 'public.linnerud',"
        " ARRAY['weight', 'waist', 'pulse'])"
    ).fetchone()
    assert row is not None
    made = request(source, row[0])
    assert (made["kind"], made["task"], made["relation_name"]) == (
        "train_joint", "regression", "public.linnerud"
    )  # fmt: skip
    assert made["y_column_name"] == '["weight", "waist", "pulse"]'
    named = source.execute("select pgml.train_joint('Exercise', algorithm => 'ridge')").fetchone()
    assert named is not None
    again = request(source, named[0])
    assert (again["kind"], again["y_column_name"], again["algorithm"]) == (
        "train_joint", None, "ridge"
    )  # fmt: skip
    for bad in ("ARRAY[]::text[]", "ARRAY['a', NULL]"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="label columns"):
            source.execute(f"select pgml.train_joint('E', 'regression', 'public.x', {bad})")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown task"):
        source.execute("select pgml.train_joint('E', 'nonsense', 'public.x', ARRAY['a'])")


def test_request_training_is_only_for_the_pgml_functions(
    source: psycopg.Connection, source_dsn: str, make_role: MakeRole
) -> None:
    analyst = make_role("analyst")
    dsn = as_role(source_dsn, analyst)
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(
            "select pgml.request_training('train', 'y', 'p', 'regression', 'public.x', 'linear',"
            " '{}', null, '{}', '{}', 0.25, 'random', null, true, '{}')"
        )


def test_predict_without_endpoint_dsn_says_how_to_set_it(source: psycopg.Connection) -> None:
    source.execute("create extension dblink")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="endpoint_dsn"):
        source.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})")


def test_predict_through_dblink_to_the_endpoint(
    endpoint: SqlEndpoint, source: psycopg.Connection
) -> None:
    endpoint_dsn = f"host=127.0.0.1 port={endpoint.port} user=pgml dbname=pgml"
    with psycopg.connect(endpoint_dsn, autocommit=True) as sidecar:
        sidecar.execute("select * from pgml.load_dataset('iris')")
        sidecar.execute(
            "select * from pgml.train('Iris', 'classification', 'pgml.iris', 'target', 'linear')"
        )
    source.execute("create schema links")
    source.execute("create extension dblink schema links")  # found wherever it lives
    source_schema.install(source, endpoint_dsn=endpoint_dsn)

    assert source.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})").fetchone() == (0.0,)
    rows = source.execute(
        "select pgml.predict('Iris', array[sepal_length, sepal_width, petal_length, petal_width])"
        " from (values (5.1, 3.5, 1.4, 0.2), (6.3, 3.3, 6.0, 2.5), (5.9, 3.0, 4.2, 1.5))"
        " as i(sepal_length, sepal_width, petal_length, petal_width)"
    ).fetchall()
    assert rows == [(0.0,), (2.0,), (1.0,)]
    assert source.execute("select pgml.predict('Iris', null)").fetchone() == (None,)

    with pytest.raises(psycopg.Error) as caught:
        source.execute(f"select pgml.predict('O''Brien''s; drop table x --', {IRIS_SETOSA})")
    assert caught.value.sqlstate == "42704"  # the endpoint's unknown project, not a syntax error
    assert "O'Brien's; drop table x --" in str(caught.value)

    source.execute(
        "update pgml.settings set value = 'host=127.0.0.1 port=1' where name = 'endpoint_dsn'"
    )
    with pytest.raises(psycopg.Error, match="could not establish connection"):
        source.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})")
    source_schema.install(source, endpoint_dsn=endpoint_dsn)
    assert source.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})").fetchone() == (0.0,)


def test_predict_for_each_role_through_its_own_user_mapping(
    mirror: Mirror,
    trainer: Trainer,
    source: psycopg.Connection,
    source_dsn: str,
    make_role: MakeRole,
) -> None:
    """sql/README.md's recipe: a user mapping per source role, none FOR PUBLIC; a link opened
    for one role is never used by another after SET ROLE."""
    guarded = SqlEndpoint(EndpointSettings(port=0, password="sEcret"), mirror.con, trainer)
    guarded.start()
    try:
        endpoint_dsn = f"host=127.0.0.1 port={guarded.port} user=pgml dbname=pgml password=sEcret"
        with psycopg.connect(endpoint_dsn, autocommit=True) as sidecar:
            sidecar.execute("select * from pgml.load_dataset('iris')")
            sidecar.execute(
                "select * from pgml.train('Iris', 'classification', 'pgml.iris', 'target')"
            )
        alice, bob, app = make_role("alice"), make_role("bob"), make_role("app")
        source.execute("create extension dblink")
        source.execute(
            "create server pgml_endpoint foreign data wrapper dblink_fdw"
            f" options (host '127.0.0.1', port '{guarded.port}', dbname 'pgml')"
        )
        for role, password in ((alice, "sEcret"), (bob, "not bob's password")):
            ident = sql.Identifier(role)
            source.execute(
                sql.SQL(
                    "create user mapping for {} server pgml_endpoint options (user {}, password {})"
                ).format(ident, sql.Literal(role), sql.Literal(password))
            )
            source.execute(sql.SQL("grant usage on schema pgml to {}").format(ident))
            source.execute(sql.SQL("grant select on pgml.settings to {}").format(ident))
            source.execute(
                sql.SQL("grant usage on foreign server pgml_endpoint to {}").format(ident)
            )
            source.execute(sql.SQL("grant {} to {}").format(ident, sql.Identifier(app)))
        source_schema.install(source, endpoint_dsn="pgml_endpoint")
        with psycopg.connect(as_user(source_dsn, alice), autocommit=True) as conn:
            prediction = conn.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})").fetchone()
            assert prediction == (0.0,)
            found = conn.execute("select usename, umoptions from pg_user_mappings")
            mappings: dict[str, list[str] | None] = dict(found.fetchall())
            assert mappings[bob] is None  # another role's password stays hidden
        with psycopg.connect(as_user(source_dsn, app), autocommit=True) as conn:
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(alice)))
            assert conn.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})").fetchone() == (0.0,)
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(bob)))
            with pytest.raises(psycopg.Error, match="password authentication failed"):
                conn.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})")
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(alice)))
            assert conn.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})").fetchone() == (0.0,)
    finally:
        guarded.stop()


# --- publication ---------------------------------------------------------------------------


def publication_tables(conn: psycopg.Connection, publication: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "select schemaname, tablename from pg_publication_tables where pubname = %s order by 1, 2",
        [publication],
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_add_control_table_once_and_never_the_sidecars_own_tables(
    source: psycopg.Connection,
) -> None:
    source.execute("create table public.tx (id bigint primary key, amount float8)")
    source.execute("create table pgml_scores.fraud (id bigint primary key, prediction float8)")
    source.execute('create publication "Pub" for table public.tx')

    assert source_schema.add_control_table(source, "Pub") is True
    assert source_schema.add_control_table(source, "Pub") is False
    assert publication_tables(source, "Pub") == [("pgml", "training_requests"), ("public", "tx")]

    with pytest.raises(SourceSetupError, match="does not exist"):
        source_schema.add_control_table(source, "missing")
    source.execute("create publication everything for all tables")
    with pytest.raises(SourceSetupError, match="FOR ALL TABLES"):
        source_schema.add_control_table(source, "everything")
    source.execute("create publication loop for table public.tx, pgml.settings")
    with pytest.raises(SourceSetupError, match=r"holds pgml\.settings"):
        source_schema.add_control_table(source, "loop")
    source.execute("create publication drifting for table public.tx, pgml.drift_events")
    with pytest.raises(SourceSetupError, match=r"holds pgml\.drift_events, so the sidecar's own"):
        source_schema.add_control_table(source, "drifting")
    assert publication_tables(source, "drifting") == [("pgml", "drift_events"), ("public", "tx")]
    source.execute("create publication owners for table public.tx, pgml.projects")
    with pytest.raises(SourceSetupError, match=r"holds pgml\.projects, so the sidecar's own"):
        source_schema.add_control_table(source, "owners")


# --- role.sql ------------------------------------------------------------------------------


def test_role_sql_makes_a_role_that_installs_and_replicates(
    pg_bin: Path, source_dsn: str, role_name: str
) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("create table public.tx (id bigint primary key, amount float8)")
        conn.execute("insert into public.tx values (1, 9.5)")
    role_args = ["-v", f"role={role_name}", "-v", "password=s3cret'x", "-v", "tables=public.tx"]
    for _ in range(2):  # a second run changes nothing and does not fail
        psql(pg_bin, source_dsn, *role_args, "-f", str(SQL_DIR / "role.sql"))

    with psycopg.connect(as_user(source_dsn, role_name), autocommit=True) as conn:
        attributes = conn.execute(
            "select rolsuper, rolreplication from pg_roles where rolname = current_user"
        )
        assert attributes.fetchone() == (False, True)
        assert conn.execute("select amount from public.tx").fetchall() == [(9.5,)]
        assert source_schema.install(conn) == 3
        conn.execute("create publication pgml_sidecar")
        assert source_schema.add_control_table(conn, "pgml_sidecar") is True
        conn.execute("select pg_create_logical_replication_slot('x_' || current_user, 'pgoutput')")
        conn.execute("select pg_drop_replication_slot('x_' || current_user)")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        stored = conn.execute(
            "select rolpassword is not null from pg_authid where rolname = %s", [role_name]
        )
        assert stored.fetchone() == (True,)


def test_role_sql_after_the_owner_installed(
    pg_bin: Path, source: psycopg.Connection, source_dsn: str, role_name: str
) -> None:
    psql(pg_bin, source_dsn, "-v", f"role={role_name}", "-f", str(SQL_DIR / "role.sql"))
    row = source.execute("select pgml.train('fraud')").fetchone()
    assert row is not None
    with psycopg.connect(as_user(source_dsn, role_name), autocommit=True) as conn:
        conn.execute("update pgml.training_requests set status = 'running' where id = %s", row)
        conn.execute(
            "insert into pgml.settings values ('endpoint_dsn', 'host=x')"
            " on conflict (name) do update set value = excluded.value"
        )
        conn.execute("create table pgml_scores.fraud (id bigint primary key, prediction float8)")
        conn.execute("insert into pgml.projects (project_name, owner) values ('fraud', 'x')")
        conn.execute("update pgml.projects set score_table = 'fraud'")
        conn.execute("delete from pgml.projects")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from pgml.training_requests")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # who asked is not its to say
            conn.execute("update pgml.training_requests set requested_by = current_user")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into pgml.training_requests (project_name) values ('fraud')")
        assert source_schema.install(conn, endpoint_dsn="host=y") == 3  # as pgml-sidecar init
        with pytest.raises(SourceSetupError, match="must be owner of schema pgml"):
            source_schema.uninstall(conn)
    assert source.execute(
        "select value from pgml.settings where name = 'endpoint_dsn'"
    ).fetchone() == ("host=y",)


def test_role_sql_needs_a_role_name(pg_bin: Path, source_dsn: str) -> None:
    done = psql(pg_bin, source_dsn, "-f", str(SQL_DIR / "role.sql"), check=False)
    assert done.returncode != 0
    assert "needs -v role=<name>" in done.stderr


def test_predict_reconnects_when_its_link_broke(
    endpoint: SqlEndpoint, source: psycopg.Connection, source_dsn: str
) -> None:
    endpoint_dsn = f"host=127.0.0.1 port={endpoint.port} user=pgml dbname=pgml"
    with psycopg.connect(endpoint_dsn, autocommit=True) as sidecar:
        sidecar.execute("select * from pgml.load_dataset('iris')")
        sidecar.execute(
            "select * from pgml.train('Iris', 'classification', 'pgml.iris', 'target', 'linear')"
        )
    source.execute("create extension dblink")
    source_schema.install(source, endpoint_dsn=endpoint_dsn)
    # The session's link, opened to a server whose backend then dies (a restarted sidecar).
    # It leads to database postgres, which has no pgml.predict: only a new link can answer.
    doomed = make_conninfo(source_dsn, dbname="postgres", application_name="doomed_link")
    source.execute("select dblink_connect('pgml_sidecar', %s)", [doomed])
    source.execute("select set_config('pgml_sidecar.predict_dsn', %s, false)", [endpoint_dsn])
    source.execute("select set_config('pgml_sidecar.predict_role', current_user, false)")
    with psycopg.connect(source_dsn, autocommit=True) as admin:
        admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where application_name = 'doomed_link'"
        )
        deadline = time.monotonic() + 10
        while admin.execute(
            "select 1 from pg_stat_activity where application_name = 'doomed_link'"
        ).fetchone():
            assert time.monotonic() < deadline, "the link's backend did not end"
            time.sleep(0.02)
    assert source.execute(f"select pgml.predict('Iris', {IRIS_SETOSA})").fetchone() == (0.0,)


def test_role_sql_on_rds_grants_rds_replication(
    pg_bin: Path, pg_server: LocalPostgres, source_dsn: str, role_name: str
) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("create role rds_replication nologin")
    try:
        psql(pg_bin, source_dsn, "-v", f"role={role_name}", "-f", str(SQL_DIR / "role.sql"))
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            granted = conn.execute(
                "select rolreplication, pg_has_role(rolname, 'rds_replication', 'member')"
                " from pg_roles where rolname = %s",
                [role_name],
            ).fetchone()
        assert granted == (False, True)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute("drop role rds_replication")


def test_documented_user_grants_suffice_to_request_training(
    source: psycopg.Connection, source_dsn: str, role_name: str
) -> None:
    analyst = sql.Identifier(role_name)
    source.execute(sql.SQL("create role {} login").format(analyst))
    for grant in (  # sql/README.md's grants for users who request training and read scores
        "grant usage on schema pgml, pgml_scores to {}",
        "grant select on pgml.training_requests, pgml.settings, pgml.drift_events,"
        " pgml.projects to {}",
    ):
        source.execute(sql.SQL(grant).format(analyst))
    source.execute("create table public.tx (id bigint primary key, y float8)")
    source.execute(sql.SQL("grant select on public.tx to {}").format(analyst))
    source.execute(
        "insert into pgml.drift_events (project_name, detector, statistic, threshold)"
        " values ('fraud', 'adwin', 1, 0.5)"
    )
    # As the sidecar records the project: the analyst owns it, so sees its drift.
    source.execute(
        sql.SQL(
            "insert into pgml.projects (project_name, id, owner, relation_name) values"
            " ('fraud', 1, {}, 'public.tx')"
        ).format(sql.Literal(role_name))
    )
    with psycopg.connect(as_user(source_dsn, role_name), autocommit=True) as conn:
        for call in (
            "pgml.train('fraud', 'regression', 'public.tx', 'y')",
            "pgml.writeback('fraud')",
            "pgml.schedule('fraud', '0 3 * * *')",
            "pgml.retrain_on_drift('fraud')",
        ):
            made = conn.execute(f"select {call}").fetchone()
            assert made is not None and request(conn, made[0])["requested_by"] == role_name
        drifts = conn.execute("select project_name, detector from pgml.drift_events")
        assert drifts.fetchall() == [("fraud", "adwin")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "insert into pgml.drift_events (project_name, detector, statistic, threshold)"
                " values ('fraud', 'ks', 1, 0.5)"
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update pgml.training_requests set status = 'done'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into pgml.training_requests (project_name) values ('fraud')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into pgml.projects (project_name, owner) values ('x', 'me')")
