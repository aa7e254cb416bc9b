"""The monitor in this process, on a mirror it is wired to as the daemon wires it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from mirror.changes import Column, Inserts, Relation, Tuples, Updates
from mirror.store import Mirror
from tests.replicator.mirror_check import wait_for
from tests.river_streams import learned_state
from trainer.model import load_model
from trainer.monitoring import Monitor
from trainer.train import Trainer

FLOAT8 = 701
RELATION = Relation(
    1, "public", "t", "d",
    (Column("id", 20, -1, True), Column("x", FLOAT8, -1, False),
     Column("y", FLOAT8, -1, False)),
)  # fmt: skip
LSN = iter(range(100, 10**6, 10))


def commit(mirror: Mirror, *changes: Inserts | Updates) -> int:
    mirror.apply(changes)
    lsn = next(LSN)
    mirror.commit("slot", lsn)
    return lsn


def rows(ids: np.ndarray, labelled: bool) -> Tuples:
    x = np.sin(ids * 0.7)
    y = 3 * x + np.cos(ids) if labelled else np.full(len(ids), np.nan)
    return Tuples(pa.table({"id": pa.array(ids), "x": x, "y": pa.array(y, from_pandas=True)}))


@contextmanager
def watching(mirror: Mirror, trainer: Trainer) -> Iterator[Monitor]:
    """A monitor wired to the mirror, its thread running."""
    monitor = Monitor(mirror.con, trainer, mirror=mirror)
    mirror.watched.append(monitor.watched)
    mirror.on_commit = monitor.on_commit
    monitor.prepare()
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop,))
    thread.start()
    try:
        yield monitor
    finally:
        stop.set()
        thread.join(timeout=60)
        monitor.close()


def test_rows_are_learned_in_the_order_they_changed(mirror: Mirror, trainer: Trainer) -> None:
    """Labels set in reverse key order in one commit: learned in that order, not the table's
    (which a batch of updates leaves in no particular order)."""
    mirror.create_table(RELATION, state="ready")
    ids = np.arange(1, 301)
    commit(mirror, Inserts(RELATION, rows(ids, labelled=False)))
    trained = trainer.train(
        "order", task="regression", relation="public.t", y="y", algorithm="online_linear"
    )
    model = trainer.model(trained.model_id)[1]  # as trained: no label yet
    with watching(mirror, trainer):
        order = ids[::-1]
        commit(
            mirror,
            *(Updates(RELATION, rows(order[i : i + 1], labelled=True), None) for i in range(300)),
        )
        wait_for(lambda: live_rows(trainer, trained.model_id) == 300, what="the rows learned")
        learned = trainer.live[trained.model_id].estimator
    changed = rows(order, labelled=True).values
    expected = model.estimator
    expected.partial_fit(
        model.features(changed.select([c.name for c in model.preprocessor.columns])),
        changed["y"].to_numpy(),
    )
    assert learned_state(learned) == learned_state(expected)


def test_a_replay_from_a_checkpoint_detects_no_drift_twice(
    mirror: Mirror, trainer: Trainer
) -> None:
    """The checkpoint holds the detectors' state: replaying from it after the learner died,
    the error drift is found again at the same row since deployment, and not registered again."""
    mirror.create_table(RELATION, state="ready")
    trained = trainer.train(
        "again", task="regression", relation="public.t", y="y", algorithm="online_linear"
    )
    with watching(mirror, trainer) as monitor:
        monitor.checkpoint_rows = 300
        commit(mirror, Inserts(RELATION, rows(np.arange(1, 301), labelled=True)))
        wait_for(lambda: trainer.registry.learned_position(trained.model_id) is not None,
                 what="a checkpoint after 300 rows")  # fmt: skip
        monitor.checkpoint_rows = 10**9  # none until the stop
        flipped = rows(np.arange(301, 601), labelled=True)
        y = pa.array(-flipped.values["y"].to_numpy())  # the concept flips
        commit(mirror, Inserts(RELATION, Tuples(flipped.values.set_column(2, "y", y))))
        # counted since deployment: the flip's detection is past the checkpoint's 300 rows
        wait_for(lambda: any(n > 300 for _, n in events(trainer)), what="error drift")
        found = events(trainer)
        learner = monitor.learner._process
        assert learner is not None
        os.kill(learner.pid, signal.SIGKILL)
        wait_for(lambda: monitor.learner._process not in (None, learner), timeout=60,
                 what="a new learner")  # fmt: skip
        wait_for(lambda: live_rows(trainer, trained.model_id) == 600, timeout=60,
                 what="the replay")  # fmt: skip
        assert events(trainer) == found
    # the last checkpoint (at the stop): the error detector went on from the first one
    record = trainer.registry.model(trained.model_id)
    assert record is not None
    saved = load_model(trainer.home / record.path, record.sha256)
    assert saved.monitoring is not None and saved.monitoring["errors"].rows == 600


def events(trainer: Trainer) -> list[tuple[str, int]]:
    cursor = trainer.con.cursor()
    try:
        rows = cursor.execute(
            "select detector, rows_since_deployment from pgml.drift_events order by id"
        ).fetchall()
    finally:
        cursor.close()
    return [(str(d), int(n)) for d, n in rows]


def live_rows(trainer: Trainer, model_id: int) -> int:
    model = trainer.live.get(model_id)
    return 0 if model is None else int(model.estimator.rows_learned)
