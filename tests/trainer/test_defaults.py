"""Training without preprocess: identifiers left out and said so, the trivial model as a floor."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from mirror.store import Mirror
from tests.customers import customers_table
from trainer.datasets import load_dataset
from trainer.train import Trainer

LEFT_OUT = {
    "id": "the primary key: it names rows, it does not describe them",
    "name": "it identifies rows rather than describing them (30,196 distinct values in 37,500"
    " rows)",
    "email": "it identifies rows rather than describing them (37,500 distinct values in 37,500"
    " rows)",
}


def create_table(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table, key: str) -> None:
    con.execute("create schema if not exists public")
    con.register("rows", table)
    try:
        con.execute(f"create table public.{name} as select * from rows")
    finally:
        con.unregister("rows")
    con.execute(f"alter table public.{name} add primary key ({key})")


@pytest.fixture
def customers(mirror: Mirror) -> str:
    create_table(mirror.con, "customers", customers_table(), "id")
    return "public.customers"


def test_the_customers_table_trains_well_without_preprocess(
    trainer: Trainer, customers: str
) -> None:
    linear = trainer.train(
        "churn", task="classification", relation=customers, y="churned", algorithm="linear"
    )
    assert linear.metrics["f1"] > 0.9  # the trivial model: 0.394
    assert [n.split(":")[0] for n in linear.notices] == [
        "column 'id' left out of the features",
        "column 'name' left out of the features",
        "column 'email' left out of the features",
    ]
    record, model = trainer.model(linear.model_id)
    assert record.notes["left_out"] == LEFT_OUT
    assert record.notes["notices"] == linear.notices
    assert record.notes["baseline"] == {"predicts": False, "f1": pytest.approx(0.3941, abs=1e-4)}
    used = record.notes["columns"]
    assert used["monthly_spend"] == {
        "encode": "native", "impute": "mean", "scale": "standard", "features": 1
    }  # fmt: skip
    assert used["plan"]["encode"] == "one_hot" and used["plan"]["scale"] == "preserve"
    assert used["signup_date"]["parts"] == ["year", "month", "day", "dayofweek"]
    assert [c.name for c in model.preprocessor.columns] == [
        "age", "country", "plan", "monthly_spend", "support_tickets", "logins_30d",
        "signup_date", "referred",
    ]  # fmt: skip
    assert record.num_features == 1 + 12 + 4 + 1 + 1 + 1 + 5 + 1
    notes = trainer.con.execute(
        "select notes->'left_out'->>'email' from pgml.models where id = ?", [linear.model_id]
    ).fetchone()
    assert notes == (LEFT_OUT["email"],)

    # What the error message once advised, target encoding the unique columns, now works:
    # each training row's encoding comes from the other folds, which never saw its value.
    named = trainer.train(
        "churn",
        algorithm="xgboost",
        preprocess={"name": {"encode": "target"}, "email": {"encode": "target"}},
    )
    assert named.metrics["f1"] > 0.9  # a constant model (0.394) before
    assert [n.split(":")[0] for n in named.notices] == ["column 'id' left out of the features"]
    assert trainer.model(named.model_id)[0].notes["columns"]["name"]["encode"] == "target"


def test_the_primary_key_is_not_a_feature_of_batch_or_online_models(
    mirror: Mirror, trainer: Trainer
) -> None:
    # The label follows the key; the other column is noise. A model that used the key would
    # score far above the trivial one.
    rows = 2000
    rng = np.random.default_rng(1)
    table = pa.table({"id": np.arange(rows), "noise": rng.normal(size=rows),
                      "late": np.arange(rows) >= rows // 2})  # fmt: skip
    create_table(mirror.con, "events", table, "id")
    for algorithm in ("random_forest", "online_hoeffding_tree"):
        result = trainer.train(
            algorithm, task="classification", relation="public.events", y="late",
            algorithm=algorithm,
        )  # fmt: skip
        record, model = trainer.model(result.model_id)
        assert [c.name for c in model.preprocessor.columns] == ["noise"]
        assert record.notes["left_out"] == {"id": LEFT_OUT["id"]}
        if algorithm == "random_forest":  # an online model's metrics are progressive: over the
            # rows in key order, where the label switches once, any model errs only for a while
            assert result.metrics["f1"] < 0.6
        again = trainer.train(algorithm)  # the same snapshot: its key recorded with it
        assert [c.name for c in trainer.model(again.model_id)[1].preprocessor.columns] == ["noise"]
    snapshot = trainer.registry.snapshot(trainer.model(result.model_id)[0].snapshot_id)
    assert snapshot is not None
    assert [c["name"] for c in snapshot.columns if c.get("primary_key")] == ["id"]
    named = trainer.train("named", task="classification", relation="public.events", y="late",
                          algorithm="random_forest", preprocess={"id": {}})  # fmt: skip
    assert named.metrics["f1"] > 0.95 and named.notices == []


def test_a_model_no_better_than_the_trivial_one_says_so(mirror: Mirror, trainer: Trainer) -> None:
    rows = 1200
    rng = np.random.default_rng(2)
    table = pa.table({"k": np.arange(rows), "x": rng.normal(size=rows),
                      "label": rng.random(rows) < 0.3})  # fmt: skip
    create_table(mirror.con, "noise", table, "k")
    result = trainer.train(
        "noise", task="classification", relation="public.noise", y="label", algorithm="linear"
    )
    baseline = trainer.model(result.model_id)[0].notes["baseline"]
    assert result.metrics["f1"] <= baseline["f1"]  # always false: the most frequent class
    assert result.notices[-1] == (
        "the model scores no better than predicting the most frequent class (False) for every"
        f" row: f1 {result.metrics['f1']:.3f}, and that {baseline['f1']:.3f}; the features may"
        " not tell the rows apart (pgml.models.notes shows how each column was used), or the"
        " algorithm needs other hyperparameters or scaled features"
    )
    regression = trainer.train(
        "noise r", task="regression", relation="public.noise", y="x", algorithm="ridge"
    )
    assert regression.notices[-1].startswith(
        "the model scores no better than predicting the training mean ("
    )
    load_dataset(trainer.con, "iris")
    good = trainer.train("iris", task="classification", relation="pgml.iris", y="target")
    assert good.notices == []


def test_scaling_is_chosen_by_validation_on_the_training_rows(
    mirror: Mirror, trainer: Trainer
) -> None:
    # A target of small spread and a feature of large spread: lasso's default penalty fits the
    # raw feature and wipes out the standardised one. Standardising is preferred, and loses.
    rows = 600
    rng = np.random.default_rng(4)
    signal = rng.normal(size=rows)
    table = pa.table({"k": np.arange(rows), "big": signal * 1000 + rng.normal(size=rows) * 100,
                      "noise": rng.normal(size=rows), "y": 40 + signal * 0.5})  # fmt: skip
    create_table(mirror.con, "spread", table, "k")
    lasso = trainer.train(
        "spread", task="regression", relation="public.spread", y="y", algorithm="lasso"
    )
    record, model = trainer.model(lasso.model_id)
    scale = record.notes["scale"]
    assert scale["chosen"] == "preserve" and scale["by"].startswith("3-fold cross-validation")
    assert scale["scores"]["preserve"] > 0.9 > 0.1 > scale["scores"]["standard"]
    assert record.notes["columns"]["big"]["scale"] == "preserve"
    assert lasso.metrics["r2"] > 0.9

    load_dataset(trainer.con, "diabetes")  # features of small spread, a target of large
    net = trainer.train("diabetes", task="regression", relation="pgml.diabetes", y="target",
                        algorithm="elastic_net")  # fmt: skip
    scale = trainer.model(net.model_id)[0].notes["scale"]
    assert scale["chosen"] == "standard" and scale["scores"]["standard"] > 0.3
    assert net.metrics["r2"] > 0.4  # 0.006 on the raw features

    forest = trainer.train("diabetes", algorithm="random_forest")
    assert trainer.model(forest.model_id)[0].notes["scale"] == {
        "chosen": "preserve", "scores": {}, "by": "the only choice"
    }  # fmt: skip

    # An online regression tree fits linear models in its leaves: River's scaler in front
    # helps here, and progressive validation over the first rows says so.
    tree = trainer.train("diabetes", algorithm="online_hoeffding_tree")
    record, model = trainer.model(tree.model_id)
    scale = record.notes["scale"]
    assert scale["chosen"] == "standard" and scale["by"].startswith("progressive validation")
    assert scale["scores"]["standard"] > scale["scores"]["preserve"]
    assert model.estimator.scaled is True and tree.metrics["r2"] > 0.3  # progressive; -0.01 raw

    # A later training keeps the project's last preprocess (as PostgresML), so it goes last.
    every = {c: {"scale": "robust"} for c in ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4",
                                              "s5", "s6")}  # fmt: skip
    told = trainer.train("diabetes", algorithm="ridge", preprocess=every)
    assert trainer.model(told.model_id)[0].notes["scale"]["by"] == (
        "preprocess says how every column is scaled"
    )
