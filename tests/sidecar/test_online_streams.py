"""River's own streams through real replication: every online algorithm, started on an empty
table, learns every row in commit order, prequentially. Its progressive metrics are bare
River's progressive_val_score of the same model on the same features, and the same rows give
the same model, to the last bit, inserted one per transaction or 500 per transaction."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.replicator.mirror_check import wait_for
from tests.river_streams import Stream, learned_state, stream
from tests.sidecar.online_daemon import (
    caught_up,
    create_table,
    insert,
    live_rows,
    metrics_text,
    online_algorithms,
    running,
)

ROWS = 600
"""TrumpApproval's Hoeffding trees cannot be pickled at the default recursion limit after
550-799 rows (and 310-399): at 600 every fetch of the model from the learner needs the deep
stack of ``trainer.pickles``."""
RIVER_METRICS = {
    "regression": {"mae": "MAE", "rmse": "RMSE", "r2": "R2"},
    "classification": {"accuracy": "Accuracy", "f1": "MacroF1", "log_loss": "LogLoss"},
}


def river_model(algorithm: str, task: str) -> Any:
    """The bare River model each online algorithm is, with the sidecar's defaults (seed 0)."""
    from river import forest, linear_model, naive_bayes, preprocessing, tree

    makers: dict[tuple[str, str], Any] = {
        ("online_linear", "regression"): lambda: (
            preprocessing.StandardScaler() | linear_model.LinearRegression()
        ),
        ("online_logistic", "classification"): lambda: (
            preprocessing.StandardScaler() | linear_model.LogisticRegression()
        ),
        ("online_hoeffding_tree", "regression"): tree.HoeffdingTreeRegressor,
        ("online_hoeffding_tree", "classification"): tree.HoeffdingTreeClassifier,
        ("online_hoeffding_adaptive_tree", "regression"): lambda: (
            tree.HoeffdingAdaptiveTreeRegressor(seed=0)
        ),
        ("online_hoeffding_adaptive_tree", "classification"): lambda: (
            tree.HoeffdingAdaptiveTreeClassifier(seed=0)
        ),
        ("online_adaptive_random_forest", "regression"): lambda: forest.ARFRegressor(seed=0),
        ("online_adaptive_random_forest", "classification"): lambda: forest.ARFClassifier(seed=0),
        ("online_naive_bayes", "classification"): naive_bayes.GaussianNB,
    }
    return makers[(algorithm, task)]()


def progressive_val_score(data: Stream, algorithm: str) -> dict[str, float]:
    """Bare River: each metric of a fresh model over the rows, as the table holds them and
    under the names the sidecar gives River (``f0``, ``f1``, ...: the adaptive random forest
    draws its features from them sorted by name)."""
    from river import evaluate, metrics

    rows: list[tuple[Any, Any]] = [
        ({f"f{i}": float(x[f]) for i, f in enumerate(data.features)}, y) for x, y in data.rows
    ]
    return {
        key: evaluate.progressive_val_score(
            rows, river_model(algorithm, data.task), getattr(metrics, name)()
        ).get()
        for key, name in RIVER_METRICS[data.task].items()
    }


@pytest.mark.parametrize("name", ["Phishing", "TrumpApproval", "Bananas"])
def test_online_models_learn_a_river_stream_as_bare_river_does(
    source_dsn: str, mirror_path: Path, name: str
) -> None:
    data = stream(name, ROWS)
    tables = {"single": f"public.{name.lower()}_single", "batched": f"public.{name.lower()}_500"}
    for table in tables.values():
        create_table(source_dsn, table, data)
    algorithms = online_algorithms(data.task)
    with running(source_dsn, mirror_path, list(tables.values())) as daemon:
        trained = {
            (algorithm, mode): daemon.trainer.train(
                f"{algorithm}_{mode}", task=data.task, relation=table, y="y",
                algorithm=algorithm,
            )
            for algorithm in algorithms
            for mode, table in tables.items()
        }  # fmt: skip
        for result in trained.values():
            assert result.deployed  # on the empty table
        wait_for(lambda: all(r.model_id in daemon.trainer.live for r in trained.values()),
                 timeout=60, what="the models to go live")  # fmt: skip
        insert(source_dsn, tables["single"], data, per_transaction=1)
        insert(source_dsn, tables["batched"], data, per_transaction=500)
        caught_up(source_dsn)
        wait_for(lambda: all(live_rows(daemon, r.model_id) == ROWS for r in trained.values()),
                 timeout=120, what="every row to be learned")  # fmt: skip
        live = {key: daemon.trainer.live[r.model_id] for key, r in trained.items()}

        for algorithm in algorithms:
            single, batched = live[(algorithm, "single")], live[(algorithm, "batched")]
            assert single.feature_names == [f"x{i}" for i in range(len(data.features))]
            assert learned_state(single.estimator) == learned_state(batched.estimator), algorithm
            expected = progressive_val_score(data, algorithm)
            for key, value in expected.items():
                ours = single.estimator.progressive[key]
                assert ours == pytest.approx(value, rel=1e-9, abs=1e-9), (algorithm, key)

        # The progressive metrics are in /metrics and pgml.progress as the models learn,
        # not only at checkpoints (every 100,000 rows or 60 s by default: none here).
        project = f"{algorithms[0]}_single"
        metric = next(iter(RIVER_METRICS[data.task]))
        value = live[(algorithms[0], "single")].estimator.progressive[metric]
        exposed = re.search(
            rf'pgml_sidecar_progressive_score{{metric="{metric}",project="{project}"}} (\S+)',
            metrics_text(daemon),
        )
        assert exposed is not None and float(exposed.group(1)) == pytest.approx(value)

        def current() -> list[tuple[Any, ...]]:
            cursor = daemon.mirror.con.cursor()
            try:
                return cursor.execute(
                    "select model_id, rows_learned, metrics from pgml.progress"
                    " where not checkpoint order by model_id"
                ).fetchall()
            finally:
                cursor.close()

        wait_for(lambda: [r[1] for r in current()] == [ROWS] * len(trained), timeout=30,
                 what="the current progress rows")  # fmt: skip
        first = trained[(algorithms[0], "single")].model_id
        stored = next(json.loads(m) for i, _, m in current() if i == first)
        assert stored[metric] == pytest.approx(value)
        assert daemon.monitor.failed == {}
        assert daemon.health()["status"] == "ok"
