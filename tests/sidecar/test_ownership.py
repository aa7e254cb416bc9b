"""The daemon carries out a request only for a role that may make it: real source, real roles.

The sidecar runs as a least-privilege REPLICATION role made by sidecar/sql/role.sql. Requests
that got past the source's own checks (inserted by the control table's owner, or made before the
sidecar copied a project's owner to the source) are judged again, and refused in their row.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.replicator.mirror_check import wait_for
from tests.sidecar.test_daemon import finished, one
from tests.source_roles import MakeRole, as_role, make_role, run

__all__ = ["make_role"]  # the fixture, used by name

SQL_DIR = Path(__file__).resolve().parents[2] / "sidecar" / "sql"
ROWS = 300


@dataclass
class Company:
    dsn: str
    daemon: Daemon
    owner: str
    """Owns public.salaries."""
    sidecar: str
    app: str
    """May SELECT public.salaries."""
    analyst: str
    """May SELECT nothing."""
    admin: str
    """A member of pgml_admin."""

    def ask(self, role: str, call: str) -> int:
        """Make a request through a pgml.* function as ``role``; return its id."""
        request_id = one(as_role(self.dsn, role), f"select {call}")
        assert isinstance(request_id, int)
        return request_id

    def slip_in(self, role: str, kind: str, project: str, **columns: Any) -> int:
        """A request stamped with ``role`` that no function checked (the table owner's own)."""
        names = ["kind", "project_name", "requested_by", *columns]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                f"insert into pgml.training_requests ({', '.join(names)})"
                f" values ({', '.join(['%s'] * len(names))}) returning id",
                [kind, project, role, *columns.values()],
            ).fetchone()
        assert row is not None
        return int(row[0])

    def may_read_scores(self, role: str, table: str = "pay") -> bool:
        try:
            one(as_role(self.dsn, role), f"select count(*) from pgml_scores.{table}")
        except psycopg.errors.InsufficientPrivilege:
            return False
        return True


