"""Watching deployed models as rows change: online learning, feature drift, error drift.

After each mirror commit, the rows it touched in a deployed model's relation are read from the
mirror. An online model learns from those with a label, prequentially (its predictions made
before learning feed the error-drift detector); any model's features are compared with its
training snapshot (PSI, Jensen-Shannon) and, where labels arrive, its errors are watched
(ADWIN, DDM). Each detection is registered and handed to ``on_drift``. Online models are
checkpointed every ``checkpoint_rows`` rows or ``checkpoint_seconds`` (a checkpoint pickles the
whole model, seconds for a large tree, while a restart replays the logged changes since the
last one cheaply, so checkpoints are rare by default): their file and hash in
the registry are replaced, with a progress row (rows learned, progressive metrics, position).

This runs in a thread of its own on the commits the replicator hands over: it never holds up
replication, and a slow model only makes the queue longer. Online models learn in a process of
their own (``trainer/learner.py``), so River's row-by-row Python does not take the GIL from the
replicator: this thread reads the rows and sends them; the copy of each online model that
serves predictions is fetched from the learner every second or so (less often for a model
that takes long to fetch), and always before a checkpoint.
"""

from __future__ import annotations

import atexit
import functools
import gc
import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mirror.change_log import Touched, rows_for_keys, touched_keys
from mirror.changes import Lsn, format_lsn, parse_lsn
from mirror.errors import SidecarError
from mirror.store import Mirror
from trainer.algorithms import is_online
from trainer.drift import DriftEvent, DriftThresholds, ErrorDrift, FeatureDrift
from trainer.learner import Learned, Learner, LearnerGone
from trainer.model import Model, save_model
from trainer.snapshots import find_relation
from trainer.train import Trainer

log = logging.getLogger("pgml_sidecar")

