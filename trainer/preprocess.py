"""Turning a table's columns into a feature matrix: encoding, imputation and scaling per column.

Every column becomes one or more float64 features:

- ``number`` (integers, floats, decimals; dates, times, timestamps and intervals as seconds since
  the epoch, since midnight or in total, a month as 30 days; Parquet's intervals, which pyarrow
  reads as fixed_size_binary[12], included): one feature, as is. A date or timestamp that
  ``preprocess`` gives no encode also has its parts: ``year(d)``, ``month(d)``, ``day(d)``,
  ``dayofweek(d)`` (0 is Sunday) and, for timestamps, ``hour(d)`` (UTC).
- ``boolean``: one feature, 0 or 1.
- ``text`` (strings, and every type that is not one of the others, cast to text): one-hot up to
  :data:`~trainer.column_roles.ONE_HOT_AUTO` distinct values, a feature per category seen in
  training, plus ``<column> IS NULL`` if training saw NULL; a category not seen in training (or
  NULL, if training saw none) gives all zeros. Beyond that, target encoded: the label's mean
  per category (per class, for more than two classes), shrunk towards the overall mean as
  scikit-learn's TargetEncoder does, and for the training rows themselves computed out of fold
  (from the other four fifths of the rows), so that no row's feature holds its own label.
- ``array`` (lists of numbers or booleans): one feature per element up to the longest list seen
  in training; shorter lists are padded with NULL, longer ones cut.

Columns that name rows rather than describe them are left out unless ``preprocess`` names them
(:mod:`trainer.column_roles`): the primary key, text that identifies rows. :attr:`Preprocessor
.left_out` says which and why.

Then, per resulting feature, NULL (and NaN or infinity) is imputed with a statistic learned in
training (the mean unless ``preprocess`` says otherwise; 0 for a feature that was all NULL), and
the feature is scaled: as ``preprocess`` says, or else with the preprocessor's default scale
(standard for the algorithms that need it), one-hot features excepted (but for kNN). The fitted
:class:`Preprocessor` is pickled with the model, so prediction takes raw column values.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.errors import TrainingError
from trainer import column_kinds, column_roles, raw_values
from trainer.column_kinds import KINDS, FeatureColumn, is_list_type
from trainer.prediction_input import flat_names, is_list, python_array
from trainer.preprocess_options import SCALES, parse_preprocess

# More categories than this make a one-hot matrix too wide to hold (1M rows x 1000 features is
# already 8 GB); such a column must be encoded as ordinal or target instead.
ONE_HOT_LIMIT = 1000
TARGET_FOLDS = 5
"""Training rows get target encodings learned from the other folds' rows."""
DATE_PARTS = ("year", "month", "day", "dayofweek")
TIMESTAMP_PARTS = (*DATE_PARTS, "hour")


