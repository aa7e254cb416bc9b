"""Scheduled retraining with an injectable clock, and what a failed retrain leaves behind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mirror.errors import TrainingError
from trainer.datasets import load_dataset
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
