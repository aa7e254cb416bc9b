"""PostgresML's other algorithms: its defaults per task, CatBoost and kNN, the clustering
algorithms that label only the rows they are fitted on, and decomposition's components."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from mirror.errors import TrainingError
from trainer import algorithms
from trainer.datasets import load_dataset
from trainer.split import split
from trainer.train import Trainer


def _rows(trainer: Trainer, snapshot_id: int, label: str | None) -> tuple[Any, ...]:
    """The snapshot's features (image flattened) and labels, and the trainer's split."""
    snapshot = trainer.registry.snapshot(snapshot_id)
    assert snapshot is not None
    table = pq.read_table(trainer.home / snapshot.path)
    y = None if label is None else table[label].to_numpy()
    features = table.drop_columns([label]) if label else table
    columns = []
    for column in features.itercolumns():
        values = column.to_pylist()
        columns += list(np.array(values, dtype=float).T) if isinstance(values[0], list) else [
            np.array(values, dtype=float)
        ]  # fmt: skip
    x = np.column_stack(columns)
    train, test = split(len(x), test_size=snapshot.test_size, sampling=snapshot.test_sampling,
                        seed=snapshot.seed, labels=y if label else None)  # fmt: skip
    return x, y, train, test


def test_unnamed_algorithms_are_postgresmls_defaults_per_task(trainer: Trainer) -> None:
    load_dataset(trainer.con, "digits")
    trainer.con.execute("create view pgml.digit_vectors as select image from pgml.digits")
    clusters = trainer.train("digit clusters", task="cluster", relation="pgml.digit_vectors",
                             hyperparams={"n_clusters": 10})  # fmt: skip
    assert (clusters.task, clusters.algorithm) == ("clustering", "kmeans")
    reduced = trainer.train("digit reduction", task="decomposition",
                            relation="pgml.digit_vectors")  # fmt: skip
    assert reduced.algorithm == "pca"
    # the source's pgml.train names linear when the user named nothing
    again = trainer.train("digit reduction", algorithm="linear", hyperparams={"n_components": 3})
    assert again.algorithm == "pca"
    record, model = trainer.model(again.model_id)
    x, _, train, _ = _rows(trainer, record.snapshot_id, None)
    from sklearn.decomposition import PCA

    by_hand = PCA(n_components=3, random_state=0).fit(x[train])
    components = model.decompose_matrix(x[:5])
    np.testing.assert_allclose(np.abs(components), np.abs(by_hand.transform(x[:5])), rtol=1e-6)
    assert again.metrics["cumulative_explained_variance"] == pytest.approx(
        float(np.sum(by_hand.explained_variance_ratio_))
    )
    from predictor.scoring import as_numbers

    # pgml.predict with a decomposition model: its first component, as PostgresML answers
    assert as_numbers(model, model.predict_matrix(x[:5])) == pytest.approx(components[:, 0])
    regression = trainer.train("bad", task="regression", relation="pgml.digits", y="target")
    assert regression.algorithm == "linear"


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_catboost_and_knn_equal_their_libraries_on_the_same_split(
    trainer: Trainer, task: str
) -> None:
    load_dataset(trainer.con, "breast_cancer" if task == "classification" else "diabetes")
    relation, label = (
        ("pgml.breast_cancer", "malignant") if task == "classification" else
        ("pgml.diabetes", "target")
    )  # fmt: skip
    from sklearn.metrics import f1_score, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for algorithm in ("catboost", "knn"):
        result = trainer.train(f"{algorithm} {task}", task=task, relation=relation, y=label,
                               algorithm=algorithm, hyperparams={"iterations": 50}
                               if algorithm == "catboost" else {})  # fmt: skip
        record, _ = trainer.model(result.model_id)
        x, y, train, test = _rows(trainer, record.snapshot_id, label)
        if task == "classification":
            y = np.unique(y, return_inverse=True)[1]
        estimator = algorithms.make_estimator(algorithm, task, record.hyperparams, seed=0)
        if record.notes["scale"]["chosen"] == "standard":
            estimator = make_pipeline(StandardScaler(), estimator)
        predicted = estimator.fit(x[train], y[train]).predict(x[test])
        if task == "classification":
            expected = f1_score(y[test], predicted, average="macro")
            assert result.metrics["f1"] == pytest.approx(expected, abs=1e-12), algorithm
            assert result.metrics["f1"] > 0.9
        else:
            assert result.metrics["r2"] == pytest.approx(r2_score(y[test], predicted), abs=1e-7)
            assert result.metrics["r2"] > 0.3
    assert not list(trainer.home.glob("**/catboost_info"))  # CatBoost writes no files


def test_clustering_that_cannot_label_new_rows_is_scored_on_its_own(trainer: Trainer) -> None:
    load_dataset(trainer.con, "iris")
    trainer.con.execute("create view pgml.iris_features as select * exclude (target)"
                        " from pgml.iris")  # fmt: skip
    from sklearn.metrics import silhouette_score

    first = trainer.train("flowers", task="clustering", relation="pgml.iris_features",
                          algorithm="kmeans", hyperparams={"n_clusters": 3})  # fmt: skip
    assert first.metrics["silhouette"] > 0.3  # standardised features
    tries: list[tuple[str, dict[str, Any]]] = [
        ("dbscan", {"eps": 0.8}),
        ("optics", {"min_samples": 10}),
        ("spectral", {"n_clusters": 3}),
        ("spectral_bi", {"n_clusters": 3}),
        ("spectral_co", {"n_clusters": 3}),
        ("feature_agglomeration", {"n_clusters": 2}),
    ]
    for algorithm, hyperparams in tries:
        result = trainer.train("flowers", algorithm=algorithm, hyperparams=hyperparams)
        record, model = trainer.model(result.model_id)
        x, _, train, _ = _rows(trainer, record.snapshot_id, None)
        fitted = model.features(model.preprocessor.table_from_matrix(x[train]))
        estimator = model.estimator
        if algorithm == "feature_agglomeration":  # clusters of columns
            expected = silhouette_score(fitted.T, estimator.labels_)
            three = model.features(model.preprocessor.table_from_matrix(x[:3]))
            np.testing.assert_allclose(model.decompose_matrix(x[:3]), estimator.transform(three))
        else:
            labels = getattr(estimator, "row_labels_", None)
            labels = estimator.labels_ if labels is None else labels
            assert len(labels) == len(train)  # the training rows, not the test rows
            expected = silhouette_score(fitted, labels)
        assert result.metrics["silhouette"] == pytest.approx(float(expected)), algorithm
        with pytest.raises(TrainingError, match=f"{algorithm} cannot predict") as refused:
            model.predict_matrix(x[:2])
        assert refused.value.sqlstate == "0A000"
        assert not result.deployed or first.metrics["silhouette"] < result.metrics["silhouette"]
