"""The online algorithms by name: each one's River class per task, and River values from JSON.

River is imported only when a River class is looked up: when a model is built or its
hyperparameters are checked.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from mirror.errors import TrainingError

# Each online algorithm's River class, by task.
_RIVER: dict[str, dict[str, str]] = {
    "online_linear": {"regression": "river.linear_model.LinearRegression"},
    "online_logistic": {"classification": "river.linear_model.LogisticRegression"},
    "online_hoeffding_tree": {
        "regression": "river.tree.HoeffdingTreeRegressor",
        "classification": "river.tree.HoeffdingTreeClassifier",
    },
    "online_hoeffding_adaptive_tree": {
        "regression": "river.tree.HoeffdingAdaptiveTreeRegressor",
        "classification": "river.tree.HoeffdingAdaptiveTreeClassifier",
    },
    "online_adaptive_random_forest": {
        "regression": "river.forest.ARFRegressor",
        "classification": "river.forest.ARFClassifier",
    },
    "online_naive_bayes": {"classification": "river.naive_bayes.GaussianNB"},
}

ONLINE: dict[str, tuple[str, ...]] = {name: tuple(tasks) for name, tasks in _RIVER.items()}
"""Every online algorithm and the tasks it supports."""

# Hyperparameters whose River value is an object: JSON names its class in this module, as
# "ADWIN" or {"ADWIN": {"delta": 0.001}}.
_OBJECT_MODULES = {
    "optimizer": "river.optim",
    "loss": "river.optim.losses",
    "initializer": "river.optim.initializers",
    "intercept_lr": "river.optim.schedulers",
    "drift_detector": "river.drift",
    "warning_detector": "river.drift",
    "splitter": "river.tree.splitter",
    "leaf_model": "river.linear_model",
    "metric": "river.metrics",
}


def hyperparameter_names(algorithm: str, task: str) -> list[str]:
    """The hyperparameters the River estimator of ``algorithm`` on ``task`` accepts (sorted)."""
    return sorted(constructor_names(river_path(algorithm, task)))


def river_path(algorithm: str, task: str) -> str:
    tasks = _RIVER.get(algorithm)
    if tasks is None:
        raise TrainingError(
            f'unknown online algorithm "{algorithm}": choose one of {", ".join(ONLINE)}',
            sqlstate="22023",
        )
    if task not in tasks:
        raise TrainingError(
            f'algorithm "{algorithm}" does not support {task}; it supports {" and ".join(tasks)}',
            sqlstate="22023",
        )
    return tasks[task]


@functools.cache
def river_class(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@functools.cache
def constructor_names(path: str) -> frozenset[str]:
    return frozenset(inspect.signature(river_class(path)).parameters)


def river_value(name: str, value: Any) -> Any:
    """A hyperparameter's River value: an object built from its JSON name, or ``value``."""
    module_name = _OBJECT_MODULES.get(name)
    if module_name is None or not isinstance(value, str | Mapping):
        return value
    module = importlib.import_module(module_name)
    choices = sorted(
        n
        for n in getattr(module, "__all__", dir(module))
        if inspect.isclass(getattr(module, n, None)) and not inspect.isabstract(getattr(module, n))
    )
    example = f'"{choices[0]}" or {{"{choices[0]}": {{...}}}}' if choices else '"Name"'
    pairs: list[tuple[Any, Any]] = [(value, {})] if isinstance(value, str) else [*value.items()]
    class_name, args = pairs[0] if len(pairs) == 1 else ("", {})
    if class_name not in choices or not isinstance(args, Mapping):
        raise TrainingError(
            f"hyperparameter {name} takes a class of {module_name} by name, e.g. {example};"
            f" got {value!r}. Choose one of {', '.join(choices)}",
            sqlstate="22023",
        )
    try:
        return getattr(module, class_name)(**args)
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"hyperparameter {name}: {class_name}({args}) failed: {exc}", sqlstate="22023"
        ) from None
