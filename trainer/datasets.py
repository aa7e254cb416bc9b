"""PostgresML's toy data sets (``pgml.load_dataset``), from scikit-learn's bundled files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mirror.errors import TrainingError

if TYPE_CHECKING:
    import duckdb

DATASETS: tuple[str, ...] = ("breast_cancer", "diabetes", "digits", "iris", "linnerud", "wine")

# Column names and types follow PostgresML's load_dataset (pgml-extension/src/orm/dataset.rs):
# FLOAT4 features become REAL, INT4 targets INTEGER, SMALLINT stays SMALLINT.


def load_dataset(con: duckdb.DuckDBPyConnection, name: str) -> tuple[str, int]:
    """Create (or replace) table ``pgml.<name>``; return (qualified table name, rows).

    Runs in a transaction of its own: ``con`` must not be inside one (DuckDB aborts an open
    transaction when asked to begin another).
    """
    build = _BUILDERS.get(name)
    if build is None:
        raise TrainingError(
            f'unknown dataset "{name}": choose one of {", ".join(DATASETS)}', sqlstate="22023"
        )
    rows = build()
    view = "pgml_dataset_rows"
    con.begin()
    try:
        con.register(view, rows)
        con.execute("create schema if not exists pgml")
        con.execute(f'create or replace table pgml."{name}" as select * from "{view}"')
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        con.unregister(view)
    return f"pgml.{name}", rows.num_rows


def _real_columns(data: Any, names: Sequence[str]) -> dict[str, pa.Array]:
    """One REAL column per feature, in the order of ``names`` (columns of ``data``)."""
    values = np.asarray(data, dtype=np.float32)
    return {str(name): pa.array(values[:, i]) for i, name in enumerate(names)}


def _breast_cancer() -> pa.Table:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    columns = _real_columns(bunch.data, list(bunch.feature_names))
    columns["malignant"] = pa.array(bunch.target == 0)  # scikit-learn's class 0 is malignant
    return pa.table(columns)


def _diabetes() -> pa.Table:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    columns = _real_columns(bunch.data, list(bunch.feature_names))
    columns["target"] = pa.array(bunch.target.astype(np.float32))
    return pa.table(columns)


def _digits() -> pa.Table:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.data.astype(np.int16)
    offsets = np.arange(0, pixels.size + 1, pixels.shape[1], dtype=np.int32)
    image = pa.ListArray.from_arrays(pa.array(offsets), pa.array(pixels.ravel()))
    return pa.table({"image": image, "target": pa.array(bunch.target.astype(np.int16))})


def _iris() -> pa.Table:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    columns = _real_columns(bunch.data, names)
    columns["target"] = pa.array(bunch.target.astype(np.int32))
    return pa.table(columns)


def _linnerud() -> pa.Table:
    from sklearn.datasets import load_linnerud

    bunch = load_linnerud()
    exercise = _real_columns(bunch.data, [n.lower() for n in bunch.feature_names])
    physiological = _real_columns(bunch.target, [n.lower() for n in bunch.target_names])
    return pa.table({**exercise, **physiological})


def _wine() -> pa.Table:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    features = _real_columns(bunch.data, list(bunch.feature_names))
    # PostgresML's table puts hue before color_intensity; the values go to their own names.
    order = list(features)
    hue, color = order.index("hue"), order.index("color_intensity")
    order[hue], order[color] = order[color], order[hue]
    columns = {name: features[name] for name in order}
    columns["target"] = pa.array(bunch.target.astype(np.int32))
    return pa.table(columns)


_BUILDERS: dict[str, Callable[[], pa.Table]] = {
    "breast_cancer": _breast_cancer,
    "diabetes": _diabetes,
    "digits": _digits,
    "iris": _iris,
    "linnerud": _linnerud,
    "wine": _wine,
}
