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
    """Everything ``obj`` holds, as bytes: equal for two models exactly when every value in
    them is equal, floats to the last bit, containers in the same order.

    Unlike a pickle, this does not depend on which equal strings happen to be one object (a
    model unpickled and learned in another process shares them differently), and it leaves
    out the random generators of River's ``proba`` distributions (the Gaussians of naive Bayes
    and of the trees' split search): each is seeded from the operating system and used only
    to draw samples, which learning and predicting never do.
    """
    import pickle

    from trainer.pickles import on_deep_stack

    def dump(value: Any) -> bytes:
        return pickle.dumps(_canonical(value, {}), protocol=pickle.HIGHEST_PROTOCOL)

    return on_deep_stack(dump, obj)  # a deep tree is deep here too


def _canonical(value: Any, seen: dict[int, tuple[int, Any]]) -> Any:
    import collections
    import random
    import types

    from river.proba.base import Distribution

    if value is None or isinstance(value, bool | int | str | bytes):
        return value
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, np.generic):
        return _canonical(value.item(), seen)
    if isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):
        return ("callable", getattr(value, "__module__", ""), value.__qualname__)
    if id(value) in seen:
        return ("same as", seen[id(value)][0])  # shared: the same object again
    seen[id(value)] = (len(seen), value)  # kept alive: no other object gets its id meanwhile
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return (kind, value.shape, _canonical(value.tolist(), seen))
        return (kind, str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, random.Random):
        return (kind, value.getstate())
    if isinstance(value, dict):
        extra = _canonical(getattr(value, "default_factory", None), seen)
        items = [(_canonical(k, seen), _canonical(v, seen)) for k, v in value.items()]
        return (kind, extra, items)
    if isinstance(value, list | tuple | collections.deque):
        return (kind, [_canonical(v, seen) for v in value])
    if isinstance(value, set | frozenset):
        return (kind, sorted(repr(_canonical(v, {})) for v in value))
    attributes = dict(getattr(value, "__dict__", {}))
    for owner in type(value).__mro__:
        for name in getattr(owner, "__slots__", ()):
            if hasattr(value, name):
                attributes[name] = getattr(value, name)
    if isinstance(value, Distribution):
        attributes.pop("_rng", None)
    if not attributes and hasattr(value, "__reduce_ex__"):
        reduced = value.__reduce_ex__(4)
        if isinstance(reduced, tuple):
            return (kind, _canonical(list(reduced[1:3]), seen))
    return (kind, [(name, _canonical(v, seen)) for name, v in sorted(attributes.items())])
