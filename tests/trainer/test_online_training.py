"""Training an online model: on an empty table, and on every row of a table (none held out)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tests.river_streams import stream
from trainer.train import Trainer


def create(trainer: Trainer, name: str, table: pa.Table, *, key: bool = True) -> None:
    """``public.<name>`` with the columns of ``table``, after a text key ``id`` if ``key``."""
    if key:
        ids = pa.array([f"r{i:05}" for i in range(table.num_rows)], pa.string())
        table = table.add_column(0, "id", ids)
    cursor = trainer.con.cursor()
    try:
        cursor.execute("create schema if not exists public")
        cursor.register("_rows", table)
        cursor.execute(f"create table public.{name} as select * from _rows")
        if key:
            cursor.execute(f"alter table public.{name} add primary key (id)")
    finally:
        cursor.close()


@pytest.mark.parametrize(
    ("algorithm", "task", "label"),
    [("online_hoeffding_tree", "classification", pa.bool_()), ("online_linear", "regression",
     pa.float64())],
)  # fmt: skip
def test_an_online_model_starts_on_an_empty_table(
    trainer: Trainer, algorithm: str, task: str, label: pa.DataType
) -> None:
    create(trainer, "empty", pa.table({"x": pa.array([], pa.float64()), "y": pa.array([], label)}))
    result = trainer.train("Empty", task=task, relation="public.empty", y="y", algorithm=algorithm)
    assert result.deployed
    assert {k: v for k, v in result.metrics.items() if not k.endswith("_time")} == {}
    _, model = trainer.model(result.model_id)
    assert model.estimator.rows_learned == 0
    assert model.feature_names == ["x"]  # a text key with no rows gives no feature
    if task == "classification":
        assert model.classes is not None and model.classes.tolist() == [False, True]


def test_an_online_model_learns_every_row_prequentially(trainer: Trainer) -> None:
    """None held out: its metrics are the progressive ones over every row."""
    phishing = stream("Phishing", 300)
    create(trainer, "phishing", pa.table(
        {**{f: phishing.x[:, i] for i, f in enumerate(phishing.features)},
         "label": pa.array([bool(y) for _, y in phishing.rows])}
    ), key=False)  # fmt: skip
    result = trainer.train(
        "Phish", task="classification", relation="public.phishing", y="label",
        algorithm="online_naive_bayes", test_size=0.25, test_sampling="random",
    )  # fmt: skip
    _, model = trainer.model(result.model_id)
    assert model.estimator.rows_learned == 300
    progressive = model.estimator.progressive
    for name in ("accuracy", "f1", "log_loss", "precision", "recall"):
        assert result.metrics[name] == progressive[name]
    here = type(model.estimator)("online_naive_bayes", "classification")
    here.partial_fit(phishing.x, phishing.y)
    assert here.progressive == progressive
    np.testing.assert_array_equal(model.classes, [False, True])


def test_an_online_classifier_learns_classes_as_they_come(trainer: Trainer) -> None:
    """Text labels, none at first: each new one becomes a class, its index one past the last,
    and the indices learned never move (pgml.predict's numbers stay those of the labels)."""
    from predictor.scoring import as_numbers

    create(trainer, "animals", pa.table(
        {"x": pa.array([], pa.float64()), "kind": pa.array([], pa.string())}
    ), key=False)  # fmt: skip
    result = trainer.train(
        "Animals", task="classification", relation="public.animals", y="kind",
        algorithm="online_naive_bayes",
    )  # fmt: skip
    _, model = trainer.model(result.model_id)
    labels = np.array(["dog", "cat", "dog", "bird", "cat"] * 20, dtype=object)
    centre = np.array([{"dog": 5.0, "cat": 1.0, "bird": -3.0}[k] for k in labels])
    x = (centre + np.random.default_rng(3).normal(scale=0.5, size=len(labels)))[:, None]
    y = model.label_indices(labels, learn=True)
    assert model.classes is not None and model.classes.tolist() == ["dog", "cat", "bird"]
    assert y[:4].tolist() == [0.0, 1.0, 0.0, 2.0]
    model.estimator.partial_fit(x, y)
    predicted = model.predict_rows([[5.0], [-3.0], [1.0]])
    assert predicted.tolist() == ["dog", "bird", "cat"]
    assert as_numbers(model, predicted).tolist() == [0.0, 2.0, 1.0]
    assert np.isnan(model.label_indices(np.array(["fish"], dtype=object))).all()
