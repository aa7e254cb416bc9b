"""What each source role may read of the mirror, asked of a real source with real roles."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from mirror.store import Mirror
from predictor.privileges import ALL, SourcePrivileges, mirrored_relations, read_privileges
from tests.replicator.mirror_check import catch_up, wait_for
from tests.source_roles import MakeRole, as_role, make_role, run

__all__ = ["make_role"]  # the fixture, used by name

TABLES = ["hr.salaries", "hr.people", "shop.orders"]
SALARIES, PEOPLE, ORDERS = ("hr", "salaries"), ("hr", "people"), ("shop", "orders")


@dataclass
class Shop:
    """A source with three mirrored tables and the roles of a real deployment."""

    dsn: str
    mirror: Mirror
    owner: str
    """Owns the schemas and tables."""
    sidecar: str
    """The sidecar's REPLICATION role, with SELECT on the mirrored tables (sidecar/sql/role.sql)."""
    app: str
    """SELECT on shop.orders, and on two columns of hr.people."""
    analyst: str
    """Nothing granted."""

    def privileges(self, max_age: float = 60.0, retry_after: float = 5.0) -> SourcePrivileges:
        """The cache as the endpoint uses it: the sidecar's own login, the mirror's tables."""
        return SourcePrivileges(
            as_role(self.dsn, self.sidecar),
            self.mirror.con,
            max_age=max_age,
            retry_after=retry_after,
        )

    def as_owner(self, *statements: str) -> None:
        run(as_role(self.dsn, self.owner), *statements)


@pytest.fixture
def shop(source_dsn: str, mirror_path: Path, make_role: MakeRole) -> Iterator[Shop]:
    owner, sidecar = make_role("owner"), make_role("sidecar", "replication")
    app, analyst = make_role("app"), make_role("analyst")
    run(
        source_dsn,
        f"create schema hr authorization {owner}",
        f"create schema shop authorization {owner}",
    )
    run(
        as_role(source_dsn, owner),
        "grant usage on schema hr, shop to public",
        "create table hr.salaries (id int primary key, name text, salary int)",
        "create table hr.people (id int primary key, name text, phone text)",
        "create table shop.orders (id int primary key, amount numeric(10, 2))",
        "insert into hr.salaries values (1, 'ann', 91000), (2, 'bob', 64000)",
        "insert into hr.people values (1, 'ann', '555-0101')",
        "insert into shop.orders values (1, 9.5)",
        f"grant select on hr.salaries, hr.people, shop.orders to {sidecar}",
        f"grant select on shop.orders to {app}",
        f"grant select (id, name) on hr.people to {app}",
    )
    catch_up(source_dsn, mirror_path, TABLES)
    mirror = Mirror(mirror_path)
    try:
        yield Shop(source_dsn, mirror, owner, sidecar, app, analyst)
    finally:
        mirror.close()


def test_each_role_reads_what_the_source_lets_it(shop: Shop) -> None:
    tables = {(r.schema, r.name): r for r in mirrored_relations(shop.mirror.con)}
    assert sorted(tables) == [PEOPLE, SALARIES, ORDERS]
    assert all(r.relid > 0 for r in tables.values())
    assert tables[PEOPLE].columns == ("id", "name", "phone")

    privileges = shop.privileges()
    everything = {SALARIES: ALL, PEOPLE: ALL, ORDERS: ALL}
    assert privileges.readable(shop.owner) == everything
    assert privileges.readable(shop.sidecar) == everything
    assert privileges.readable("postgres") == everything  # a superuser
    assert privileges.readable(shop.app) == {ORDERS: ALL, PEOPLE: frozenset({"id", "name"})}
    assert privileges.readable(shop.analyst) == {}
    assert privileges.readable("no_such_role") == {}
    assert privileges.refreshes == 6  # one query per role asked

    for _ in range(100):  # answered from the cache
        assert privileges.readable(shop.app)[ORDERS] is ALL
    assert privileges.refreshes == 6
    assert privileges.may_select(shop.app, "hr", "people", ["id", "name"])
    assert not privileges.may_select(shop.app, "hr", "people", ["phone"])
    assert not privileges.may_select(shop.app, "hr", "salaries")
    assert privileges.refresh() and privileges.refreshes == 7  # every role, one query