DriftListener = Callable[[str, int, DriftEvent], None]
SYNC_COST_SHARE = 20
"""An online model's serving copy is fetched from the learner at most every ``sync_seconds``,
and at most every 20 times what the last fetch took."""
SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits, while the monitor runs."""


@dataclass
class Watch:
    """One deployed model under watch."""

    project: str
    project_id: int
    model_id: int
    model: Model
    schema: str
    table: str
    keys: list[str]
    label: str | None
    feature_columns: list[str]
    features: FeatureDrift
    errors: ErrorDrift | None
    online: bool
    learned_lsn: Lsn = 0
    """The mirror position of the last change learned (online models)."""
    learned_since_checkpoint: int = 0
    checkpointed_at: float = field(default_factory=time.monotonic)
    unsynced: bool = False
    """Online: rows went to the learner since the serving copy was last fetched."""
    synced_at: float = field(default_factory=time.monotonic)
    sync_cost: float = 0.0
    """Seconds the last fetch from the learner took: a big model is fetched less often."""


class Monitor:
    """Online learning and drift detection for every deployed model."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        trainer: Trainer,
        *,
        mirror: Mirror,
        thresholds: DriftThresholds | None = None,
        on_drift: DriftListener | None = None,
        checkpoint_rows: int = 100_000,
        checkpoint_seconds: float = 60.0,
        sync_seconds: float = 1.0,
    ) -> None:
        self.con = con
        self.trainer = trainer
        self.mirror = mirror
        self.watched: set[tuple[str, str]] = set()
        """Relations of deployed models: the mirror reports their changed keys."""
        self.thresholds = thresholds or DriftThresholds()
        self.on_drift = on_drift
        self.checkpoint_rows = checkpoint_rows
        self.checkpoint_seconds = checkpoint_seconds
        self.sync_seconds = sync_seconds
        """How stale the copy of an online model that serves predictions may get."""
        self.learner = Learner()
        self.changes: queue.Queue[tuple[Lsn, dict[tuple[str, str], Touched]]] = queue.Queue()
        self.watches: dict[str, Watch] = {}
        self._generation = -1
        self._expected: set[tuple[str, str]] = set()
        self._loading: dict[int, Watch] = {}
        """Models being loaded (replaying the change log), by model id."""
        self.batches = 0

    def on_commit(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        """Called by the mirror after a commit, in the replicator's thread: queue, return."""
        self.changes.put((lsn, touched))

    def run(self, stop: threading.Event) -> None:
        # What this thread still runs in Python (features, batch models' error drift) holds the
        # GIL for up to the switch interval each time the replicator (many short numpy and
        # DuckDB calls) gives it up: a shorter interval hands it back sooner.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
        try:
            while not stop.is_set():
                try:
                    self._step()
                except LearnerGone as exc:
                    log.error("%s", exc)
                    self._reset()
                except Exception:
                    self._reset()  # a batch taken off the queue was not learned
                    raise
            while True:  # what was committed before the stop is learned before the checkpoint
                try:
                    self._take(*self.changes.get_nowait())
                except queue.Empty:
                    break
        finally:
            try:
                self._checkpoint_due(force=True)
            except LearnerGone as exc:
                log.error("%s", exc)
                self._reset()
            sys.setswitchinterval(interval)

    def _reset(self) -> None:
        """Forget the watches and their live models: they load again from their checkpoints
        and replay the change log from there, so each change is still learned exactly once."""
        for watch in self.watches.values():
            if watch.online:
                self.trainer.live.pop(watch.model_id, None)
        self.watches, self._generation = {}, -1
        self.learner.revive()

    def _step(self) -> None:
        if self._generation != self.trainer.generation:
            self._refresh()
        try:
            lsn, touched = self.changes.get(timeout=0.1)
        except queue.Empty:
            pass
        else:
            self._take(lsn, touched)
        for learned in self.learner.learned():
            self._on_learned(learned)
        self._sync_due()
        self._checkpoint_due(force=False)

    def settle(self) -> None:
        """Wait until the learner has learned everything sent, and serve that state."""
        for watch in list(self.watches.values()):
            if watch.online:
                self._sync(watch)

    def close(self) -> None:
        self.learner.close()

    def _take(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        for watch in list(self.watches.values()):
            entry = touched.get((watch.schema, watch.table))
            if entry is None or not entry.keys or lsn <= watch.learned_lsn:
                continue  # untouched, or learned already (replayed from the log)
            self._observe(watch, touched_keys(entry).select(watch.keys))
            watch.learned_lsn = lsn
        self.batches += 1

    # -- what is watched -----------------------------------------------------------------------

    def _refresh(self) -> None:
        generation = self.trainer.generation
        self._checkpoint_due(force=True)
        watches: dict[str, Watch] = {}
        for project in self.trainer.registry.projects():
            try:
                watch = self._watch(project.name, project.id)
            except SidecarError as exc:
                log.warning("not watching %s: %s", project.name, exc)
                continue
            if watch is not None:
                watches[project.name] = watch
        for old in self.watches.values():
            if watches.get(old.project) is not old:
                self.trainer.live.pop(old.model_id, None)
                if old.online:
                    self.learner.drop(old.model_id)
        fresh = [w for w in watches.values() if self.watches.get(w.project) is not w]
        # Watch and log the new tables first: a change committed from now on is both queued and
        # logged; the replay learns it and the queue then skips it (by position).
        self.watched.update((w.schema, w.table) for w in watches.values())
        self.mirror.logged.update((w.schema, w.table) for w in watches.values() if w.online)
        self._loading = {w.model_id: w for w in fresh}  # their replays' detections count
        for watch in fresh:
            if watch.online:
                self.learner.load(watch.model_id, watch.model.estimator, watch.errors)
                self._replay(watch)
                self._sync(watch)
                self.trainer.live[watch.model_id] = watch.model
        self.watches = watches  # published once its models are live
        self._loading = {}
        if fresh:
            _freeze_long_lived()
        self._expected.difference_update((w.schema, w.table) for w in fresh if w.online)
        self.watched.intersection_update(
            {(w.schema, w.table) for w in watches.values()} | self._expected
        )
        self.mirror.logged.intersection_update(
            {(w.schema, w.table) for w in watches.values() if w.online} | self._expected
        )
        self._generation = generation

    def expect(self, schema: str, table: str) -> None:
        """An online model of ``schema.table`` is about to be trained: log the table's changes
        from now on, so those made between its snapshot and its deployment are learned too."""
        self._expected.add((schema, table))
        self.watched.add((schema, table))
        self.mirror.logged.add((schema, table))

    def prepare(self) -> None:
        """Watch the deployed models now (before the replicator starts, so none of their
        changes goes unseen), learning what online models missed while the sidecar was down."""
        self._refresh()

    def _replay(self, watch: Watch) -> None:
        """Learn the logged changes the model's last checkpoint has not seen, in order."""
        for lsn, keys in self.mirror.logged_changes(watch.schema, watch.table, watch.learned_lsn):
            self._observe(watch, keys.select(watch.keys))
            watch.learned_lsn = lsn

    def _watch(self, project: str, project_id: int) -> Watch | None:
        registry = self.trainer.registry
        record = registry.deployed(project_id)
        if record is None:
            return None
        current = self.watches.get(project)
        if current is not None and current.model_id == record.id:
            return current
        snapshot = registry.snapshot(record.snapshot_id)
        assert snapshot is not None
        relation = find_relation(self.con, snapshot.relation_name)
        _, model = self.trainer.model(record.id)
        label = snapshot.y_column_name[0] if snapshot.y_column_name else None
        reference = pq.read_table(self.trainer.home / snapshot.path)
        features = [c.name for c in model.preprocessor.columns]
        errors = ErrorDrift(model.task) if label and model.task in _SUPERVISED else None
        online = is_online(record.algorithm)
        learned = registry.learned_position(record.id) if online else None
        if learned is None:
            positions = [parse_lsn(p) for p in snapshot.source_position.values()]
            learned = max(positions, default=0)
        return Watch(
            project=project,
            project_id=project_id,
            model_id=record.id,
            model=model,
            schema=relation.schema,
            table=relation.name,
            keys=relation.key or [c for c, _ in relation.columns],
            label=label,
            feature_columns=features,
            # Keys (serial ids) always drift: they are features, but not watched for drift.
            features=FeatureDrift(
                reference,
                columns=[c for c in features if c not in relation.key],
                thresholds=self.thresholds,
            ),
            errors=errors,
            online=online,
            learned_lsn=learned,
        )

    # -- learning and watching -----------------------------------------------------------------

    def _observe(self, watch: Watch, keys: pa.Table) -> None:
        columns = list(dict.fromkeys([*watch.keys, *watch.feature_columns, *_opt(watch.label)]))
        rows = rows_for_keys(self.con, watch.schema, watch.table, keys, columns)
        if rows.num_rows == 0:
            return
        events = watch.features.update(rows.select(watch.feature_columns))
        if watch.label is not None:
            labelled = rows.filter(pc.is_valid(rows[watch.label]))
            if labelled.num_rows:
                events += self._supervised(watch, labelled)
        for event in events:
            self._drifted(watch, event)

    def _supervised(self, watch: Watch, rows: pa.Table) -> list[DriftEvent]:
        assert watch.label is not None
        model = watch.model
        x = model.features(rows.select(watch.feature_columns))
        y_raw = rows[watch.label].to_numpy(zero_copy_only=False)
        if model.classes is not None:
            index = np.searchsorted(model.classes, y_raw)
            index = np.clip(index, 0, len(model.classes) - 1)
            known = model.classes[index] == y_raw
            y = np.where(known, index, -1).astype(np.float64)
            y[~known] = np.nan  # a class the model has never seen: not learned, not scored
        else:
            y = y_raw.astype(np.float64)
        if watch.online:  # learned in the learner process; its detections come back later
            self.learner.learn(watch.model_id, x, y)
            watch.learned_since_checkpoint += int(np.count_nonzero(~np.isnan(y)))
            watch.unsynced = True
            return []
        predicted = np.asarray(model.estimator.predict(x), dtype=np.float64)
        if watch.errors is None:
            return []
        return watch.errors.update(y, predicted)

    def _on_learned(self, learned: Learned) -> None:
        watch = next((w for w in self.watches.values() if w.model_id == learned.key), None)
        watch = watch or self._loading.get(learned.key)
        if watch is None:
            return
        if learned.error is not None:
            log.warning("%s: online learning: %s", watch.project, learned.error)
        for event in learned.events:
            self._drifted(watch, event)

    def _sync_due(self) -> None:
        now = time.monotonic()
        for watch in list(self.watches.values()):
            # fetching takes at most a twentieth of the time (a large tree takes a while)
            interval = max(self.sync_seconds, SYNC_COST_SHARE * watch.sync_cost)
            if watch.unsynced and now - watch.synced_at >= interval:
                self._sync(watch)

    def _sync(self, watch: Watch) -> None:
        """Serve the learner's current state of an online model."""
        started = time.monotonic()
        estimator = self.learner.state(watch.model_id, self._on_learned)
        if estimator is not None:  # None: the learner does not have it (it said why)
            watch.model.estimator = estimator
        watch.unsynced = False
        watch.synced_at = time.monotonic()
        watch.sync_cost = watch.synced_at - started

    def _drifted(self, watch: Watch, event: DriftEvent) -> None:
        log.warning(
            "drift in %s: %s%s, statistic %.3f (threshold %.3f)", watch.project, event.detector,
            f" on {event.feature}" if event.feature else "", event.statistic, event.threshold,
        )  # fmt: skip
        self.trainer.registry.add_drift_event(
            watch.project_id, watch.model_id, event.detector, event.feature,
            float(event.statistic), float(event.threshold),
        )  # fmt: skip
        if self.on_drift is not None:
            self.on_drift(watch.project, watch.model_id, event)

    # -- checkpoints ---------------------------------------------------------------------------

    def _checkpoint_due(self, *, force: bool) -> None:
        now = time.monotonic()
        for watch in self.watches.values():
            if not watch.online or watch.learned_since_checkpoint == 0:
                continue
            if (
                force
                or watch.learned_since_checkpoint >= self.checkpoint_rows
                or now - watch.checkpointed_at >= self.checkpoint_seconds
            ):
                self._checkpoint(watch)

    def _checkpoint(self, watch: Watch) -> None:
        self._sync(watch)
        path = self.trainer.home / "models" / f"{uuid.uuid4().hex}.pickle"
        try:
            sha = save_model(watch.model, path)
        except RecursionError:
            # A tree grown very deep (e.g. split on an ever-increasing key) cannot be pickled:
            # keep learning, and say so; the last checkpoint stays the one a restart uses.
            path.with_suffix(path.suffix + ".tmp").unlink(missing_ok=True)
            log.error(
                "%s: the online model is too deep to checkpoint; drop ever-increasing columns"
                " (serial keys, timestamps) from its relation's features", watch.project,
            )  # fmt: skip
            watch.learned_since_checkpoint = 0
            watch.checkpointed_at = time.monotonic()
            return
        estimator: Any = watch.model.estimator
        registry = self.trainer.registry
        with registry.transaction():
            old = registry.model(watch.model_id)
            registry.update_model_file(
                watch.model_id, str(path.relative_to(self.trainer.home)), sha
            )
            registry.add_progress(
                watch.model_id,
                int(getattr(estimator, "rows_learned", 0)),
                dict(getattr(estimator, "progressive", {})),
                {"mirror": format_lsn(watch.learned_lsn)},
            )
        if (watch.schema, watch.table) not in self._expected:  # a model in training needs them
            self.mirror.forget_changes(
                watch.schema,
                watch.table,
                min(w.learned_lsn for w in self.watches.values() if w.online
                    and (w.schema, w.table) == (watch.schema, watch.table)),
            )  # fmt: skip
        if old is not None and old.path != str(path.relative_to(self.trainer.home)):
            (self.trainer.home / old.path).unlink(missing_ok=True)
        watch.learned_since_checkpoint = 0
        watch.checkpointed_at = time.monotonic()


@functools.cache
def _unfreeze_at_exit() -> None:
    atexit.register(gc.unfreeze)


def _freeze_long_lived() -> None:
    """Keep everything alive now (the models just loaded: a tree is hundreds of thousands of
    objects) out of the garbage collector's full scans. The replicator's batches make full
    collections frequent, and each one walking the models cost replication a fifth of its
    speed (bench/online.py, part 2)."""
    gc.collect()
    gc.freeze()
    _unfreeze_at_exit()  # so that exit frees them as usual


_SUPERVISED = ("regression", "classification")


def _opt(value: str | None) -> list[str]:
    return [] if value is None else [value]
