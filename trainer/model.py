"""A trained model as it is saved: fitted preprocessing, estimator, and what its outputs mean.

Prediction takes raw column values, as the relation holds them; the preprocessing fitted at
training turns them into features. The file is a pickle whose SHA-256 the registry keeps and
``load_model`` checks before unpickling.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mirror.errors import TrainingError
from trainer import pickles
from trainer.preprocess import Preprocessor


@dataclass(slots=True)
class Model:
    """Preprocessing and estimator fitted together; ``classes`` maps class indices to labels.

    ``monitoring`` is what the monitor checkpoints with an online model: its drift detectors'
    state as of the rows learned, so a replay from the checkpoint detects as the first time.
    """

    task: str
    algorithm: str
    preprocessor: Preprocessor
    estimator: Any
    label: str | None = None
    classes: np.ndarray | None = None
    monitoring: dict[str, Any] | None = None
    labels: tuple[str, ...] = ()
    """Every label column; several for a joint model (``label`` is the first)."""

    @property
    def joint(self) -> bool:
        """Whether the model predicts several labels at once (``pgml.train_joint``)."""
        return len(self.labels) > 1

    def __setstate__(self, state: Any) -> None:
        """Unpickle; a model saved before a field existed gets the field's default."""
        values = state[1] if isinstance(state, tuple) else state
        for f in fields(self):
            setattr(self, f.name, values.get(f.name, f.default))

    def label_indices(self, labels: np.ndarray, *, learn: bool = False) -> np.ndarray:
        """Class indices of raw labels, as floats; NaN for a label the model does not know.

        With ``learn`` (an online model learning new rows) a label it does not know becomes a
        new class, its index one past the last: the indices it learned never change, so
        ``classes`` is sorted only up to the first class added this way.
        """
        assert self.classes is not None
        index = {label: i for i, label in enumerate(self.classes.tolist())}
        out = np.full(len(labels), np.nan)
        added: list[Any] = []
        for row, label in enumerate(labels.tolist()):
            found = index.get(label)
            if found is None and learn:
                found = index[label] = len(index)
                added.append(label)
            if found is not None:
                out[row] = found
        if added:
            kind = self.classes.dtype
            kind = np.dtype(object) if kind.kind in "US" else kind  # no fixed-width truncation
            self.classes = np.concatenate([self.classes.astype(kind), np.array(added, kind)])
        return out

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.feature_names

    def features(self, table: pa.Table) -> np.ndarray:
        return self.preprocessor.transform(table)

    def predict(self, table: pa.Table) -> np.ndarray:
        """One prediction per row of ``table`` (raw feature columns by name).

        Regression gives numbers, classification the class labels, clustering cluster numbers,
        decomposition the components (one row of them per input row).
        """
        x = self.features(table)
        if self.task == "decomposition":
            return np.asarray(self.estimator.transform(x))
        if not hasattr(self.estimator, "predict"):
            raise TrainingError(
                f"{self.algorithm} cannot predict: it "
                + ("clusters the columns, not the rows; use pgml.decompose for the row's value"
                   " per cluster of columns" if hasattr(self.estimator, "transform") else
                   "labels only the rows it was trained on (PostgresML cannot predict with it"
                   " either). To predict, train kmeans, mini_batch_kmeans, birch,"
                   " affinity_propagation or mean_shift"),
                sqlstate="0A000",
            )  # fmt: skip
        predicted = np.asarray(self.estimator.predict(x))
        if self.classes is not None:
            return self.classes[predicted.astype(np.int64)]
        return predicted

    def predict_joint(self, table: pa.Table) -> np.ndarray:
        """Every label's prediction per row (a joint model's), labels in training order."""
        if not self.joint:
            one = f"one label, {self.label}" if self.label else "one value"
            raise TrainingError(
                "pgml.predict_joint needs a joint model (pgml.train_joint, several labels);"
                f" this {self.task} model predicts {one}: use pgml.predict",
                sqlstate="0A000",
            )
        return np.asarray(self.estimator.predict(self.features(table)), dtype=np.float64)

    def predict_joint_matrix(self, matrix: np.ndarray) -> np.ndarray:
        return self.predict_joint(self.preprocessor.table_from_matrix(matrix))

    def decompose(self, table: pa.Table) -> np.ndarray:
        """The components of each row of ``table``: a decomposition model's (pca), or a
        feature agglomeration's value per cluster of columns."""
        if self.task != "decomposition" and self.algorithm != "feature_agglomeration":
            raise TrainingError(
                f"pgml.decompose needs a decomposition model (pca), not {self.task}"
                f" ({self.algorithm}); use pgml.predict",
                sqlstate="0A000",
            )
        return np.asarray(self.estimator.transform(self.features(table)))

    def decompose_matrix(self, matrix: np.ndarray) -> np.ndarray:
        return self.decompose(self.preprocessor.table_from_matrix(matrix))

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        """Class probabilities per row, columns in the order of ``classes``."""
        if self.task != "classification":
            raise TrainingError(f"predict_proba needs a classification model, not {self.task}")
        if not hasattr(self.estimator, "predict_proba"):
            raise TrainingError(
                f"algorithm {self.algorithm} does not give probabilities; use predict, or train"
                " with an algorithm such as linear, random_forest or xgboost"
            )
        return np.asarray(self.estimator.predict_proba(self.features(table)))

    def row_values(self, row: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        """A whole row's feature values (:meth:`trainer.preprocess.Preprocessor.row_values`)."""
        return self.preprocessor.row_values(row)

    def predict_rows(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """Predictions for raw feature values given positionally, as in pgml.predict."""
        return self.predict(self.preprocessor.table_from_rows(rows))

    def predict_proba_rows(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        return self.predict_proba(self.preprocessor.table_from_rows(rows))

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Predictions for raw numeric feature values, one row of ``matrix`` per prediction."""
        return self.predict(self.preprocessor.table_from_matrix(matrix))

    def predict_proba_matrix(self, matrix: np.ndarray) -> np.ndarray:
        return self.predict_proba(self.preprocessor.table_from_matrix(matrix))


def save_model(model: Model, path: Path) -> str:
    """Write ``model`` to ``path`` atomically and return its SHA-256 (a model too deep for
    pickle's default recursion is pickled on a deep stack, see ``trainer.pickles``)."""
    data = pickles.dumps(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def load_model(path: Path, sha256: str) -> Model:
    """Read a saved model, refusing a file whose SHA-256 is not the registered one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrainingError(
            f"model file {path} is missing; retrain the project or restore the file",
            sqlstate="58P01",
        ) from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise TrainingError(
            f"model file {path} does not match the SHA-256 in the registry; it was changed or"
            " damaged after training: restore it or retrain the project",
            sqlstate="XX001",
        )
    model = pickle.loads(data)
    if not isinstance(model, Model):
        raise TrainingError(f"{path} does not hold a model", sqlstate="XX001")
    return model
