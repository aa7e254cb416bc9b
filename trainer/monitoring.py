"""Watching deployed models as rows change: online learning, feature drift, error drift.

After each mirror commit, the rows it touched in a deployed model's relation are read from the
mirror, in the order they changed (commit order, then the order of the changes within it; a
row changed twice, at its last change). An online model learns from those with a label,
prequentially (its predictions made before learning feed the error-drift detector); any
model's features are compared with its training snapshot (PSI, Jensen-Shannon) and, where
labels arrive, its errors are watched (ADWIN). Each detection is registered once, with the
mirror commit that brought the row and the rows since deployment, and handed to ``on_drift``.
Online models are checkpointed every ``checkpoint_rows`` rows or ``checkpoint_seconds`` (a
checkpoint pickles the whole model, seconds for a large tree, while a restart replays the
logged changes since the last one cheaply, so checkpoints are rare by default): the learner
process writes the file, as of the rows sent before the request, while this thread goes on;
when it is written, the model's file and hash in the registry are replaced, with a progress row
(rows learned, progressive metrics, position), and the logged changes every online model of
the table has checkpointed are forgotten. One checkpoint is written at a time (unless all are
due at once, at a stop or a new deployment), so models deployed together do not all stop
learning together. The checkpoint holds the drift detectors' state too, so a replay from it
detects what the first pass detected, at the same rows, and those are not registered again.
Between checkpoints a model's one current progress row is updated every ``progress_seconds``.

A model that fails (it cannot be loaded, learn, predict, or be pickled even on a deep stack)
is quarantined alone: its status in the registry becomes failed with the reason, it is told to
``on_failed``, and it learns no more; the others go on. A learner process that dies twice
while busy with the same model quarantines that model.

This runs in a thread of its own on the commits the replicator hands over: it never holds up
replication, and a slow model only makes the queue longer. Online models learn in a process of
their own (``trainer/learner.py``), so River's row-by-row Python does not take the GIL from the
replicator: this thread reads the rows and sends them; the copy of each online model that
serves predictions is fetched from the learner every second or so (less often for a model
that takes long to fetch), and always before a checkpoint. The labelled rows last seen of
each model (``recent_limit``) are kept for retraining on drift to score champion and challenger
on (:meth:`Monitor.recent_rows`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
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

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mirror.change_log import Touched, rows_of_commits, touched_keys
from mirror.changes import Lsn, format_lsn, parse_lsn
from mirror.errors import SidecarError, TrainingError
from mirror.store import Mirror
from trainer.algorithms import is_online
from trainer.drift import DriftEvent, DriftThresholds, ErrorDrift, FeatureDrift
from trainer.learner import Checkpointed, Failed, Learned, Learner, LearnerGone, Reply, State
from trainer.model import Model
from trainer.snapshots import find_relation
from trainer.train import Trainer

log = logging.getLogger("pgml_sidecar")

DriftListener = Callable[[str, int, DriftEvent], None]
FailureListener = Callable[[str, int, str], None]
"""Called with (project, model id, reason) when a model is quarantined."""
ProgressListener = Callable[[str, int, int, dict[str, float]], None]
"""Called with (project, model id, rows learned, progressive metrics) as an online model learns."""
SYNC_COST_SHARE = 20
"""An online model's serving copy is fetched from the learner at most every ``sync_seconds``,
and at most every 20 times what the last fetches of all online models took together: fetching
takes at most a twentieth of the time, however many models there are."""
SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits, while the monitor runs."""
DEATHS = 2
"""A model the learner process died busy with this many times is quarantined."""
READ_KEYS = 20_000
"""Keys of queued commits read in one join at most (each join scans the table)."""
LOG_CONSUMER = "online models"
"""Who the mirror keeps the logged keys of online models' tables for."""
Commit = tuple[Lsn, dict[tuple[str, str], Touched]]


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
    features: FeatureDrift | None
    """None when the training snapshot had no rows to compare with."""
    errors: ErrorDrift | None
    online: bool
    learned_lsn: Lsn = 0
    """The mirror position of the last change observed (online models: learned)."""
    checkpoint_lsn: Lsn = 0
    """Online: the mirror position its last written checkpoint has learned up to."""
    learned_since_checkpoint: int = 0
    checkpointed_at: float = field(default_factory=time.monotonic)
    unsynced: bool = False
    """Online: rows went to the learner since the serving copy was last fetched."""
    synced_at: float = field(default_factory=time.monotonic)
    sync_cost: float = 0.0
    """Seconds the last fetch from the learner took: a big model is fetched less often."""
    failed: str | None = None
    """Quarantined, and why."""
    rows_learned: int = 0
    progressive: dict[str, float] = field(default_factory=dict)
    progress_lsn: Lsn = 0
    """Online: the learner's count, metrics and position as of its last reply."""
    progress_saved: float = 0.0
    """When the current progress row was last written (0: it is up to date)."""


