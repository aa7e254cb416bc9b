"""Turning a table's columns into a feature matrix: encoding, imputation and scaling per column.

Every column becomes one or more float64 features:

- ``number`` (integers, floats, decimals; dates, times, timestamps and intervals as seconds since
  the epoch, since midnight or in total, a month as 30 days; Parquet's intervals, which pyarrow
  reads as fixed_size_binary[12], included): one feature, as is.
- ``boolean``: one feature, 0 or 1.
- ``text`` (strings, and every type that is not one of the others, cast to text): one-hot by
  default, a feature per category seen in training, plus ``<column> IS NULL`` if training saw
  NULL; a category not seen in training (or NULL, if training saw none) gives all zeros.
- ``array`` (lists of numbers or booleans): one feature per element up to the longest list seen
  in training; shorter lists are padded with NULL, longer ones cut.

Then, per resulting feature, NULL (and NaN or infinity) is imputed with a statistic learned in
training (the mean unless ``preprocess`` says otherwise; 0 for a feature that was all NULL), and
the feature is scaled. The fitted :class:`Preprocessor` is pickled with the model, so prediction
takes raw column values.
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.errors import TrainingError

KINDS: tuple[str, ...] = ("number", "boolean", "text", "array")
ENCODES: tuple[str, ...] = ("native", "target", "one_hot", "ordinal")
IMPUTES: tuple[str, ...] = ("error", "mean", "median", "mode", "min", "max", "zero")
SCALES: tuple[str, ...] = ("preserve", "standard", "min_max", "max_abs", "robust")
CHOICES: dict[str, tuple[str, ...]] = {"encode": ENCODES, "impute": IMPUTES, "scale": SCALES}

# More categories than this make a one-hot matrix too wide to hold (1M rows x 1000 features is
# already 8 GB); such a column must be encoded as ordinal or target instead.
ONE_HOT_LIMIT = 1000

_TEMPORAL = ("date", "timestamp", "time", "duration", "interval")
_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
_TRUE = ("t", "true", "y", "yes", "on", "1")
_FALSE = ("f", "false", "n", "no", "off", "0")
_INTERVAL = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanos", "<i8")])
# Parquet's INTERVAL (DuckDB writes intervals so), which pyarrow reads as fixed_size_binary[12].
_PARQUET_INTERVAL = np.dtype([("months", "<u4"), ("days", "<u4"), ("millis", "<u4")])


@dataclass(frozen=True, slots=True)
class FeatureColumn:
    """A column of the training table and how its values become features."""

    name: str
    kind: str  # "number" | "boolean" | "text" | "array"
    width: int = 1  # for arrays: elements per row (fixed at fit time)


def feature_columns(schema: pa.Schema, *, exclude: Collection[str] = ()) -> list[FeatureColumn]:
    """The feature columns of a table: every column not in ``exclude``, in table order."""
    skip = set(exclude)
    return [FeatureColumn(f.name, _kind(_source(f.type))) for f in schema if f.name not in skip]


def parse_preprocess(
    spec: Mapping[str, Any] | str | None, columns: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Validate PostgresML's ``preprocess`` JSON: {"column": {"encode", "impute", "scale"}}.

    ``spec`` is a mapping or JSON text; ``columns`` are the feature columns it may name.
    """
    if isinstance(spec, str):
        if not spec.strip():
            return {}
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"preprocess is not valid JSON: {exc}", sqlstate="22023") from None
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise TrainingError(
            'preprocess must be a JSON object such as {"age": {"impute": "median"}},'
            f" not {json.dumps(spec, default=str)}",
            sqlstate="22023",
        )
    parsed: dict[str, dict[str, str]] = {}
    for column, options in spec.items():
        if column not in columns:
            raise TrainingError(
                f"preprocess names column {column!r}, which is not a feature column"
                f"{_did_you_mean(str(column), columns)}; the feature columns are:"
                f" {_listing(columns)}",
                sqlstate="42703",
            )
        if not isinstance(options, Mapping):
            raise TrainingError(
                f"preprocess for column {column!r} must be an object such as"
                f' {{"impute": "mean"}}, not {json.dumps(options, default=str)}',
                sqlstate="22023",
            )
        parsed[column] = {key: _choice(column, key, value) for key, value in options.items()}
    return parsed


