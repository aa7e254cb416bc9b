"""Prediction input as Python values (pgml.predict's arguments) made into Arrow arrays."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from mirror.errors import TrainingError
from trainer.column_kinds import FeatureColumn


def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def python_array(column: FeatureColumn, values: list[Any]) -> pa.Array:
    """Python values given for one column as an Arrow array the column's kind can read."""
    if column.kind == "array":
        return pa.array([_element_list(column, v) for v in values], pa.list_(pa.float64()))
    present = [v for v in values if v is not None]
    if column.kind == "text":
        if all(isinstance(v, str) for v in present):
            return pa.array(values, pa.large_string())
    elif all(isinstance(v, bool) for v in present) and column.kind == "boolean":
        return pa.array(values, pa.bool_())
    elif all(isinstance(v, int | float | Decimal | np.number) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    elif all(isinstance(v, str) for v in present):
        return pa.array(values, pa.large_string())
    try:
        return pa.array(values)  # dates, times, datetimes, timedeltas
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], pa.large_string())


def _element_list(column: FeatureColumn, value: Any) -> list[float | None] | None:
    """An array column's value as a list of floats: a list, Postgres '{1,2}' or JSON '[1,2]'."""
    if value is None:
        return None
    if isinstance(value, str):
        inner = value.strip().removeprefix("{").removesuffix("}").removeprefix("[")
        inner = inner.removesuffix("]").strip()
        value = [] if not inner else [part.strip().strip('"') for part in inner.split(",")]
    elif not is_list(value):
        value = [value]
    try:
        return [
            None if e is None or (isinstance(e, str) and e.upper() == "NULL") else float(e)
            for e in value
        ]
    except (TypeError, ValueError):
        raise TrainingError(
            f"column {column.name!r} takes an array of numbers, not {value!r}", sqlstate="22023"
        ) from None


def flat_names(columns: Sequence[FeatureColumn]) -> list[str]:
    names = []
    for c in columns:
        if c.kind != "array":
            names.append(c.name)
        elif c.width == 1:
            names.append(f"{c.name}[0]")
        else:
            names.append(f"{c.name}[0]..{c.name}[{c.width - 1}]")
    return names