@dataclass
class _Recent:
    """A project's labelled rows last seen (feature columns and label), by commit, oldest
    first: kept across its deployments."""

    batches: collections.deque[tuple[Lsn, pa.Table]] = field(default_factory=collections.deque)
    count: int = 0


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
        progress_seconds: float = 1.0,
        recent_limit: int = 10_000,
    ) -> None:
        self.con = con
        self.trainer = trainer
        self.mirror = mirror
        self.watched: set[tuple[str, str]] = set()
        """Relations of deployed models: the mirror reports their changed keys."""
        self.thresholds = thresholds or DriftThresholds()
        self.on_drift = on_drift
        self.on_failed: FailureListener | None = None
        self.on_progress: ProgressListener | None = None
        self.checkpoint_rows = checkpoint_rows
        self.checkpoint_seconds = checkpoint_seconds
        self.sync_seconds = sync_seconds
        """How stale the copy of an online model that serves predictions may get."""
        self.progress_seconds = progress_seconds
        """How stale an online model's current row in pgml.progress may get."""
        self.recent_limit = recent_limit
        """Labelled rows kept per model for :meth:`recent_rows`."""
        self.learner = Learner()
        self.changes: queue.Queue[Commit] = queue.Queue()
        self.watches: dict[str, Watch] = {}
        self.failed: dict[int, tuple[str, str]] = {}
        """Quarantined models: model id -> (project, reason)."""
        self._deaths: collections.Counter[int] = collections.Counter()
        self._generation = -1
        self._expected: set[tuple[str, str]] = set()
        self._loading: dict[int, Watch] = {}
        """Models being loaded (replaying the change log), by model id."""
        self._recent: dict[str, _Recent] = {}
        self._recent_lock = threading.Lock()
        self._checkpointing: dict[int, list[Watch]] = {}
        """Checkpoints requested from the learner and not yet written, by model id."""
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
                    self._learner_died(exc)
                except Exception:
                    self._reset()  # a batch taken off the queue was not learned
                    raise
            while commits := self._waiting():  # committed before the stop: learned first
                self._take(commits)
        finally:
            try:
                self._checkpoint_due(force=True)
                self._checkpoints_written()
            except LearnerGone as exc:
                self._learner_died(exc)
            sys.setswitchinterval(interval)

    def _learner_died(self, exc: LearnerGone) -> None:
        """Reload the online models from their checkpoints; a model the process died busy
        with for the second time is quarantined first."""
        culprit = self.learner.culprit
        log.error("%s", exc)
        if culprit is not None:
            self._deaths[culprit] += 1
            watch = self._watch_of(culprit)
            if watch is not None and self._deaths[culprit] >= DEATHS:
                self._quarantine(
                    watch, f"the online learning process died {DEATHS} times while busy with it"
                )
        self._reset()

    def _reset(self) -> None:
        """Forget the online models' watches and live copies: they load again from their
        checkpoints and replay the change log from there, so each change is still learned
        exactly once (and each drift registered once). Batch models' watches stay."""
        for name, watch in list(self.watches.items()):
            if watch.online:
                self.trainer.live.pop(watch.model_id, None)
                del self.watches[name]
        self._loading = {}
        self._checkpointing = {}  # lost with the process: the registry keeps the last written
        self._generation = -1
        self.learner.revive()

    def _step(self) -> None:
        if self._generation != self.trainer.generation:
            self._refresh()
        try:
            first = self.changes.get(timeout=0.1)
        except queue.Empty:
            pass
        else:
            self._take(self._waiting(first))
        for reply in self.learner.learned():
            self._on_reply(reply)
        self._sync_due()
        self._progress_due()
        self._checkpoint_due(force=False)

    def settle(self) -> None:
        """Wait until the learner has learned everything sent, and serve that state."""
        for watch in list(self.watches.values()):
            if watch.online and not watch.failed:
                self._sync(watch)
        self._progress_due(force=True)

    def close(self) -> None:
        self.learner.close()

    def _waiting(self, first: Commit | None = None) -> list[Commit]:
        """``first`` and the commits queued after it, up to about ``READ_KEYS`` keys: read
        together when the monitor is behind."""
        commits = [] if first is None else [first]
        keys = sum(_key_count(touched) for _, touched in commits)
        while keys < READ_KEYS:
            try:
                commits.append(self.changes.get_nowait())
            except queue.Empty:
                break
            keys += _key_count(commits[-1][1])
        return commits

    def _take(self, commits: list[Commit]) -> None:
        """Watch the rows of commits taken off the queue, in commit order for each model."""
        runs: dict[tuple[str, str], list[tuple[list[Watch], list[tuple[Lsn, pa.Table]]]]] = {}
        for lsn, touched in commits:
            by_table: dict[tuple[str, str], list[Watch]] = {}
            for watch in list(self.watches.values()):
                entry = touched.get((watch.schema, watch.table))
                if entry is None or not entry.keys or lsn <= watch.learned_lsn or watch.failed:
                    continue  # untouched, learned already (replayed from the log), quarantined
                by_table.setdefault((watch.schema, watch.table), []).append(watch)
            for table, watches in by_table.items():
                keys = touched_keys(touched[table], distinct=False).select(watches[0].keys)
                table_runs = runs.setdefault(table, [])
                if table_runs and _same(table_runs[-1][0], watches):
                    table_runs[-1][1].append((lsn, keys))  # the same models: read together
                else:
                    table_runs.append((watches, [(lsn, keys)]))
        for table_runs in runs.values():
            for watches, keyed in table_runs:
                self._observe(watches, keyed)
        self.batches += len(commits)

    # -- what is watched -----------------------------------------------------------------------

    def _refresh(self) -> None:
        generation = self.trainer.generation
        self._checkpoint_due(force=True)
        self._checkpoints_written()
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
                if old.online and not old.failed:
                    self.learner.drop(old.model_id)
        fresh = [w for w in watches.values() if self.watches.get(w.project) is not w]
        # Watch and log the new tables first: a change committed from now on is both queued and
        # logged; the replay learns it and the queue then skips it (by position).
        self.watched.update((w.schema, w.table) for w in watches.values())
        for w in watches.values():
            if w.online:
                self.mirror.consume_changes(LOG_CONSUMER, w.schema, w.table)
        self._loading = {w.model_id: w for w in fresh}  # their replays' replies count
        for watch in fresh:
            if watch.online:
                self.learner.load(watch.model_id, watch.model.estimator, watch.errors)
                self._replay(watch)
                self._sync(watch)
                if not watch.failed:
                    self.trainer.live[watch.model_id] = watch.model
        self.watches = watches  # published once its models are live
        self._loading = {}
        if fresh:
            _freeze_long_lived()
        self._expected.difference_update((w.schema, w.table) for w in fresh if w.online)
        self.watched.intersection_update(
            {(w.schema, w.table) for w in watches.values()} | self._expected
        )
        self.mirror.consume_only(
            LOG_CONSUMER,
            {(w.schema, w.table) for w in watches.values() if w.online} | self._expected,
        )
        self._generation = generation

    def expect(self, schema: str, table: str) -> None:
        """An online model of ``schema.table`` is about to be trained: log the table's changes
        from now on, so those made between its snapshot and its deployment are learned too."""
        self._expected.add((schema, table))
        self.watched.add((schema, table))
        self.mirror.consume_changes(LOG_CONSUMER, schema, table)

    def held(self, schema: str, table: str) -> Lsn | None:
        """The oldest position an online model of ``schema.table`` still replays the change
        log from (None: none needs it); a model in training needs all of it."""
        if (schema, table) in self._expected:
            return 0
        watches = [*self.watches.values(), *self._loading.values()]
        found = [
            w.checkpoint_lsn for w in watches
            if w.online and not w.failed and (w.schema, w.table) == (schema, table)
        ]  # fmt: skip
        return min(found) if found else None

    def prepare(self) -> None:
        """Watch the deployed models now (before the replicator starts, so none of their
        changes goes unseen), learning what online models missed while the sidecar was down."""
        self._refresh()

    def _replay(self, watch: Watch) -> None:
        """Learn the logged changes the model's last checkpoint has not seen, in order."""
        keyed: list[tuple[Lsn, pa.Table]] = []
        count = 0
        for lsn, keys in self.mirror.logged_changes(watch.schema, watch.table, watch.learned_lsn):
            keyed.append((lsn, keys.select(watch.keys)))
            count += keys.num_rows
            if count >= READ_KEYS:
                self._observe([watch], keyed)
                keyed, count = [], 0
            if watch.failed:
                return
        if keyed:
            self._observe([watch], keyed)

    def _watch(self, project: str, project_id: int) -> Watch | None:
        registry = self.trainer.registry
        record = registry.deployed(project_id)
        if record is None:
            return None
        current = self.watches.get(project)
        if current is not None and current.model_id == record.id:
            return current
        if record.status == "failed":
            reason = registry.failures().get(record.id, "failed")
            self._failed(project, record.id, reason)
            return None
        snapshot = registry.snapshot(record.snapshot_id)
        assert snapshot is not None
        relation = find_relation(self.con, snapshot.relation_name)
        try:
            _, model = self.trainer.model(record.id)
        except Exception as exc:  # a model file that cannot be loaded fails alone
            reason = f"cannot be loaded: {_reason(exc)}"
            registry.mark_failed(record.id, reason)
            self._failed(project, record.id, reason)
            return None
        # a joint model's errors (several labels per row) are not watched, its inputs are
        label = snapshot.y_column_name[0] if len(snapshot.y_column_name) == 1 else None
        reference = pq.read_table(self.trainer.home / snapshot.path)
        features = [c.name for c in model.preprocessor.columns]
        checkpointed = model.monitoring or {}
        model.monitoring = None  # the detectors' state goes on in this watch, not the copy
        errors = checkpointed.get("errors")
        if errors is None and label and model.task in _SUPERVISED:
            errors = ErrorDrift(model.task)
        drift = checkpointed.get("features")
        if drift is None and reference.num_rows:
            # Keys (serial ids) always drift: they are features, but not watched for drift.
            columns = [c for c in features if c not in relation.key]
            drift = FeatureDrift(reference, columns=columns, thresholds=self.thresholds)
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
            features=drift,
            errors=errors,
            online=online,
            learned_lsn=learned,
            checkpoint_lsn=learned,
            rows_learned=int(getattr(model.estimator, "rows_learned", 0)),
        )

    # -- learning and watching -----------------------------------------------------------------

    def _observe(self, watches: list[Watch], commits: list[tuple[Lsn, pa.Table]]) -> None:
        """Read the rows each commit's keys name, for every watch of one table, in one join;
        watch each commit's rows in change order, commit after commit."""
        first = watches[0]
        columns = list(
            dict.fromkeys(
                [*first.keys] + [c for w in watches for c in [*w.feature_columns, *_opt(w.label)]]
            )
        )
        tables = rows_of_commits(
            self.con, first.schema, first.table, [keys for _, keys in commits], columns
        )
        for (lsn, _), rows in zip(commits, tables, strict=True):
            for watch in watches:
                if rows.num_rows and not watch.failed:
                    self._watch_commit(watch, lsn, rows)
                watch.learned_lsn = lsn

    def _watch_commit(self, watch: Watch, lsn: Lsn, rows: pa.Table) -> None:
        try:
            events = self._watch_rows(watch, lsn, rows)
        except LearnerGone:
            raise
        except Exception as exc:  # a model that fails to predict (or to be watched)
            self._quarantine(watch, f"failed while watching new rows: {_reason(exc)}")
            return
        for event in events:
            self._drifted(watch, event)

    def _watch_rows(self, watch: Watch, lsn: Lsn, rows: pa.Table) -> list[DriftEvent]:
        events: list[DriftEvent] = []
        if watch.features is not None:
            found = watch.features.update(rows.select(watch.feature_columns))
            events += [dataclasses.replace(e, lsn=lsn) for e in found]
        if watch.label is not None:
            labelled = rows.filter(pc.is_valid(rows[watch.label]))
            if labelled.num_rows:
                self._remember(watch, lsn, labelled.select([*watch.feature_columns, watch.label]))
                events += self._supervised(watch, lsn, labelled)
        return events

    def _supervised(self, watch: Watch, lsn: Lsn, rows: pa.Table) -> list[DriftEvent]:
        assert watch.label is not None
        model = watch.model
        x = model.features(rows.select(watch.feature_columns))
        y_raw = rows[watch.label].to_numpy(zero_copy_only=False)
        if model.classes is not None:
            # a class the model has never seen: an online model learns it as a new class; any
            # other model can predict it never, and its row is not scored
            y = model.label_indices(y_raw, learn=watch.online)
        else:
            y = y_raw.astype(np.float64)
        if watch.online:  # learned in the learner process; its detections come back later
            self.learner.learn(watch.model_id, lsn, x, y)
            watch.learned_since_checkpoint += int(np.count_nonzero(~np.isnan(y)))
            watch.unsynced = True
            return []
        predicted = np.asarray(model.estimator.predict(x), dtype=np.float64)
        if watch.errors is None:
            return []
        return [dataclasses.replace(e, lsn=lsn) for e in watch.errors.update(y, predicted)]

    def _remember(self, watch: Watch, lsn: Lsn, rows: pa.Table) -> None:
        """Keep the project's last ``recent_limit`` labelled rows, by commit."""
        with self._recent_lock:
            recent = self._recent.setdefault(watch.project, _Recent())
            if recent.batches and recent.batches[-1][0] >= lsn:
                return  # seen already (a replay)
            recent.batches.append((lsn, rows))
            recent.count += rows.num_rows
            while recent.count - recent.batches[0][1].num_rows >= self.recent_limit:
                recent.count -= recent.batches.popleft()[1].num_rows

    def recent_rows(self, project: str, after: Lsn = 0) -> pa.Table | None:
        """The project's labelled rows last seen changing (at most ``recent_limit``), from
        commits after ``after``, oldest first: its deployed models' feature columns and label,
        as the relation holds them. None if there are none."""
        with self._recent_lock:
            recent = self._recent.get(project)
            tables = [rows for lsn, rows in recent.batches if lsn > after] if recent else []
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    def _watch_of(self, model_id: int) -> Watch | None:
        for watch in list(self.watches.values()):
            if watch.model_id == model_id:
                return watch
        return self._loading.get(model_id)

    def _on_reply(self, reply: Reply) -> None:
        if isinstance(reply, Checkpointed):
            self._checkpointed(reply)
            return
        if isinstance(reply, Failed) and reply.key in self._checkpointing:
            del self._checkpointing[reply.key]  # the model is gone from the learner
        watch = self._watch_of(reply.key)
        if watch is None or watch.failed:
            return
        if isinstance(reply, Failed):
            self._quarantine(watch, reply.reason)
            return
        assert isinstance(reply, Learned)
        watch.rows_learned, watch.progressive = reply.rows_learned, reply.progressive
        watch.progress_lsn = reply.lsn
        if not watch.progress_saved:
            watch.progress_saved = time.monotonic()  # due in progress_seconds
        for event in reply.events:
            self._drifted(watch, event)
        if self.on_progress is not None:
            self.on_progress(watch.project, watch.model_id, reply.rows_learned, reply.progressive)

    def _progress_due(self, *, force: bool = False) -> None:
        """Write each online model's current progress row, at most every
        ``progress_seconds``."""
        now = time.monotonic()
        for watch in list(self.watches.values()):
            due = watch.progress_saved and now - watch.progress_saved >= self.progress_seconds
            if watch.online and not watch.failed and watch.progress_saved and (force or due):
                self.trainer.registry.set_current_progress(
                    watch.model_id, watch.rows_learned, watch.progressive,
                    {"mirror": format_lsn(watch.progress_lsn)},
                )  # fmt: skip
                watch.progress_saved = 0.0

    def _quarantine(self, watch: Watch, reason: str) -> None:
        """Stop learning and watching with a model that failed; the others go on."""
        if watch.failed:
            return
        watch.failed = reason
        self.trainer.registry.mark_failed(watch.model_id, reason)
        if watch.online:
            with contextlib.suppress(LearnerGone):  # gone with the process: not loaded again
                self.learner.drop(watch.model_id)
        self._failed(watch.project, watch.model_id, reason)

    def _failed(self, project: str, model_id: int, reason: str) -> None:
        if self.failed.get(model_id) == (project, reason):
            return
        log.error("%s: model %d is quarantined: %s", project, model_id, reason)
        self.failed[model_id] = (project, reason)
        if self.on_failed is not None:
            self.on_failed(project, model_id, reason)

    def _sync_due(self) -> None:
        now = time.monotonic()
        watches = [w for w in self.watches.values() if w.online and not w.failed]
        # fetching takes at most a twentieth of the time (a large tree takes a while)
        interval = max(self.sync_seconds, SYNC_COST_SHARE * sum(w.sync_cost for w in watches))
        for watch in watches:
            if watch.unsynced and now - watch.synced_at >= interval:
                self._sync(watch)

    def _sync(self, watch: Watch) -> State | None:
        """Serve the learner's current state of an online model; return it (None if the
        learner does not have it: it failed, and its reply said why)."""
        started = time.monotonic()
        state = self.learner.state(watch.model_id, self._on_reply)
        if state is not None:
            watch.model.estimator = state[0]
        watch.unsynced = False
        watch.synced_at = time.monotonic()
        watch.sync_cost = watch.synced_at - started
        return state

    def _drifted(self, watch: Watch, event: DriftEvent) -> None:
        added = self.trainer.registry.add_drift_event(
            watch.project_id, watch.model_id, event.detector, event.feature,
            float(event.statistic), float(event.threshold),
            lsn=format_lsn(event.lsn) if event.lsn else None, rows_since_deployment=event.rows,
        )  # fmt: skip
        if added is None:
            return  # registered when first detected: a replay found it again
        log.warning(
            "drift in %s: %s%s, statistic %.3f (threshold %.3f), %d rows since deployment",
            watch.project, event.detector, f" on {event.feature}" if event.feature else "",
            event.statistic, event.threshold, event.rows,
        )  # fmt: skip
        if self.on_drift is not None:
            self.on_drift(watch.project, watch.model_id, event)

    # -- checkpoints ---------------------------------------------------------------------------

    def _checkpoint_due(self, *, force: bool) -> None:
        """Request the checkpoints due: all of them with ``force``, else one at a time."""
        now = time.monotonic()
        for watch in list(self.watches.values()):
            if not watch.online or watch.failed or watch.learned_since_checkpoint == 0:
                continue
            if not force and self._checkpointing:
                return  # the learner is writing one: the next waits for it
            if (
                force
                or watch.learned_since_checkpoint >= self.checkpoint_rows
                or now - watch.checkpointed_at >= self.checkpoint_seconds
            ):
                self._checkpoint(watch)

    def _checkpoint(self, watch: Watch) -> None:
        """Have the learner write the model as of the rows sent so far: the model without its
        estimator and with the feature detector's state, which the learner completes."""
        path = self.trainer.home / "models" / f"{uuid.uuid4().hex}.pickle"
        shell = dataclasses.replace(
            watch.model, estimator=None, monitoring={"errors": None, "features": watch.features}
        )
        self.learner.checkpoint(watch.model_id, watch.learned_lsn, shell, path)
        self._checkpointing.setdefault(watch.model_id, []).append(watch)
        watch.learned_since_checkpoint = 0
        watch.checkpointed_at = time.monotonic()

    def _checkpoints_written(self) -> None:
        """Wait until the learner has written every checkpoint requested."""
        if self._checkpointing:
            self.learner.flush(self._on_reply)

    def _checkpointed(self, reply: Checkpointed) -> None:
        """A checkpoint is written: the registry points to it, and the logged changes every
        online model of the table has checkpointed are forgotten."""
        waiting = self._checkpointing.get(reply.key)
        if not waiting:
            return
        watch = waiting.pop(0)
        if not waiting:
            del self._checkpointing[reply.key]
        path = self.trainer.home / reply.path
        if watch.failed:
            path.unlink(missing_ok=True)
            return
        registry = self.trainer.registry
        relative = str(path.relative_to(self.trainer.home))
        with registry.transaction():
            old = registry.model(watch.model_id)
            registry.update_model_file(watch.model_id, relative, reply.sha256)
            registry.add_progress(
                watch.model_id, reply.rows_learned, reply.progressive,
                {"mirror": format_lsn(reply.lsn)},
            )  # fmt: skip
        watch.checkpoint_lsn = max(watch.checkpoint_lsn, reply.lsn)
        if (watch.schema, watch.table) not in self._expected:  # a model in training needs them
            table = (watch.schema, watch.table)
            others = [
                w for w in [*self.watches.values(), watch]
                if w.online and not w.failed and (w.schema, w.table) == table
            ]  # fmt: skip
            self.mirror.forget_changes(
                watch.schema,
                watch.table,
                min(w.checkpoint_lsn for w in others),
                consumer=LOG_CONSUMER,
            )
        if old is not None and old.path != relative:
            (self.trainer.home / old.path).unlink(missing_ok=True)


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


def _same(watches: list[Watch], others: list[Watch]) -> bool:
    return len(watches) == len(others) and all(a is b for a, b in zip(watches, others, strict=True))


def _key_count(touched: dict[tuple[str, str], Touched]) -> int:
    return sum(keys.num_rows for entry in touched.values() for keys in entry.keys)


def _opt(value: str | None) -> list[str]:
    return [] if value is None else [value]


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