def test_grant_and_revoke_are_followed_within_the_refresh(shop: Shop) -> None:
    privileges = shop.privileges(max_age=1.0)
    assert privileges.readable(shop.analyst) == {}

    shop.as_owner(f"grant select on hr.salaries to {shop.analyst}")
    wait_for(lambda: privileges.readable(shop.analyst) == {SALARIES: ALL}, timeout=5,
             what="the GRANT to be seen")  # fmt: skip
    shop.as_owner(f"grant select (phone) on hr.people to {shop.app}")
    wait_for(lambda: privileges.readable(shop.app).get(PEOPLE) == {"id", "name", "phone"},
             timeout=5, what="the column GRANT to be seen")  # fmt: skip
    shop.as_owner(f"revoke select on hr.salaries from {shop.analyst}")
    wait_for(lambda: privileges.readable(shop.analyst) == {}, timeout=5,
             what="the REVOKE to be seen")  # fmt: skip

    # Membership counts as PostgreSQL counts it: the analyst inherits the app's privileges.
    run(shop.dsn, f"grant {shop.app} to {shop.analyst}")
    wait_for(lambda: ORDERS in privileges.readable(shop.analyst), timeout=5,
             what="the membership to be seen")  # fmt: skip

    # With the default minute, refresh() is the way to see a change at once.
    slow = shop.privileges()
    assert ORDERS in slow.readable(shop.analyst)
    run(shop.dsn, f"revoke {shop.app} from {shop.analyst}")
    assert ORDERS in slow.readable(shop.analyst)  # not a minute old yet
    assert slow.refresh()
    assert slow.readable(shop.analyst) == {}


def test_run_refreshes_in_the_background(shop: Shop) -> None:
    privileges = shop.privileges(max_age=0.4)
    assert privileges.readable(shop.analyst) == {}
    stop = threading.Event()
    worker = threading.Thread(target=privileges.run, args=(stop,), daemon=True)
    worker.start()
    try:
        before = privileges.refreshes
        wait_for(lambda: privileges.refreshes >= before + 2, timeout=5, what="two refreshes")
    finally:
        stop.set()
        worker.join(5)
    assert not worker.is_alive()


def test_schema_usage_and_row_level_security_are_the_sources(shop: Shop) -> None:
    privileges = shop.privileges(max_age=60)
    shop.as_owner("revoke usage on schema hr from public")
    shop.as_owner(
        "alter table shop.orders enable row level security",
        f"create policy small on shop.orders to {shop.app} using (amount < 5)",
    )
    assert privileges.readable(shop.app) == {}  # the mirror cannot apply the policy
    assert privileges.readable(shop.owner) == {SALARIES: ALL, PEOPLE: ALL, ORDERS: ALL}
    shop.as_owner("alter table shop.orders force row level security")
    run(shop.dsn, f"alter role {shop.sidecar} bypassrls")
    assert privileges.refresh()
    assert ORDERS not in privileges.readable(shop.owner)
    assert privileges.readable(shop.sidecar)[ORDERS] is ALL
    assert privileges.readable("postgres")[ORDERS] is ALL


def test_a_table_made_again_under_the_mirrored_name_opens_nothing(shop: Shop) -> None:
    """The mirror holds the old table's rows: the new table's grants are not theirs."""
    privileges = shop.privileges()
    assert SALARIES not in privileges.readable(shop.analyst)
    shop.as_owner(
        "drop table hr.salaries",
        "create table hr.salaries (id int primary key, name text, salary int)",
        "grant select on hr.salaries to public",
    )
    assert privileges.refresh()
    assert SALARIES not in privileges.readable(shop.analyst)
    assert SALARIES not in privileges.readable(shop.owner)


