"""Training on a table the replicator keeps: the snapshot carries the mirror's source position."""

from __future__ import annotations

from pathlib import Path

from mirror.changes import format_lsn
from mirror.store import Mirror
from tests.replicator.mirror_check import catch_up, execute
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker


def test_train_on_replicated_table(source_dsn: str, mirror_path: Path, fit_worker: FitWorker):
    execute(
        source_dsn,
        "create table accounts (id bigint primary key, age int, plan text, spend numeric(10,2),"
        " churned boolean)",
        "insert into accounts select i, 18 + i % 60, (array['free','pro','team'])[1 + i % 3],"
        " (i % 97) * 1.5, (i % 60) > 40 or i % 3 = 0 from generate_series(1, 3000) i",
    )
    catch_up(source_dsn, mirror_path, ["public.accounts"])
    mirror = Mirror(mirror_path)
    trainer = Trainer(mirror.con, artifact_home(mirror_path), worker=fit_worker)
    try:
        result = trainer.train(
            "churn",
            task="classification",
            relation="public.accounts",
            y="churned",
            algorithm="hist_gradient_boosting",
        )
        snapshot = trainer.registry.snapshot(result.snapshot_id)
        assert snapshot is not None
        position = mirror.position("pgml_sidecar")
        assert position is not None
        assert snapshot.source_position == {"pgml_sidecar": format_lsn(position)}
        assert snapshot.num_rows == 3000
        assert result.metrics["accuracy"] > 0.95
        _, model = trainer.deployed_model("churn")
        assert list(model.predict_rows([[65, "team", 3.0]])) == [True]  # the key is no feature
    finally:
        trainer.close()
        mirror.close()
