"""Retraining on drift through real replication: the labels flip, error drift is detected at
the row River's ADWIN detects it, where it came in; the challenger retrained then is scored
against the deployed model on the same rows after its snapshot, and serves when it wins."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa

from mirror.change_log import Touched, touched_keys
from mirror.changes import Lsn, format_lsn
from sidecar.daemon import Daemon
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.online_daemon import caught_up, running
from trainer.drift import DriftThresholds

TABLE = "public.events"
SHIFT = 1600
"""Rows 1..1600 follow y = x > 0, later ones y = x < 0 (t, the time, says which)."""


def x_of(i: int) -> float:
    return ((i * 7919) % 2000) / 1000.0 - 1


def label(i: int) -> bool:
    return (x_of(i) > 0) if i <= SHIFT else (x_of(i) < 0)


def insert(dsn: str, lo: int, hi: int, *, per_transaction: int) -> dict[int, float]:
    """Insert rows ``lo..hi``; return when each was committed (epoch seconds)."""
    rows = [(i, x_of(i), float(i), label(i)) for i in range(lo, hi + 1)]
    committed: dict[int, float] = {}
    with psycopg.connect(dsn) as conn:
        for start in range(0, len(rows), per_transaction):
            part = rows[start : start + per_transaction]
            with conn.cursor() as cursor:
                cursor.executemany(f"insert into {TABLE} values (%s, %s, %s, %s)".encode(), part)
            conn.commit()
            committed.update(dict.fromkeys((r[0] for r in part), time.time()))
    return committed


def batches(daemon: Daemon) -> list[tuple[Lsn, list[int]]]:
    """From now on: each mirror commit's position and the keys of the table it brought."""
    seen: list[tuple[Lsn, list[int]]] = []
    taken = daemon.monitor.on_commit

    def recording(lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        entry = touched.get(("public", "events"))
        if entry is not None and entry.keys:
            keys = touched_keys(entry, distinct=False).column("id").to_pylist()
            seen.append((lsn, [int(k) for k in keys]))
        taken(lsn, touched)

    daemon.monitor.on_commit = recording  # type: ignore[method-assign]
    return seen


def test_a_label_flip_retrains_and_the_challenger_serves(
    source_dsn: str, mirror_path: Path
) -> None:
    execute(
        source_dsn,
        f"create table {TABLE} (id bigint primary key, x double precision, t double precision,"
        " y boolean)",
    )
    insert(source_dsn, 1, 1000, per_transaction=1000)
    # t (the time) always drifts from the training rows; this is about the labels' drift
    thresholds = DriftThresholds(psi=100.0)
    with running(source_dsn, mirror_path, [TABLE], thresholds=thresholds) as daemon:
        daemon.retrainer.challenge_rows = 200
        first = daemon.trainer.train(
            "Flip", task="classification", relation=TABLE, y="y", algorithm="random_forest",
            hyperparams={"n_estimators": 25},
        )  # fmt: skip
        daemon.trainer.set_retrain_on_drift("Flip", True)
        wait_for(lambda: "Flip" in daemon.monitor.watches, what="the monitor to watch Flip")
        _, champion = daemon.trainer.model(first.model_id)
        seen = batches(daemon)
        insert(source_dsn, 1001, SHIFT, per_transaction=50)  # as before: no drift
        committed = insert(source_dsn, SHIFT + 1, SHIFT + 300, per_transaction=1)  # flipped
        caught_up(source_dsn)
        wait_for(lambda: "Flip" in daemon.retrainer.challengers or bool(daemon.retrainer.results),
                 timeout=120, what="a retrain on drift")  # fmt: skip
        insert(source_dsn, SHIFT + 301, SHIFT + 700, per_transaction=50)
        wait_for(lambda: bool(daemon.retrainer.results), timeout=120,
                 what="champion and challenger judged")  # fmt: skip
        caught_up(source_dsn)  # the judging may end before the last of these rows is mirrored
        project, reason, result = daemon.retrainer.results[0]
        assert project == "Flip" and reason.startswith("drift (adwin)")
        assert result is not None and result.deployed, daemon.retrainer.results
        deployed, model = daemon.trainer.deployed_model("Flip")
        assert deployed.id == result.model_id

        # Both scores, on the same rows: those after the challenger's snapshot.
        registry = daemon.trainer.registry
        (challenge,) = registry.challenges(_project_id(daemon))
        assert (challenge.champion_id, challenge.challenger_id) == (first.model_id, deployed.id)
        assert challenge.deployed and challenge.metric == "f1" and challenge.num_rows >= 200
        assert challenge.challenger_metrics["accuracy"] > 0.9
        assert challenge.champion_metrics["accuracy"] < 0.2
        # Its own test split scored the challenger lower than the champion's scored it: the
        # gate that compares those would have kept the champion.
        assert result.metrics["f1"] <= first.metrics["f1"]

        # After the shift the challenger is right where the champion is wrong.
        later = list(range(SHIFT + 701, SHIFT + 1201))
        rows = pa.table(
            {"id": later, "x": [x_of(i) for i in later], "t": [float(i) for i in later]}
        )
        truth = np.array([label(i) for i in later])
        assert np.mean(model.predict(rows) == truth) > 0.9
        assert np.mean(champion.predict(rows) == truth) < 0.2

        # The detection: River's ADWIN on the champion's errors in commit order finds it at
        # the same row since deployment, and its position is the commit that brought that row.
        events = _drift_events(daemon, first.model_id)
        detected = next(e for e in events if e["detector"] == "adwin")
        order = [key for _, keys in seen for key in keys]
        assert order == list(range(1001, SHIFT + 701))  # commit order
        expected = _adwin_rows(champion, order)
        assert detected["rows_since_deployment"] == expected[0]
        row = order[expected[0] - 1]
        assert row > SHIFT
        lsn = next(lsn for lsn, keys in seen if row in keys)
        assert detected["lsn"] == format_lsn(lsn)
        latency = detected["detected_at"].timestamp() - committed[row]
        assert 0 < latency < 5, latency  # seconds from the row's commit to its registration

        # pgml.deploy's best_recent_score judges on the same kind of rows
        daemon.trainer.deploy(model_id=first.model_id)
        again = daemon.trainer.deploy("Flip", strategy="best_recent_score")
        assert again.model_id == deployed.id and again.changed


def _project_id(daemon: Daemon) -> int:
    found = daemon.trainer.registry.project("Flip")
    assert found is not None
    return found.id


def _adwin_rows(champion: Any, order: list[int]) -> list[int]:
    from river import drift

    rows = pa.table({"id": order, "x": [x_of(i) for i in order], "t": [float(i) for i in order]})
    wrong = champion.predict(rows) != np.array([label(i) for i in order])
    adwin, found = drift.ADWIN(), []
    for n, error in enumerate(wrong.astype(float).tolist(), 1):
        adwin.update(error)
        if adwin.drift_detected:
            found.append(n)
    return found


def _drift_events(daemon: Daemon, model_id: int) -> list[dict[str, Any]]:
    cursor = daemon.mirror.con.cursor()
    try:
        rows = cursor.execute(
            "select detector, lsn, rows_since_deployment, detected_at from pgml.drift_events"
            " where model_id = ? order by id",
            [model_id],
        ).fetchall()
    finally:
        cursor.close()
    names = ("detector", "lsn", "rows_since_deployment", "detected_at")
    return [dict(zip(names, r, strict=True)) for r in rows]