@pytest.fixture
def company(
    pg_bin: Path, source_dsn: str, mirror_path: Path, make_role: MakeRole
) -> Iterator[Company]:
    owner, sidecar, app = make_role("owner"), make_role("sidecar"), make_role("app")
    analyst, admin = make_role("analyst"), make_role("admin")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
        conn.execute(f"grant create on schema public to {owner}")
    run(
        as_role(source_dsn, owner),
        "create table public.salaries (id int primary key, years int, salary float8)",
        f"insert into public.salaries select i, i % 30, 30000 + (i % 30) * 2000 + i % 7"
        f" from generate_series(1, {ROWS}) i",
        f"grant select on public.salaries to {app}",
    )
    params = conninfo_to_dict(source_dsn)
    subprocess.run(
        [str(pg_bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(params["host"]),
         "-p", str(params["port"]), "-U", "postgres", "-d", str(params["dbname"]),
         "-v", f"role={sidecar}", "-v", "tables=public.salaries", "-f", str(SQL_DIR / "role.sql")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    run(
        source_dsn,
        f"grant usage on schema pgml, pgml_scores to {app}, {analyst}, {admin}, {owner}",
        f"grant select on pgml.training_requests, pgml.projects to {app}, {analyst}, {admin}",
        f"grant pgml_admin to {admin}",
        "create publication pgml_sidecar for table public.salaries, pgml.training_requests",
    )
    daemon = Daemon(
        DaemonSettings(
            source_dsn=as_role(source_dsn, sidecar),
            mirror_path=mirror_path,
            tables=["public.salaries"],
            port=0,
            metrics_port=0,
        )
    )
    daemon.start()
    try:
        yield Company(source_dsn, daemon, owner, sidecar, app, analyst, admin)
    finally:
        daemon.stop()


def test_a_project_is_its_creators_and_its_scores_its_relations_readers(
    company: Company,
) -> None:
    c = company
    attack = "pgml.train('Pay', 'regression', 'public.salaries', 'salary')"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="table salaries"):
        c.ask(c.analyst, attack)
    trained = c.ask(c.app, attack)
    assert finished(c.dsn, trained)[:2] == ("done", None)
    assert one(c.dsn, "select owner from pgml.projects where project_name = 'Pay'") == c.app

    wrote = c.ask(c.app, "pgml.writeback('Pay')")
    assert finished(c.dsn, wrote)[:2] == ("done", None)
    wait_for(lambda: c.may_read_scores(c.app) and one(c.dsn, "select count(*) from"
             " pgml_scores.pay") == ROWS, timeout=60, what="the scores")  # fmt: skip
    assert c.may_read_scores(c.owner)  # the relation's owner
    assert not c.may_read_scores(c.analyst)
    assert not c.may_read_scores(c.admin)  # pgml_admin changes projects, it reads nothing more
    recorded = one(
        c.dsn,
        "select owner, score_table, scored_relation from pgml.projects where project_name = 'Pay'",
    )
    assert recorded == (c.app, "pay", "public.salaries")

    # The source knows the owner now: a non-owner is refused at once.
    for call in ("pgml.writeback('Pay', false)", "pgml.schedule('Pay', '0 3 * * *')",
                 "pgml.retrain_on_drift('Pay')", "pgml.train('Pay')"):  # fmt: skip
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner of project"):
            c.ask(c.analyst, call)

    # Requests no function checked are judged again by the sidecar, and fail in their row.
    refused = [
        c.slip_in(c.analyst, "writeback", "Pay", enabled=False),
        c.slip_in(c.analyst, "schedule", "Pay", cron="0 3 * * *"),
        c.slip_in(c.analyst, "retrain_on_drift", "Pay", enabled=False),
        c.slip_in(
            c.analyst,
            "train",
            "Pay",
            task="regression",
            relation_name="public.salaries",
            y_column_name="years",
            algorithm="linear",
        ),
    ]
    for request_id in refused:
        status, error, _ = finished(c.dsn, request_id)
        assert status == "failed" and error is not None
        assert error.startswith("must be owner of project Pay (it belongs to role " + c.app)
    stolen = c.slip_in(c.analyst, "train", "Steal", task="regression",
                       relation_name="public.salaries", y_column_name="salary",
                       algorithm="linear")  # fmt: skip
    status, error, _ = finished(c.dsn, stolen)
    assert status == "failed" and error is not None
    assert error.startswith("permission denied for table salaries")
    echo = "pgml.train('Echo', 'regression', 'pgml_scores.pay', 'prediction')"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="table pay"):
        c.ask(c.analyst, echo)  # the scores of salaries are no way around them
    echoed = c.slip_in(c.analyst, "train", "Echo", task="regression",
                       relation_name="pgml_scores.pay", y_column_name="prediction",
                       algorithm="linear")  # fmt: skip
    assert finished(c.dsn, echoed)[0] == "failed"
    assert c.daemon.trainer.registry.project("Echo") is None
    for inside in ("_pgml_sidecar.tables", "_pgml_sidecar.project_owners"):
        peek = c.ask(c.analyst, f"pgml.train('Peek', 'regression', '{inside}', 'x')")
        status, error, _ = finished(c.dsn, peek)
        assert status == "failed" and error is not None
        assert error.startswith("permission denied for table"), error
    ghost = c.slip_in("no_such_role", "writeback", "Pay", enabled=False)
    assert finished(c.dsn, ghost)[:2] == ("failed", 'role "no_such_role" does not exist')
    assert c.daemon.trainer.registry.project("Steal") is None
    assert c.daemon.control.owners.owner("Steal") is None
    assert c.may_read_scores(c.app)  # the write-back was never turned off

    # The owner's members and pgml_admin may change it.
    scheduled = c.ask(c.admin, "pgml.schedule('Pay', '0 3 * * *')")
    assert finished(c.dsn, scheduled)[:2] == ("done", None)
    run(c.dsn, f"grant {c.app} to {c.analyst}")
    retrained = c.ask(c.analyst, "pgml.train('Pay')")
    assert finished(c.dsn, retrained)[:2] == ("done", None)
    run(c.dsn, f"revoke {c.app} from {c.analyst}")


def test_score_grants_follow_the_relation(company: Company) -> None:
    c = company
    assert finished(c.dsn, c.ask(c.app, "pgml.train('Pay', 'regression', 'public.salaries',"
                                 " 'salary')"))[0] == "done"  # fmt: skip
    assert finished(c.dsn, c.ask(c.app, "pgml.writeback('Pay')"))[0] == "done"
    wait_for(lambda: c.may_read_scores(c.app), timeout=60, what="the score table")
    assert not c.may_read_scores(c.analyst)

    run(as_role(c.dsn, c.owner), f"grant select on public.salaries to {c.analyst}")
    c.daemon.control.maintain()  # the daemon runs it every minute
    assert c.may_read_scores(c.analyst)
    run(as_role(c.dsn, c.owner), f"revoke select on public.salaries from {c.analyst}",
        f"revoke select on public.salaries from {c.app}")  # fmt: skip
    run(c.dsn, f"grant select, insert on pgml_scores.pay to {c.analyst}")  # by hand, wrongly
    c.daemon.control.maintain()
    assert not c.may_read_scores(c.analyst)
    assert c.may_read_scores(c.app)  # the project's owner still reads its own scores
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run(as_role(c.dsn, c.analyst), "delete from pgml_scores.pay")

    # pgml.projects only lists the tables: a row changed by hand in the source grants nothing.
    run(
        c.dsn,
        "create table public.open (id int primary key)",
        "grant select on public.open to public",
        f"update pgml.projects set owner = '{c.analyst}', scored_relation = 'public.open'",
    )
    c.daemon.control.maintain()
    assert not c.may_read_scores(c.analyst)
    assert c.may_read_scores(c.app)


def test_a_first_training_that_made_nothing_leaves_the_name_free(company: Company) -> None:
    c = company
    broken = c.ask(c.analyst, "pgml.train('Free', 'regression', 'pgml.nothing_here', 'y')")
    status, error, _ = finished(c.dsn, broken)
    assert status == "failed" and error is not None and "does not exist" in error
    assert c.daemon.control.owners.owner("Free") is None
    taken = c.ask(c.app, "pgml.train('Free', 'regression', 'public.salaries', 'salary')")
    assert finished(c.dsn, taken)[:2] == ("done", None)
    assert c.daemon.control.owners.owner("Free") == c.app
