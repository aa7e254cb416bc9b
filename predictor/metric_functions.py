"""PostgresML's metric helpers on the endpoint: scikit-learn's scores of two arrays.

``pgml.sklearn_f1_score(ground_truth real[], y_hat real[])`` and ``sklearn_r2_score`` answer
a ``real``; ``sklearn_regression_metrics`` a JSON object of ``r2``, ``mse`` and ``mae``;
``sklearn_classification_metrics(ground_truth, y_hat, num_classes)`` one of ``f1``,
``f1_micro``, ``precision``, ``recall``, ``accuracy``, ``mcc``, and ``roc_auc`` when
``num_classes`` is 2. They compute as PostgresML's Python does (the same scikit-learn calls on
the same ``real`` numbers, macro averages when more than two labels occur), and round each
score to ``real`` as it does; a score scikit-learn leaves undefined (NaN) is JSON ``null``.

They are DuckDB functions over Arrow vectors, ``pgml_<name>``; each row is one whole metric.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from duckdb import func

from mirror.errors import SidecarError

NAMES = (
    "sklearn_f1_score",
    "sklearn_r2_score",
    "sklearn_regression_metrics",
    "sklearn_classification_metrics",
)
"""The ``pgml.*`` names; each is the DuckDB function ``pgml_<name>``."""


def _vector(values: Any) -> np.ndarray:
    if any(v is None for v in values):
        raise SidecarError("array must not contain nulls", sqlstate="22004")
    return np.asarray(values, dtype=np.float32).reshape((-1, 1))


def _scored(compute: Callable[[], Any]) -> Any:
    """Run a scikit-learn call; its complaints about the arrays become SQL errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undefined scores are answered as NaN
            return compute()
    except ValueError as exc:
        raise SidecarError(str(exc).splitlines()[0], sqlstate="22023") from None


def _real(value: float) -> float | None:
    """A score as PostgresML returns it: rounded to ``real``; NaN as JSON null."""
    rounded = float(np.float32(value))
    return None if math.isnan(rounded) else rounded


def f1_score(truth: Any, predicted: Any) -> float:
    from sklearn.metrics import f1_score as score

    return float(np.float32(_scored(lambda: score(_vector(truth), _vector(predicted)))))


def r2_score(truth: Any, predicted: Any) -> float:
    from sklearn.metrics import r2_score as score

    return float(np.float32(_scored(lambda: score(_vector(truth), _vector(predicted)))))


def regression_metrics(truth: Any, predicted: Any) -> dict[str, float | None]:
    from sklearn import metrics

    y, y_hat = _vector(truth), _vector(predicted)
    scores = {
        "r2": _scored(lambda: metrics.r2_score(y, y_hat)),
        "mse": _scored(lambda: metrics.mean_squared_error(y, y_hat)),
        "mae": _scored(lambda: metrics.mean_absolute_error(y, y_hat)),
    }
    return {k: _real(v) for k, v in scores.items()}


def classification_metrics(truth: Any, predicted: Any, classes: int) -> dict[str, float | None]:
    from sklearn import metrics

    y, y_hat = _vector(truth), _vector(predicted)
    average = "macro" if len(set(y.ravel()) | set(y_hat.ravel())) > 2 else "binary"
    scores = {
        "f1": _scored(lambda: metrics.f1_score(y, y_hat, average=average)),
        "f1_micro": _scored(lambda: metrics.f1_score(y, y_hat, average="micro")),
        "precision": _scored(lambda: metrics.precision_score(y, y_hat, average=average)),
        "recall": _scored(lambda: metrics.recall_score(y, y_hat, average=average)),
        "accuracy": _scored(lambda: metrics.accuracy_score(y, y_hat)),
        "mcc": _scored(lambda: metrics.matthews_corrcoef(y, y_hat)),
    }
    if classes == 2:
        scores["roc_auc"] = _scored(lambda: metrics.roc_auc_score(y, y_hat))
    return {k: _real(v) for k, v in scores.items()}


def _json(scores: dict[str, float | None]) -> str:
    """As jsonb prints an object: shorter keys first."""
    return json.dumps(dict(sorted(scores.items(), key=lambda kv: (len(kv[0]), kv[0]))))


def _rows(compute: Callable[..., Any], out: pa.DataType, arity: int) -> Callable[..., pa.Array]:
    """A DuckDB Arrow function of ``arity`` columns computing ``compute`` for each row whose
    arguments are all non-NULL (PostgresML's functions are strict)."""

    def apply(columns: tuple[pa.Array, ...]) -> pa.Array:
        rows = zip(*(c.to_pylist() for c in columns), strict=True)
        try:
            values = [None if None in row else compute(*row) for row in rows]
        except SidecarError as exc:
            raise ValueError(f"[pgml {exc.sqlstate}] {exc}") from None
        return pa.array(values, out)

    def two(a: pa.Array, b: pa.Array) -> pa.Array:  # DuckDB counts the parameters
        return apply((a, b))

    def three(a: pa.Array, b: pa.Array, c: pa.Array) -> pa.Array:
        return apply((a, b, c))

    return two if arity == 2 else three


def register(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ``pgml_sklearn_*`` functions on the mirror's connection."""
    real, vector = duckdb.sqltypes.FLOAT, duckdb.list_type(duckdb.sqltypes.FLOAT)
    text = duckdb.sqltypes.VARCHAR
    functions: list[tuple[str, Callable[..., Any], list[Any], Any, pa.DataType]] = [
        ("sklearn_f1_score", f1_score, [vector, vector], real, pa.float32()),
        ("sklearn_r2_score", r2_score, [vector, vector], real, pa.float32()),
        (
            "sklearn_regression_metrics",
            lambda y, y_hat: _json(regression_metrics(y, y_hat)),
            [vector, vector], text, pa.string(),
        ),
        (
            "sklearn_classification_metrics",
            lambda y, y_hat, n: _json(classification_metrics(y, y_hat, n)),
            [vector, vector, duckdb.sqltypes.BIGINT], text, pa.string(),
        ),
    ]  # fmt: skip
    for name, compute, parameters, returns, arrow_type in functions:
        with contextlib.suppress(duckdb.InvalidInputException):
            con.remove_function(f"pgml_{name}")
        con.create_function(
            f"pgml_{name}", _rows(compute, arrow_type, len(parameters)), parameters, returns,
            type=func.ARROW, null_handling=func.SPECIAL, side_effects=False,
        )  # fmt: skip
