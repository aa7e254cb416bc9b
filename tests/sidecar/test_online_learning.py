"""Online learning and drift through the real replication stream, in the daemon."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pytest

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.replicator.mirror_check import current_lsn, execute, slot_confirmed, wait_for
from trainer.drift import DriftEvent

CREATE = "create table readings (id bigint primary key, x double precision, y boolean)"
# x in [-1, 1); the concept is y = x > 0 until the shift, y = x < 0 after it.
ROWS = (
    "insert into readings select i, ((i * 7919) % 2000) / 1000.0 - 1,"
    " {sign} * (((i * 7919) % 2000) / 1000.0 - 1) > 0 from generate_series({lo}, {hi}) i"
)


def insert(dsn: str, lo: int, hi: int, *, shifted: bool, chunk: int = 250) -> None:
    for start in range(lo, hi + 1, chunk):
        end = min(start + chunk - 1, hi)
        execute(dsn, ROWS.format(sign=-1 if shifted else 1, lo=start, hi=end))


@pytest.fixture
def daemon(source_dsn: str, mirror_path: Path) -> Iterator[Daemon]:
    execute(source_dsn, CREATE)
    insert(source_dsn, 1, 1000, shifted=False, chunk=1000)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    running = Daemon(
        DaemonSettings(
            source_dsn=source_dsn, mirror_path=mirror_path, tables=["public.readings"],
            port=0, metrics_port=0,
        )
    )  # fmt: skip
    running.monitor.checkpoint_rows = 500
    running.start()
    wait_for(lambda: mirrored_rows(running) == 1000, timeout=60, what="the initial copy")
    try:
        yield running
    finally:
        running.stop()


def mirrored_rows(daemon: Daemon) -> int:
    cursor = daemon.mirror.con.cursor()
    try:
        row = cursor.execute("select count(*) from public.readings").fetchone()
    except duckdb.CatalogException:
        return 0
    finally:
        cursor.close()
    return int(row[0]) if row else 0


def recorded_drift(daemon: Daemon) -> list[DriftEvent]:
    """The drift events the monitor reports from now on (still handled as usual)."""
    events: list[DriftEvent] = []
    drifted = daemon.monitor.on_drift
    assert drifted is not None

    def recording(project: str, model_id: int, event: DriftEvent) -> None:
        events.append(event)
        drifted(project, model_id, event)

    daemon.monitor.on_drift = recording
    return events


def test_online_model_learns_through_a_concept_shift(daemon: Daemon, source_dsn: str) -> None:
    events = recorded_drift(daemon)

    result = daemon.trainer.train(
        "Stream", task="classification", relation="public.readings", y="y",
        algorithm="online_hoeffding_adaptive_tree", test_sampling="last",
    )  # fmt: skip
    assert result.deployed
    wait_for(lambda: result.model_id in daemon.trainer.live, what="the model to go live")
    model = daemon.trainer.live[result.model_id]
    learned_at_start = model.estimator.rows_learned

    insert(source_dsn, 1001, 3000, shifted=False)
    wait_for(lambda: model.estimator.rows_learned >= learned_at_start + 2000, timeout=60,
             what="the rows before the shift to be learned")  # fmt: skip
    before_shift = model.estimator.rows_learned
    insert(source_dsn, 3001, 7000, shifted=True)
    wait_for(lambda: model.estimator.rows_learned >= before_shift + 4000, timeout=120,
             what="the shifted rows to be learned")  # fmt: skip

    errors = [e for e in events if e.detector in ("adwin", "ddm")]
    assert errors, events
    # Detected within a bounded number of rows after the shift (the monitor counts labelled
    # rows it has seen since the model was deployed).
    assert 2000 <= errors[0].rows <= 2000 + 1500, errors[0]

    with psycopg.connect(
        f"host=127.0.0.1 port={daemon.endpoint.port} user=postgres dbname=pgml"
    ) as endpoint:
        progress = endpoint.execute(
            "select rows_learned, metrics from pgml.progress where model_id = %s order by id",
            (result.model_id,),
        ).fetchall()
        stored = endpoint.execute(
            "select count(*) from pgml.drift_events where model_id = %s", (result.model_id,)
        ).fetchone()
    assert progress and progress[-1][0] > before_shift  # checkpointed as it learns
    # The progressive accuracy, every 1000 rows learned: it drops after the shift and climbs
    # back as the model adapts.
    accuracy = [h["accuracy"] for h in model.estimator.history]
    assert len(accuracy) >= 6, model.estimator.history
    dip = min(range(len(accuracy)), key=accuracy.__getitem__)
    assert accuracy[1] > accuracy[dip] < accuracy[-1], accuracy
    assert stored is not None and stored[0] >= 1
    # The live model predicts the new concept.
    assert model.predict_rows([[0.5]])[0] == False  # noqa: E712
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        copied = conn.execute(
            "select detector, rows_since_deployment, lsn, lsn <= pg_current_wal_lsn()"
            " from pgml.drift_events order by id"
        ).fetchall()
    # In the source too, each where it was detected: the rows since deployment and the
    # source commit that brought the row.
    first = next(c for c in copied if c[0] == errors[0].detector)
    assert first[1] == errors[0].rows and first[2] is not None and first[3] is True, copied


def test_drift_retrains_a_batch_model_and_the_better_one_is_deployed(
    daemon: Daemon, source_dsn: str
) -> None:
    # A fifth of the training labels are wrong, so the first model scores about 0.8. After the
    # shift, rows far to the right are all False, which that model gets all wrong (error
    # drift); a tree trained on the whole table then fits both regimes and scores higher.
    execute(source_dsn, "update readings set y = not y where id % 5 = 0")
    wait_for(lambda: mislabelled(daemon) == 200, what="the wrong labels in the mirror")
    first = daemon.trainer.train(
        "Batch", task="classification", relation="public.readings", y="y",
        algorithm="random_forest", hyperparams={"n_estimators": 10},
    )  # fmt: skip
    assert first.deployed
    daemon.trainer.set_retrain_on_drift("Batch", True)
    wait_for(lambda: "Batch" in daemon.monitor.watches, what="the monitor to watch Batch")
    insert(source_dsn, 1001, 2000, shifted=False)
    for start in range(2001, 6001, 250):
        execute(
            source_dsn,
            f"insert into readings select i, 2 + (i % 1000) / 1000.0, false"
            f" from generate_series({start}, {start + 249}) i",
        )
    # The retrained model challenges the deployed one on rows that come after its snapshot:
    # more rows of the new regime until it is judged (however the retrain and the inserts
    # above interleaved).
    more = iter(range(6001, 20001, 250))

    def judged() -> bool:
        if any(r[0] == "Batch" and r[2] is not None for r in daemon.retrainer.results):
            return True
        if "Batch" in daemon.retrainer.challengers:
            start = next(more)
            execute(
                source_dsn,
                f"insert into readings select i, 2 + (i % 1000) / 1000.0, false"
                f" from generate_series({start}, {start + 249}) i",
            )
        return False

    try:
        wait_for(judged, timeout=120, what="a retrain on drift")
    except AssertionError:  # say what the monitor saw
        watch = daemon.monitor.watches.get("Batch")
        seen = None if watch is None else (vars(watch.errors), vars(watch.features))
        raise AssertionError(
            f"no retrain on drift in 120 s: retrains {daemon.retrainer.results}, detectors {seen}"
        ) from None
    _, reason, result = next(r for r in daemon.retrainer.results if r[2] is not None)
    assert reason.startswith("drift (")
    assert result is not None and result.model_id > first.model_id
    snapshot = daemon.trainer.registry.snapshot(result.snapshot_id)
    assert snapshot is not None and snapshot.num_rows > 1000  # a fresh snapshot of the table
    assert result.deployed, (result.metrics, first.metrics)
    project = daemon.trainer.registry.project("Batch")
    assert project is not None
    deployed = daemon.trainer.registry.deployed(project.id)
    assert deployed is not None and deployed.id == result.model_id


def mislabelled(daemon: Daemon) -> int:
    cursor = daemon.mirror.con.cursor()
    try:
        row = cursor.execute("select count(*) from public.readings where y <> (x > 0)").fetchone()
    finally:
        cursor.close()
    return int(row[0]) if row else 0


def test_a_feature_shift_without_labels_is_psi_not_error_drift(
    daemon: Daemon, source_dsn: str
) -> None:
    events = recorded_drift(daemon)
    daemon.trainer.train(
        "Shift", task="classification", relation="public.readings", y="y", algorithm="linear"
    )
    wait_for(lambda: "Shift" in daemon.monitor.watches, what="the monitor to watch Shift")
    # New rows far to the right of anything seen in training, and no labels yet.
    execute(
        source_dsn,
        "insert into readings select i, 5 + (i % 100) / 100.0, null"
        " from generate_series(1001, 2000) i",
    )
    wait_for(lambda: any(e.detector == "psi" for e in events), timeout=60, what="PSI")
    assert {(e.detector, e.feature) for e in events} == {("psi", "x")}
    with psycopg.connect(
        f"host=127.0.0.1 port={daemon.endpoint.port} user=postgres dbname=pgml"
    ) as endpoint:
        stored = endpoint.execute(
            "select project, detector, feature from pgml.drift_events"
        ).fetchall()
    assert stored == [("Shift", "psi", "x")]


def test_rows_arriving_while_an_online_model_trains_are_learned(
    daemon: Daemon, source_dsn: str
) -> None:
    # Hold the registry so the monitor cannot see the new model yet: rows that arrive between
    # its snapshot and the moment the monitor watches it must still be learned.
    with daemon.trainer.registry._lock:
        result = daemon.trainer.train(
            "Eager", task="classification", relation="public.readings", y="y",
            algorithm="online_naive_bayes",
        )  # fmt: skip
        insert(source_dsn, 1001, 1600, shifted=False, chunk=50)
        target = current_lsn(source_dsn)
        wait_for(lambda: slot_confirmed(source_dsn) >= target, what="the rows in the mirror")
        assert "Eager" not in daemon.monitor.watches
    wait_for(lambda: result.model_id in daemon.trainer.live, what="the model to go live")
    model = daemon.trainer.live[result.model_id]
    expected = 1000 + 600  # the 1,000 snapshot rows (none held out), then the new ones
    wait_for(lambda: model.estimator.rows_learned >= expected, timeout=60,
             what="every row after the snapshot to be learned")  # fmt: skip
    assert model.estimator.rows_learned == expected


def test_a_killed_learner_resumes_from_the_checkpoint_learning_each_row_once(
    daemon: Daemon, source_dsn: str
) -> None:
    result = daemon.trainer.train(
        "Sturdy", task="classification", relation="public.readings", y="y",
        algorithm="online_naive_bayes",
    )  # fmt: skip
    wait_for(lambda: result.model_id in daemon.trainer.live, what="the model to go live")
    insert(source_dsn, 1001, 1800, shifted=False, chunk=100)  # a checkpoint every 500 rows
    # killed once the serving copy holds rows the last checkpoint does not
    watch = daemon.monitor.watches["Sturdy"]
    wait_for(
        lambda: (
            daemon.trainer.live[result.model_id].estimator.rows_learned == 1000 + 800
            and not watch.unsynced
            and watch.learned_since_checkpoint > 0
        ),
        timeout=60,
        what="rows learned and served, but not checkpointed",
    )
    learner = daemon.monitor.learner._process
    assert learner is not None and learner.is_alive()
    os.kill(learner.pid, signal.SIGKILL)
    insert(source_dsn, 1801, 2400, shifted=False, chunk=100)
    expected = 1000 + 1400  # the 1,000 snapshot rows (none held out), then the new ones
    wait_for(
        lambda: (
            (model := daemon.trainer.live.get(result.model_id)) is not None
            and model.estimator.rows_learned >= expected
        ),
        timeout=90,
        what="every row to be learned, from the checkpoint on",
    )
    model = daemon.trainer.live[result.model_id]
    assert model.estimator.rows_learned == expected
    assert daemon.monitor.learner._process is not learner, "a new learner process"
    assert daemon.health()["status"] == "ok"


def test_a_new_model_of_a_watched_table_learns_the_rows_after_its_snapshot(
    daemon: Daemon, source_dsn: str
) -> None:
    first = daemon.trainer.train(
        "Again", task="classification", relation="public.readings", y="y",
        algorithm="online_naive_bayes",
    )  # fmt: skip
    wait_for(lambda: first.model_id in daemon.trainer.live, what="the first model to go live")
    insert(source_dsn, 1001, 1200, shifted=False, chunk=100)
    target = current_lsn(source_dsn)
    wait_for(lambda: slot_confirmed(source_dsn) >= target, what="the rows in the mirror")
    # The next model's rows between its snapshot and its deployment are learned by the first
    # one, whose checkpoints must not drop them from the log before the next one replays them.
    with daemon.trainer.registry._lock:
        second = daemon.trainer.train(
            "Again", task="classification", relation="public.readings", y="y",
            algorithm="online_naive_bayes", automatic_deploy=False,
        )  # fmt: skip
        insert(source_dsn, 1201, 1800, shifted=False, chunk=50)
        target = current_lsn(source_dsn)
        wait_for(lambda: slot_confirmed(source_dsn) >= target, what="the rows in the mirror")
    trained = daemon.trainer.model(second.model_id)[1].estimator.rows_learned
    daemon.monitor.checkpoint_rows = 1  # the first model checkpoints at its next batch
    daemon.trainer.deploy(model_id=second.model_id)
    wait_for(lambda: second.model_id in daemon.trainer.live, what="the second model to go live")
    model = daemon.trainer.live[second.model_id]
    wait_for(lambda: model.estimator.rows_learned >= trained + 600, timeout=60,
             what="the rows since its snapshot to be learned")  # fmt: skip
    assert model.estimator.rows_learned == trained + 600
