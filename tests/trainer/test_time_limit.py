"""Training time limits: a fit past its limit is killed, nothing of it stays, nobody else waits.

Each test has a worker of its own (real processes from the fork server), so the processes it
starts and kills can be followed in /proc.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.errors import TrainingError
from mirror.store import Mirror
from predictor.time_settings import TRAINING_TIME_LIMIT
from sidecar.config import TRAINING_TIME_LIMIT as CONFIGURED_LIMIT
from tests.replicator.mirror_check import wait_for
from trainer.datasets import load_dataset
from trainer.drift import DriftEvent
from trainer.retraining import Retrainer
from trainer.train import Trainer, TrainResult, artifact_home, shown_duration
from trainer.worker import FitWorker

GRID: dict[str, Any] = {
    "task": "classification",
    "relation": "pgml.iris",
    "y": "target",
    "algorithm": "random_forest",
    "search": "grid",
    "search_params": {"n_estimators": [1000, 2000, 4000], "max_depth": [None, 3, 6]},
}
"""A grid search that takes minutes on two cores: 9 candidates of thousands of trees, 5 folds."""
SMALL: dict[str, Any] = {"task": "classification", "relation": "pgml.iris", "y": "target"}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def leftovers(trainer: Trainer) -> set[str]:
    """Snapshot and model files no registry row names."""
    files = {
        str(p.relative_to(trainer.home))
        for p in trainer.home.rglob("*")
        if p.is_file() and p.suffix in (".parquet", ".pickle")
    }
    return files - trainer.registry.artifact_paths()


class Training(threading.Thread):
    """``trainer.train(project, **kwargs)`` in a thread: its result or error, and when."""

    def __init__(self, trainer: Trainer, project: str, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.trainer, self.project, self.kwargs = trainer, project, kwargs
        self.result: TrainResult | None = None
        self.error: TrainingError | None = None
        self.started = self.ended = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        try:
            self.result = self.trainer.train(self.project, **self.kwargs)
        except TrainingError as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()


@pytest.fixture
def own_worker(mirror: Mirror) -> Iterator[tuple[Trainer, FitWorker, set[int]]]:
    """A trainer with a worker of its own, and every worker pid seen (all gone at the end)."""
    worker = FitWorker()
    trainer = Trainer(mirror.con, artifact_home(mirror.path), worker=worker)
    load_dataset(trainer.con, "iris")
    seen: set[int] = set()
    try:
        yield trainer, worker, seen
    finally:
        seen |= worker.pids()
        trainer.close()
        worker.close()
    wait_for(lambda: not any(alive(pid) for pid in seen), timeout=5, what="the workers to end")


def fitting(trainer: Trainer, worker: FitWorker) -> bool:
    """Whether a training has a new snapshot and a worker process: it fits (or is about to)."""
    return bool(leftovers(trainer)) and bool(worker.pids())


def test_a_grid_search_past_its_limit_is_killed_while_another_project_trains(
    own_worker: tuple[Trainer, FitWorker, set[int]],
) -> None:
    trainer, worker, seen = own_worker
    started = time.monotonic()
    trainer.train("warm", **SMALL)  # the first process is up
    # The small training below must end well within the search's limit, on a busy machine too.
    limit = max(2, math.ceil(4 * (time.monotonic() - started)))
    long = Training(trainer, "Grid", **GRID, time_limit=limit)
    long.start()
    wait_for(lambda: fitting(trainer, worker), timeout=30, what="the grid search to fit")
    busy = worker.pids()
    seen |= busy

    small = trainer.train("Small", **SMALL)  # another project, beside the search
    assert small.model_id > 0
    assert long.is_alive(), "the small training waited for the search to end"
    assert small.timings["worker_pid"] not in busy

    long.join(timeout=60)
    assert not long.is_alive()
    assert long.result is None and long.error is not None
    assert long.error.sqlstate == "57014"
    assert str(long.error) == (
        f"canceling training of project 'Grid': it ran past its time limit of {limit}s; raise"
        " pgml.training_time_limit or train on fewer rows / a smaller search"
    )
    assert limit <= long.ended - long.started < limit + 6.0, long.ended - long.started
    killed = busy - worker.pids()
    assert killed and not any(alive(pid) for pid in killed)
    assert len(worker.pids()) == 2  # a new process took the killed one's place at once
    seen |= worker.pids()
    # Nothing of it stays: no project, snapshot, model row or file.
    assert trainer.registry.project("Grid") is None
    assert leftovers(trainer) == set()

    again = trainer.train("Grid", **SMALL)  # the next training works, in a new process
    assert again.model_id > 0 and again.timings["worker_pid"] not in killed


def test_fits_waiting_for_the_killed_process_run_in_its_successor(mirror: Mirror) -> None:
    worker = FitWorker(processes=1)
    trainer = Trainer(mirror.con, artifact_home(mirror.path), worker=worker)
    try:
        load_dataset(trainer.con, "iris")
        long = Training(trainer, "Grid", **GRID, time_limit=2)
        long.start()
        wait_for(lambda: fitting(trainer, worker), timeout=30, what="the grid search to fit")
        busy = worker.pids()
        waiting = [Training(trainer, f"Queued {n}", **SMALL) for n in range(2)]
        for training in waiting:
            training.start()
        long.join(timeout=60)
        for training in waiting:
            training.join(timeout=60)
        assert long.error is not None and long.error.sqlstate == "57014"
        for training in waiting:
            assert training.error is None and training.result is not None, training.error
            assert training.result.timings["worker_pid"] not in busy
            assert training.ended > long.started + 2.0  # it waited, behind the search
            assert training.ended < long.ended + 30.0  # until its limit, no longer
        assert not any(alive(pid) for pid in busy)
        assert leftovers(trainer) == set()
    finally:
        pids = worker.pids()
        trainer.close()
        worker.close()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5, what="the worker to end")


def test_a_request_may_lower_the_limit_never_raise_it(mirror: Mirror) -> None:
    trainer = Trainer(mirror.con, artifact_home(mirror.path), worker=FitWorker(), time_limit=60)
    try:
        assert trainer.effective_time_limit(None) == 60
        assert trainer.effective_time_limit(0) == 60  # "no limit" is the trainer's
        assert trainer.effective_time_limit(10) == 10
        assert trainer.effective_time_limit(3600) == 60
        trainer.time_limit = 0  # the trainer has none: a request's own holds
        assert trainer.effective_time_limit(None) == 0
        assert trainer.effective_time_limit(10) == 10
        for bad in (-1, float("nan")):
            with pytest.raises(TrainingError, match="0 or more") as refused:
                trainer.effective_time_limit(bad)
            assert refused.value.sqlstate == "22023"
    finally:
        trainer.worker.close()
        trainer.close()
    with pytest.raises(TrainingError, match="0 or more"):
        Trainer(mirror.con, artifact_home(mirror.path), time_limit=-5)


@pytest.mark.parametrize("seconds", [1, 2, 59, 60, 90, 600, 3600, 5400, 86_400, 90_000])
def test_the_limit_is_shown_as_show_shows_it(seconds: int) -> None:
    assert shown_duration(seconds) == TRAINING_TIME_LIMIT.show(seconds)
    assert shown_duration(seconds) == CONFIGURED_LIMIT.show(seconds)
    assert TRAINING_TIME_LIMIT.parse(shown_duration(seconds)) == seconds


def test_a_drift_retrain_past_the_limit_is_not_asked_again_for_that_model(
    own_worker: tuple[Trainer, FitWorker, set[int]], caplog: pytest.LogCaptureFixture
) -> None:
    trainer, worker, seen = own_worker
    con = trainer.con
    con.execute("create schema if not exists public")
    con.execute("create table public.growing as select * from pgml.iris")
    first = trainer.train(
        "Growing", task="classification", relation="public.growing", y="target",
        algorithm="random_forest", hyperparams={"n_estimators": 300},
    )  # fmt: skip
    trainer.set_retrain_on_drift("Growing")
    # The table grew a thousandfold: the same forest on it takes far longer than a second.
    con.execute("insert into public.growing select i.* from pgml.iris i, range(1000)")
    trainer.time_limit = 1
    retrainer = Retrainer(trainer)
    event = DriftEvent("adwin", None, 0.5, 0.002, 1000)
    retrainer.drifted("Growing", first.model_id, event)
    retrainer.drifted("Growing", first.model_id, event)  # drift goes on asking
    assert retrainer.requests.qsize() == 1

    stop = threading.Event()
    running = threading.Thread(target=retrainer.run, args=(stop,), daemon=True)
    caplog.set_level(logging.WARNING, logger="pgml_sidecar")
    running.start()
    try:
        wait_for(lambda: len(retrainer.results) == 1, timeout=60, what="the retrain")
        assert retrainer.results == [("Growing", f"drift (adwin) of model {first.model_id}", None)]
        assert "it ran past its time limit of 1s; raise the sidecar's training_time_limit" in (
            caplog.text
        )
        seen |= worker.pids()
    finally:
        stop.set()
        running.join(timeout=60)
    retrainer.drifted("Growing", first.model_id, event)  # the same model: not again
    assert retrainer.requests.qsize() == 0
    retrainer.drifted("Growing", first.model_id + 1, event)  # another model: again
    assert retrainer.requests.qsize() == 1
    assert leftovers(trainer) == set()
    project = trainer.registry.project("Growing")
    assert project is not None and len(trainer.registry.models(project.id)) == 1


def test_closing_the_worker_fails_the_running_and_the_waiting_fits_at_once(
    mirror: Mirror,
) -> None:
    worker = FitWorker(processes=1)
    trainer = Trainer(mirror.con, artifact_home(mirror.path), worker=worker)
    try:
        load_dataset(trainer.con, "iris")
        long = Training(trainer, "Grid", **GRID)  # the trainer's hour
        long.start()
        wait_for(lambda: fitting(trainer, worker), timeout=30, what="the grid search to fit")
        busy = worker.pids()
        waiting = Training(trainer, "Queued", **SMALL)
        waiting.start()
        wait_for(lambda: len(leftovers(trainer)) == 2, timeout=30, what="the second snapshot")
        closed = time.monotonic()
        worker.close()
        long.join(timeout=10)
        waiting.join(timeout=10)
        assert time.monotonic() - closed < 10
        for training in (long, waiting):
            assert training.error is not None and training.error.sqlstate == "57P01"
        assert not any(alive(pid) for pid in busy)
        assert worker.pids() == set()
        assert leftovers(trainer) == set()
        with pytest.raises(TrainingError, match="stopping") as refused:
            trainer.train("After", **SMALL)
        assert refused.value.sqlstate == "57P01"
    finally:
        trainer.close()
        worker.close()
