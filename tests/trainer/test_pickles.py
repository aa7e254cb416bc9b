"""Models too deep for pickle's default recursion are pickled with a deep stack."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from tests.river_streams import stream
from trainer import pickles
from trainer.online import RiverEstimator


def deep_tree() -> RiverEstimator:
    """River's Hoeffding tree regressor after 600 rows of TrumpApproval, whose ever-increasing
    date grows its split search too deep for pickle at Python's default recursion limit."""
    trump = stream("TrumpApproval", 600)
    model = RiverEstimator("online_hoeffding_tree", "regression")
    model.fit(trump.x, trump.y)
    return model


def test_a_deep_tree_is_pickled_on_a_deep_stack() -> None:
    model = deep_tree()
    assert sys.getrecursionlimit() == 1000
    with pytest.raises(RecursionError):
        pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(RecursionError):
        pickles.dumps(model, deep=False)
    data = pickles.dumps(model)
    assert sys.getrecursionlimit() == 1000  # raised for that call only
    again = pickle.loads(data)  # unpickling needs no deep stack
    probe = stream("TrumpApproval", 650).x[600:]
    np.testing.assert_array_equal(again.predict(probe), model.predict(probe))
    assert pickles.dumps(again) == data