def _choice(column: str, key: Any, value: Any) -> str:
    """Check one option of a column's preprocess and return its value."""
    if key not in CHOICES:
        raise TrainingError(
            f"preprocess for column {column!r}: unknown key {key!r}; use encode, impute or scale",
            sqlstate="22023",
        )
    if value not in CHOICES[key]:
        raise TrainingError(
            f"preprocess for column {column!r}: unknown {key} {json.dumps(value, default=str)};"
            f" use one of: {', '.join(CHOICES[key])}",
            sqlstate="22023",
        )
    return str(value)


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(names: Sequence[str], *, limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass(slots=True)
class _Plan:
    """What fit learned for one column: how to encode, impute and scale it."""

    column: FeatureColumn
    source: str  # how the column was stored at fit: a kind, or one of _TEMPORAL
    encode: str
    impute: str
    scale: str
    names: list[str]
    categories: pa.Array | None = None  # sorted; large_string, or float64 for numbers
    null_category: bool = False  # one_hot: NULL was seen at fit and has its own feature
    target_means: np.ndarray | None = None  # per category, then the value for NULL
    target_default: float = 0.0  # unseen categories
    fill: np.ndarray | None = None  # per feature
    center: np.ndarray | None = None
    spread: np.ndarray | None = None

    @property
    def categorical(self) -> bool:
        return self.column.kind == "text" or self.encode != "native"


class Preprocessor:
    """Fitted per-column encoding, imputation and scaling; picklable."""

    def __init__(
        self,
        columns: Sequence[FeatureColumn],
        spec: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._columns = list(columns)
        names = [c.name for c in self._columns]
        self._spec = parse_preprocess(spec, names)
        for column in self._columns:
            if column.kind not in KINDS:
                raise ValueError(f"unknown feature kind {column.kind!r}; use one of {KINDS}")
            encode = self._spec.get(column.name, {}).get("encode", "native")
            if column.kind == "array" and encode != "native":
                raise TrainingError(
                    f"column {column.name!r} is an array, flattened element by element: its"
                    f' preprocess cannot say encode {encode!r}; leave encode out or use "native"',
                    sqlstate="22023",
                )
        self._plans: list[_Plan] | None = None

    @property
    def columns(self) -> list[FeatureColumn]:
        """The feature columns, with array widths as fitted."""
        return [p.column for p in self._plans] if self._plans is not None else list(self._columns)

    @property
    def feature_names(self) -> list[str]:
        """One name per feature: "age", "image[0]".."image[63]", "color=red", "color IS NULL"."""
        return [name for plan in self._fitted() for name in plan.names]

    def fit(self, table: pa.Table, y: np.ndarray | None = None) -> Preprocessor:
        """Learn categories, widths and statistics from ``table`` (and labels ``y``)."""
        self.fit_transform(table, y)
        return self

    def fit_transform(self, table: pa.Table, y: np.ndarray | None = None) -> np.ndarray:
        """Fit on ``table`` and return its features."""
        labels = _labels(y, table.num_rows)
        plans: list[_Plan] = []
        blocks: list[np.ndarray] = []
        for column in self._columns:
            raw = _raw(table, column, self._columns)
            plan, block = _fit_column(column, self._spec.get(column.name, {}), raw, labels)
            plans.append(plan)
            blocks.append(block)
        self._plans = plans
        return _matrix(blocks, table.num_rows)

    def transform(self, table: pa.Table) -> np.ndarray:
        """Features of ``table``: float64, one row per row, columns as ``feature_names``."""
        plans = self._fitted()
        columns = [p.column for p in plans]
        blocks = [_transform_column(p, _raw(table, p.column, columns)) for p in plans]
        return _matrix(blocks, table.num_rows)

    def table_from_rows(self, rows: Sequence[Sequence[Any]]) -> pa.Table:
        """Raw feature values given positionally, as in pgml.predict(project, ARRAY[...]).

        A row holds one value per feature column (a list for an array column), or, when no
        column is text, the flat numbers: every array's elements in place of the array.
        """
        columns = self.columns
        values: list[list[Any]] = [[] for _ in columns]
        for row in rows:
            for column_values, value in zip(values, self._split_row(row), strict=True):
                column_values.append(value)
        return pa.table({c.name: _python_array(c, v) for c, v in zip(columns, values, strict=True)})

    def table_from_matrix(self, matrix: np.ndarray) -> pa.Table:
        """Raw values given as a float matrix, one row per prediction, as :meth:`table_from_rows`.

        Each row holds either one number per feature column, or every array's elements in place
        of the array; NaN stands for NULL. Without text columns only; this is the fast path of
        ``pgml.predict`` over many rows.
        """
        columns = self.columns
        if any(c.kind == "text" for c in columns):
            return self.table_from_rows(matrix.tolist())
        width = sum(c.width for c in columns)
        if matrix.ndim != 2 or matrix.shape[1] not in (width, len(columns)):
            self._split_row([0.0] * (matrix.shape[1] if matrix.ndim == 2 else 1))  # raises
        flat = matrix.shape[1] == width
        arrays: dict[str, pa.Array] = {}
        at = 0
        for column in columns:
            if column.kind == "array" and flat:
                block = np.ascontiguousarray(matrix[:, at : at + column.width]).ravel()
                values = pa.array(block, mask=np.isnan(block))
                arrays[column.name] = pa.FixedSizeListArray.from_arrays(values, column.width)
                at += column.width
            elif column.kind == "array":
                raise TrainingError(
                    f"column {column.name!r} is an array of {column.width}: pass the flat"
                    f" {width} numbers",
                    sqlstate="22023",
                )
            else:
                values_1d = matrix[:, at]
                arrays[column.name] = pa.array(values_1d, mask=np.isnan(values_1d))
                at += 1
        return pa.table(arrays)

    def _split_row(self, row: Sequence[Any]) -> list[Any]:
        """One raw value per feature column, from a row given either per column or flat."""
        columns = self.columns
        if isinstance(row, str | bytes) or not _is_list(row):
            row = [row]
        values = list(row)
        if len(values) == len(columns):
            return values
        width = sum(c.width for c in columns)
        flat = all(c.kind != "text" for c in columns) and not any(_is_list(v) for v in values)
        if flat and len(values) == width:
            split, at = [], 0
            for column in columns:
                if column.kind == "array":
                    split.append(values[at : at + column.width])
                else:
                    split.append(values[at])
                at += column.width
            return split
        expected = f"{len(columns)} values, one per feature column in this order: " + ", ".join(
            f"{c.name} (an array of {c.width})" if c.kind == "array" else c.name for c in columns
        )
        if all(c.kind != "text" for c in columns) and width != len(columns):
            expected += f"; or {width} numbers: " + ", ".join(_flat_names(columns))
        raise TrainingError(
            f"got {len(values)} feature values; expected {expected}", sqlstate="22023"
        )

    def _fitted(self) -> list[_Plan]:
        if self._plans is None:
            raise RuntimeError("the preprocessor is not fitted yet: call fit first")
        return self._plans


def _flat_names(columns: Sequence[FeatureColumn]) -> list[str]:
    names = []
    for c in columns:
        if c.kind != "array":
            names.append(c.name)
        elif c.width == 1:
            names.append(f"{c.name}[0]")
        else:
            names.append(f"{c.name}[0]..{c.name}[{c.width - 1}]")
    return names


def _matrix(blocks: list[np.ndarray], rows: int) -> np.ndarray:
    """The column blocks side by side, row-major; ``blocks`` is emptied as they are copied."""
    # Copying into a column-major matrix and transposing that in one go is about 4x faster
    # than writing each column into a row-major one.
    features = np.empty((rows, sum(b.shape[1] for b in blocks)), dtype=np.float64, order="F")
    at = 0
    blocks.reverse()
    while blocks:
        block = blocks.pop()
        features[:, at : at + block.shape[1]] = block
        at += block.shape[1]
    return np.ascontiguousarray(features)


def _labels(y: np.ndarray | None, rows: int) -> np.ndarray | None:
    if y is None:
        return None
    labels = np.asarray(y)
    if labels.shape != (rows,):
        raise ValueError(f"y has shape {labels.shape}; expected one label per row ({rows})")
    return labels


def _raw(table: pa.Table, column: FeatureColumn, columns: Sequence[FeatureColumn]) -> pa.Array:
    """The values of ``column`` in ``table`` as one array."""
    names = table.column_names
    if column.name not in names:
        missing = [c.name for c in columns if c.name not in names]
        raise TrainingError(
            f"feature column{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing: the"
            f" model takes columns {_listing([c.name for c in columns])}",
            sqlstate="42703",
        )
    values = table.column(names.index(column.name)).combine_chunks()
    return _storage(values)


def _storage(values: pa.Array) -> pa.Array:
    """Dictionary-encoded values decoded; extension types (except uuid) as their storage."""
    if isinstance(values, pa.DictionaryArray):
        return _storage(values.dictionary_decode())
    if isinstance(values.type, pa.ExtensionType) and not isinstance(values.type, pa.UuidType):
        return _storage(values.storage)
    return values


# -- types ---------------------------------------------------------------------------------------


def _source(kind: pa.DataType) -> str:
    """How values of an Arrow type are read: a feature kind, or one of _TEMPORAL."""
    t = pa.types
    if isinstance(kind, pa.UuidType):
        return "text"
    if isinstance(kind, pa.ExtensionType):
        return _source(kind.storage_type)
    if t.is_dictionary(kind):
        return _source(kind.value_type)
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
    if _is_list_type(kind) and _source(kind.value_type) in ("number", "boolean"):
        return "array"
    return "text"


def _kind(source: str) -> str:
    return "number" if source in _TEMPORAL else source


def _is_list_type(kind: pa.DataType) -> bool:
    t = pa.types
    return bool(
        t.is_list(kind)
        or t.is_large_list(kind)
        or t.is_fixed_size_list(kind)
        or t.is_list_view(kind)
        or t.is_large_list_view(kind)
    )


def _is_string_type(kind: pa.DataType) -> bool:
    t = pa.types
    return bool(t.is_string(kind) or t.is_large_string(kind) or t.is_string_view(kind))


def _mismatch(column: FeatureColumn, values: pa.Array, wanted: str) -> TrainingError:
    return TrainingError(
        f"column {column.name!r} holds {values.type}, but the model was trained on {wanted}",
        sqlstate="22023",
    )


# -- fit and transform one column ----------------------------------------------------------------


def _fit_column(
    column: FeatureColumn, options: Mapping[str, str], raw: pa.Array, y: np.ndarray | None
) -> tuple[_Plan, np.ndarray]:
    """Learn how to turn ``raw`` into features; return the plan and the features."""
    source = _source(raw.type)
    default_encode = "one_hot" if column.kind == "text" else "native"
    plan = _Plan(
        column=column,
        source=source if _kind(source) == column.kind else column.kind,
        encode=options.get("encode", default_encode),
        impute=options.get("impute", "mean"),
        scale=options.get("scale", "preserve"),
        names=[column.name],
    )
    if plan.impute == "error":
        _refuse_nulls(plan, raw)
    if column.kind == "array":
        lengths = pc.list_value_length(raw).fill_null(0) if _is_list_type(raw.type) else None
        longest = pc.max(lengths).as_py() if lengths is not None and len(lengths) else 0
        plan.column = replace(column, width=max(int(longest or 0), 1))
        plan.names = [f"{column.name}[{i}]" for i in range(plan.column.width)]
    elif plan.categorical:
        _fit_categories(plan, _keys(plan, raw), y)
    block = _encode(plan, raw)
    plan.fill = _fill_values(block, plan)
    _impute(plan, block, raw)
    plan.center, plan.spread = _scale_values(block, plan.scale)
    _scale(plan, block)
    return plan, block


def _transform_column(plan: _Plan, raw: pa.Array) -> np.ndarray:
    if plan.impute == "error":
        _refuse_nulls(plan, raw)
    block = _encode(plan, raw)
    _impute(plan, block, raw)
    _scale(plan, block)
    return block


def _encode(plan: _Plan, raw: pa.Array) -> np.ndarray:
    """Features of one column before imputation: NaN where a value is missing."""
    column = plan.column
    if column.kind == "array":
        return _elements(column, raw)
    if not plan.categorical:
        return _numbers(column, raw, plan.source)[:, None]
    keys = _keys(plan, raw)
    assert plan.categories is not None
    index = pc.index_in(keys, value_set=plan.categories)
    found = np.asarray(index.is_valid())
    codes = index.fill_null(0).to_numpy(zero_copy_only=False)
    if plan.encode == "one_hot":
        block = np.zeros((len(keys), len(plan.names)), dtype=np.float64)
        rows = np.flatnonzero(found)
        block[rows, codes[rows]] = 1.0
        if plan.null_category:
            block[np.asarray(keys.is_null()), -1] = 1.0
        return block
    if plan.encode == "target":
        assert plan.target_means is not None
        encoded = np.where(found, plan.target_means[codes], plan.target_default)
        encoded[np.asarray(keys.is_null())] = plan.target_means[-1]
        return encoded[:, None]
    return np.where(found, codes.astype(np.float64), np.nan)[:, None]  # ordinal, native


def _refuse_nulls(plan: _Plan, raw: pa.Array) -> None:
    """Raise if the column holds NULL (or NaN): its preprocess says impute: error."""
    nulls = raw.null_count
    if pa.types.is_floating(raw.type) and len(raw):
        nulls += int(pc.sum(pc.is_nan(raw).cast(pa.int64())).as_py() or 0)
    if nulls:
        raise TrainingError(
            f"column {plan.column.name!r} holds NULL in {nulls} of {len(raw)} rows and its"
            " preprocess says impute: error; remove those rows or choose impute mean, median,"
            " mode, min, max or zero",
            sqlstate="22000",
        )


def _impute(plan: _Plan, block: np.ndarray, raw: pa.Array) -> None:
    """Fill missing values in ``block`` with the statistics learned at fit."""
    missing = np.isnan(block)
    if not missing.any():
        return
    name = plan.column.name
    if plan.impute == "error":
        if plan.column.kind == "array":
            what = f"NULL elements or lists shorter than {plan.column.width}"
        elif plan.categorical:
            what = "values not seen in training"
        else:
            what = "NaN or infinite values"
        raise TrainingError(
            f"column {name!r} holds {what} and its preprocess says impute: error; fix those rows"
            " or choose impute mean, median, mode, min, max or zero",
            sqlstate="22000",
        )
    assert plan.fill is not None
    np.copyto(block, np.broadcast_to(plan.fill, block.shape), where=missing)


def _fill_values(block: np.ndarray, plan: _Plan) -> np.ndarray:
    """The value imputed for each feature of ``block``: 0 where it holds no values."""
    impute, features = plan.impute, block.shape[1]
    if impute in ("zero", "error") or plan.encode in ("one_hot", "target"):
        return np.zeros(features)
    missing = np.isnan(block)
    counts = (~missing).sum(axis=0)
    empty = counts == 0
    if impute == "mean":
        fill = np.where(missing, 0.0, block).sum(axis=0) / np.maximum(counts, 1)
    elif impute == "min":
        fill = np.where(missing, np.inf, block).min(axis=0, initial=np.inf)
    elif impute == "max":
        fill = np.where(missing, -np.inf, block).max(axis=0, initial=-np.inf)
    elif impute == "median":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features: filled with 0
            fill = np.nanmedian(block, axis=0) if len(block) else np.zeros(features)
    else:  # mode: the most frequent value, the smallest among equals
        fill = np.zeros(features)
        for j, feature in enumerate(np.ascontiguousarray(block.T)):
            values, counted = np.unique(feature[~np.isnan(feature)], return_counts=True)
            fill[j] = values[np.argmax(counted)] if len(values) else 0.0
    return np.where(empty, 0.0, fill).astype(np.float64)


def _scale_values(block: np.ndarray, scale: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Center and spread per feature for ``scale``; a spread of 0 becomes 1 (no division)."""
    if scale == "preserve" or not len(block):
        return None, None
    if scale == "standard":
        center, spread = block.mean(axis=0), block.std(axis=0)
    elif scale == "min_max":
        center = block.min(axis=0)
        spread = block.max(axis=0) - center
    elif scale == "max_abs":
        center, spread = np.zeros(block.shape[1]), np.abs(block).max(axis=0)
    else:  # robust
        low, center, high = np.percentile(block, [25, 50, 75], axis=0)
        spread = high - low
    constant = spread <= 10 * np.finfo(np.float64).eps * np.abs(center)
    return center, np.where(constant | (spread == 0), 1.0, spread)


def _scale(plan: _Plan, block: np.ndarray) -> None:
    if plan.center is not None and plan.spread is not None:
        block -= plan.center
        block /= plan.spread


# -- categories ----------------------------------------------------------------------------------


def _fit_categories(plan: _Plan, keys: pa.Array, y: np.ndarray | None) -> None:
    """Learn the sorted categories of ``keys`` (and their label means, for target encoding)."""
    name = plan.column.name
    unique = pc.unique(keys.drop_null())
    categories = unique.take(pc.sort_indices(unique))
    plan.categories = categories
    shown = [_category_name(plan, value) for value in categories.to_pylist()]
    if plan.encode == "one_hot":
        if len(categories) > ONE_HOT_LIMIT:
            raise TrainingError(
                f"column {name!r} holds {len(categories)} distinct values, too many to one-hot"
                f" encode (at most {ONE_HOT_LIMIT}); set its preprocess to"
                f' {{"{name}": {{"encode": "target"}}}} or "ordinal", or train on a view'
                " without it",
                sqlstate="22000",
            )
        plan.null_category = keys.null_count > 0
        plan.names = [f"{name}={value}" for value in shown]
        if plan.null_category:
            plan.names.append(f"{name} IS NULL")
    elif plan.encode == "target":
        plan.target_means, plan.target_default = _target_means(plan, keys, categories, y)


def _target_means(
    plan: _Plan, keys: pa.Array, categories: pa.Array, y: np.ndarray | None
) -> tuple[np.ndarray, float]:
    """The mean label per category, then for NULL; and the overall mean (for unseen values)."""
    name = plan.column.name
    if y is None:
        raise TrainingError(
            f"column {name!r} is target encoded, which needs a label column (y); use encode"
            " one_hot or ordinal for training without a label",
            sqlstate="22023",
        )
    try:
        labels = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise TrainingError(
            f"column {name!r} is target encoded, which needs a numeric label", sqlstate="22023"
        ) from None
    known = ~np.isnan(labels)
    overall = float(labels[known].mean()) if known.any() else 0.0
    index = pc.index_in(keys, value_set=categories)
    codes = index.fill_null(len(categories)).to_numpy(zero_copy_only=False)[known]
    sums = np.bincount(codes, weights=labels[known], minlength=len(categories) + 1)
    counts = np.bincount(codes, minlength=len(categories) + 1)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
    return means.astype(np.float64), overall


def _keys(plan: _Plan, raw: pa.Array) -> pa.Array:
    """The values categories are made of: text, or numbers (NaN as NULL)."""
    if plan.column.kind == "text":
        return _text(raw)
    return pa.array(_numbers(plan.column, raw, plan.source), from_pandas=True)


def _category_name(plan: _Plan, value: Any) -> str:
    if plan.column.kind == "boolean" and isinstance(value, float):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    return str(value)


# -- raw values to numbers -----------------------------------------------------------------------


def _numbers(column: FeatureColumn, raw: pa.Array, source: str) -> np.ndarray:
    """One float64 per row, NaN for NULL and non-finite values; ``source`` as at fit."""
    given = _source(raw.type)
    if given in ("number", "boolean"):
        values = _floats(raw)
    elif given in _TEMPORAL:
        values = _seconds(raw, given)
    elif given == "text" and source in _TEMPORAL:
        values = _parse_seconds(column, raw, source)
    elif given == "text" and source == "boolean":
        values = _parse_booleans(column, raw)
    elif given == "text" and _is_string_type(raw.type):
        values = _parse_numbers(column, raw)
    else:
        raise _mismatch(column, raw, "booleans" if column.kind == "boolean" else "numbers")
    values[~np.isfinite(values)] = np.nan
    return values


def _floats(values: pa.Array) -> np.ndarray:
    as_float = pc.cast(values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return as_float if as_float.flags.writeable else as_float.copy()


def _seconds(raw: pa.Array, source: str) -> np.ndarray:
    """Dates and timestamps as seconds since 1970-01-01, times since midnight, intervals."""
    if source == "interval":  # a month counts 30 days, as in DuckDB's epoch(interval)
        parquet = raw.type == pa.binary(12)
        layout = _PARQUET_INTERVAL if parquet else _INTERVAL
        count = raw.offset + len(raw)
        fields = np.frombuffer(raw.buffers()[1], dtype=layout, count=count)
        fields = fields[raw.offset : raw.offset + len(raw)]
        seconds = fields["months"] * 30 * 86400.0 + fields["days"] * 86400.0
        seconds += fields["millis"] / 1e3 if parquet else fields["nanos"] / 1e9
        seconds[np.asarray(raw.is_null())] = np.nan
        return seconds
    if pa.types.is_date32(raw.type):
        return _floats(pc.cast(raw, pa.int32())) * 86400.0
    if pa.types.is_date64(raw.type):
        return _floats(pc.cast(raw, pa.int64())) / 1e3
    return _floats(pc.cast(raw, pa.int64())) / _UNITS[raw.type.unit]


def _parse_seconds(column: FeatureColumn, raw: pa.Array, source: str) -> np.ndarray:
    """Text such as '2024-01-01 10:00' read as the temporal type the column had at fit."""
    target = {"date": "timestamptz", "timestamp": "timestamptz", "time": "time"}
    cast = target.get(source, "interval")
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        con.register("raw", pa.table({"v": pc.cast(raw, pa.large_string())}))
        result = con.sql(f"select epoch(cast(v as {cast})) as v from raw").to_arrow_table()
    except duckdb.Error as exc:
        raise TrainingError(
            f"column {column.name!r} holds text that is not a valid {source}: {exc}",
            sqlstate="22023",
        ) from None
    finally:
        con.close()
    return _floats(result.column("v").combine_chunks())


def _parse_booleans(column: FeatureColumn, raw: pa.Array) -> np.ndarray:
    words = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(raw, pa.large_string())))
    true = np.asarray(pc.is_in(words, value_set=pa.array(_TRUE)).fill_null(False))
    false = np.asarray(pc.is_in(words, value_set=pa.array(_FALSE)).fill_null(False))
    valid = np.asarray(words.is_valid())
    if (valid & ~true & ~false).any():
        bad = words.filter(pa.array(valid & ~true & ~false))[0].as_py()
        raise TrainingError(
            f"column {column.name!r} holds {bad!r}, which is not a boolean; use true or false",
            sqlstate="22023",
        )
    return np.where(valid, true.astype(np.float64), np.nan)


def _parse_numbers(column: FeatureColumn, raw: pa.Array) -> np.ndarray:
    try:
        return _floats(pc.utf8_trim_whitespace(pc.cast(raw, pa.large_string())))
    except pa.ArrowInvalid as exc:
        raise TrainingError(
            f"column {column.name!r} holds text that is not a number: {exc}", sqlstate="22023"
        ) from None


def _elements(column: FeatureColumn, raw: pa.Array) -> np.ndarray:
    """An array column as a (rows, width) block: padded with NaN, cut at ``width``."""
    width, rows = column.width, len(raw)
    if pa.types.is_null(raw.type):
        return np.full((rows, width), np.nan)
    if not _is_list_type(raw.type):
        raise _mismatch(column, raw, "arrays of numbers")
    lengths = pc.list_value_length(raw).fill_null(0).to_numpy(zero_copy_only=False)
    flat = _storage(raw.flatten())
    if _source(flat.type) in ("number", "boolean"):
        values = _floats(flat)
    else:
        values = _parse_numbers(column, flat)
    if len(values) == rows * width and (lengths == width).all():
        block = values.reshape(rows, width)  # every list as long as the column is wide
    else:
        block = np.full((rows, width), np.nan)
        starts = np.cumsum(lengths) - lengths
        row = np.repeat(np.arange(rows), lengths)
        position = np.arange(len(values)) - np.repeat(starts, lengths)
        kept = position < width
        block[row[kept], position[kept]] = values[kept]
    if not np.isfinite(block).all():
        block[~np.isfinite(block)] = np.nan
    return block


# -- raw values to text --------------------------------------------------------------------------


def _text(raw: pa.Array) -> pa.Array:
    """Any column as large_string: uuids and bytes as hex, other types cast by DuckDB."""
    kind = raw.type
    if isinstance(kind, pa.UuidType):
        return _hex(raw.storage, dashes=True)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _hex(raw, dashes=False)
    if pa.types.is_fixed_size_binary(kind):
        return _hex(raw, dashes=kind.byte_width == 16)
    try:
        return pc.cast(raw, pa.large_string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        pass
    con = duckdb.connect()
    try:
        con.register("raw", pa.table({"v": raw}))
        result = con.sql("select cast(v as varchar) as v from raw").to_arrow_table()
    finally:
        con.close()
    return pc.cast(result.column("v").combine_chunks(), pa.large_string())


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex(raw: pa.Array, *, dashes: bool) -> pa.Array:
    """Bytes as lowercase hex; 16 bytes as a uuid (8-4-4-4-12) when ``dashes``."""
    if pa.types.is_fixed_size_binary(raw.type):
        size = raw.type.byte_width
        data = np.frombuffer(raw.buffers()[1], dtype=np.uint8)
        data = data[raw.offset * size : (raw.offset + len(raw)) * size]
        offsets = np.arange(len(raw) + 1, dtype=np.int64) * size
    else:
        raw = pc.cast(raw, pa.large_binary())
        offsets = np.frombuffer(raw.buffers()[1], dtype=np.int64)[
            raw.offset : raw.offset + len(raw) + 1
        ]
        data = np.frombuffer(raw.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
    digits = np.stack([_HEX_DIGITS[data >> 4], _HEX_DIGITS[data & 15]], axis=1).reshape(-1)
    if dashes and len(raw):
        chars = digits.reshape(len(raw), 32)
        dash = np.full((len(raw), 1), ord("-"), dtype=np.uint8)
        parts = [chars[:, :8], chars[:, 8:12], chars[:, 12:16], chars[:, 16:20], chars[:, 20:]]
        joined = [parts[0], dash, parts[1], dash, parts[2], dash, parts[3], dash, parts[4]]
        digits = np.concatenate(joined, axis=1).reshape(-1)
        offsets = np.arange(len(raw) + 1, dtype=np.int64) * 36
    else:
        offsets = offsets * 2
    text = pa.LargeStringArray.from_buffers(
        len(raw), pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(digits.tobytes())
    )
    return pc.if_else(raw.is_null(), pa.scalar(None, pa.large_string()), text)


# -- prediction input ----------------------------------------------------------------------------


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _python_array(column: FeatureColumn, values: list[Any]) -> pa.Array:
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
    elif not _is_list(value):
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
