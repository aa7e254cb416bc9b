"""Every algorithm name on every task it supports: trains, predicts, round-trips, repeats."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mirror.errors import TrainingError
from trainer.algorithms import TASKS, algorithm_names, can_predict, is_online
from trainer.datasets import load_dataset
from trainer.metrics import evaluate, key_metric
from trainer.split import split
from trainer.train import Trainer

CASES = [(algorithm, task) for task in TASKS for algorithm in algorithm_names(task)]
DATA = {
    "regression": ("diabetes", "target"),
    "classification": ("iris", "target"),
    "clustering": ("iris", None),
    "decomposition": ("iris", None),
}


@pytest.mark.parametrize(("algorithm", "task"), CASES, ids=[f"{t}-{a}" for a, t in CASES])
def test_algorithm(trainer: Trainer, algorithm: str, task: str) -> None:
    dataset, y = DATA[task]
    load_dataset(trainer.con, dataset)
    first = trainer.train(
        "conformance", task=task, relation=f"pgml.{dataset}", y=y, algorithm=algorithm, seed=7
    )
    second = trainer.train("conformance", algorithm=algorithm)
    assert first.deployed
    assert second.snapshot_id == first.snapshot_id
    assert key_metric(task) in first.metrics
    assert {"fit_time", "score_time"} <= first.metrics.keys()

    record, model = trainer.model(first.model_id)
    _, again = trainer.model(second.model_id)
    snapshot = trainer.registry.snapshot(record.snapshot_id)
    assert snapshot is not None and snapshot.seed == 7
    table = pq.read_table(trainer.home / snapshot.path)
    features = table.drop_columns([y]) if y else table
    # The same seed on the same snapshot gives the same model.
    for name, value in first.metrics.items():
        if not name.endswith("_time"):
            assert second.metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    if not can_predict(algorithm):  # it labels the rows it was fitted on, and says so
        with pytest.raises(TrainingError, match=f"{algorithm} cannot predict"):
            model.predict(features)
        return
    predicted = model.predict(features)
    assert len(predicted) == table.num_rows
    np.testing.assert_array_equal(predicted, again.predict(features))

    metric = key_metric(task)
    if is_online(algorithm):  # every row learned, prequentially: the metrics are progressive
        assert model.estimator.rows_learned == table.num_rows
        assert model.estimator.metrics()[metric] == first.metrics[metric]
        return
    # The saved model scores the recorded held-out rows exactly as it did before it was saved.
    labels = None if y is None else table[y].to_numpy()
    if labels is not None and task == "regression":
        labels = labels.astype(np.float64)  # as the trainer reads labels
    _, test = split(
        table.num_rows,
        test_size=snapshot.test_size,
        sampling=snapshot.test_sampling,
        seed=snapshot.seed,
        labels=labels if task == "classification" else None,
    )
    y_test = None if labels is None else labels[test]
    if model.classes is not None and y_test is not None:
        y_test = np.searchsorted(model.classes, y_test)
    rescored = evaluate(
        task, model.estimator, model.features(features.take(pa.array(test))), y_test
    )
    assert rescored[metric] == pytest.approx(first.metrics[metric], rel=1e-9, abs=1e-12)