def test_an_unreachable_source_keeps_the_last_answer(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [0.0]
    privileges = shop.privileges(max_age=60, retry_after=5)
    privileges._clock = lambda: clock[0]
    assert privileges.readable(shop.app) == {ORDERS: ALL, PEOPLE: frozenset({"id", "name"})}
    run(
        shop.dsn,
        f"alter role {shop.sidecar} nologin",
        "select pg_terminate_backend(pid) from pg_stat_activity"
        " where application_name = 'pgml-sidecar privileges'",
    )
    shop.as_owner(f"grant select on hr.salaries to {shop.app}")
    clock[0] = 61.0
    with caplog.at_level(logging.WARNING, logger="pgml_sidecar"):
        assert privileges.readable(shop.app) == {ORDERS: ALL, PEOPLE: frozenset({"id", "name"})}
        assert privileges.readable(shop.owner) == {}  # never answered: nothing
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot read them from the source" in warnings[0]
    assert "keeping the last answers" in warnings[0]

    run(shop.dsn, f"alter role {shop.sidecar} login")
    assert privileges.readable(shop.app)[PEOPLE] == {"id", "name"}  # retried after 5 s only
    clock[0] = 67.0
    assert privileges.readable(shop.app)[SALARIES] is ALL
    assert privileges.readable(shop.owner)[SALARIES] is ALL


def test_the_query_needs_no_privilege_but_login(shop: Shop) -> None:
    """The sidecar's role reads other roles' privileges from catalogs everyone may read."""
    with psycopg.connect(as_role(shop.dsn, shop.analyst)) as conn:
        tables = mirrored_relations(shop.mirror.con)
        answer = read_privileges(conn, [shop.app, shop.owner, "nobody_at_all"], tables)
    assert answer[shop.app] == {ORDERS: ALL, PEOPLE: frozenset({"id", "name"})}
    assert answer[shop.owner] == {SALARIES: ALL, PEOPLE: ALL, ORDERS: ALL}
    assert "nobody_at_all" not in answer


def test_a_renamed_table_answers_under_neither_name_until_the_mirror_follows(shop: Shop) -> None:
    """Its OID is the mirrored one, but another table may take the mirrored name meanwhile."""
    privileges = shop.privileges()
    assert privileges.readable(shop.app)[ORDERS] is ALL
    shop.as_owner("alter table shop.orders rename to orders_old")
    assert privileges.refresh()
    assert ORDERS not in privileges.readable(shop.app)


def test_a_table_mirrored_after_the_answer_is_asked_about_again(shop: Shop) -> None:
    every = mirrored_relations(shop.mirror.con)
    mirrored = [r for r in every if (r.schema, r.name) == ORDERS]
    now = [0.0]
    privileges = SourcePrivileges(
        as_role(shop.dsn, shop.sidecar), lambda: list(mirrored), clock=lambda: now[0]
    )
    assert privileges.readable(shop.owner) == {ORDERS: ALL}
    assert privileges.refreshes == 1
    for _ in range(10):  # not mirrored: asked again at most once a second
        assert not privileges.may_select(shop.owner, *SALARIES)
    assert privileges.refreshes == 1
    mirrored[:] = every  # hr.salaries and hr.people copied a moment later
    assert privileges.readable(shop.owner, ORDERS) == {ORDERS: ALL}  # covered: from the cache
    assert privileges.refreshes == 1
    # Mirrored since the answer, less than a second ago: the source is asked at once.
    assert privileges.may_select(shop.owner, *SALARIES)
    assert privileges.refreshes == 2
    assert privileges.readable(shop.owner) == {SALARIES: ALL, PEOPLE: ALL, ORDERS: ALL}
    assert not privileges.may_select(shop.analyst, *SALARIES)
    assert privileges.refreshes == 3
    for _ in range(10):  # now covered for every role asked: no more queries
        privileges.readable(shop.analyst, PEOPLE)
    now[0] = 1.5
    assert not privileges.may_select(shop.analyst, "hr", "not_mirrored")
    assert privileges.refreshes == 4  # a second later, a table the mirror lacks is asked once
    assert not privileges.may_select(shop.analyst, "hr", "not_mirrored")
    assert privileges.refreshes == 4
