"""The registry in the source: pgml.models, snapshots, deployments and projects, copied by the
running sidecar, read with PostgresML's SQL, each row only by the roles that may see it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mirror.errors import SidecarError
from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, ROWS, finished, one
from tests.source_roles import MakeRole, as_role, make_role, run

__all__ = ["make_role"]  # the fixture, used by name

JOINED = """
select p.name, p.task, m.algorithm, d.strategy, s.relation_name, s.num_rows
from pgml.models m
join pgml.projects p on p.id = m.project_id
join pgml.deployments d on d.model_id = m.id
join pgml.snapshots s on s.id = m.snapshot_id
order by d.id
"""


@dataclass
class Team:
    dsn: str
    daemon: Daemon
    alice: str  # trains and owns the project
    bob: str  # may read the table
    carol: str  # may not

    def done(self, call: str) -> int:
        request_id = one(as_role(self.dsn, self.alice), f"select {call}")
        status, error, model_id = finished(self.dsn, request_id)
        assert (status, error) == ("done", None), call
        assert model_id is not None
        return int(model_id)

    def rows(self, role: str, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(as_role(self.dsn, role), autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def copied(self, role: str, models: int) -> None:
        wait_for(
            lambda: self.rows(role, "select count(*) from pgml.models")[0][0] == models,
            timeout=30, what=f"{models} models in the source's pgml.models for {role}",
        )  # fmt: skip


@pytest.fixture
def team(source_dsn: str, mirror_path: Path, make_role: MakeRole) -> Iterator[Team]:
    alice, bob, carol = make_role("alice"), make_role("bob"), make_role("carol")
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS))
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    run(
        source_dsn,
        f"grant select on public.accounts to {alice}, {bob}",
        f"grant usage on schema pgml to {alice}, {bob}, {carol}",
        f"grant select on pgml.training_requests to {alice}",
    )
    daemon = Daemon(
        DaemonSettings(
            source_dsn=source_dsn, mirror_path=mirror_path, tables=["public.accounts"],
            port=0, metrics_port=0,
        )
    )  # fmt: skip
    daemon.start()
    try:
        yield Team(source_dsn, daemon, alice, bob, carol)
    finally:
        daemon.stop()


def test_postgresml_sql_over_the_registry_in_the_source(team: Team) -> None:
    first = team.done("pgml.train('Churn', 'classification', 'public.accounts', 'churned')")
    second = team.done(
        "pgml.train('Churn', algorithm => 'random_forest', automatic_deploy => false)"
    )
    team.copied(team.alice, 2)

    # The same rows as the sidecar's own registry, column for column.
    registry = team.daemon.trainer.registry
    for model_id in (first, second):
        record = registry.model(model_id)
        assert record is not None
        (algorithm, hyperparams, metrics, snapshot_id), = team.rows(
            team.alice,
            "select algorithm, hyperparams, metrics, snapshot_id from pgml.models"
            f" where id = {model_id}",
        )  # fmt: skip
        assert (algorithm, snapshot_id) == (record.algorithm, record.snapshot_id)
        assert hyperparams == record.hyperparams
        assert metrics == pytest.approx(record.metrics)
        assert metrics["fit_time"] > 0 and metrics["score_time"] > 0
        assert 0 < metrics["inference_time"] < 1  # the median one-row prediction, seconds

    assert team.rows(team.alice, JOINED) == [
        ("Churn", "classification", "linear", "new_score", "public.accounts", ROWS)
    ]

    # A deployment from the source is copied within a second or so.
    team.done(f"pgml.deploy({second})")
    wait_for(
        lambda: team.rows(team.alice, "select model_id, strategy from pgml.deployments"
                          " order by id desc limit 1") == [(second, "specific")],
        timeout=30, what="the deployment in the source",
    )  # fmt: skip
    assert team.rows(team.alice, "select name, algorithm from pgml.deployed_models") == [
        ("Churn", "random_forest")
    ]
    trained = team.rows(team.alice, "select algorithm, deployed from pgml.trained_models"
                        " order by id")  # fmt: skip
    assert trained == [("linear", False), ("random_forest", True)]

    # Analytics of the registry, as on the endpoint: per algorithm, key metric and timings.
    analytics = team.rows(
        team.alice,
        "select algorithm, avg((metrics->>'f1')::float8), avg((metrics->>'fit_time')::float8),"
        " percentile_cont(0.5) within group (order by (metrics->>'inference_time')::float8)"
        " from pgml.models group by algorithm order by algorithm",
    )
    assert [a[0] for a in analytics] == ["linear", "random_forest"]
    assert all(0 <= a[1] <= 1 and a[2] > 0 and a[3] > 0 for a in analytics)


def test_registry_rows_show_only_to_roles_that_may_see_the_project(team: Team) -> None:
    team.done("pgml.train('Churn', 'classification', 'public.accounts', 'churned')")
    team.copied(team.alice, 1)
    team.copied(team.bob, 1)  # may read public.accounts
    for table in ("projects", "models", "snapshots", "deployments", "drift_events",
                  "deployed_models", "trained_models"):  # fmt: skip
        assert team.rows(team.carol, f"select count(*) from pgml.{table}") == [(0,)], table
    # Past the rows' security: a leaky function in the query sees nothing either.
    assert team.rows(team.carol, "select count(*) from pgml.models where"
                     " length(metrics::text) > 0 or true") == [(0,)]  # fmt: skip
    # Granted SELECT on the table later, carol sees the project.
    run(team.dsn, f"grant select on public.accounts to {team.carol}")
    team.copied(team.carol, 1)
    assert team.rows(team.carol, "select count(*) from pgml.snapshots") == [(1,)]


def test_users_may_not_change_the_registry_copy(team: Team) -> None:
    team.done("pgml.train('Churn', 'classification', 'public.accounts', 'churned')")
    team.copied(team.alice, 1)
    for statement in (
        "update pgml.models set algorithm = 'mine'",
        "delete from pgml.deployments",
        "insert into pgml.models (id, project_id, algorithm) values (99, 1, 'x')",
        "update pgml.projects set owner = current_user",
        "truncate pgml.snapshots",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            team.rows(team.alice, statement)
    # Changed by hand by the table owner, the copy is made equal again at the next change.
    run(team.dsn, "update pgml.models set metrics = '{}'::jsonb")
    team.done("pgml.train('Churn', algorithm => 'ridge')")
    team.copied(team.alice, 2)
    wait_for(
        lambda: all(m for (m,) in team.rows(team.alice, "select metrics from pgml.models")),
        timeout=30, what="the hand-made change undone",
    )  # fmt: skip


def test_the_registry_copy_is_never_published(source_dsn: str) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
        conn.execute("create publication everything_in_pgml for table pgml.models")
        with pytest.raises(SidecarError, match=r"pgml\.models"):
            source_schema.add_control_table(conn, "everything_in_pgml")
