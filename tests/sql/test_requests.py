"""Who may ask what through the pgml.* functions, in a real source with real roles."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from sidecar import source_schema
from sidecar.local_postgres import LocalPostgres
from tests.source_roles import MakeRole, as_role, make_role, run
from tests.sql.test_install import old_install_sql

__all__ = ["make_role"]  # the fixture, used by name

ATTACK = "select pgml.train('x', 'regression', 'public.salaries', 'salary')"
SQL_DIR = Path(__file__).resolve().parents[2] / "sidecar" / "sql"


@dataclass
class Source:
    dsn: str
    owner: str
    """Owns public.salaries and hr.people."""
    app: str
    """May SELECT public.salaries."""
    analyst: str
    """May SELECT nothing."""
    make_role: MakeRole

    def connect(self, role: str) -> psycopg.Connection:
        return psycopg.connect(as_role(self.dsn, role), autocommit=True)

    def call(self, role: str, statement: str, *, set_role: str | None = None) -> dict:
        """Make a request as ``role``; return the row it made."""
        with self.connect(role) as conn:
            if set_role is not None:
                conn.execute(sql.SQL("set role {}").format(sql.Identifier(set_role)))
            found = conn.execute(statement).fetchone()
        assert found is not None
        return requests(self.dsn, "where id = %s", found[0])[0]


def requests(dsn: str, where: str = "", *params: object) -> list[dict]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(f"select * from pgml.training_requests {where} order by id", params)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture
def source(source_dsn: str, make_role: MakeRole) -> Iterator[Source]:
    owner, app, analyst = make_role("owner"), make_role("app"), make_role("analyst")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
        conn.execute(f"grant create on schema public to {owner}")
        conn.execute(f"create schema hr authorization {owner}")
        conn.execute(f"grant usage on schema pgml to {owner}, {app}, {analyst}")
    run(
        as_role(source_dsn, owner),
        "create table public.salaries (id int primary key, name text, salary int)",
        "create table hr.people (id int primary key, name text)",
        f"grant select on public.salaries to {app}",
        f"grant usage on schema hr to {app}",
    )
    yield Source(source_dsn, owner, app, analyst, make_role)


def refused(source: Source, role: str, statement: str, message: str, **options: str) -> None:
    before = len(requests(source.dsn))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=message) as caught:
        source.call(role, statement, **options)
    assert caught.value.sqlstate == "42501"
    assert len(requests(source.dsn)) == before  # nothing was asked


# --- the relation --------------------------------------------------------------------------


def test_the_attack_fails_for_the_analyst_and_works_for_a_reader(source: Source) -> None:
    refused(source, source.analyst, ATTACK, "permission denied for table salaries")
    made = source.call(source.app, ATTACK)
    assert (made["requested_by"], made["relation_name"], made["status"]) == (
        source.app,
        "public.salaries",
        "pending",
    )
    assert source.call(source.owner, ATTACK)["requested_by"] == source.owner


@pytest.mark.parametrize(
    "relation",
    ["salaries", "public.salaries", '"public"."salaries"', 'public."salaries"', '"salaries"'],
)
def test_every_spelling_of_the_relation_is_checked(source: Source, relation: str) -> None:
    statement = f"select pgml.train('x', 'regression', '{relation}', 'salary')"
    refused(source, source.analyst, statement, "permission denied for table salaries")


def test_a_temporary_table_does_not_stand_in_for_the_mirrored_one(source: Source) -> None:
    """The functions' search_path has pg_temp; the sidecar looks a bare name up in public."""
    with source.connect(source.analyst) as conn:
        conn.execute("create temp table salaries (id int, salary int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="table salaries"):
            conn.execute("select pgml.train('x', 'regression', 'salaries', 'salary')")


def test_every_column_is_needed(source: Source) -> None:
    run(
        as_role(source.dsn, source.owner),
        f"grant select (id, salary) on salaries to {source.analyst}",
    )
    refused(source, source.analyst, ATTACK, "permission denied for table salaries")
    run(as_role(source.dsn, source.owner), f"grant select (name) on salaries to {source.analyst}")
    assert source.call(source.analyst, ATTACK)["requested_by"] == source.analyst


def test_a_view_needs_select_on_the_view(source: Source) -> None:
    run(
        as_role(source.dsn, source.owner),
        "create view public.pay as select id, salary from public.salaries",
    )
    statement = "select pgml.train('x', 'regression', 'public.pay', 'salary')"
    refused(source, source.analyst, statement, "permission denied for table pay")
    run(as_role(source.dsn, source.owner), f"grant select on public.pay to {source.analyst}")
    assert source.call(source.analyst, statement)["relation_name"] == "public.pay"


def test_schema_usage_and_row_level_security(source: Source) -> None:
    statement = "select pgml.train('x', 'regression', 'hr.people', 'name')"
    grant = f"grant select on hr.people to {source.analyst}, {source.app}"
    run(as_role(source.dsn, source.owner), grant)
    refused(source, source.analyst, statement, "permission denied for schema hr")
    assert source.call(source.app, "select pgml.train('p', 'regression', 'hr.people', 'id')")

    run(
        as_role(source.dsn, source.owner),
        "alter table public.salaries enable row level security",
        f"create policy own on public.salaries to {source.app} using (name = current_user)",
    )
    refused(source, source.app, ATTACK, "permission denied for table salaries")
    assert source.call(source.owner, ATTACK)["requested_by"] == source.owner
    run(as_role(source.dsn, source.owner), "alter table public.salaries force row level security")
    refused(source, source.owner, ATTACK, "permission denied for table salaries")
    assert source.call("postgres", ATTACK)["requested_by"] == "postgres"


def test_a_relation_the_source_does_not_have_is_the_sidecars_to_judge(source: Source) -> None:
    made = source.call(source.analyst, "select pgml.train('i', 'classification', 'pgml.iris', 't')")
    assert made["requested_by"] == source.analyst


# --- who asked -----------------------------------------------------------------------------


def test_the_request_is_stamped_with_the_role_after_set_role(source: Source) -> None:
    """Not session_user (the login), not current_user inside the function (its owner)."""
    run(source.dsn, f"grant {source.analyst}, {source.app} to {source.owner}")
    refused(source, source.owner, ATTACK, "table salaries", set_role=source.analyst)
    made = source.call(source.owner, ATTACK, set_role=source.app)
    assert made["requested_by"] == source.app
    made = source.call("postgres", "select pgml.writeback('w')", set_role=source.analyst)
    assert made["requested_by"] == source.analyst


def test_a_security_definer_wrapper_asks_for_the_session_role(source: Source) -> None:
    """A wrapper owned by a reader does not lend its privileges to the analyst calling it."""
    run(
        as_role(source.dsn, source.owner),
        "create function public.train_for_me() returns bigint language sql security definer"
        " as $$ select pgml.train('x', 'regression', 'public.salaries', 'salary') $$",
        f"grant execute on function public.train_for_me() to {source.analyst}",
    )
    refused(source, source.analyst, "select public.train_for_me()", "table salaries")
    assert source.call(source.owner, "select public.train_for_me()")["requested_by"] == (
        source.owner
    )


def test_nobody_writes_the_control_table_but_the_functions(source: Source) -> None:
    run(source.dsn, f"grant insert, update on pgml.training_requests to {source.analyst}")
    with source.connect(source.analyst) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="training_requests"):
            conn.execute(
                "insert into pgml.training_requests (project_name, relation_name, requested_by)"
                " values ('x', 'public.salaries', %s)",
                [source.owner],
            )
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute("select pgml.train('x', requested_by => 'postgres')")
        for helper in ("check_relation(%s, 'salaries')", "check_project(%s, 'x')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="function check_"):
                conn.execute(f"select pgml.{helper}", [source.analyst])
    run(source.dsn, f"revoke insert, update on pgml.training_requests from {source.analyst}")
    with source.connect(source.analyst) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update pgml.training_requests set requested_by = 'postgres'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into pgml.projects values ('x', %s)", [source.analyst])
    assert requests(source.dsn) == []


# --- projects ------------------------------------------------------------------------------

CHANGES = [
    "select pgml.train('Payroll')",
    "select pgml.train('Payroll', 'regression', 'public.salaries', 'salary')",
    "select pgml.writeback('Payroll', false)",
    "select pgml.schedule('Payroll', '0 3 * * *')",
    "select pgml.retrain_on_drift('Payroll', false)",
]


def test_only_the_owner_its_members_and_pgml_admin_change_a_project(source: Source) -> None:
    run(
        source.dsn,
        f"insert into pgml.projects (project_name, owner) values ('Payroll', '{source.app}')",
    )
    member, admin = source.make_role("member"), source.make_role("admin")
    run(
        source.dsn,
        f"grant {source.app} to {member}",
        f"grant pgml_admin to {admin}",
        f"grant select on public.salaries to {admin}",
        f"grant usage on schema pgml to {member}, {admin}",
    )
    for change in CHANGES:
        refused(source, source.analyst, change, "must be owner of project Payroll")
        for role in (source.app, member, admin, "postgres"):
            assert source.call(role, change)["requested_by"] == role
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        source.call(source.analyst, CHANGES[2])
    assert f"belongs to role {source.app}" in (caught.value.diag.message_hint or "")
    # Another project is the analyst's to make.
    assert source.call(source.analyst, "select pgml.writeback('Mine')")["status"] == "pending"


def test_a_project_without_an_owner_is_pgml_admins(source: Source) -> None:
    run(source.dsn, "insert into pgml.projects (project_name, owner) values ('Old', null)")
    admin = source.make_role("admin")
    run(source.dsn, f"grant pgml_admin to {admin}", f"grant usage on schema pgml to {admin}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        source.call(source.app, "select pgml.writeback('Old', false)")
    assert "only members of pgml_admin" in (caught.value.diag.message_hint or "")
    assert source.call(admin, "select pgml.writeback('Old', false)")["requested_by"] == admin


# --- pgml_admin ----------------------------------------------------------------------------


def test_install_makes_pgml_admin_or_says_how(
    pg_server: LocalPostgres, source_dsn: str, make_role: MakeRole
) -> None:
    installer = make_role("installer")
    database = conninfo_to_dict(source_dsn)["dbname"]
    run(source_dsn, f"grant create on database {database} to {installer}")
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("drop role if exists pgml_admin")  # the cluster's: made again below
    try:
        notices: list[str] = []
        with psycopg.connect(as_role(source_dsn, installer), autocommit=True) as conn:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            assert source_schema.install(conn) == 3
            advice = source_schema.admin_role_advice(conn)
        assert notices == [f"role pgml_admin does not exist and {installer} may not create roles"]
        assert advice is not None and "CREATE ROLE pgml_admin NOLOGIN" in advice
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            assert conn.execute("select to_regrole('pgml_admin')").fetchone() == (None,)
            with conn.transaction():  # install.sql again, by a role that may create roles
                conn.execute((SQL_DIR / "install.sql").read_text())
            assert source_schema.admin_role_advice(conn) is None
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            exists = conn.execute("select to_regrole('pgml_admin') is not null").fetchone()
            if exists != (True,):
                conn.execute("create role pgml_admin nologin")


def test_print_sql_is_what_install_runs() -> None:
    fresh = source_schema.install_script(None)
    assert fresh.startswith((SQL_DIR / "install.sql").read_text())
    assert "-- CREATE ROLE pgml_admin NOLOGIN;" in fresh
    upgrade = source_schema.install_script(2)
    assert upgrade.startswith((SQL_DIR / "upgrade" / "2_to_3.sql").read_text())
    current = source_schema.install_script(source_schema.SCHEMA_VERSION)
    assert current.startswith("-- pgml-sidecar schema version 3 is installed already")


def test_init_print_sql_runs_nothing(source_dsn: str) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(old_install_sql(2))
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "init", "--print-sql", "--source", source_dsn],
        capture_output=True, text=True, timeout=60, cwd=SQL_DIR.parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert source_schema.install_script(2).split("\n-- Members of pgml_admin")[0] in done.stdout
    assert "create publication pgml_sidecar for table pgml.training_requests;" in done.stdout
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        assert source_schema.installed_version(conn) == 2
        assert conn.execute("select count(*) from pg_publication").fetchone() == (0,)
