"""Feature columns and their kinds: how the values of each Arrow type are read.

A column's kind (number, boolean, text or array) says how it becomes features (see
``trainer.preprocess``); its source, the kind or one of the temporal types (date, timestamp,
time, duration, interval), says how its raw values are read as numbers.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import pyarrow as pa

KINDS: tuple[str, ...] = ("number", "boolean", "text", "array")
TEMPORAL = ("date", "timestamp", "time", "duration", "interval")


@dataclass(frozen=True, slots=True)
class FeatureColumn:
    """A column of the training table and how its values become features."""

    name: str
    kind: str  # "number" | "boolean" | "text" | "array"
    width: int = 1  # for arrays: elements per row (fixed at fit time)


def feature_columns(schema: pa.Schema, *, exclude: Collection[str] = ()) -> list[FeatureColumn]:
    """The feature columns of a table: every column not in ``exclude``, in table order."""
    skip = set(exclude)
    return [FeatureColumn(f.name, kind(source(f.type))) for f in schema if f.name not in skip]


def source(kind: pa.DataType) -> str:
    """How values of an Arrow type are read: a feature kind, or one of TEMPORAL."""
    t = pa.types
    if isinstance(kind, pa.UuidType):
        return "text"
    if isinstance(kind, pa.ExtensionType):
        return source(kind.storage_type)
    if t.is_dictionary(kind):
        return source(kind.value_type)
    if t.is_integer(kind) or t.is_floating(kind) or t.is_decimal(kind) or t.is_null(kind):
        return "number"
    if t.is_boolean(kind):
        return "boolean"
    if t.is_date(kind):
        return "date"
    if t.is_timestamp(kind):
        return "timestamp"
    if t.is_time(kind):
        return "time"
    if t.is_duration(kind):
        return "duration"
    if kind == pa.month_day_nano_interval() or kind == pa.binary(12):
        return "interval"
    if is_list_type(kind) and source(kind.value_type) in ("number", "boolean"):
        return "array"
    return "text"


def kind(source: str) -> str:
    return "number" if source in TEMPORAL else source


def is_list_type(kind: pa.DataType) -> bool:
    t = pa.types
    return bool(
        t.is_list(kind)
        or t.is_large_list(kind)
        or t.is_fixed_size_list(kind)
        or t.is_list_view(kind)
        or t.is_large_list_view(kind)
    )


def is_string_type(kind: pa.DataType) -> bool:
    t = pa.types
    return bool(t.is_string(kind) or t.is_large_string(kind) or t.is_string_view(kind))
