"""Endpoint users act for source roles: they read and change only what those roles may.

A real source with real roles (a table owner, the sidecar's REPLICATION role, an application
role that may SELECT the table, an analyst who may not), the table mirrored by the replicator,
and the endpoint serving the mirror with that source: queries, ``pgml.train`` and
``pgml.deploy`` through psycopg, in trust mode and with a users file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from predictor.users import add_user
from tests.predictor.endpoint_client import connect
from tests.replicator.mirror_check import catch_up
from tests.source_roles import MakeRole, as_role, make_role, run
from trainer.train import Trainer
from trainer.worker import FitWorker

__all__ = ["make_role"]  # the fixture, used by name


@dataclass
class Company:
    dsn: str
    owner: str
    app: str
    """May SELECT hr.salaries."""
    analyst: str
    """May SELECT nothing."""
    partial: str
    """May SELECT two columns of hr.salaries only."""
    endpoint: SqlEndpoint


def _endpoint(
    source_dsn: str, sidecar: str, mirror: Mirror, trainer: Trainer, **settings: object
) -> SqlEndpoint:
    served = SqlEndpoint(
        EndpointSettings(port=0, **settings),  # type: ignore[arg-type]
        mirror.con,
        trainer,
        source_dsn=as_role(source_dsn, sidecar),
    )
    assert served.access is not None
    served.access.privileges.max_age = 0.5  # GRANT and REVOKE followed at once, for the test
    return served


@pytest.fixture
def company(
    source_dsn: str, mirror_path: Path, make_role: MakeRole, fit_worker: FitWorker
) -> Iterator[tuple[Company, Mirror, Trainer, str]]:
    owner, sidecar = make_role("owner"), make_role("sidecar", "replication")
    app, analyst, partial = make_role("app"), make_role("analyst"), make_role("partial")
    run(source_dsn, f"create schema hr authorization {owner}")
    run(
        as_role(source_dsn, owner),
        "grant usage on schema hr to public",
        "create table hr.salaries (id int primary key, age int, years int, salary int)",
        "insert into hr.salaries select i, 20 + i % 40, i % 30, 30000 + 900 * (i % 40)"
        " + 400 * (i % 30) from generate_series(1, 200) i",
        f"grant select on hr.salaries to {sidecar}, {app}",
        f"grant select (id, age) on hr.salaries to {partial}",
        # the same name but for Unicode case folding (a long s): another table to DuckDB
        'create table hr."\u017falaries" (id int primary key, note text)',
        "insert into hr.\"\u017falaries\" values (1, 'public')",
        'grant select on hr."\u017falaries" to public',
    )
    catch_up(source_dsn, mirror_path, ["hr.salaries", "hr.\u017falaries"])
    mirror = Mirror(mirror_path)
    trainer = Trainer(mirror.con, mirror_path.parent / "artifacts", worker=fit_worker)
    served = _endpoint(source_dsn, sidecar, mirror, trainer)
    served.start()
    try:
        yield Company(source_dsn, owner, app, analyst, partial, served), mirror, trainer, sidecar
    finally:
        served.stop()
        trainer.close()
        mirror.close()


def _query(endpoint: SqlEndpoint, user: str, sql: str, **options: str) -> list[tuple]:
    with connect(endpoint, user=user, **options) as conn:
        return conn.execute(sql).fetchall()


def _refused(endpoint: SqlEndpoint, user: str, sql: str, **options: str) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        _query(endpoint, user, sql, **options)
    return str(caught.value)


def test_each_user_reads_what_its_source_role_may(company: tuple) -> None:
    c, *_ = company
    assert _query(c.endpoint, c.app, "select count(*) from hr.salaries") == [(200,)]
    assert "hr.salaries" in _refused(c.endpoint, c.analyst, "select * from hr.salaries")
    # two columns granted: those two are the table
    assert _query(c.endpoint, c.partial, "select * from hr.salaries where id = 3") == [(3, 23)]
    _refused(c.endpoint, "no_such_role_here", "select * from hr.salaries")
    # through a subquery, a CTE and a join the answer is the same
    _refused(c.endpoint, c.analyst, "with s as (select * from hr.salaries) select * from s")
    _refused(c.endpoint, c.analyst, "select 1 where exists (select 1 from hr.salaries)")
    # the registry is everyone's
    assert _query(c.endpoint, c.analyst, "select count(*) from pgml.projects") == [(0,)]


def test_grant_and_revoke_are_followed(company: tuple) -> None:
    c, *_ = company
    _refused(c.endpoint, c.analyst, "select * from hr.salaries")
    run(as_role(c.dsn, c.owner), f"grant select on hr.salaries to {c.analyst}")
    _await(lambda: _may(c.endpoint, c.analyst))
    run(as_role(c.dsn, c.owner), f"revoke select on hr.salaries from {c.analyst}")
    _await(lambda: not _may(c.endpoint, c.analyst))


def _may(endpoint: SqlEndpoint, user: str) -> bool:
    try:
        _query(endpoint, user, "select count(*) from hr.salaries")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def _await(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the endpoint did not follow the source in time"
        time.sleep(0.1)


def test_training_reads_only_what_the_role_may_and_projects_belong_to_their_maker(
    company: tuple,
) -> None:
    c, *_ = company
    train = "select * from pgml.train('pay', 'regression', 'hr.salaries', 'salary')"
    assert "hr.salaries" in _refused(c.endpoint, c.analyst, train)
    assert _query(c.endpoint, c.app, train)[0][0] == "pay"
    # the project is app's: the analyst can neither retrain nor deploy it
    assert "must be owner of project pay" in _refused(
        c.endpoint, c.analyst, "select * from pgml.train('pay')"
    )
    _refused(c.endpoint, c.analyst, "select * from pgml.deploy('pay', 'most_recent')")
    model_id = _query(c.endpoint, c.app, "select id from pgml.models")[0][0]
    _refused(c.endpoint, c.analyst, f"select * from pgml.deploy({model_id})")
    assert _query(c.endpoint, c.app, "select * from pgml.deploy('pay', 'most_recent')")
    # its scores: for the owner and for readers of hr.salaries only
    scores = "select count(*) from pgml_scores.pay"
    assert _query(c.endpoint, c.app, scores) == [(200,)]
    _refused(c.endpoint, c.analyst, scores)
    run(as_role(c.dsn, c.owner), f"grant select on hr.salaries to {c.partial}")
    _await(lambda: _query_ok(c.endpoint, c.partial, scores))


def _query_ok(endpoint: SqlEndpoint, user: str, sql: str) -> bool:
    try:
        _query(endpoint, user, sql)
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def test_a_users_file_maps_each_login_to_its_role_and_never_trusts(
    company: tuple, tmp_path: Path
) -> None:
    c, mirror, trainer, sidecar = company
    users = tmp_path / "users.txt"
    add_user(users, "alice", "alice-secret-1", role=c.app)
    add_user(users, "bob", "bob-secret-2", role=c.analyst)
    served = _endpoint(c.dsn, sidecar, mirror, trainer, users_file=users)
    served.start()
    try:
        sql = "select count(*) from hr.salaries"
        assert _query(served, "alice", sql, password="alice-secret-1") == [(200,)]
        _refused(served, "bob", sql, password="bob-secret-2")
        for user, password in (("alice", "bob-secret-2"), ("carol", "x"), (c.app, "anything")):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                _query(served, user, "select 1", password=password)
        # a role's own name is no login: app's name without a line in the file gets nowhere
        with pytest.raises(psycopg.OperationalError):
            _query(served, c.app, sql)
    finally:
        served.stop()


def test_a_users_file_and_a_shared_password_together_are_refused(
    company: tuple, tmp_path: Path
) -> None:
    c, mirror, trainer, sidecar = company
    users = tmp_path / "users.txt"
    add_user(users, "alice", "alice-secret-1", role=c.app)
    with pytest.raises(Exception, match="both a users file and an endpoint password"):
        _endpoint(c.dsn, sidecar, mirror, trainer, users_file=users, password="shared")


def test_names_equal_only_under_unicode_folding_are_other_tables(company: tuple) -> None:
    c, *_ = company
    _refused(c.endpoint, c.analyst, "select * from hr.salaries")
    assert _query(c.endpoint, c.analyst, 'select note from hr."\u017falaries"') == [("public",)]


def test_predictions_are_for_the_owner_and_the_relations_readers(company: tuple) -> None:
    c, *_ = company
    _query(
        c.endpoint, c.app, "select * from pgml.train('pay', 'regression', 'hr.salaries', 'salary')"
    )
    model_id = _query(c.endpoint, c.app, "select id from pgml.models")[0][0]
    one = "select pgml.predict('pay', ARRAY[21, 1])"
    assert _query(c.endpoint, c.app, one)[0][0] is not None
    for sql in (
        one,
        f"select pgml.predict({model_id}, ARRAY[21, 1])",
        "select pgml.predict('pay', ARRAY[a, 1]) from generate_series(20, 60) t(a)",
        "select pgml.predict(p, ARRAY[21, 1]) from (values ('pay')) v(p)",
    ):
        assert "permission denied" in _refused(c.endpoint, c.analyst, sql)
    with (
        connect(c.endpoint, user=c.analyst) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("select pgml.predict(%s, ARRAY[a, 1]) from generate_series(20, 21) t(a)",
                     ["pay"])  # fmt: skip
    # a project's maker keeps its scores; a computed project name is refused to everyone
    assert len(_query(c.endpoint, c.app, "select pgml.predict('pay', ARRAY[a, 1]) from"
                      " generate_series(20, 60) t(a)")) == 41  # fmt: skip


def test_a_reader_who_loses_the_relation_loses_its_predictions(company: tuple) -> None:
    c, *_ = company
    _query(
        c.endpoint, c.app, "select * from pgml.train('pay', 'regression', 'hr.salaries', 'salary')"
    )
    run(as_role(c.dsn, c.owner), f"grant select on hr.salaries to {c.analyst}")
    _await(lambda: _may(c.endpoint, c.analyst))
    with connect(c.endpoint, user=c.analyst) as conn:
        sql = "select pgml.predict('pay', ARRAY[%s, 1])"
        for _ in range(3):  # answered again from what was decided
            assert conn.execute(sql, [0], prepare=True).fetchone() != (None,)
        run(as_role(c.dsn, c.owner), f"revoke select on hr.salaries from {c.analyst}")
        _refused_soon(conn, sql)


def _refused_soon(conn: psycopg.Connection, sql: str) -> None:
    """Run the prepared ``sql`` (one parameter, 0) until the endpoint refuses it (30 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            conn.execute(sql, [0], prepare=True).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return
        assert time.monotonic() < deadline, "the prepared statement kept reading"
        time.sleep(0.1)  # the REVOKE is seen at the next refresh of the privileges


def test_a_statement_prepared_before_a_revoke_is_refused_after_it(company: tuple) -> None:
    c, *_ = company
    run(as_role(c.dsn, c.owner), f"grant select on hr.salaries to {c.analyst}")
    _await(lambda: _may(c.endpoint, c.analyst))
    with connect(c.endpoint, user=c.analyst) as conn:
        sql = "select count(*) from hr.salaries where id > %s"
        assert conn.execute(sql, [0], prepare=True).fetchone() == (200,)
        run(as_role(c.dsn, c.owner), f"revoke select on hr.salaries from {c.analyst}")
        _refused_soon(conn, sql)


def test_a_role_with_some_columns_reads_those_and_no_other(company: tuple) -> None:
    c, *_ = company
    rows = _query(
        c.endpoint,
        c.partial,
        "select s.id, S.age, t.id from hr.salaries s join hr.Salaries as t using (id)"
        " where s.id < 3 order by 1",
    )
    assert rows == [(1, 21, 1), (2, 22, 2)]
    assert _query(c.endpoint, c.partial, "select max(a) from hr.salaries as x(i, a)") == [(59,)]
    with connect(c.endpoint, user=c.partial) as conn:
        described = conn.execute("select * from hr.salaries limit 1")
        assert [d.name for d in described.description or ()] == ["id", "age"]
    rows = _query(c.endpoint, c.partial, "select hr.salaries.age from hr.salaries where id = 4")
    assert rows == [(24,)]
    for sql in (
        "select salary from hr.salaries",
        "select s.salary from hr.salaries s",
        "select hr.salaries.years from hr.salaries",
        "select id from hr.salaries where salary > 40000",
        "select count(*) from hr.salaries group by salary",
        "select (select max(salary) from hr.salaries)",
        "select id from hr.salaries join (select 30900 as salary) x using (salary)",
    ):
        with pytest.raises(psycopg.errors.UndefinedColumn) as caught:
            _query(c.endpoint, c.partial, sql)
        assert "salary" in str(caught.value) or "years" in str(caught.value), (sql, caught.value)
    whole = _query(c.endpoint, c.partial, "select to_json(s) from hr.salaries s where id = 5")
    assert [json.loads(row) for (row,) in whole] == [{"id": 5, "age": 25}]
    for project in (
        "pgml.train('p', 'regression', 'hr.salaries', 'age')",
        "pgml.snapshot('hr.salaries', 'age')",
    ):
        assert "only some" in _refused(c.endpoint, c.partial, f"select * from {project}")


def test_a_statement_prepared_with_some_columns_is_refused_once_one_is_revoked(
    company: tuple,
) -> None:
    c, *_ = company
    with connect(c.endpoint, user=c.partial) as conn:
        sql = "select sum(age) from hr.salaries where id > %s"
        assert conn.execute(sql, [0], prepare=True).fetchone() == (7900,)
        run(as_role(c.dsn, c.owner), f"revoke select (age) on hr.salaries from {c.partial}")
        _refused_soon(conn, sql)


def test_a_name_that_is_no_source_role_makes_no_project(company: tuple) -> None:
    c, *_ = company
    with pytest.raises(psycopg.errors.UndefinedObject):
        _query(c.endpoint, "no_such_role_here", "select * from pgml.train('x', 'regression',"
               " 'pgml.diabetes', 'target')")  # fmt: skip


def test_the_registry_shows_a_role_only_the_projects_it_may_see(company: tuple) -> None:
    c, *_ = company
    _query(
        c.endpoint, c.app, "select * from pgml.train('pay', 'regression', 'hr.salaries', 'salary')"
    )
    _query(c.endpoint, c.analyst, "select * from pgml.load_dataset('iris')")
    _query(
        c.endpoint,
        c.analyst,
        "select * from pgml.train('flowers', 'classification', 'pgml.iris', 'target')",
    )
    every = {
        "projects": "select name from pgml.projects order by 1",
        "models": "select distinct p.name from pgml.models m join pgml.projects p"
        " on p.id = m.project_id order by 1",
        "snapshots": "select relation_name from pgml.snapshots order by 1",
        "trained_models": "select distinct name from pgml.trained_models order by 1",
        "overview": "select name from pgml.overview order by 1",
        "deployed_models": "select name from pgml.deployed_models order by 1",
        "deployments": "select count(distinct project_id) from pgml.deployments",
    }
    mine = {
        c.app: [("flowers",), ("pay",)],  # iris is a data set: everyone's
        c.analyst: [("flowers",)],
        "no_such_role_here": [("flowers",)],
    }
    for user, projects in mine.items():
        assert _query(c.endpoint, user, every["projects"]) == projects, user
        assert _query(c.endpoint, user, every["models"]) == projects, user
        assert _query(c.endpoint, user, every["trained_models"]) == projects, user
        assert _query(c.endpoint, user, every["overview"]) == projects, user
        assert _query(c.endpoint, user, every["deployed_models"]) == projects, user
        assert _query(c.endpoint, user, every["deployments"]) == [(len(projects),)], user
        snapshots = [r for (r,) in _query(c.endpoint, user, every["snapshots"])]
        assert ("hr.salaries" in snapshots) == (user == c.app), (user, snapshots)
    # the salaries' statistics never reach the analyst, however the registry is asked
    for sql in (
        "select count(*) from pgml.snapshots s where s.relation_name = 'hr.salaries'",
        "select count(*) from (select * from pgml.snapshots) x where relation_name like 'hr%'",
        "with s as (select * from pgml.snapshots) select count(*) from s"
        " where relation_name like 'hr%'",
        "select count(*) from pgml.models m join pgml.snapshots s on s.id = m.snapshot_id"
        " where s.relation_name like 'hr%'",
        "select count(*) from pgml.progress",
        "select count(*) from pgml.drift_events",
        "select count(*) from pgml.challenges",
        "select count(*) from pgml.pending_challenges",
    ):
        assert _query(c.endpoint, c.analyst, sql) == [(0,)], sql
    # a reader of the relation sees its project, as its scores; and loses it on REVOKE
    run(as_role(c.dsn, c.owner), f"grant select on hr.salaries to {c.analyst}")
    _await(lambda: _query(c.endpoint, c.analyst, every["projects"]) == mine[c.app])
    with connect(c.endpoint, user=c.analyst) as conn:
        sql = "select count(*) from pgml.snapshots where relation_name = 'hr.salaries' and 0 = %s"
        assert conn.execute(sql, [0], prepare=True).fetchone() == (1,)
        run(as_role(c.dsn, c.owner), f"revoke select on hr.salaries from {c.analyst}")
        _await(lambda: conn.execute(sql, [0], prepare=True).fetchone() == (0,))
