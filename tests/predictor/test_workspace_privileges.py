"""Workspaces under real source roles: a view reads only what its role may read, now.

A real source (a table owner, the sidecar's REPLICATION role, ``app`` that may SELECT
hr.salaries, ``analyst`` that may not), the table mirrored by the replicator, and the endpoint
asking that source for each session's privileges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from tests.predictor.endpoint_client import connect
from tests.replicator.mirror_check import catch_up
from tests.source_roles import MakeRole, as_role, make_role, run
from trainer.train import Trainer
from trainer.worker import FitWorker

__all__ = ["make_role"]  # the fixture, used by name


@dataclass
class Roles:
    dsn: str
    owner: str
    app: str
    analyst: str
    endpoint: SqlEndpoint


@pytest.fixture
def roles(
    source_dsn: str, mirror_path: Path, make_role: MakeRole, fit_worker: FitWorker
) -> Iterator[Roles]:
    owner, sidecar = make_role("owner"), make_role("sidecar", "replication")
    app, analyst = make_role("app"), make_role("analyst")
    run(source_dsn, f"create schema hr authorization {owner}")
    run(
        as_role(source_dsn, owner),
        "grant usage on schema hr to public",
        "create table hr.salaries (id int primary key, age int, years int, salary int)",
        "insert into hr.salaries select i, 20 + i % 40, i % 30, 30000 + 900 * (i % 40)"
        " + 400 * (i % 30) from generate_series(1, 200) i",
        f"grant select on hr.salaries to {sidecar}, {app}",
    )
    catch_up(source_dsn, mirror_path, ["hr.salaries"])
    mirror = Mirror(mirror_path)
    trainer = Trainer(mirror.con, mirror_path.parent / "artifacts", worker=fit_worker)
    endpoint = SqlEndpoint(
        EndpointSettings(port=0), mirror.con, trainer, source_dsn=as_role(source_dsn, sidecar)
    )
    assert endpoint.access is not None
    endpoint.access.privileges.max_age = 0.5  # GRANT and REVOKE followed at once, for the test
    mirror.lock_down(allowed_directories=[trainer.home])
    endpoint.start()
    try:
        yield Roles(source_dsn, owner, app, analyst, endpoint)
    finally:
        endpoint.stop()
        trainer.close()
        mirror.close()


def _rows(roles: Roles, user: str, sql: str) -> list[tuple]:
    with connect(roles.endpoint, user=user) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _denied(roles: Roles, user: str, sql: str) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        _rows(roles, user, sql)
    return str(caught.value)


def _await(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the endpoint did not follow the source in time"
        time.sleep(0.2)


def test_nothing_the_role_may_not_read_gets_into_its_workspace(roles: Roles) -> None:
    a = roles.analyst
    for sql in (
        "create view pgml.pay as select * from hr.salaries",
        "create view pgml.pay as select (select max(salary) from hr.salaries) as top",
        "create table pay as select * from hr.salaries",
        "create table pay as select 1 as one where exists (select 1 from hr.salaries)",
    ):
        assert "hr.salaries" in _denied(roles, a, sql)
    _rows(roles, a, "create table mine (salary int)")
    assert "hr.salaries" in _denied(roles, a, "insert into mine select salary from hr.salaries")
    assert "hr.salaries" in _denied(
        roles, a, "update mine set salary = (select max(salary) from hr.salaries)"
    )
    assert "hr.salaries" in _denied(
        roles, a, "delete from mine where salary in (select salary from hr.salaries)"
    )
    assert "hr.salaries" in _denied(
        roles, a, "select * from pgml.train('pay', 'regression', 'hr.salaries', 'salary')"
    )


def test_a_view_made_while_the_role_could_read_is_refused_after_revoke(roles: Roles) -> None:
    a = roles.analyst
    run(as_role(roles.dsn, roles.owner), f"grant select on hr.salaries to {a}")
    _await(lambda: _may(roles, a, "select count(*) from hr.salaries"))
    _rows(roles, a, "create view pgml.pay as select age, years, salary from hr.salaries")
    _rows(roles, a, "create view pgml.pay_summary as select avg(salary) from pgml.pay")
    assert _rows(roles, a, "select count(*) from pgml.pay") == [(200,)]
    trained = _rows(roles, a, "select * from pgml.train('Pay', 'regression', 'pgml.pay', 'salary')")
    assert trained[0][:2] == ("Pay", "regression")
    with connect(roles.endpoint, user=a) as conn:  # prepared before the REVOKE
        conn.execute("select count(*) from pgml.pay_summary", prepare=True)

        run(as_role(roles.dsn, roles.owner), f"revoke select on hr.salaries from {a}")
        _await(lambda: not _may(roles, a, "select count(*) from hr.salaries"))

        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"hr\.salaries"):
            conn.execute("select count(*) from pgml.pay_summary", prepare=True)
    for sql in (
        "select * from pgml.pay",
        "select * from pgml.pay_summary",
        "create table copy as select * from pgml.pay",
        "select * from pgml.train('Pay', 'regression', 'pgml.pay', 'salary')",
        "select * from pgml.snapshot('pgml.pay', 'salary')",
    ):
        assert "hr.salaries" in _denied(roles, a, sql), sql
    # the app role, which may read the table, has no such view: each workspace is its own
    with pytest.raises(psycopg.errors.UndefinedTable):
        _rows(roles, roles.app, "select * from pgml.pay")


def _may(roles: Roles, user: str, sql: str) -> bool:
    try:
        _rows(roles, user, sql)
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def test_the_registry_shows_through_a_view_only_what_the_role_may_see(roles: Roles) -> None:
    app, a = roles.app, roles.analyst
    _rows(roles, app, "select * from pgml.train('Salary', 'regression', 'hr.salaries', 'salary')")
    assert _rows(roles, app, "select count(*) from pgml.models") == [(1,)]
    assert _rows(roles, a, "select count(*) from pgml.models") == [(0,)]
    # neither a view, a copy nor a shadowing table shows the analyst another project's models
    _rows(roles, a, "create view pgml.all_models as select * from pgml.models")
    assert _rows(roles, a, "select count(*) from pgml.all_models") == [(0,)]
    _rows(roles, a, "create table pgml.model_copy as select * from pgml.models")
    assert _rows(roles, a, "select count(*) from pgml.model_copy") == [(0,)]
    assert "already exists" in str(_error(roles, a, "create table pgml.models (id int)"))
    _rows(roles, app, "create view pgml.all_models as select * from pgml.models")
    assert _rows(roles, app, "select count(*) from pgml.all_models") == [(1,)]
    assert _rows(roles, a, "select count(*) from pgml.all_models") == [(0,)]
    # the owner's own workspace view trains and predicts for it alone
    _rows(roles, app, "create view pgml.young as select age, years, salary from hr.salaries"
                      " where age < 40")  # fmt: skip
    _rows(roles, app, "select * from pgml.train('Young', 'regression', 'pgml.young', 'salary')")
    young = _rows(roles, app, "select relation_name, num_rows from pgml.snapshots"
                              " where relation_name = 'pgml.young'")  # fmt: skip
    assert young == [("pgml.young", 100)]


def _error(roles: Roles, user: str, sql: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        _rows(roles, user, sql)
    return caught.value


def test_workspace_tables_reach_no_further_than_the_role(roles: Roles) -> None:
    """RETURNING, defaults, ALTER TABLE and foreign keys read what the role may read, and
    write only to its workspace."""
    _rows(roles, roles.analyst, "CREATE TABLE mine (id serial PRIMARY KEY, x int)")
    for sql in (
        "INSERT INTO mine (x) VALUES (1) RETURNING (SELECT max(salary) FROM hr.salaries)",
        "UPDATE mine SET x = 2 RETURNING (SELECT count(*) FROM hr.salaries)",
        "DELETE FROM mine RETURNING (SELECT salary FROM hr.salaries LIMIT 1)",
        "INSERT INTO mine (x) SELECT salary FROM hr.salaries RETURNING id",
        "ALTER TABLE mine ADD COLUMN s int DEFAULT (SELECT max(salary) FROM hr.salaries)",
        "ALTER TABLE mine ALTER COLUMN x TYPE bigint USING (SELECT max(salary) FROM hr.salaries)",
        "CREATE TABLE t (id int, CHECK (id < (SELECT max(salary) FROM hr.salaries)))",
        "INSERT INTO hr.salaries VALUES (1000, 1, 1, 1) RETURNING *",
        "ALTER TABLE hr.salaries ADD COLUMN x int",
        "ALTER TABLE hr.salaries RENAME TO s2",
    ):
        with pytest.raises(psycopg.Error) as caught:
            _rows(roles, roles.analyst, sql)
        assert caught.value.sqlstate in ("42501", "0A000"), (sql, caught.value)
    error = _denied(roles, roles.app, "ALTER TABLE hr.salaries DROP COLUMN salary")
    assert "hr.salaries is a mirrored table: change it in the source database" in error
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="served from the mirror"):
        _rows(roles, roles.app, "CREATE TABLE c (id int REFERENCES hr.salaries (id))")
    assert _rows(roles, roles.analyst, "INSERT INTO mine (x) VALUES (7) RETURNING id, x") == [
        (1, 7)
    ]
    with pytest.raises(psycopg.errors.UndefinedTable):  # the analyst's sequence, not app's
        _rows(roles, roles.app, "CREATE TABLE c (id bigint DEFAULT nextval('mine_id_seq'))")