# Saved models pickle Preprocessor, _Plan and FeatureColumn by their names in this module (the
# last one imported here): moving or renaming them would leave older model files unloadable.
@dataclass(slots=True)
class _Plan:
    """What fit learned for one column: how to encode, impute and scale it."""

    column: FeatureColumn
    source: str  # how the column was stored at fit: a kind, or one of column_kinds.TEMPORAL
    encode: str
    impute: str
    scale: str
    names: list[str]
    categories: pa.Array | None = None  # sorted; large_string, or float64 for numbers
    null_category: bool = False  # one_hot: NULL was seen at fit and has its own feature
    # target: per category, then for NULL; one column per class for more than two classes
    # (models fitted before that hold one value per category, and a float default)
    target_means: np.ndarray | None = None
    target_default: float | np.ndarray = 0.0  # unseen categories
    fill: np.ndarray | None = None  # per feature
    center: np.ndarray | None = None
    spread: np.ndarray | None = None
    parts: tuple[str, ...] = ()  # a date's or timestamp's parts, after its seconds

    @property
    def categorical(self) -> bool:
        return self.column.kind == "text" or self.encode != "native"

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Unpickle (state is ``(None, {slot: value})``), giving fields added since a model
        was saved their defaults."""
        values = state[1]
        for spec in fields(self):
            object.__setattr__(self, spec.name, values.get(spec.name, spec.default))


class Preprocessor:
    """Fitted per-column encoding, imputation and scaling; picklable.

    ``key`` names the relation's primary-key columns, left out unless ``spec`` names them;
    ``scale`` is the scaling of features ``spec`` says nothing about (one-hot features stay 0
    or 1 unless ``scale_one_hot``: then they are scaled as ``scale`` says too, as a
    distance-based model wants them, see :func:`trainer.algorithms.scale_choices`);
    ``classes`` are the class labels when ``y`` holds class indices (classification), which
    target encoding then encodes per class.
    """

    # Models saved before these existed unpickle with these values.
    _key: tuple[str, ...] = ()
    _scale: str = "preserve"
    _classes: tuple[str, ...] | None = None
    _scale_one_hot: bool = False
    _left_out: dict[str, str] | None = None

    def __init__(
        self,
        columns: Sequence[FeatureColumn],
        spec: Mapping[str, Mapping[str, str]] | None = None,
        *,
        key: Sequence[str] = (),
        scale: str = "preserve",
        scale_one_hot: bool = False,
        classes: Sequence[Any] | None = None,
    ) -> None:
        self._columns = list(columns)
        names = [c.name for c in self._columns]
        self._spec = parse_preprocess(spec, names)
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")
        self._key = tuple(key)
        self._scale = scale
        self._scale_one_hot = scale_one_hot
        self._classes = None if classes is None else tuple(str(c) for c in classes)
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
        """The feature columns (those left out excepted), with array widths as fitted."""
        return [p.column for p in self._plans] if self._plans is not None else list(self._columns)

    @property
    def feature_names(self) -> list[str]:
        """One name per feature: "age", "image[0]".."image[63]", "color=red", "color IS NULL"."""
        return [name for plan in self._fitted() for name in plan.names]

    @property
    def left_out(self) -> dict[str, str]:
        """The columns fit left out of the features, with the reason for each."""
        return dict(self._left_out or {})

    def notices(self) -> list[str]:
        """What a training tells its user about the columns left out."""
        kinds = {c.name: c.kind for c in self._columns}
        return [
            column_roles.left_out_notice(name, reason, text=kinds.get(name) == "text")
            for name, reason in self.left_out.items()
        ]

    def description(self) -> dict[str, Any]:
        """How fit used each column (encode, impute, scale, number of features) and which it
        left out, and why: for the model's registry row."""
        used = {}
        for plan in self._fitted():
            used[plan.column.name] = {
                "encode": plan.encode,
                "impute": plan.impute,
                "scale": plan.scale,
                "features": len(plan.names),
            }
            if plan.parts:
                used[plan.column.name]["parts"] = list(plan.parts)
        return {"columns": used, "left_out": self.left_out}

    def fit(self, table: pa.Table, y: np.ndarray | None = None) -> Preprocessor:
        """Learn categories, widths and statistics from ``table`` (and labels ``y``)."""
        self.fit_transform(table, y)
        return self

    def fit_transform(self, table: pa.Table, y: np.ndarray | None = None) -> np.ndarray:
        """Fit on ``table`` and return its features."""
        labels = _labels(y, table.num_rows)
        targets = None if labels is None else _targets(labels, self._classes)
        plans: list[_Plan] = []
        blocks: list[np.ndarray] = []
        left_out: dict[str, str] = {}
        for column in self._columns:
            raw = raw_values.raw(table, column, self._columns)
            options, reason = self._options(column, raw, labelled=targets is not None)
            if reason is not None:
                left_out[column.name] = reason
                continue
            if options["encode"] == "target" and targets is None:
                needs = "a label column (y)" if labels is None else "a numeric label"
                raise _target_needs(column.name, needs)
            plan, block = _fit_column(column, options, raw, targets, self._classes)
            plans.append(plan)
            blocks.append(block)
        if not plans and left_out:
            raise TrainingError(
                "no column is left to learn from: "
                + "; ".join(f"{name!r}: {why}" for name, why in left_out.items())
                + '; name a column in preprocess to use it, e.g. {"'
                + next(iter(left_out))
                + '": {}}',
                sqlstate="22000",
            )
        self._plans = plans
        self._left_out = left_out
        return _matrix(blocks, table.num_rows)

    def _options(
        self, column: FeatureColumn, raw: pa.Array, *, labelled: bool
    ) -> tuple[dict[str, str], str | None]:
        """The column's encode, impute and scale: as preprocess says, else the defaults; or
        the reason the column is left out."""
        given = self._spec.get(column.name)
        if given is None and column.name in self._key:
            return {}, column_roles.PRIMARY_KEY
        options = {"impute": "mean", "scale": self._scale} | dict(given or {})
        if "encode" in options:
            pass
        elif column.kind == "text":
            keys = raw_values.text(raw)
            distinct = int(pc.count_distinct(keys).as_py() or 0)
            rows = len(keys) - keys.null_count
            encode, why = column_roles.text_encoding(distinct, rows, labelled=labelled)
            if encode is None and given is None:
                return {}, why
            options["encode"] = encode or ("target" if labelled else "one_hot")
        elif column.kind == "number" and column_kinds.source(raw.type) in ("date", "timestamp"):
            options["encode"] = "parts"
        else:
            options["encode"] = "native"
        one_hot = options["encode"] == "one_hot" and "scale" not in (given or {})
        if one_hot and not self._scale_one_hot:
            options["scale"] = "preserve"  # 0 or 1, as one-hot features are
        return options, None

    def transform(self, table: pa.Table) -> np.ndarray:
        """Features of ``table``: float64, one row per row, columns as ``feature_names``."""
        plans = self._fitted()
        columns = [p.column for p in plans]
        blocks = [_transform_column(p, raw_values.raw(table, p.column, columns)) for p in plans]
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
        return pa.table({c.name: python_array(c, v) for c, v in zip(columns, values, strict=True)})

    def row_values(self, row: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        """The raw values of the feature columns in a whole row, as :meth:`table_from_rows`
        takes them (``pgml.predict(project, t)``, ``pgml.predict(project, (a, b, c))``).

        A row with names (a table's row) that holds every feature column gives their values
        by name: the label, the key and other columns are ignored. Otherwise its values count
        in order: one per feature column used, or one per column the training was given (its
        columns left out are then skipped).
        """
        used = self.columns
        if isinstance(row, Mapping):
            if all(c.name in row for c in used):
                return [_row_value(c, row[c.name]) for c in used]
            values = list(row.values())
        else:
            values = list(row)
        if len(values) == len(self._columns) != len(used):
            named = dict(zip((c.name for c in self._columns), values, strict=True))
            return [_row_value(c, named[c.name]) for c in used]
        if len(values) != len(used):
            missing = [c.name for c in used if isinstance(row, Mapping) and c.name not in row]
            raise TrainingError(
                f"the row has {len(values)} values; the model takes one per feature column, in"
                " this order: "
                + ", ".join(c.name for c in used)
                + (f" (the row has no column {', '.join(missing)})" if missing else ""),
                sqlstate="22023",
            )
        return [_row_value(c, v) for c, v in zip(used, values, strict=True)]

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
        if isinstance(row, str | bytes) or not is_list(row):
            row = [row]
        values = list(row)
        if len(values) == len(columns):
            return values
        width = sum(c.width for c in columns)
        flat = all(c.kind != "text" for c in columns) and not any(is_list(v) for v in values)
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
            expected += f"; or {width} numbers: " + ", ".join(flat_names(columns))
        raise TrainingError(
            f"got {len(values)} feature values; expected {expected}", sqlstate="22023"
        )

    def _fitted(self) -> list[_Plan]:
        if self._plans is None:
            raise RuntimeError("the preprocessor is not fitted yet: call fit first")
        return self._plans


def _row_value(column: FeatureColumn, value: Any) -> Any:
    """A value of a whole row for ``column``: text columns take any value as its text."""
    if column.kind == "text" and value is not None and not isinstance(value, str):
        return json.dumps(value) if isinstance(value, dict | list) else str(value)
    return value


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
    if labels.shape[:1] != (rows,) or labels.ndim > 2:
        raise ValueError(
            f"y has shape {labels.shape}; expected one label (or a row of labels) per row ({rows})"
        )
    return labels


def _targets(labels: np.ndarray, classes: Sequence[str] | None) -> np.ndarray | None:
    """What target encoding averages, one column each: the label (each label, for a joint
    model), or for more than two classes whether a row is of each class; None if the labels
    are not numbers."""
    try:
        values = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if values.ndim == 2:
        return values
    if classes is None or len(classes) <= 2:
        return values[:, None]
    known = ~np.isnan(values)
    indices = np.where(known, values, 0).astype(np.int64)
    targets = (indices[:, None] == np.arange(len(classes))).astype(np.float64)
    targets[~known] = np.nan
    return targets


# -- fit and transform one column ----------------------------------------------------------------


def _fit_column(
    column: FeatureColumn,
    options: Mapping[str, str],
    raw: pa.Array,
    targets: np.ndarray | None,
    classes: Sequence[str] | None,
) -> tuple[_Plan, np.ndarray]:
    """Learn how to turn ``raw`` into features; return the plan and the features."""
    source = column_kinds.source(raw.type)
    default_encode = "one_hot" if column.kind == "text" else "native"
    plan = _Plan(
        column=column,
        source=source if column_kinds.kind(source) == column.kind else column.kind,
        encode=options.get("encode", default_encode),
        impute=options.get("impute", "mean"),
        scale=options.get("scale", "preserve"),
        names=[column.name],
    )
    if plan.encode == "parts":
        plan.encode = "native"
        plan.parts = TIMESTAMP_PARTS if source == "timestamp" else DATE_PARTS
        plan.names += [f"{part}({column.name})" for part in plan.parts]
    if plan.impute == "error":
        _refuse_nulls(plan, raw)
    if column.kind == "array":
        lengths = pc.list_value_length(raw).fill_null(0) if is_list_type(raw.type) else None
        longest = pc.max(lengths).as_py() if lengths is not None and len(lengths) else 0
        plan.column = replace(column, width=max(int(longest or 0), 1))
        plan.names = [f"{column.name}[{i}]" for i in range(plan.column.width)]
    elif plan.categorical:
        _fit_categories(plan, _keys(plan, raw), targets, classes)
    if plan.encode == "target":
        block = _out_of_fold(plan, _keys(plan, raw), targets)
    else:
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
        return raw_values.elements(column, raw)
    if not plan.categorical:
        seconds = raw_values.numbers(column, raw, plan.source)
        return _with_parts(seconds, plan.parts) if plan.parts else seconds[:, None]
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
        means = plan.target_means.reshape(len(plan.target_means), -1)
        default = np.broadcast_to(np.asarray(plan.target_default, np.float64), means.shape[1:])
        encoded = np.where(found[:, None], means[codes], default)
        encoded[np.asarray(keys.is_null())] = means[-1]
        return encoded
    return np.where(found, codes.astype(np.float64), np.nan)[:, None]  # ordinal, native


def _with_parts(seconds: np.ndarray, parts: Sequence[str]) -> np.ndarray:
    """Seconds since the epoch, then the parts of each as a date in UTC (NaN stays NaN)."""
    missing = np.isnan(seconds)
    whole = np.where(missing, 0.0, np.floor(seconds)).astype(np.int64)
    days = np.floor_divide(whole, 86_400)
    date = days.astype("datetime64[D]")
    block = np.empty((len(seconds), 1 + len(parts)), dtype=np.float64)
    block[:, 0] = seconds
    for at, part in enumerate(parts, start=1):
        if part == "year":
            value = date.astype("datetime64[Y]").astype(np.int64) + 1970
        elif part == "month":
            value = date.astype("datetime64[M]").astype(np.int64) % 12 + 1
        elif part == "day":
            value = (date - date.astype("datetime64[M]")).astype(np.int64) + 1
        elif part == "dayofweek":  # 1970-01-01 was a Thursday; Sunday is 0, as in SQL
            value = (days + 4) % 7
        else:  # hour
            value = whole % 86_400 // 3_600
        block[:, at] = value
    block[missing] = np.nan
    return block


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


def _fit_categories(
    plan: _Plan, keys: pa.Array, targets: np.ndarray | None, classes: Sequence[str] | None
) -> None:
    """Learn the sorted categories of ``keys`` (and their label means, for target encoding)."""
    name = plan.column.name
    unique = pc.unique(keys.drop_null())
    categories = unique.take(pc.sort_indices(unique))
    plan.categories = categories
    if plan.encode == "one_hot":
        if len(categories) > ONE_HOT_LIMIT:
            raise TrainingError(
                f"column {name!r} holds {len(categories)} distinct values, too many to one-hot"
                f" encode (at most {ONE_HOT_LIMIT}); set its preprocess to"
                f' {{"{name}": {{"encode": "target"}}}} or "ordinal", or train on a view'
                " without it",
                sqlstate="22000",
            )
        shown = [_category_name(plan, value) for value in categories.to_pylist()]
        plan.null_category = keys.null_count > 0
        plan.names = [f"{name}={value}" for value in shown]
        if plan.null_category:
            plan.names.append(f"{name} IS NULL")
    elif plan.encode == "target":
        assert targets is not None
        counts, sums, squares = _target_sums(_codes(keys, categories), targets, len(categories))
        plan.target_means, plan.target_default = _smoothed_means(counts, sums, squares)
        if targets.shape[1] > 1 and classes is not None:
            plan.names = [f"{name} target={label}" for label in classes]
        elif targets.shape[1] > 1:  # a joint model: one mean per label
            plan.names = [f"{name} target[{j}]" for j in range(targets.shape[1])]


def _target_needs(name: str, what: str) -> TrainingError:
    return TrainingError(
        f"column {name!r} is target encoded, which needs {what}; use encode one_hot or ordinal"
        " for training without one",
        sqlstate="22023",
    )


def _codes(keys: pa.Array, categories: pa.Array) -> np.ndarray:
    """Each key's index in ``categories``; NULL (and keys not among them) ``len(categories)``."""
    index = pc.index_in(keys, value_set=categories)
    return index.fill_null(len(categories)).to_numpy(zero_copy_only=False).astype(np.int64)


def _target_sums(
    codes: np.ndarray, targets: np.ndarray, categories: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per category (then NULL): the labelled rows, and the sums and sums of squares of each
    target column over them."""
    labelled = ~np.isnan(targets).any(axis=1)
    codes, targets = codes[labelled], targets[labelled]
    size = categories + 1
    counts = np.bincount(codes, minlength=size).astype(np.float64)
    sums = np.empty((size, targets.shape[1]))
    squares = np.empty((size, targets.shape[1]))
    for j in range(targets.shape[1]):
        sums[:, j] = np.bincount(codes, weights=targets[:, j], minlength=size)
        squares[:, j] = np.bincount(codes, weights=targets[:, j] ** 2, minlength=size)
    return counts, sums, squares


def _smoothed_means(
    counts: np.ndarray, sums: np.ndarray, squares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each category's mean shrunk towards the overall mean (scikit-learn's "auto": by the
    share of the label's variance the category's own rows explain); and the overall mean."""
    total = counts.sum()
    overall = sums.sum(axis=0) / max(total, 1.0)
    variance = np.maximum(squares.sum(axis=0) / max(total, 1.0) - overall**2, 0.0)
    rows = np.maximum(counts, 1.0)[:, None]
    means = sums / rows
    within = np.maximum(squares / rows - means**2, 0.0)
    between = variance * counts[:, None]
    weight = np.divide(between, between + within, out=np.ones_like(means),
                       where=between + within > 0)  # fmt: skip
    encoded = weight * means + (1.0 - weight) * overall
    encoded[counts == 0] = overall
    return encoded, overall


def _out_of_fold(plan: _Plan, keys: pa.Array, targets: np.ndarray | None) -> np.ndarray:
    """Target encodings of the training rows, each from the rows of the other folds."""
    assert plan.categories is not None and targets is not None
    categories = len(plan.categories)
    codes = _codes(keys, plan.categories)
    rows = len(codes)
    folds = min(TARGET_FOLDS, rows)
    if folds < 2:
        assert plan.target_means is not None
        return plan.target_means[codes]
    fold = np.random.default_rng(0).permutation(rows) % folds
    counts, sums, squares = _target_sums(codes, targets, categories)
    encoded = np.empty((rows, targets.shape[1]))
    for f in range(folds):
        held = fold == f
        inside = _target_sums(codes[held], targets[held], categories)
        means, _ = _smoothed_means(counts - inside[0], sums - inside[1], squares - inside[2])
        encoded[held] = means[codes[held]]
    return encoded


def _keys(plan: _Plan, raw: pa.Array) -> pa.Array:
    """The values categories are made of: text, or numbers (NaN as NULL)."""
    if plan.column.kind == "text":
        return raw_values.text(raw)
    return pa.array(raw_values.numbers(plan.column, raw, plan.source), from_pandas=True)


def _category_name(plan: _Plan, value: Any) -> str:
    if plan.column.kind == "boolean" and isinstance(value, float):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    return str(value)
