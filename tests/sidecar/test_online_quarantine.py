"""One model that fails does not stop online learning: it is quarantined alone, the others go
on, a replay registers no drift twice, and the daemon stops promptly."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from sidecar.daemon import Daemon
from tests.replicator.mirror_check import wait_for
from tests.river_streams import stream
from tests.sidecar.online_daemon import (
    caught_up,
    create_table,
    insert,
    live_rows,
    metrics_text,
    running,
)
from trainer.learner import Learner

ROWS = 600
TRUMP, PHISHING = "public.trump", "public.phishing"
PROJECTS = {
    "deep": (TRUMP, "regression", "online_hoeffding_tree"),  # too deep to pickle at 600 rows
    "linear": (TRUMP, "regression", "online_linear"),
    "forest": (TRUMP, "regression", "online_adaptive_random_forest"),
    "logistic": (PHISHING, "classification", "online_logistic"),
    "bayes": (PHISHING, "classification", "online_naive_bayes"),
    "tree": (PHISHING, "classification", "online_hoeffding_tree"),
}


def drift_events(daemon: Daemon) -> list[tuple[object, ...]]:
    cursor = daemon.mirror.con.cursor()
    try:
        return list(
            cursor.execute(
                "select id, model_id, detector, feature, lsn, rows_since_deployment"
                " from pgml.drift_events order by id"
            ).fetchall()
        )
    finally:
        cursor.close()


def test_an_unpicklable_model_beside_five_others(source_dsn: str, mirror_path: Path) -> None:
    trump, phishing = stream("TrumpApproval", ROWS), stream("Phishing", ROWS)
    create_table(source_dsn, TRUMP, trump)
    create_table(source_dsn, PHISHING, phishing)
    # Without the deep stack, the Hoeffding tree on TrumpApproval cannot be pickled, as in
    # bare River: its first fetch from the learner at 600 rows fails. No checkpoint is due, so
    # killing the learner later replays every change since the models were trained.
    settings = {"learner": Learner(deep_pickle=False), "checkpoint_seconds": 3600.0}
    with running(source_dsn, mirror_path, [TRUMP, PHISHING], **settings) as daemon:
        trained = {
            name: daemon.trainer.train(name, task=task, relation=table, y="y", algorithm=algo)
            for name, (table, task, algo) in PROJECTS.items()
        }
        ids = {name: result.model_id for name, result in trained.items()}
        wait_for(lambda: all(i in daemon.trainer.live for i in ids.values()), timeout=60,
                 what="the models to go live")  # fmt: skip
        learner = daemon.monitor.learner._process
        insert(source_dsn, TRUMP, trump, per_transaction=50)
        # the concept flips halfway: the classifiers' errors jump (drift)
        insert(source_dsn, PHISHING, phishing, per_transaction=50, flip=slice(300, None))
        caught_up(source_dsn)

        others = [name for name in PROJECTS if name != "deep"]
        wait_for(lambda: all(live_rows(daemon, ids[n]) == ROWS for n in others), timeout=120,
                 what="the five others to learn every row")  # fmt: skip
        wait_for(lambda: ids["deep"] in daemon.monitor.failed, timeout=30,
                 what="the deep model to be quarantined")  # fmt: skip
        project, reason = daemon.monitor.failed[ids["deep"]]
        assert project == "deep" and reason.startswith("cannot be pickled: RecursionError")
        assert daemon.monitor.failed.keys() == {ids["deep"]}
        record = daemon.trainer.registry.model(ids["deep"])
        assert record is not None and record.status == "failed"
        assert daemon.trainer.registry.failures() == {ids["deep"]: reason}
        assert daemon.health()["failed"] == {"deep": f"model {ids['deep']}: {reason}"}
        exposed = re.search(
            r'pgml_sidecar_model_failed\{model_id="(\d+)",project="deep",reason="([^"]*)"\} 1',
            metrics_text(daemon),
        )
        assert exposed is not None and int(exposed.group(1)) == ids["deep"]
        assert exposed.group(2).startswith("cannot be pickled: RecursionError")
        assert daemon.monitor.learner._process is learner and learner.is_alive()

        events = drift_events(daemon)
        assert any(e[2] == "adwin" for e in events), events
        assert len({e[1:4] + e[5:] for e in events}) == len(events)  # each detection once
        # A learner killed now: the models load again and replay every change; each row is
        # learned once more from the start, each drift found again at the same row, and
        # registered once all the same. The quarantined model stays out.
        os.kill(learner.pid, signal.SIGKILL)
        wait_for(lambda: daemon.monitor.learner._process not in (None, learner), timeout=60,
                 what="a new learner")  # fmt: skip
        wait_for(lambda: all(live_rows(daemon, ids[n]) == ROWS for n in others), timeout=120,
                 what="the five others to learn every row again")  # fmt: skip
        assert drift_events(daemon) == events
        assert ids["deep"] not in daemon.trainer.live  # not loaded again

        started = time.monotonic()
    # leaving ``running`` stops the daemon: its checkpoints (the five) are written
    stopped = time.monotonic() - started
    assert stopped < 20, stopped
    monitor_part = next(p for p in daemon.parts if p.name == "monitor")
    assert monitor_part.restarts == 0 and monitor_part.last_error is None
