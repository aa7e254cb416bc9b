"""Scoring with deployed models: a cache of loaded models and the DuckDB functions that use it.

``pgml_predict(project, features)`` and ``pgml_predict_proba(project, features)`` are
registered on the mirror's DuckDB connection as Arrow functions: DuckDB hands them a vector of
rows (up to 2048) at a time, so a query over a million rows makes a few hundred model calls,
not a million. ``project`` is a project name or a model id.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from duckdb import func

from mirror.errors import SidecarError, TrainingError
from trainer.model import Model
from trainer.train import Trainer

_ERROR = re.compile(r"\[pgml ([0-9A-Z]{5})\] (.*)", re.DOTALL)


class Scorer:
    """Loads deployed models once and keeps them until a deployment changes."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._lock = threading.Lock()
        self._generation = -1
        self._by_key: dict[str, Model] = {}
        self._by_id: dict[int, Model] = {}
        self.rows_scored = 0
        self.on_scored: Callable[[str, int, float], None] | None = None
        """Called with (project or model id, rows, seconds) after each model call."""

    def observe(self, key: str, rows: int, seconds: float) -> None:
        self.rows_scored += rows
        if self.on_scored is not None:
            self.on_scored(key, rows, seconds)

    def model(self, key: str) -> Model:
        """The model for a project name (its deployed model) or a model id."""
        if self._generation == self.trainer.generation and key in self._by_key:
            return self._by_key[key]
        with self._lock:
            if self._generation != self.trainer.generation:
                self._by_key.clear()
                self._generation = self.trainer.generation
            model = self._load(key)
            self._by_key[key] = model
            return model

    def _load(self, key: str) -> Model:
        registry = self.trainer.registry
        project = registry.project(key)
        if project is not None:
            record = registry.deployed(project.id)
            if record is None:
                raise TrainingError(f"project {key!r} has no deployed model", sqlstate="42704")
        elif key.isdigit():
            found = registry.model(int(key))
            if found is None:
                raise TrainingError(f"model {key} does not exist", sqlstate="42704")
            record = found
        else:
            raise TrainingError(f"project {key!r} does not exist", sqlstate="42704")
        if record.id not in self._by_id:
            self._by_id[record.id] = self.trainer.model(record.id)[1]
        return self._by_id[record.id]

    # -- DuckDB functions ----------------------------------------------------------------------

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create ``pgml_predict``, ``pgml_predict_proba`` and the other scoring functions on
        the mirror's connection."""
        features = duckdb.list_type(duckdb.sqltypes.DOUBLE)
        text = duckdb.sqltypes.VARCHAR
        double = duckdb.sqltypes.DOUBLE
        functions: dict[str, tuple[Callable[..., pa.Array], list[Any], Any]] = {
            "pgml_predict": (self._predict, [text, features], double),
            "pgml_predict_proba": (self._predict_proba, [text, features], features),
            "pgml_predict_joint": (self._predict_joint, [text, features], features),
            "pgml_predict_batch": (self._predict_batch, [text, features], features),
            "pgml_decompose": (self._decompose, [text, features], features),
            "pgml_predict_text": (self._predict_text, [text, duckdb.list_type(text)], double),
            "pgml_predict_row": (self._predict_row, [text, text], double),
            "pgml_predict_proba_row": (self._predict_proba_row, [text, text], features),
            "pgml_predict_joint_row": (self._predict_joint_row, [text, text], features),
        }
        for name, (function, parameters, result) in functions.items():
            with contextlib.suppress(duckdb.InvalidInputException):
                con.remove_function(name)
            con.create_function(
                name, function, parameters, result, type=func.ARROW, null_handling=func.SPECIAL
            )

    def _predict(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        return _guarded(lambda: self._apply(keys, features, "predict"))

    def _predict_proba(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        return _guarded(lambda: self._apply(keys, features, "predict_proba"))

    def _predict_joint(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        return _guarded(lambda: self._apply(keys, features, "predict_joint"))

    def _decompose(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        return _guarded(lambda: self._apply(keys, features, "decompose"))

    def _predict_batch(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        """Each row's array holds the features of many rows one after another: a prediction
        for each of those rows (PostgresML's pgml.predict_batch)."""
        return _guarded(lambda: self._apply(keys, features, "predict_batch"))

    def _predict_text(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        """Rows with text features: each value as text, parsed by the model's preprocessing."""
        return _guarded(lambda: self._apply(keys, features, "predict", rows=_text_rows))

    def _predict_row(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        """A whole row (a ROW(...) constructor or a table's row) as JSON: its values by name
        when it has every feature column, else in order (:func:`trainer.model.Model.row_values`)."""
        return _guarded(lambda: self._apply(keys, features, "predict", rows=_json_rows))

    def _predict_proba_row(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        return _guarded(lambda: self._apply(keys, features, "predict_proba", rows=_json_rows))

    def _predict_joint_row(self, keys: pa.Array, features: pa.Array) -> pa.Array:
        return _guarded(lambda: self._apply(keys, features, "predict_joint", rows=_json_rows))

    def _apply(
        self,
        keys: pa.Array,
        features: pa.Array,
        what: str,
        *,
        rows: Callable[[Model, pa.Array], np.ndarray | pa.Table] | None = None,
    ) -> pa.Array:
        """One value per row for ``predict``; one array per row for the others: the class
        probabilities, the labels of a joint model, the components, or a batch's predictions.
        ``rows`` turns the features of some rows into the model's input (default: arrays of
        numbers, a float matrix)."""
        keys = _plain(keys)
        features = _plain(features)
        count = len(features)
        valid = np.asarray(pc.and_(pc.is_valid(keys), pc.is_valid(features)).to_numpy(False))
        out: list[np.ndarray | None] = [None] * count
        result = np.full(count, np.nan)
        for key, where in _groups(keys, valid):
            model = self.model(key)
            started = time.perf_counter()
            chosen = _rows(features, where)
            if what == "predict_batch":
                batches = [_batch(model, row) for row in chosen.to_pylist()]
                scored = sum(len(b) for b in batches)
                for i, batch in zip(where, batches, strict=True):
                    predicted = model.predict_matrix(batch) if len(batch) else np.empty(0)
                    out[i] = as_numbers(model, predicted)
                self.observe(key, scored, time.perf_counter() - started)
                continue
            given = _matrix(chosen) if rows is None else rows(model, chosen)
            if what == "predict":
                result[where] = as_numbers(model, _call(model, "predict", given))
            else:
                for i, row in zip(where, _call(model, what, given), strict=True):
                    out[i] = row
            self.observe(key, len(where), time.perf_counter() - started)
        if what == "predict":
            return pa.array(result, mask=~valid)
        return pa.array(
            [None if row is None else row.tolist() for row in out], pa.list_(pa.float64())
        )


def _call(model: Model, what: str, given: np.ndarray | pa.Table) -> np.ndarray:
    """``model.<what>`` of a float matrix or of a table of raw values."""
    if isinstance(given, np.ndarray):
        given = model.preprocessor.table_from_matrix(given)
    method: Callable[[pa.Table], np.ndarray] = getattr(model, what)
    return method(given)


def _text_rows(model: Model, features: pa.Array) -> pa.Table:
    return model.preprocessor.table_from_rows(features.to_pylist())


def _json_rows(model: Model, features: pa.Array) -> pa.Table:
    rows = [model.row_values(json.loads(text)) for text in features.to_pylist()]
    return model.preprocessor.table_from_rows(rows)


def _batch(model: Model, values: list[float | None]) -> np.ndarray:
    """A flat array of features as one row per prediction: as many values per row as the
    model has feature columns (or numbers, with arrays flattened)."""
    columns = model.preprocessor.columns
    width = sum(c.width for c in columns)
    flat = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    for size in dict.fromkeys((width, len(columns))):
        if size and len(flat) % size == 0:
            return flat.reshape(-1, size)
    raise TrainingError(
        f"pgml.predict_batch got {len(flat)} feature values, not a whole number of rows of"
        f" {width} (the model's features: {', '.join(model.feature_names)})",
        sqlstate="22023",
    )


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values


def _groups(keys: pa.Array, valid: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Row indices per project (or model id): usually one, found without grouping."""
    if not valid.any():
        return []
    bounds = pc.min_max(keys)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low == high:
        return [(low, np.flatnonzero(valid))]
    return [
        (key, np.flatnonzero(valid & np.asarray(pc.equal(keys, key).fill_null(False))))
        for key in pc.unique(keys.filter(pa.array(valid))).to_pylist()
    ]


def _rows(features: pa.Array, where: np.ndarray) -> pa.Array:
    return features if len(where) == len(features) else features.take(pa.array(where))


def _matrix(features: pa.Array) -> np.ndarray:
    """A float matrix from a list array whose rows all have the same length (NULL → NaN)."""
    if features.null_count == 0 and pa.types.is_list(features.type):
        offsets = features.offsets.to_numpy()
        lengths = np.diff(offsets)
        width = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths == width).all():
            values = features.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
            flat = np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False))
            return flat.reshape(len(features), width)
    lengths = pc.list_value_length(features).to_numpy(zero_copy_only=False)
    width = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and (lengths != width).any():
        raise TrainingError(
            "every row must pass the same number of features; found arrays of"
            f" {int(lengths.min())} to {int(lengths.max())} values",
            sqlstate="22023",
        )
    values = pc.list_flatten(features).cast(pa.float64()).fill_null(np.nan)
    return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(len(features), width)


def as_numbers(model: Model, predicted: np.ndarray) -> np.ndarray:
    if model.task == "decomposition":  # PostgresML's answer: the first component
        return np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)[:, 0]
    if model.joint:
        raise TrainingError(
            "pgml.predict gives one number per row; a joint model gives one per label ("
            + ", ".join(model.labels)
            + "): use pgml.predict_joint",
            sqlstate="0A000",
        )
    if predicted.dtype.kind in "biuf":
        return predicted.astype(np.float64)
    if model.classes is not None:  # text labels: their index among the classes, as a number
        return model.label_indices(predicted)
    return predicted.astype(np.float64)


def _guarded(run: object) -> pa.Array:
    """Run a scoring call; errors go to DuckDB with their SQLSTATE in the message."""
    try:
        return run()  # type: ignore[operator]
    except SidecarError as exc:
        raise ValueError(f"[pgml {exc.sqlstate}] {exc}") from None


def scoring_error(exc: duckdb.Error) -> SidecarError | None:
    """The scoring error a DuckDB error carries, if it came from a pgml function."""
    found = _ERROR.search(str(exc))
    if found is None:
        return None
    return SidecarError(found.group(2).strip(), sqlstate=found.group(1))
