"""The learner process: rows learned in order, exactly as in this process; no deadlock."""

from __future__ import annotations

import copy
import os
import signal

import numpy as np
import pytest

from trainer.drift import ErrorDrift
from trainer.learner import Learned, Learner, LearnerGone
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
            learner.learn(1, x[lo : lo + 1], y[lo : lo + 1])
        replies: list[Learned] = []
        there = learner.state(1, replies.append)
        replies += learner.learned()
    finally:
        learner.close()
    here.partial_fit(x[:1], y[:1])
    for lo in range(1, 3000):
        here.partial_fit(x[lo : lo + 1], y[lo : lo + 1])
    assert there.rows_learned == here.rows_learned == 3000
    probe = rng.normal(size=(50, 4))
    np.testing.assert_allclose(there.predict(probe), here.predict(probe))
    assert sum(r.rows for r in replies) == 3000 and all(r.error is None for r in replies)


def test_a_dead_learner_is_reported_and_a_new_one_starts() -> None:
    learner = Learner()
    try:
        learner.load(1, RiverEstimator("online_linear", "regression"), None)
        learner.learn(1, np.zeros((1, 2)), np.zeros(1))
        first = learner._process
        assert first is not None
        learner.state(1, lambda learned: None)
        os.kill(first.pid, signal.SIGKILL)
        first.join(10)
        with pytest.raises(LearnerGone):
            for _ in range(1000):  # the pipe's buffer takes a few before the send fails
                learner.learn(1, np.zeros((1, 2)), np.zeros(1))
                learner.learned()
        with pytest.raises(LearnerGone):  # until the caller knows to load its models again
            learner.learn(1, np.zeros((1, 2)), np.zeros(1))
        learner.revive()
        learner.load(1, RiverEstimator("online_linear", "regression"), None)
        assert learner._process is not None and learner._process is not first
        learner.learn(1, np.zeros((1, 2)), np.zeros(1))
        assert learner.state(1, lambda learned: None).rows_learned == 1
    finally:
        learner.close()
