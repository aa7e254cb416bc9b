"""Online (River) models behind scikit-learn's fit/predict, learning one row at a time in order.

An online model is trained like any other (the trainer calls ``fit`` on a snapshot's rows, in
the relation's order) and then keeps learning from replicated rows through ``partial_fit``.
Learning is prequential: each row is predicted first and learned second, and those predictions
feed progressive metrics, so a model is always scored on rows it had not yet seen.

Features reach River as dicts keyed ``f0, f1, ...`` (the preprocessed columns, in order).
Classification labels are class indices 0..k-1, as everywhere in the trainer. River is imported
only when a model is built or its hyperparameters are checked; the River class behind each
algorithm name is in ``trainer.online_algorithms``.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from mirror.errors import TrainingError
from trainer.online_algorithms import constructor_names, river_class, river_path, river_value

# Linear models learn with gradient steps: they see standardised features unless told
# otherwise (``scaled``); the others see them as they come unless told otherwise.
_SCALED = frozenset({"online_linear", "online_logistic"})
# Models whose predict_many/predict_proba_many beat a predict_one loop on large inputs.
_BATCH_PREDICT = frozenset({"online_linear", "online_logistic", "online_naive_bayes"})
_BATCH_ROWS = 512

_CONSTRUCTOR = ("algorithm", "task", "hyperparams", "seed", "scaled")
_CLAMP = 1e-15  # probabilities in log loss are kept in [1e-15, 1 - 1e-15], as River keeps them


class RiverEstimator:
    """A River model behind scikit-learn's fit/predict, learning one row at a time in order.

    ``rows_learned`` counts labelled rows learned since ``fit`` began; ``progressive`` holds
    the metrics of the predictions made before learning each, as River's progressive
    validation computes them (regression: mae, rmse, r2; classification: accuracy, f1,
    precision and recall (macro), log_loss); ``history`` holds a copy of them with ``rows``
    every ``history_every`` rows, and last the current state. The same rows give the same
    model, to the last bit, however they were split into ``partial_fit`` calls.
    """

    history_every: ClassVar[int] = 1000
    classes_: np.ndarray  # classification: the class indices learned so far
    scaled: bool | None = None  # models saved before it existed: the algorithm's default

    def __init__(
        self,
        algorithm: str,
        task: str,
        hyperparams: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        scaled: bool | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.task = task
        self.hyperparams = hyperparams
        self.seed = seed
        self.scaled = scaled
        """Whether River's StandardScaler goes in front of the model; None: only for the
        linear models."""
        self._new_river_estimator()  # rejects unknown names and values River refuses
        self._reset()

    # -- scikit-learn's estimator API ------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as scikit-learn's clone() needs them."""
        return {name: getattr(self, name) for name in _CONSTRUCTOR}

    def set_params(self, **params: Any) -> RiverEstimator:
        """Set constructor arguments, or River hyperparameters by name (as a search does)."""
        for name in _CONSTRUCTOR:
            if name in params:
                setattr(self, name, params[name])
        hyperparams = {name: v for name, v in params.items() if name not in _CONSTRUCTOR}
        if hyperparams:
            self.hyperparams = {**(self.hyperparams or {}), **hyperparams}
        self._new_river_estimator()
        return self

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        classifier = self.task == "classification"
        return Tags(
            estimator_type="classifier" if classifier else "regressor",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags() if classifier else None,
            regressor_tags=None if classifier else RegressorTags(),
        )

    def __repr__(self) -> str:
        return f"RiverEstimator({self.algorithm!r}, {self.task!r}, {self.hyperparams!r})"

    def fit(self, X: np.ndarray, y: np.ndarray) -> RiverEstimator:
        """Learn every row in order, from a fresh model; rows whose label is NaN are skipped."""
        self._reset()
        self._learn(X, y)
        return self

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Learn new rows in order; return what was predicted for each before learning it.

        A row whose label is NaN is neither learned nor predicted (NaN), and so is a row the
        model could not predict yet (a classifier that has learned nothing).
        """
        return self._learn(X, y)

    def metrics(self) -> dict[str, float]:
        """The progressive metrics under PostgresML's names (the model's registered metrics)."""
        p = self.progressive
        if not p:
            return {}
        if self.task == "classification":
            return {name: p[name] for name in ("f1", "precision", "recall", "accuracy", "log_loss")}
        return {
            "r2": p["r2"],
            "mean_squared_error": p["rmse"] ** 2,
            "mean_absolute_error": p["mae"],
        }

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Regression: one number per row; classification: one class index per row."""
        x = self._features(X)
        if self.task == "classification":
            return self.classes_[np.argmax(self._class_scores(x), axis=1)]
        model = self._model
        if len(x) >= _BATCH_ROWS and self.algorithm in _BATCH_PREDICT:
            return np.asarray(model.predict_many(self._frame(x)), dtype=np.float64)
        predict = model.predict_one
        keys = self._keys
        out = [predict(dict(zip(keys, row, strict=True))) for row in x.tolist()]
        return np.array([math.nan if v is None else v for v in out], dtype=np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities: one row per input row, columns in the order of ``classes_``."""
        if self.task != "classification":
            raise AttributeError(f"{self.algorithm} for {self.task} gives no probabilities")
        scores = self._class_scores(self._features(X))
        total = scores.sum(axis=1, keepdims=True)
        uniform = np.full_like(scores, 1.0 / max(len(self.classes_), 1))
        return np.where(total > 0, scores / np.where(total > 0, total, 1.0), uniform)

    # -- learning --------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.rows_learned = 0
        self.progressive: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._model: Any = None
        self._keys: list[str] = []
        self._binary = False  # a River binary classifier: learns 0/1 as False/True
        if self.task == "classification":
            self.classes_ = np.empty(0, dtype=np.int64)
            self._progress: _Progress = _ClassificationProgress()
        else:
            self._progress = _RegressionProgress()

    def _learn(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = self._features(X, learning=True)
        y = np.asarray(y)
        if y.shape != (len(x),):
            raise TrainingError(f"{len(x)} feature rows but labels of shape {y.shape}")
        predicted = np.full(len(y), math.nan)
        labelled = np.flatnonzero(~np.isnan(y)) if y.dtype.kind == "f" else np.arange(len(y))
        if not len(labelled):
            return predicted
        rows = x[labelled].tolist()
        if self.task == "classification":
            targets = self._class_indices(y[labelled])
            if self._model is None:
                self._model = self._build(targets)
            self._check_binary(targets)
            binary = max(int(targets.max()), int(self.classes_.max(initial=0))) <= 1
            before, p_true = self._learn_classes(rows, targets.tolist(), binary=binary)
            self.classes_ = np.union1d(self.classes_, targets)
        else:
            targets = y[labelled].astype(np.float64)
            if self._model is None:
                self._model = self._build(targets)
            before, p_true = self._learn_values(rows, targets.tolist()), None
        predicted[labelled] = before
        self._record(targets, before, p_true)
        return predicted

    def _learn_values(self, rows: list[list[float]], targets: list[float]) -> np.ndarray:
        model = self._model
        predict, learn = model.predict_one, model.learn_one
        before: list[float | None] = []
        append = before.append
        for features, target in zip(self._dicts(rows), targets, strict=True):
            append(predict(features))
            learn(features, target)
        if None in before:
            return np.array([math.nan if v is None else v for v in before], dtype=np.float64)
        return np.array(before, dtype=np.float64)

    def _dicts(self, rows: list[list[float]]) -> list[dict[str, float]]:
        """Each row as the dict River takes, keyed by feature name (built in one pass)."""
        return list(map(dict, map(zip, itertools.repeat(self._keys), rows)))

    def _learn_classes(
        self, rows: list[list[float]], targets: list[int], *, binary: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict, then learn, each row; return the predicted classes and the probability of
        each row's true class as River's log loss takes it: with two classes, one less the
        probability of class 1 for class 0 (River's LogLoss), else the class's own (its
        CrossEntropy); clamped to [1e-15, 1 - 1e-15]."""
        model = self._model
        predict, learn = model.predict_proba_one, model.learn_one
        before: list[float] = []
        p_true: list[float] = []
        low, high = _CLAMP, 1.0 - _CLAMP
        for features, target in zip(self._dicts(rows), targets, strict=True):
            proba = predict(features)
            if proba:
                before.append(max(proba, key=proba.get))  # as River's predict_one
                p = min(max(proba.get(1 if binary else target, 0.0), low), high)
                p_true.append(1.0 - p if binary and target == 0 else p)
            else:
                before.append(math.nan)
                p_true.append(math.nan)
            learn(features, target)
        return np.array(before, dtype=np.float64), np.array(p_true, dtype=np.float64)

    def _record(self, y: np.ndarray, before: np.ndarray, p_true: np.ndarray | None) -> None:
        """Update the progressive metrics, with a history entry every ``history_every`` rows."""
        every = self.history_every
        start = self.rows_learned
        cuts = [*range(every - start % every, len(y), every), len(y)]
        done = 0
        for cut in cuts:
            part = slice(done, cut)
            self._progress.update(y[part], before[part], None if p_true is None else p_true[part])
            self.rows_learned = start + cut
            self.progressive = self._progress.values()
            done = cut
            if self.rows_learned % every == 0:
                self._snapshot()
        if self.rows_learned % every:
            self._snapshot()

    def _snapshot(self) -> None:
        """Add the current state to ``history``, replacing a last entry between intervals."""
        every = self.history_every
        if self.history and self.history[-1]["rows"] % every:
            self.history.pop()
        self.history.append({**self.progressive, "rows": self.rows_learned})

    def _class_indices(self, y: np.ndarray) -> np.ndarray:
        if (y.dtype.kind == "f" and np.any(y != np.floor(y))) or np.any(y < 0):
            raise TrainingError("classification labels must be class indices 0, 1, 2, ...")
        return y.astype(np.int64)

    def _check_binary(self, targets: np.ndarray) -> None:
        if self._binary and targets.max() > 1:
            raise TrainingError(
                f"{self.algorithm} learned two classes and cannot learn class {targets.max()};"
                " retrain it on rows that hold every class",
                sqlstate="22000",
            )

    # -- building the River model ----------------------------------------------------------------

    def _build(self, targets: np.ndarray) -> Any:
        from river import multiclass, preprocessing

        estimator = self._new_river_estimator()
        if self.algorithm == "online_logistic":
            self._binary = int(targets.max()) <= 1
            if not self._binary:
                estimator = multiclass.OneVsRestClassifier(estimator)
        if self.algorithm in _SCALED if self.scaled is None else self.scaled:
            return preprocessing.StandardScaler() | estimator
        return estimator

    def _new_river_estimator(self) -> Any:
        """A fresh River estimator with the hyperparameters; TrainingError if River refuses."""
        path = river_path(self.algorithm, self.task)
        given = dict(self.hyperparams or {})
        valid = constructor_names(path)
        unknown = [name for name in given if name not in valid]
        if unknown:
            name = str(unknown[0])
            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise TrainingError(
                f'{self.algorithm} ({self.task}) has no hyperparameter "{name}"{hint}; valid'
                f" hyperparameters: {', '.join(sorted(valid)) or 'none'}",
                sqlstate="22023",
            )
        params = {name: river_value(name, value) for name, value in given.items()}
        if "seed" in valid and "seed" not in params:
            params["seed"] = self.seed
        try:
            return river_class(path)(**params)
        except (TypeError, ValueError) as exc:
            raise TrainingError(
                f"{self.algorithm} ({self.task}) refuses hyperparameters {given}: {exc}",
                sqlstate="22023",
            ) from None

    # -- features and predictions ----------------------------------------------------------------

    def _features(self, X: np.ndarray, *, learning: bool = False) -> np.ndarray:
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2:
            raise TrainingError(f"features must be a 2-D matrix, not shape {x.shape}")
        if self._model is None:
            if not learning:
                raise TrainingError(f"{self.algorithm} has not learned any rows yet")
            self._keys = [f"f{i}" for i in range(x.shape[1])]
        if x.shape[1] != len(self._keys):
            raise TrainingError(
                f"{self.algorithm} learned {len(self._keys)} features, not {x.shape[1]}"
            )
        return x

    def _class_scores(self, x: np.ndarray) -> np.ndarray:
        """Unnormalised probabilities, columns in ``classes_`` order (0 for unpredicted)."""
        model = self._model
        column = {int(c): j for j, c in enumerate(self.classes_.tolist())}
        scores = np.zeros((len(x), len(column)))
        if len(x) >= _BATCH_ROWS and self.algorithm in _BATCH_PREDICT:
            frame = model.predict_proba_many(self._frame(x))
            for label in frame.columns:
                j = column.get(int(label))
                if j is not None:
                    scores[:, j] = frame[label].to_numpy(dtype=np.float64)
            return scores
        predict, keys = model.predict_proba_one, self._keys
        for i, row in enumerate(x.tolist()):
            for label, p in predict(dict(zip(keys, row, strict=True))).items():
                j = column.get(int(label))
                if j is not None:
                    scores[i, j] = p
        return scores

    def _frame(self, x: np.ndarray) -> Any:
        import pandas as pd

        return pd.DataFrame(x, columns=self._keys)


class _Progress:
    """Progressive metrics, updated with each learned chunk's pre-learning predictions.

    Sums are added row after row (``_running``), so they come out the same to the last bit
    however the rows were split into chunks: the same stream always gives the same model.
    """

    def update(self, y: np.ndarray, before: np.ndarray, p_true: np.ndarray | None) -> None:
        raise NotImplementedError

    def values(self) -> dict[str, float]:
        raise NotImplementedError


def _running(total: float, values: np.ndarray) -> float:
    """``total`` plus ``values`` added one at a time, in order (a cumulative sum is sequential,
    unlike numpy's pairwise ``sum``)."""
    if not len(values):
        return total
    return float(np.cumsum(np.concatenate(([total], values)))[-1])


class _RegressionProgress(_Progress):
    """MAE, RMSE and R² over every row predicted so far, as River's metrics compute them (R²
    against the variance of the labels, summed around the first label for stability)."""

    def __init__(self) -> None:
        self.n = 0
        self.absolute = 0.0
        self.squared = 0.0
        self.shift: float | None = None
        self.deviation = 0.0  # sum of (y - shift)
        self.deviation_squared = 0.0  # sum of (y - shift)²

    def update(self, y: np.ndarray, before: np.ndarray, p_true: np.ndarray | None) -> None:
        scored = ~np.isnan(before)
        y, error = y[scored], y[scored] - before[scored]
        if not len(y):
            return
        if self.shift is None:
            self.shift = float(y[0])
        centred = y - self.shift
        self.n += len(y)
        self.absolute = _running(self.absolute, np.abs(error))
        self.squared = _running(self.squared, error * error)
        self.deviation = _running(self.deviation, centred)
        self.deviation_squared = _running(self.deviation_squared, centred * centred)

    def values(self) -> dict[str, float]:
        if not self.n:
            return {}
        m2 = self.deviation_squared - self.deviation * self.deviation / self.n
        return {
            "mae": self.absolute / self.n,
            "rmse": math.sqrt(self.squared / self.n),
            "r2": 1.0 - self.squared / m2 if self.n > 1 and m2 > 0 else 0.0,
        }


class _ClassificationProgress(_Progress):
    """Accuracy, macro F1, precision and recall, and log loss over every row predicted so far,
    as River's metrics compute them."""

    def __init__(self) -> None:
        self.confusion = np.zeros((0, 0), dtype=np.int64)  # [true class, predicted class]
        self.log_loss = 0.0

    def update(self, y: np.ndarray, before: np.ndarray, p_true: np.ndarray | None) -> None:
        scored = ~np.isnan(before)
        if not scored.any():
            return
        true, predicted = y[scored].astype(np.int64), before[scored].astype(np.int64)
        size = max(len(self.confusion), int(true.max()) + 1, int(predicted.max()) + 1)
        if size > len(self.confusion):
            grown = np.zeros((size, size), dtype=np.int64)
            grown[: len(self.confusion), : len(self.confusion)] = self.confusion
            self.confusion = grown
        np.add.at(self.confusion, (true, predicted), 1)
        if p_true is not None:
            losses = -np.log(p_true[scored])  # clamped by the learner
            self.log_loss = _running(self.log_loss, losses)

    def values(self) -> dict[str, float]:
        n = int(self.confusion.sum())
        if not n:
            return {}
        hits = np.diag(self.confusion).astype(np.float64)
        predicted = self.confusion.sum(axis=0)
        true = self.confusion.sum(axis=1)
        present = (predicted + true) > 0  # the classes River's confusion matrix knows
        precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
        recall = np.divide(hits, true, out=np.zeros_like(hits), where=true > 0)
        return {
            "accuracy": float(hits.sum()) / n,
            "f1": float(np.mean(2 * hits[present] / (predicted + true)[present])),
            "precision": float(np.mean(precision[present])),
            "recall": float(np.mean(recall[present])),
            "log_loss": self.log_loss / n,
        }
