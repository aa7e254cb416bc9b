"""The learner process: rows learned in order, exactly as in this process; no deadlock; a model
that fails is dropped alone."""

from __future__ import annotations

import copy
import os
import signal

import numpy as np
import pytest

from tests.river_streams import stream
from trainer.drift import ErrorDrift
from trainer.learner import Failed, Learned, Learner, LearnerGone, Reply
from trainer.online import RiverEstimator


def test_learns_like_the_model_here_and_reports_each_batch() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 4))
    y = x @ np.array([2.0, -1.0, 0.5, 0.0]) + rng.normal(scale=0.1, size=3000)
    here = RiverEstimator("online_linear", "regression")
    learner = Learner()
    try:
        learner.load(1, copy.deepcopy(here), ErrorDrift("regression"))
        # many small batches without reading a reply: the pipe must not deadlock
        for lo in range(0, 3000, 1):
            learner.learn(1, 10 + lo, x[lo : lo + 1], y[lo : lo + 1])
        replies: list[Reply] = []
        state = learner.state(1, replies.append)
        replies += learner.learned()
    finally:
        learner.close()
    assert state is not None
    there, errors = state
    here.partial_fit(x[:1], y[:1])
    for lo in range(1, 3000):
        here.partial_fit(x[lo : lo + 1], y[lo : lo + 1])
    assert there.rows_learned == here.rows_learned == 3000
    assert errors is not None and errors.rows == 3000  # the detector's state comes back too
    probe = rng.normal(size=(50, 4))
    np.testing.assert_allclose(there.predict(probe), here.predict(probe))
    assert all(isinstance(r, Learned) for r in replies)
    learned = [r for r in replies if isinstance(r, Learned)]
    assert [r.lsn for r in learned] == list(range(10, 3010))
    assert sum(r.rows for r in learned) == 3000
    assert learned[-1].rows_learned == 3000 and learned[-1].progressive == here.progressive


def test_a_model_that_fails_is_dropped_alone() -> None:
    """One model too deep to pickle (without the deep stack), one that cannot learn a third
    class, one that cannot be loaded: each is dropped with the reason; the process lives on
    and the fourth model learns every row."""
    trump = stream("TrumpApproval", 600)
    learner = Learner(deep_pickle=False)
    try:
        learner.load(1, RiverEstimator("online_hoeffding_tree", "regression"), None)
        learner.load(2, RiverEstimator("online_logistic", "classification"), None)
        learner.load(3, _Unloadable(), None)
        learner.load(4, RiverEstimator("online_linear", "regression"), None)
        process = learner._process
        x = trump.x
        learner.learn(1, 1, x, trump.y)
        learner.learn(2, 1, x[:10], np.array([0.0, 1.0] * 5))
        learner.learn(2, 2, x[10:20], np.array([2.0] * 10))
        for lo in range(0, 600, 100):
            learner.learn(4, lo + 1, x[lo : lo + 100], trump.y[lo : lo + 100])
        replies: list[Reply] = []
        assert learner.state(1, replies.append) is None
        kept = learner.state(4, replies.append)
        replies += learner.learned()
        assert learner._process is process and process.is_alive()
    finally:
        learner.close()
    failed = {r.key: r.reason for r in replies if isinstance(r, Failed)}
    assert failed.keys() == {1, 2, 3}
    assert failed[1].startswith("cannot be pickled: RecursionError")
    assert "cannot learn class 2" in failed[2]
    assert failed[3].startswith("cannot be loaded: ")
    assert kept is not None and kept[0].rows_learned == 600


class _Unloadable:
    """Pickles here, fails to unpickle in the learner."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse, ())


def _refuse() -> None:
    raise ValueError("refused")


def test_a_dead_learner_is_reported_and_a_new_one_starts() -> None:
    learner = Learner()
    try:
        learner.load(1, RiverEstimator("online_linear", "regression"), None)
        learner.learn(1, 1, np.zeros((1, 2)), np.zeros(1))
        first = learner._process
        assert first is not None
        learner.state(1, lambda reply: None)
        os.kill(first.pid, signal.SIGKILL)
        first.join(10)
        with pytest.raises(LearnerGone):
            for _ in range(1000):  # the pipe's buffer takes a few before the send fails
                learner.learn(1, 1, np.zeros((1, 2)), np.zeros(1))
                learner.learned()
        assert learner.culprit is None  # killed while it waited for a request
        with pytest.raises(LearnerGone):  # until the caller knows to load its models again
            learner.learn(1, 1, np.zeros((1, 2)), np.zeros(1))
        learner.revive()
        learner.load(1, RiverEstimator("online_linear", "regression"), None)
        assert learner._process is not None and learner._process is not first
        learner.learn(1, 1, np.zeros((1, 2)), np.zeros(1))
        state = learner.state(1, lambda reply: None)
        assert state is not None and state[0].rows_learned == 1
    finally:
        learner.close()


def test_a_death_names_the_model_the_learner_was_busy_with() -> None:
    learner = Learner()
    try:
        learner.load(7, _Fatal(), None)
        with pytest.raises(LearnerGone):
            learner.learn(7, 1, np.zeros((1, 2)), np.zeros(1))
            learner.state(7, lambda reply: None)
        assert learner.culprit == 7
    finally:
        learner.close()


class _Fatal:
    """A model whose learning kills the process (as a crash in C code would)."""

    def partial_fit(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")
