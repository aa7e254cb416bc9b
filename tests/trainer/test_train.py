"""Training, snapshots, deployments and bad input, through the Trainer and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from mirror.errors import TrainingError
from mirror.store import Mirror
from sidecar.cli import main
from trainer.datasets import load_dataset
from trainer.train import Trainer


def registry_state(trainer: Trainer) -> tuple[Any, ...]:
    counts = trainer.con.execute(
        "select (select count(*) from pgml.projects), (select count(*) from pgml.snapshots),"
        " (select count(*) from pgml.models), (select count(*) from pgml.deployments)"
    ).fetchone()
    files = sorted(p.name for p in trainer.home.rglob("*") if p.is_file())
    return counts, files


def deployed_id(trainer: Trainer, project: str) -> int:
    row = trainer.con.execute(
        "select model_id from pgml.deployed_models where name = ?", [project]
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- deployment ----------------------------------------------------------------------------------


def test_auto_deploy_gate_and_strategies(trainer: Trainer) -> None:
    load_dataset(trainer.con, "diabetes")
    weak = trainer.train(
        "d",
        task="regression",
        relation="pgml.diabetes",
        y="target",
        algorithm="ridge",
        hyperparams={"alpha": 10000},
    )
    assert weak.deployed  # the first model of a project deploys
    linear = trainer.train("d", algorithm="linear")
    assert linear.metrics["r2"] > weak.metrics["r2"]
    assert linear.deployed
    worse = trainer.train("d", algorithm="lasso", hyperparams={"alpha": 1000})
    assert worse.metrics["r2"] < linear.metrics["r2"]
    assert not worse.deployed
    assert deployed_id(trainer, "d") == linear.model_id

    assert trainer.deploy("d", strategy="most_recent").model_id == worse.model_id
    assert trainer.deploy("d", strategy="best_score").model_id == linear.model_id
    # best_fit is PostgresML's other name for best_score; nothing changes.
    again = trainer.deploy("d", strategy="best_fit")
    assert (again.model_id, again.changed) == (linear.model_id, False)
    # Rollback walks back through what was deployed: worse, linear, weak.
    assert trainer.deployment_history("d") == [weak.model_id, linear.model_id, worse.model_id,
                                               linear.model_id]  # fmt: skip
    assert trainer.deploy("d", strategy="rollback").model_id == worse.model_id
    assert trainer.deploy("d", strategy="rollback").model_id == linear.model_id
    assert trainer.deploy("d", strategy="rollback").model_id == weak.model_id
    with pytest.raises(TrainingError, match="no earlier deployment"):
        trainer.deploy("d", strategy="rollback")
    assert deployed_id(trainer, "d") == weak.model_id

    chosen = trainer.deploy("d", strategy="best_score", algorithm="lasso")
    assert (chosen.model_id, chosen.algorithm) == (worse.model_id, "lasso")
    specific = trainer.deploy(model_id=linear.model_id)
    assert (specific.strategy, specific.project) == ("specific", "d")
    assert deployed_id(trainer, "d") == linear.model_id
    assert trainer.con.execute("select id from pgml.trained_models where deployed").fetchall() == [
        (linear.model_id,)
    ]
    overview = trainer.con.execute(
        "select name, task, algorithm, relation_name, y_column_name from pgml.overview"
    ).fetchall()
    assert overview == [("d", "regression", "linear", "pgml.diabetes", ["target"])]
    f1 = trainer.con.execute(
        "select (metrics->>'r2')::double from pgml.models where id = ?", [linear.model_id]
    ).fetchone()
    assert f1 is not None and f1[0] == pytest.approx(linear.metrics["r2"])
    with pytest.raises(TrainingError, match="unknown deployment strategy"):
        trainer.deploy("d", strategy="best")


def test_no_automatic_deploy(trainer: Trainer) -> None:
    load_dataset(trainer.con, "iris")
    result = trainer.train(
        "i",
        task="classification",
        relation="pgml.iris",
        y="target",
        automatic_deploy=False,
    )
    assert not result.deployed
    with pytest.raises(TrainingError, match="no deployed model"):
        trainer.deployed_model("i")


# -- snapshots -----------------------------------------------------------------------------------


def test_snapshot_records_rows_statistics_position_and_split(mirror: Mirror, trainer: Trainer):
    load_dataset(trainer.con, "diabetes")
    mirror.commit("pgml_sidecar", 0x16B3748)
    first = trainer.train(
        "s",
        task="regression",
        relation="pgml.diabetes",
        y="target",
        test_sampling="last",
        test_size=0.2,
        seed=3,
    )
    snapshot = trainer.registry.snapshot(first.snapshot_id)
    assert snapshot is not None
    assert snapshot.source_position == {"pgml_sidecar": "0/16B3748"}
    assert (snapshot.num_rows, snapshot.test_size, snapshot.seed) == (442, 0.2, 3)
    assert (snapshot.test_sampling, snapshot.y_column_name) == ("last", ["target"])
    table = pq.read_table(trainer.home / snapshot.path)
    assert table.num_rows == 442
    stats = {c["name"]: c["statistics"] for c in snapshot.columns}
    assert stats["target"]["mean"] == pytest.approx(float(np.mean(table["target"].to_numpy())))
    assert stats["target"]["max"] == float(np.max(table["target"].to_numpy()))
    assert stats["bmi"]["missing"] == 0
    assert set(stats) == set(table.column_names)
    sha = trainer.con.execute(
        "select sha256 from pgml.snapshots where id = ?", [first.snapshot_id]
    ).fetchone()
    assert sha is not None and len(sha[0]) == 64

    # Retraining without a relation reuses the snapshot and its split: the same model again.
    again = trainer.train("s")
    assert again.snapshot_id == first.snapshot_id
    assert again.metrics["r2"] == first.metrics["r2"]
    record, model = trainer.model(again.model_id)
    assert record.num_features == len(model.feature_names) == 10
    # A new snapshot of unchanged rows splits the same way.
    fresh = trainer.train(
        "s", relation="pgml.diabetes", y="target", test_sampling="last", test_size=0.2, seed=3
    )
    assert fresh.snapshot_id != first.snapshot_id
    assert fresh.metrics["r2"] == first.metrics["r2"]
    # "last" holds out the last rows: the first 80% train, the rest test.
    assert trainer.model(first.model_id)[1].predict(table.drop_columns(["target"])).shape == (442,)


def test_snapshot_function(trainer: Trainer) -> None:
    load_dataset(trainer.con, "iris")
    snapshot = trainer.snapshot("pgml.iris", "target")
    assert snapshot.id > 0 and snapshot.num_rows == 150
    assert (trainer.home / snapshot.path).is_file()
    with pytest.raises(TrainingError, match="does not exist") as err:
        trainer.snapshot("pgml.iris", "nope")
    assert err.value.sqlstate == "42703"


def test_tampered_model_file_is_refused(trainer: Trainer) -> None:
    load_dataset(trainer.con, "iris")
    result = trainer.train("t", task="classification", relation="pgml.iris", y="target")
    record, _ = trainer.model(result.model_id)
    path = trainer.home / record.path
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(TrainingError, match="SHA-256"):
        trainer.deployed_model("t")


# -- preprocessing -------------------------------------------------------------------------------


def test_nulls_text_and_arrays_train_as_is(trainer: Trainer) -> None:
    rng = np.random.default_rng(1)
    con = trainer.con
    con.execute("create schema if not exists public")
    con.execute(
        "create table public.homes (id integer primary key, area double, city varchar,"
        " rooms smallint[], garden boolean, price double)"
    )
    rows = []
    for i in range(200):
        area = None if i % 17 == 0 else float(rng.uniform(30, 200))
        city = ["paris", "lyon", None][i % 3]
        rooms = [int(x) for x in rng.integers(1, 5, size=3)]
        garden = bool(i % 2)
        price = (area or 100.0) * 10 + (500 if city == "paris" else 0) + sum(rooms) + garden
        rows.append((i, area, city, rooms, garden, price))
    con.executemany("insert into public.homes values (?, ?, ?, ?, ?, ?)", rows)
    result = trainer.train(
        "homes", task="regression", relation="homes", y="price", algorithm="linear"
    )
    assert result.metrics["r2"] > 0.9
    _, model = trainer.model(result.model_id)
    # area, city one-hot, rooms, garden: the primary key names rows, it is no feature
    assert len(model.feature_names) == 1 + 3 + 3 + 1
    raw = model.predict_rows([[100.0, "paris", [1, 1, 1], True], [None, None, [2], False]])
    assert raw.shape == (2,) and np.isfinite(raw).all()
    assert raw[0] == pytest.approx(1000 + 500 + 3 + 1, rel=0.05)

    scaled = trainer.train(
        "homes",
        algorithm="linear",
        preprocess={
            "area": {"impute": "median", "scale": "standard"},
            "city": {"encode": "target"},
        },
    )
    assert trainer.model(scaled.model_id)[0].preprocess["city"] == {"encode": "target"}
    assert len(trainer.model(scaled.model_id)[1].feature_names) == 1 + 1 + 3 + 1


def test_datasets_with_boolean_and_array_columns(trainer: Trainer) -> None:
    load_dataset(trainer.con, "breast_cancer")
    cancer = trainer.train(
        "cancer", task="classification", relation="pgml.breast_cancer", y="malignant",
        algorithm="random_forest",
    )  # fmt: skip
    assert {"roc_auc", "log_loss", "f1", "mcc"} <= cancer.metrics.keys()
    assert cancer.metrics["f1"] > 0.85
    load_dataset(trainer.con, "digits")
    digits = trainer.train("digits", task="classification", relation="pgml.digits", y="target")
    assert digits.metrics["accuracy"] > 0.85
    assert {"roc_auc", "log_loss"} <= digits.metrics.keys()  # ten classes, one-vs-rest
    _, model = trainer.model(digits.model_id)
    assert len(model.feature_names) == 64
    image = trainer.con.execute("select image, target from pgml.digits limit 1").fetchone()
    assert image is not None
    assert model.predict_rows([image[0]])[0] == image[1]  # the 64 values, flat
    matrix = np.array([image[0], image[0]], dtype=np.float64)
    assert list(model.predict_matrix(matrix)) == [image[1], image[1]]


def test_search_keeps_best_parameters_and_all_results(trainer: Trainer) -> None:
    load_dataset(trainer.con, "diabetes")
    result = trainer.train(
        "grid",
        task="regression",
        relation="pgml.diabetes",
        y="target",
        algorithm="ridge",
        search="grid",
        search_params={"alpha": [0.001, 1, 1000]},
        search_args={"cv": 3},
    )
    record, model = trainer.model(result.model_id)
    assert [r["params"]["alpha"] for r in record.search_results] == [0.001, 1, 1000]
    best = max(record.search_results, key=lambda r: r["mean_test_score"])
    assert record.hyperparams["alpha"] == best["params"]["alpha"]
    assert model.estimator.alpha == best["params"]["alpha"]
    randomised = trainer.train(
        "grid",
        algorithm="ridge",
        search="random",
        search_params={"alpha": [0.01, 0.1, 1, 10]},
        search_args={"n_iter": 2, "cv": 2},
    )
    assert len(trainer.model(randomised.model_id)[0].search_results) == 2


def test_fit_runs_in_a_worker_process(trainer: Trainer) -> None:
    load_dataset(trainer.con, "iris")
    result = trainer.train("w", task="classification", relation="pgml.iris", y="target")
    assert result.timings["worker_pid"] != os.getpid()


# -- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def bad_input_trainer(trainer: Trainer) -> Trainer:
    con = trainer.con
    load_dataset(con, "iris")
    con.execute("create schema if not exists public")
    con.execute("create table public.words (id integer, word varchar, n double)")
    con.execute(
        "insert into public.words values (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (4, 'd', 4)"
    )
    con.execute("create table public.one_class (x double, y integer)")
    con.execute("insert into public.one_class select i, 1 from range(20) t(i)")
    con.execute("create table public.nothing (x double, y double)")
    return trainer


BAD_INPUT: list[tuple[str, dict[str, Any], str, str]] = [
    ("new project without task", {}, "42704", "does not exist yet"),
    ("new project without relation", {"task": "regression"}, "42704", "needs a relation"),
    ("unknown task", {"task": "forecast", "relation": "pgml.iris", "y": "target"}, "22023",
     "classification"),
    ("unknown algorithm", {"task": "regression", "relation": "pgml.iris", "y": "target",
                           "algorithm": "deep_magic"}, "22023", "linear"),
    ("unknown relation", {"task": "regression", "relation": "public.nope", "y": "x"}, "42P01",
     "public.nope"),
    ("unknown column", {"task": "regression", "relation": "pgml.iris", "y": "nope"}, "42703",
     "sepal_length"),
    ("text label for regression", {"task": "regression", "relation": "words", "y": "word"},
     "22023", "numeric"),
    ("one class", {"task": "classification", "relation": "one_class", "y": "y"}, "22000",
     "one class"),
    ("fewer rows than folds", {"task": "regression", "relation": "words", "y": "n",
                               "algorithm": "ridge", "search": "grid",
                               "search_params": {"alpha": [1, 2]}}, "22000", "folds"),
    ("empty relation", {"task": "regression", "relation": "nothing", "y": "y"}, "22000",
     "no rows"),
    ("malformed JSON", {"task": "regression", "relation": "pgml.iris", "y": "target",
                        "hyperparams": '{"alpha": '}, "22023", "not valid JSON"),
    ("unknown hyperparameter", {"task": "regression", "relation": "pgml.iris", "y": "target",
                                "algorithm": "ridge", "hyperparams": {"alpah": 1}}, "22023",
     "alpha"),
    ("bad hyperparameter value", {"task": "regression", "relation": "pgml.iris", "y": "target",
                                  "algorithm": "ridge", "hyperparams": {"alpha": "much"}},
     "22023", "alpha"),
    ("unknown search", {"task": "regression", "relation": "pgml.iris", "y": "target",
                        "search": "bayes"}, "22023", "grid"),
    ("unknown test sampling", {"task": "regression", "relation": "pgml.iris", "y": "target",
                               "test_sampling": "first"}, "22023", "stratified"),
    ("bad preprocess", {"task": "regression", "relation": "pgml.iris", "y": "target",
                        "preprocess": {"sepal_length": {"scale": "huge"}}}, "22023", "standard"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "sqlstate", "message"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_refused_and_leaves_nothing(
    bad_input_trainer: Trainer, arguments: dict[str, Any], sqlstate: str, message: str
) -> None:
    trainer = bad_input_trainer
    before = registry_state(trainer)
    with pytest.raises(TrainingError) as err:
        trainer.train("bad", **arguments)
    assert err.value.sqlstate == sqlstate
    assert message in str(err.value)
    assert registry_state(trainer) == before


def test_bad_input_on_an_existing_project(bad_input_trainer: Trainer) -> None:
    trainer = bad_input_trainer
    trainer.train("iris", task="classification", relation="pgml.iris", y="target")
    before = registry_state(trainer)
    with pytest.raises(TrainingError, match="is a classification project"):
        trainer.train("iris", task="regression")
    with pytest.raises(TrainingError, match="does not exist") as err:
        trainer.deploy("nope")
    assert err.value.sqlstate == "42704"
    with pytest.raises(TrainingError, match="model 999 does not exist"):
        trainer.deploy(model_id=999)
    assert registry_state(trainer) == before


# -- command line --------------------------------------------------------------------------------


def test_cli_train_and_deploy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.duckdb"
    mirror = Mirror(path)
    load_dataset(mirror.con, "iris")
    mirror.close()
    args = ["--mirror", str(path)]
    first = ["train", "iris", *args, "--task", "classification", "--relation", "pgml.iris"]
    assert main([*first, "--y", "target", "--algorithm", "svm"]) == 0
    out = capsys.readouterr().out
    assert "model 1 (svm) deployed" in out
    assert json.loads(out.split("metrics: ", 1)[1])["f1"] > 0.8
    assert main(["train", "iris", *args, "--algorithm", "linear", "--no-deploy"]) == 0
    assert "trained, not deployed" in capsys.readouterr().out
    assert main(["deploy", "iris", *args, "--strategy", "most_recent"]) == 0
    assert "model 2 (linear) deployed by strategy most_recent" in capsys.readouterr().out
    assert main(["deploy", *args, "--model-id", "1"]) == 0
    assert "model 1 (svm) deployed by strategy specific" in capsys.readouterr().out
    assert main(["train", "iris", *args, "--hyperparams", "{oops"]) == 1
    assert "error: hyperparams is not valid JSON" in capsys.readouterr().err


def test_cli_errors_exit_non_zero_without_traceback(tmp_path: Path) -> None:
    train = [sys.executable, "-m", "sidecar.cli", "train", "p", "--mirror", str(tmp_path / "m.db"),
             "--task", "regression", "--relation", "public.nope", "--y", "y"]  # fmt: skip
    no_file = subprocess.run(train, capture_output=True, text=True, check=False)
    assert no_file.returncode == 2
    assert no_file.stderr.startswith(f"error: mirror {tmp_path / 'm.db'} does not exist;")
    assert not (tmp_path / "m.db").exists()  # a mistyped path makes no empty mirror
    Mirror(tmp_path / "m.db").close()
    missing = subprocess.run(train, capture_output=True, text=True, check=False)
    assert missing.returncode == 1
    assert "\nerror: relation 'public.nope' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    no_mirror = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "deploy", "p"],
        capture_output=True, text=True, check=False, env={**os.environ, "PGML_SIDECAR_MIRROR": ""},
    )  # fmt: skip
    assert no_mirror.returncode == 2
    assert "no mirror file" in no_mirror.stderr
