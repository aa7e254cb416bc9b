"""Scheduled retraining with an injectable clock, and what a failed retrain leaves behind."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from mirror.errors import TrainingError
from tests.replicator.mirror_check import wait_for
from trainer.datasets import load_dataset
from trainer.drift import DriftEvent
from trainer.retraining import Retrainer
from trainer.schedule import Schedule
from trainer.train import Trainer


def test_schedule_fires_at_its_times_and_once_after_downtime(trainer: Trainer) -> None:
    load_dataset(trainer.con, "iris")
    trainer.train("iris", task="classification", relation="pgml.iris", y="target")
    now = [datetime.now(UTC)]
    retrainer = Retrainer(trainer, clock=lambda: now[0])
    trainer.set_schedule("iris", "0 3 * * *")
    project = trainer.registry.project("iris")
    assert project is not None
    models = lambda: len(trainer.registry.models(project.id))  # noqa: E731
    first_run = Schedule("0 3 * * *").next_after(now[0])

    now[0] = first_run - timedelta(seconds=1)
    assert retrainer.tick() == [] and models() == 1
    now[0] = first_run + timedelta(seconds=1)
    assert retrainer.tick() == ["iris"] and models() == 2
    assert retrainer.tick() == [] and models() == 2  # not twice for one run time
    now[0] = first_run + timedelta(days=3, hours=1)  # three runs missed while down
    assert retrainer.tick() == ["iris"] and models() == 3
    assert retrainer.tick() == []
    reason = [r[1] for r in retrainer.results]
    assert reason == ["schedule", "schedule"]
    trainer.set_schedule("iris", None)
    now[0] += timedelta(days=2)
    assert retrainer.tick() == []


def test_failed_retrain_keeps_the_deployed_model(trainer: Trainer) -> None:
    load_dataset(trainer.con, "iris")
    first = trainer.train("iris", task="classification", relation="pgml.iris", y="target")
    trainer.con.execute("drop table pgml.iris")  # the relation is gone: retraining fails
    retrainer = Retrainer(trainer)
    assert retrainer.retrain("iris", "drift (ddm)") is None
    assert retrainer.results == [("iris", "drift (ddm)", None)]
    record, _ = trainer.deployed_model("iris")
    assert record.id == first.model_id


def test_bad_schedules_are_refused(trainer: Trainer) -> None:
    load_dataset(trainer.con, "iris")
    trainer.train("iris", task="classification", relation="pgml.iris", y="target")
    with pytest.raises(TrainingError, match="0 3"):
        trainer.set_schedule("iris", "every day")
    with pytest.raises(TrainingError, match="does not exist"):
        trainer.set_schedule("nope", "0 3 * * *")


def test_a_retrain_on_drift_is_judged_on_recent_rows(trainer: Trainer) -> None:
    """The challenger waits for rows changed after its snapshot; it serves only if it scores
    higher on them than the deployed model, and both scores are recorded."""
    load_dataset(trainer.con, "iris")
    first = trainer.train("iris", task="classification", relation="pgml.iris", y="target")
    trainer.set_retrain_on_drift("iris", True)
    rows = trainer.con.sql("select * from pgml.iris").to_arrow_table()
    offered: list[pa.Table | None] = [None]
    asked: list[int] = []

    def recent(project: str, after: int) -> pa.Table | None:
        asked.append(after)
        return offered[0]

    retrainer = Retrainer(trainer, recent_rows=recent, challenge_rows=100)
    retrainer.drifted("iris", first.model_id, DriftEvent("adwin", None, 0.4, 0.002, 90, lsn=7))
    stop = threading.Event()
    thread = threading.Thread(target=retrainer.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: "iris" in retrainer.challengers, what="the challenger")
        challenger = retrainer.challengers["iris"].result
        assert not challenger.deployed and retrainer.results == []
        wait_for(lambda: len(asked) >= 2, what="the rows to be asked for again")
        assert retrainer.results == []  # no rows yet: it waits
        offered[0] = rows  # the same model on the same rows: no better
        wait_for(lambda: bool(retrainer.results), what="the judgement")
    finally:
        stop.set()
        thread.join(timeout=30)
    ((project, reason, result),) = retrainer.results
    assert project == "iris" and reason == f"drift (adwin) of model {first.model_id}"
    assert result is not None and result.model_id == challenger.model_id and not result.deployed
    found = trainer.registry.project("iris")
    assert found is not None
    (challenge,) = trainer.registry.challenges(found.id)
    assert (challenge.champion_id, challenge.challenger_id) == (first.model_id, result.model_id)
    assert challenge.num_rows == rows.num_rows and not challenge.deployed
    assert challenge.champion_metrics["f1"] == challenge.challenger_metrics["f1"] > 0.9
    assert trainer.deployed_model("iris")[0].id == first.model_id
    # asked again on drift once judged; with no rows at all by the deadline, none serves
    offered[0] = None
    retrainer.drifted("iris", first.model_id, DriftEvent("adwin", None, 0.4, 0.002, 95))
    project, reason = retrainer.requests.get_nowait()
    retrainer.retrain(project, reason, challenge=True)
    assert retrainer.judge() == []
    assert retrainer.judge(now=time.monotonic() + retrainer.challenge_seconds) == ["iris"]
    assert not retrainer.results[-1][2].deployed  # type: ignore[union-attr]
    assert trainer.deployed_model("iris")[0].id == first.model_id


def test_a_challenger_waiting_at_a_restart_goes_on_waiting(trainer: Trainer) -> None:
    """A challenger retrained on drift and not judged yet is kept in the registry: the next
    retrainer (the sidecar restarted) judges it once its rows come, counting its wait from when
    it was trained; drift does not retrain the project again meanwhile."""
    load_dataset(trainer.con, "iris")
    first = trainer.train("iris", task="classification", relation="pgml.iris", y="target")
    trainer.set_retrain_on_drift("iris", True)
    rows = trainer.con.sql("select * from pgml.iris").to_arrow_table()
    offered: list[pa.Table | None] = [None]

    def recent(project: str, after: int) -> pa.Table | None:
        return offered[0]

    before = Retrainer(trainer, recent_rows=recent, challenge_rows=100)
    before.drifted("iris", first.model_id, DriftEvent("adwin", None, 0.4, 0.002, 90, lsn=7))
    before.retrain(*before.requests.get_nowait(), challenge=True)
    challenger = before.challengers["iris"].result
    assert before.judge() == []  # no recent rows yet; then the sidecar stops
    found = trainer.registry.project("iris")
    assert found is not None
    (pending,) = trainer.registry.pending_challenges()
    assert (pending.project_id, pending.challenger_id) == (found.id, challenger.model_id)

    trained = pending.trained_at
    after = Retrainer(trainer, recent_rows=recent, challenge_rows=100,
                      clock=lambda: trained + timedelta(seconds=600))  # fmt: skip
    assert after.resume_challengers() == ["iris"] and after.resume_challengers() == []
    resumed = after.challengers["iris"]
    assert resumed.result.model_id == challenger.model_id
    assert resumed.reason == f"drift (adwin) of model {first.model_id}"
    assert 600 <= time.monotonic() - resumed.since < 660  # its wait goes on
    after.drifted("iris", first.model_id, DriftEvent("adwin", None, 0.5, 0.002, 99))
    assert after.requests.empty()  # judged first, retrained on drift later
    assert after.judge() == []
    offered[0] = rows
    assert after.judge() == ["iris"]
    assert trainer.registry.pending_challenges() == []
    (challenge,) = trainer.registry.challenges(found.id)
    assert (challenge.champion_id, challenge.challenger_id) == (first.model_id, challenger.model_id)
    assert challenge.num_rows == rows.num_rows
    # judged, it is not taken back again
    again = Retrainer(trainer, recent_rows=recent)
    assert again.resume_challengers() == [] and again.challengers == {}
    # and past the wait, a resumed challenger is judged on what there is
    before.retrain("iris", "drift (adwin) of model 1", challenge=True)
    late = Retrainer(trainer, recent_rows=lambda p, a: None,
                     clock=lambda: datetime.now(UTC) + timedelta(hours=2))  # fmt: skip
    assert late.resume_challengers() == ["iris"]
    assert late.judge() == ["iris"] and trainer.registry.pending_challenges() == []
