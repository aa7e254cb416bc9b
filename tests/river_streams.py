"""River's bundled streams (Phishing, TrumpApproval, Bananas) for tests: the first rows of each,
as River yields them and as a matrix in the order of their features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stream:
    name: str
    task: str
    features: list[str]
    rows: list[tuple[Any, Any]]
    """(x, y) as River yields them."""

    @property
    def x(self) -> np.ndarray:
        return np.array([[float(x[f]) for f in self.features] for x, _ in self.rows])

    @property
    def y(self) -> np.ndarray:
        """Regression: the targets; classification: class indices (False 0, True 1)."""
        return np.array([float(y) for _, y in self.rows])


def stream(name: str, rows: int) -> Stream:
    """The first ``rows`` rows of River's data set ``name``."""
    from river import datasets

    makers: dict[str, Any] = {
        "Phishing": datasets.Phishing,
        "TrumpApproval": datasets.TrumpApproval,
        "Bananas": datasets.Bananas,
    }
    dataset = makers[name]()
    taken: list[tuple[Any, Any]] = []
    for x, y in dataset:
        taken.append((x, y))
        if len(taken) == rows:
            break
    task = "regression" if name == "TrumpApproval" else "classification"
    return Stream(name, task, list(taken[0][0]), taken)


def learned_state(obj: Any) -> bytes:
    """``obj`` pickled with the random generators of River's distributions left out.

    River's ``proba`` distributions (the Gaussians of naive Bayes and of the trees' split
    search) each hold a generator seeded from the operating system, used only to draw samples,
    which learning and predicting never do; everything else is pickled as it is.
    """
    import io
    import pickle

    from river.proba.base import Distribution

    class Pickler(pickle.Pickler):
        def reducer_override(self, value: Any) -> Any:
            if not isinstance(value, Distribution):
                return NotImplemented
            reduced = list(value.__reduce_ex__(pickle.HIGHEST_PROTOCOL))
            reduced[2] = {k: v for k, v in reduced[2].items() if k != "_rng"}
            return tuple(reduced)

    out = io.BytesIO()
    Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return out.getvalue()
