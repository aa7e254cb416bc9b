"""pgml.deploy in the source, and pgml.train(project) reusing the last training's settings:
real source, real roles, the daemon running."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.replicator.mirror_check import execute
from tests.sidecar.test_daemon import CREATE, FILL, ROWS, finished, one
from tests.source_roles import MakeRole, as_role, make_role, run

__all__ = ["make_role"]  # the fixture, used by name

PREPROCESS = '{"plan": {"encode": "ordinal"}, "age": {"scale": "min_max"}}'


@dataclass
class Team:
    dsn: str
    daemon: Daemon
    alice: str
    """Trains and owns the project."""
    bob: str
    """May read the table, owns no project."""

    def ask(self, role: str, call: str) -> int:
        request_id = one(as_role(self.dsn, role), f"select {call}")
        assert isinstance(request_id, int)
        return request_id

    def done(self, role: str, call: str) -> int:
        """Ask, wait; the model id of a request that succeeded."""
        status, error, model_id = finished(self.dsn, self.ask(role, call))
        assert (status, error) == ("done", None), call
        assert model_id is not None
        return model_id

    def deployed(self) -> int:
        registry = self.daemon.trainer.registry
        project = registry.project("Churn")
        assert project is not None
        model = registry.deployed(project.id)
        assert model is not None
        return model.id


@pytest.fixture
def team(source_dsn: str, mirror_path: Path, make_role: MakeRole) -> Iterator[Team]:
    alice, bob = make_role("alice"), make_role("bob")
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS))
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    run(
        source_dsn,
        f"grant select on public.accounts to {alice}, {bob}",
        f"grant usage on schema pgml to {alice}, {bob}",
        f"grant select on pgml.training_requests to {alice}, {bob}",
    )
    daemon = Daemon(
        DaemonSettings(
            source_dsn=source_dsn,
            mirror_path=mirror_path,
            tables=["public.accounts"],
            port=0,
            metrics_port=0,
        )
    )
    daemon.start()
    try:
        yield Team(source_dsn, daemon, alice, bob)
    finally:
        daemon.stop()


def test_a_retrain_without_a_relation_reuses_the_snapshot_and_its_preprocess(team: Team) -> None:
    first = team.done(
        team.alice,
        "pgml.train('Churn', 'classification', 'public.accounts', 'churned', 'linear',"
        f" hyperparams => '{{\"max_iter\": 300}}', preprocess => '{PREPROCESS}')",
    )
    second = team.done(team.alice, "pgml.train('Churn', algorithm => 'random_forest')")
    registry = team.daemon.trainer.registry
    one_, two = registry.model(first), registry.model(second)
    assert one_ is not None and two is not None
    assert two.snapshot_id == one_.snapshot_id
    assert (
        two.preprocess
        == one_.preprocess
        == {
            "plan": {"encode": "ordinal"},
            "age": {"scale": "min_max"},
        }
    )
    assert two.notes["columns"]["plan"]["encode"] == "ordinal"
    assert "max_iter" not in two.hyperparams  # hyperparameters are the call's, as PostgresML's

    # preprocess given again wins over the last one
    third = team.done(
        team.alice, 'pgml.train(\'Churn\', preprocess => \'{"plan": {"encode": "one_hot"}}\')'
    )
    record = registry.model(third)
    assert record is not None and record.preprocess == {"plan": {"encode": "one_hot"}}
    # and it is what the next retrain reuses
    fourth = registry.model(team.done(team.alice, "pgml.train('Churn')"))
    assert fourth is not None and fourth.preprocess == {"plan": {"encode": "one_hot"}}


def test_deploy_from_the_source_by_strategy_and_by_model_id(team: Team) -> None:
    first = team.done(
        team.alice, "pgml.train('Churn', 'classification', 'public.accounts', 'churned')"
    )
    second = team.done(
        team.alice, "pgml.train('Churn', algorithm => 'random_forest', automatic_deploy => false)"
    )
    assert team.deployed() == first

    assert team.done(team.alice, "pgml.deploy('Churn', 'most_recent')") == second
    assert team.deployed() == second
    assert team.done(team.alice, "pgml.deploy('Churn', 'rollback')") == first
    assert team.done(team.alice, "pgml.deploy('Churn', 'most_recent', 'linear')") == first
    assert team.done(team.alice, f"pgml.deploy({second})") == second
    assert team.deployed() == second
    again = team.ask(team.alice, f"pgml.deploy(model_id => {second})")
    assert finished(team.dsn, again) == ("done", None, second)
    notice = one(team.dsn, "select notice from pgml.training_requests where id = %s", again)
    assert notice == f"model {second} was deployed already"
    rows = one(
        team.dsn,
        "select project_name, strategy from pgml.training_requests where id = %s",
        again,
    )
    assert rows == (None, "specific")


def test_deploy_is_refused_to_who_does_not_own_the_project_and_for_bad_input(
    team: Team,
) -> None:
    model = team.done(
        team.alice, "pgml.train('Churn', 'classification', 'public.accounts', 'churned')"
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner of project"):
        team.ask(team.bob, "pgml.deploy('Churn', 'best_score')")
    # by id, the source cannot tell the project: the sidecar refuses it in the row
    status, error, _ = finished(team.dsn, team.ask(team.bob, f"pgml.deploy({model})"))
    assert status == "failed" and error is not None
    assert error.startswith("must be owner of project Churn")

    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown strategy 'best'"):
        team.ask(team.alice, "pgml.deploy('Churn', 'best')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="needs a project name"):
        team.ask(team.alice, "pgml.deploy(' ', 'best_score')")
    status, error, _ = finished(team.dsn, team.ask(team.alice, "pgml.deploy(999)"))
    assert (status, error) == ("failed", "model 999 does not exist")
    status, error, _ = finished(team.dsn, team.ask(team.alice, "pgml.deploy('Nope', 'rollback')"))
    assert status == "failed" and error is not None and "Nope" in error
    # a request of the kind deploy needs a strategy, and a project or a model
    with (
        psycopg.connect(team.dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.CheckViolation),
    ):
        conn.execute(
            "insert into pgml.training_requests (kind, requested_by, strategy)"
            " values ('deploy', 'x', 'best_score')"
        )
