"""Online learning: throughput through the monitor vs a bare River loop; replication with
online projects attached vs none; how many rows each drift detector needs after a shift.

Part 1 (learning) runs in this process on a DuckDB mirror holding ``--rows`` new rows of a
table of 10 numeric features and a numeric label, with online projects trained (by
``Trainer.train``) on the rows before them: one online_linear, one online_hoeffding_tree, then 13
at once (7 online_linear and 6 online_hoeffding_tree with different hyperparameters, on
``--many-rows`` rows). Ours: the daemon's own ``Monitor`` (``on_commit`` with one ``Touched`` of
``--keys-per-commit`` text keys per commit, all queued, then ``Monitor.run`` in this thread until
it has handled the last one and the learner process has learned every row): per batch
``touched_keys`` → ``rows_in_change_order`` (DuckDB, once for all the projects of the table) →
feature drift → ``Model.features`` → the learner process (``RiverEstimator.partial_fit``, error
drift) → checkpoints (every 100,000 rows or 60 s). The reference: a bare River loop
(``predict_one`` + ``learn_one``) over the same rows for each project's model in turn, prepared
in advance as dicts of the very feature values the model sees, on a deep copy of each deployed
River model (same configuration, same state).

Part 2 (replication) mirrors ``--replication-rows`` rows inserted into a throwaway source with
the replicator in catch-up mode (``Replicator.run``, as ``pgml-sidecar replicate --catch-up``),
each side in a fresh process of its own reading the same WAL from a slot of its own: plain;
"watched" (the mirror wired to a ``Monitor`` as the daemon wires it, three online projects
loaded, the monitor's thread not started: what the replication path itself pays); "spinning"
(plain, plus a thread looping in pure Python: what any CPU-bound thread in the process costs);
and "online", as the daemon runs it: the monitor's thread learning from each commit. Timed from
``Replicator.run`` (models already loaded) until it returns, i.e. the last transaction is
committed in the mirror and confirmed to the slot, not until the models have learned; how far
behind they were at that moment is reported. The process then exits without waiting for them.

Part 3 (detection) feeds seeded streams with a shift at a known row through ``RiverEstimator``
and ``trainer.drift``'s detectors in-process and counts the rows after the shift until each fires.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import psycopg
import pyarrow as pa

from bench import workload as w
from mirror.change_log import Touched
from mirror.store import Mirror
from replicator.replicate import ReplicationSettings, Replicator
from sidecar.local_postgres import LocalPostgres
from trainer import monitoring, pickles
from trainer.drift import DriftEvent, DriftThresholds, ErrorDrift, FeatureDrift
from trainer.model import Model
from trainer.monitoring import Monitor
from trainer.online import RiverEstimator
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker

PARTS = ("learning", "replication", "detection")
SCHEMA = "public"
TABLE = "readings"
RELATION = f"{SCHEMA}.{TABLE}"
FEATURES = [f"x{i}" for i in range(10)]
ProjectSpec = tuple[str, str, dict[str, Any]]
"""A project of part 1: name, online algorithm, hyperparameters."""
LEARNING_SETS: dict[str, list[ProjectSpec]] = {
    "online_linear": [("learn", "online_linear", {})],
    "online_hoeffding_tree": [("learn", "online_hoeffding_tree", {})],
    "13 projects": [
        *((f"linear_{i}", "online_linear", {"l2": l2})
          for i, l2 in enumerate((0.0, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3))),
        *((f"tree_{i}", "online_hoeffding_tree", {"grace_period": grace})
          for i, grace in enumerate((100, 200, 300, 400, 500, 600))),
    ],
}  # fmt: skip
"""Part 1's project sets: learned one set at a time, each on a mirror of its own."""
REPLICATION_PROJECTS = (
    ("repl_linear", "online_linear", "regression", "y"),
    ("repl_tree", "online_hoeffding_tree", "regression", "y"),
    ("repl_bayes", "online_naive_bayes", "classification", "cls"),
)
MEMORY_LIMIT = "1GB"  # the daemon's default for its mirror


# -- the data ------------------------------------------------------------------------------------


SCRAMBLE = 2654435761
"""Row ``k``'s key is ``k * SCRAMBLE mod 2**32``: unique, and not monotonic. The trainer uses
every column but the label as a feature, the key included, and a Hoeffding tree regressor's
split search on an increasing feature grows a binary search tree as deep as the rows it saw,
which then cannot be pickled (RecursionError past ~1,000 rows in one leaf): its checkpoints
would fail (see the notes in RESULTS.md)."""


def row_ids(first: int, count: int) -> np.ndarray:
    return (np.arange(first, first + count, dtype=np.uint64) * SCRAMBLE % 2**32).astype(np.int64)


def feature_rows(first: int, count: int, seed: int) -> pa.Table:
    """Rows ``first..first+count-1``: 10 standard-normal features and a noisy label."""
    rng = np.random.default_rng([seed, first])
    x = rng.standard_normal((count, len(FEATURES)))
    y = (
        2 * x[:, 0] - 1.5 * x[:, 1] + x[:, 2] + 0.5 * x[:, 3] * x[:, 4] + np.sin(2 * x[:, 5])
        + 0.3 * rng.standard_normal(count)
    )  # fmt: skip
    columns: dict[str, Any] = {"id": pa.array(row_ids(first, count))}
    columns |= {name: pa.array(x[:, i]) for i, name in enumerate(FEATURES)}
    columns["y"] = pa.array(y)
    return pa.table(columns)


def create_learning_table(mirror: Mirror) -> None:
    floats = ", ".join(f"{name} double not null" for name in [*FEATURES, "y"])
    mirror.con.execute(f"create schema if not exists {SCHEMA}")
    mirror.con.execute(f"create table {RELATION} (id bigint primary key, {floats})")


def insert_rows(mirror: Mirror, rows: pa.Table) -> None:
    cursor = mirror.con.cursor()
    try:
        cursor.register("_bench_rows", rows)
        cursor.execute(f"insert into {RELATION} select * from _bench_rows")
    finally:
        cursor.close()


def attach_monitor(mirror: Mirror, trainer: Trainer) -> Monitor:
    """A ``Monitor`` wired to the mirror as the daemon wires it (its watched tables among the
    mirror's, its ``on_commit`` the mirror's commit listener), the deployed models loaded."""
    monitor = Monitor(mirror.con, trainer, mirror=mirror)
    mirror.watched.append(monitor.watched)
    mirror.on_commit = monitor.on_commit
    monitor.prepare()
    return monitor


# -- part 1: learning throughput -----------------------------------------------------------------

STAGES = ("keys", "read", "feature_drift", "features", "river", "estimator", "error_drift",
          "checkpoint", "other")  # fmt: skip
"""Where ours spends its time, timed by wrapping what ``Monitor`` calls (all in this thread):
keys = ``touched_keys``; read = ``rows_of_commits`` (DuckDB join, ordered; the commits waiting
read together); feature_drift =
``FeatureDrift.update``; features = ``Model.features`` (the preprocessor); river = the
per-row predict + learn loop of ``RiverEstimator`` (``_learn_values``, building each row's dict
included); estimator = the rest of ``partial_fit`` (checks, ``tolist``, progressive metrics);
error_drift = ``ErrorDrift.update``; checkpoint = ``Monitor._checkpoint`` (requesting one) and
``Monitor._checkpointed`` (the registry, once written); other = the rest (queue, label
extraction, Arrow filtering, the loop, waiting for the learner). Online models learn in the
learner process (``trainer/learner.py``), which also pickles and writes their checkpoints:
river, estimator, error_drift and most of a checkpoint are then spent there, not in this
thread, and show as 0 (or little) here."""


class StageTimer:
    """Seconds per stage while installed (patched on the classes, so pickling still works)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _timed(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.spent[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[StageTimer]:
        wrapped: list[tuple[Any, str, str]] = [
            (monitoring, "touched_keys", "keys"),
            (monitoring, "rows_of_commits", "read"),
            (FeatureDrift, "update", "feature_drift"),
            (Model, "features", "features"),
            (RiverEstimator, "_learn_values", "river"),
            (RiverEstimator, "_learn_classes", "river"),
            (RiverEstimator, "partial_fit", "partial_fit"),
            (ErrorDrift, "update", "error_drift"),
            (Monitor, "_checkpoint", "checkpoint"),
            (Monitor, "_checkpointed", "checkpointed"),
        ]
        patches = [
            mock.patch.object(owner, name, self._timed(stage, getattr(owner, name)))
            for owner, name, stage in wrapped
        ]
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            yield self

    def stages(self, total: float) -> dict[str, float]:
        spent = dict(self.spent)
        partial_fit = spent.pop("partial_fit", 0.0)
        spent["checkpoint"] = spent.get("checkpoint", 0.0) + spent.pop("checkpointed", 0.0)
        spent["estimator"] = partial_fit - spent.get("river", 0.0)
        spent["other"] = total - sum(spent.values())
        return {name: spent.get(name, 0.0) for name in STAGES}


class GcTimer:
    """Seconds the cyclic garbage collector ran (any thread) while installed, and how often."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0  # generation-2 collections
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info.get("generation") == 2

    @contextlib.contextmanager
    def installed(self) -> Iterator[GcTimer]:
        gc.callbacks.append(self._callback)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._callback)


def cpu_seconds(monitor: Monitor) -> float:
    """CPU time of this process (all its threads) and of the monitor's learner process."""
    process = monitor.learner._process
    learner = 0.0
    if process is not None:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            learner = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return time.process_time() + learner


class _StopAfter(threading.Event):
    """Set once the monitor has handled ``batches`` commits; remembers when that happened,
    and the CPU time then."""

    def __init__(self, monitor: Monitor, batches: int) -> None:
        super().__init__()
        self.monitor = monitor
        self.batches = batches
        self.done_at = 0.0
        self.done_cpu = 0.0

    def is_set(self) -> bool:
        if self.monitor.batches >= self.batches:
            if not self.done_at:
                self.monitor.settle()  # the learner process has learned every row sent
                self.done_at = time.perf_counter()
                self.done_cpu = cpu_seconds(self.monitor)
            return True
        return super().is_set()


@dataclass
class LearningRound:
    first: str
    ours_s: float
    ref_s: float
    learned: int
    stages: dict[str, float]
    predictions_match: float  # after learning: share of 1,000 rows both models predict alike
    features: int
    gc_ours: GcTimer
    gc_ref: GcTimer
    checkpoints: int
    model_mb: float  # the pickled model after learning
    ours_cpu: float = 0.0  # CPU seconds, this process and the learner process
    ref_cpu: float = 0.0

    @property
    def ratio(self) -> float:
        return self.ref_s / self.ours_s


@dataclass
class LearningResult:
    name: str
    projects: int
    rows: int
    train_rows: int
    keys_per_commit: int
    rounds: list[LearningRound] = field(default_factory=list)

    def table(self) -> str:
        ratio = statistics.median(r.ratio for r in self.rounds)
        learned = self.rows * self.projects  # rows learned in all, each row by each project
        ours = learned / statistics.median(r.ours_s for r in self.rounds)
        ref = learned / statistics.median(r.ref_s for r in self.rounds)
        headers = ["round", "first", "ours s", "River s", "ratio", "ours rows/s", "River rows/s"]
        headers += ["CPU s ours, River"]
        headers += [f"{s} s" for s in STAGES] + ["gc s (n) ours, River"]
        rows = [
            [
                str(i), r.first, f"{r.ours_s:.2f}", f"{r.ref_s:.2f}", f"{r.ratio:.2f}",
                f"{learned / r.ours_s:,.0f}", f"{learned / r.ref_s:,.0f}",
                f"{r.ours_cpu:.2f}, {r.ref_cpu:.2f}",
                *(f"{r.stages[s]:.2f}" for s in STAGES),
                f"{r.gc_ours.seconds:.2f} ({r.gc_ours.full}), {r.gc_ref.seconds:.2f}"
                f" ({r.gc_ref.full})",
            ]
            for i, r in enumerate(self.rounds, 1)
        ]  # fmt: skip
        match = min(r.predictions_match for r in self.rounds)
        last = self.rounds[-1]
        return (
            f"**online learning, {self.name}** ({self.projects} online project(s), {self.rows:,}"
            f" rows x {self.rounds[0].features} features, {self.keys_per_commit:,} keys per"
            f" commit, models trained on {self.train_rows:,} rows first): median ratio ours/bare"
            f" River = **{ratio:.2f}** (target >= 0.9); median rows/s (rows x projects) ours"
            f" {ours:,.0f}, River {ref:,.0f}; after learning, every model predicts as its"
            f" reference on at least {match:.1%} of 1,000 rows; ours checkpointed"
            f" {last.checkpoints} times, the pickled models {last.model_mb:.2f} MB at the end; gc"
            " = time in the garbage collector, inside the stages (full collections)\n\n"
            + w.markdown_table(headers, rows)
        )


def build_learning_template(
    scratch: Path, name: str, projects: list[ProjectSpec], worker: FitWorker,
    args: argparse.Namespace, rows: int,
) -> Path:  # fmt: skip
    """A mirror file with the table and the online projects trained on its first rows, then
    the rows to learn added; copied afresh for every round."""
    path = scratch / f"template_{name.replace(' ', '_')}" / "mirror.duckdb"
    path.parent.mkdir(parents=True)
    mirror = Mirror(path)
    try:
        create_learning_table(mirror)
        insert_rows(mirror, feature_rows(1, args.train_rows, args.seed))
        trainer = Trainer(mirror.con, artifact_home(path), worker=worker)
        try:
            for project, algorithm, hyperparams in projects:
                result = trainer.train(
                    project, task="regression", relation=RELATION, y="y", algorithm=algorithm,
                    hyperparams=hyperparams, test_sampling="last",
                )  # fmt: skip
                assert result.deployed, result
        finally:
            trainer.registry.close()
        insert_rows(mirror, feature_rows(args.train_rows + 1, rows, args.seed))
        mirror.con.execute("checkpoint")
    finally:
        mirror.close()
    return path


def copy_mirror(template: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True)
    for suffix in ("", ".wal"):
        source = template.with_name(template.name + suffix)
        if source.exists():
            shutil.copy(source, target.with_name(target.name + suffix))
    shutil.copytree(artifact_home(template), artifact_home(target))
    return target


def learning_round(
    template: Path, scratch: Path, index: int, worker: FitWorker, args: argparse.Namespace,
    rows: int,
) -> LearningRound:  # fmt: skip
    path = copy_mirror(template, scratch / f"round_{index}" / "mirror.duckdb")
    mirror = Mirror(path)
    trainer = Trainer(mirror.con, artifact_home(path), worker=worker)
    try:
        monitor = attach_monitor(mirror, trainer)  # loads the models: untimed, once at start
        watches = list(monitor.watches.values())
        first_lsn = max(w.learned_lsn for w in watches) + 1  # at or before it: learned
        start_learned = {w.project: w.model.estimator.rows_learned for w in watches}
        river_models = [copy.deepcopy(w.model.estimator._model) for w in watches]
        keys = list(watches[0].model.estimator._keys)
        # The reference's input: the rows in order, as the very feature values the models see.
        ids = row_ids(args.train_rows + 1, rows)
        cursor = mirror.con.cursor()
        try:
            cursor.register("_bench_ids", pa.table({"id": ids, "pos": np.arange(len(ids))}))
            stream = cursor.sql(
                f"select r.* from {RELATION} r join _bench_ids using (id) order by pos"
            ).to_arrow_table()
        finally:
            cursor.close()
        matrix = watches[0].model.features(stream.select(watches[0].feature_columns))
        dicts = [dict(zip(keys, row, strict=True)) for row in matrix.tolist()]
        targets = stream["y"].to_numpy().tolist()
        batches = [
            {(SCHEMA, TABLE): Touched(keys=[pa.table({"id": pa.array(part.astype(str))})])}
            for part in np.array_split(ids, max(1, len(ids) // args.keys_per_commit))
        ]
        del stream, matrix

        gc_ours, gc_ref = GcTimer(), GcTimer()

        timer = StageTimer()

        def ours() -> tuple[float, dict[str, float], float]:
            for lsn, touched in enumerate(batches, first_lsn):
                monitor.on_commit(lsn, touched)
            stop = _StopAfter(monitor, len(batches))
            with timer.installed(), gc_ours.installed():
                started, cpu = time.perf_counter(), cpu_seconds(monitor)
                monitor.run(stop)
            seconds = stop.done_at - started
            return seconds, timer.stages(seconds), stop.done_cpu - cpu

        def reference() -> tuple[float, float]:
            with gc_ref.installed():
                started, cpu = time.perf_counter(), time.process_time()
                for model in river_models:
                    predict, learn = model.predict_one, model.learn_one
                    out: list[float | None] = []
                    append = out.append
                    for features, target in zip(dicts, targets, strict=True):
                        append(predict(features))
                        learn(features, target)
                return time.perf_counter() - started, time.process_time() - cpu

        order = w.alternate(index)
        seconds: dict[str, float] = {}
        cpu: dict[str, float] = {}
        stages: dict[str, float] = {}
        for side in order:
            if side == "ours":
                seconds["ours"], stages, cpu["ours"] = ours()
            else:
                seconds["ref"], cpu["ref"] = reference()
        # Same models, same state, same rows: after learning, both should predict alike.
        sample = dicts[-1000:]
        same = 1.0
        for watch, river_model in zip(watches, river_models, strict=True):
            estimator = watch.model.estimator  # the learner's state, fetched by settle()
            learned = estimator.rows_learned - start_learned[watch.project]
            if learned != rows:
                raise w.BenchError(f"{watch.project} learned {learned} rows, not {rows}")
            ours_after = np.array([estimator._model.predict_one(d) for d in sample], dtype=float)
            ref_after = np.array([river_model.predict_one(d) for d in sample], dtype=float)
            same = min(same, float(np.mean(np.isclose(ours_after, ref_after, rtol=1e-9,
                                                      atol=1e-12))))  # fmt: skip
        model_mb = sum(len(pickles.dumps(watch.model)) for watch in watches) / 2**20
        return LearningRound(
            order[0], seconds["ours"], seconds["ref"], rows * len(watches), stages, same,
            len(keys), gc_ours, gc_ref, timer.calls["checkpointed"], model_mb, cpu["ours"],
            cpu["ref"],
        )  # fmt: skip
    finally:
        monitor.close()
        trainer.registry.close()
        mirror.close()


def run_learning(
    scratch: Path, worker: FitWorker, args: argparse.Namespace
) -> list[LearningResult]:
    results = []
    for name, projects in LEARNING_SETS.items():
        rows = args.rows if len(projects) == 1 else args.many_rows
        w.say(f"learning {name}: training {len(projects)} project(s) on {args.train_rows:,} rows")
        template = build_learning_template(scratch / "learning", name, projects, worker, args, rows)
        result = LearningResult(name, len(projects), rows, args.train_rows, args.keys_per_commit)
        for index in range(args.rounds):
            done = learning_round(
                template, scratch / "learning" / name.replace(" ", "_"), index, worker, args, rows
            )
            result.rounds.append(done)
            w.say(
                f"learning {name} round {index + 1}: ours {done.ours_s:.2f}s, River"
                f" {done.ref_s:.2f}s, ratio {done.ratio:.2f}; CPU ours {done.ours_cpu:.2f}s,"
                f" River {done.ref_cpu:.2f}s; "
                + ", ".join(f"{s} {done.stages[s]:.2f}" for s in STAGES)
                + f"; gc ours {done.gc_ours.seconds:.2f}s, River {done.gc_ref.seconds:.2f}s"
            )
        results.append(result)
    return results


# -- part 2: replication with online projects attached -------------------------------------------

_PRIME = 2147483647
_BUCKETS = 1000003


def _uniform_sql(stream: int, seed: int) -> str:
    """A deterministic value in ``[-1, 1)`` of row ``g``, one stream per ``stream``."""
    mixed = f"((g * {2654435761 + 7919 * stream} + {40503 * stream + seed}) % {_PRIME})"
    return f"(({mixed} * {mixed}) % {_BUCKETS} / {_BUCKETS / 2}::double precision - 1)"


CREATE_SOURCE = (
    f"create table {RELATION} (id bigint primary key, "
    + ", ".join(f"{name} double precision not null" for name in FEATURES)
    + ", y double precision not null, cls boolean not null) with (autovacuum_enabled = false)"
)


def source_insert_sql(lo: int, hi: int, seed: int) -> str:
    """Rows ``lo..hi`` of the source table: scrambled keys (see SCRAMBLE), 10 features in
    [-1, 1), ``y`` a function of them, ``cls`` = y > 0."""
    features = ", ".join(f"{_uniform_sql(i, seed)} as {name}" for i, name in enumerate(FEATURES))
    label = "2 * x0 - 1.5 * x1 + x2 + 0.5 * x3 * x4 + sin(2 * x5) + 0.3 * x9"
    names = ", ".join(FEATURES)
    return (
        f"insert into {RELATION} (id, {names}, y, cls)"
        f" select id, {names}, y, y > 0 from (select id, {names}, {label} as y from"
        f" (select (g * {SCRAMBLE}) % 4294967296 as id, {features}"
        f" from generate_series({int(lo)}::bigint, {int(hi)}::bigint) g) a) b"
    )


SIDES = {
    "plain": "the replicator alone",
    "watched": "the table watched, commits queued to a Monitor with the three models loaded,"
    " its thread not started (the replication path's own share)",
    "spinning": "the replicator alone, and a thread spinning in pure Python (no models: what"
    " any CPU-bound Python thread in the process costs)",
    "online": "as the daemon runs: the Monitor's thread learning, three online projects",
}
"""The four ways part 2 replicates the same WAL, each from a slot and mirror of its own."""
_TRAINED = ("watched", "online")


@dataclass
class ReplicationSide:
    seconds: float
    rows_applied: int
    batches: int
    checksum: list[int]
    learned: dict[str, int] = field(default_factory=dict)  # project: rows learned by then
    queued: int = 0  # commits waiting in the monitor's queue then
    queued_rows: int = 0  # the keys they touched in the table
    monitor_batches: int = 0  # commits the monitor had handled then
    load_seconds: float = 0.0  # loading the three models, before the clock starts


@dataclass
class ReplicationRound:
    order: tuple[str, ...]
    sides: dict[str, ReplicationSide]
    expected: list[int]

    def ratio(self, side: str) -> float:
        return self.sides["plain"].seconds / self.sides[side].seconds

    @property
    def matched(self) -> bool:
        return all(s.checksum == self.expected for s in self.sides.values())


@dataclass
class ReplicationResult:
    rows: int
    batch: int
    initial: int
    rounds: list[ReplicationRound] = field(default_factory=list)

    def median_ratio(self, side: str) -> float:
        return statistics.median(r.ratio(side) for r in self.rounds)

    def rate(self, side: str) -> float:
        return self.rows / statistics.median(r.sides[side].seconds for r in self.rounds)

    def table(self) -> str:
        names = [name for name, *_ in REPLICATION_PROJECTS]
        headers = ["round", "order", *(f"{side} s" for side in SIDES)]
        headers += [f"ratio {side}" for side in SIDES if side != "plain"]
        headers += ["commits (online)", *(f"{n} learned" for n in names)]
        headers += ["monitor: commits done, queued (rows)", "mirrors"]
        rows = []
        for i, r in enumerate(self.rounds, 1):
            online = r.sides["online"]
            rows.append(
                [
                    str(i), " ".join(r.order),
                    *(f"{r.sides[side].seconds:.2f}" for side in SIDES),
                    *(f"{r.ratio(side):.2f}" for side in SIDES if side != "plain"),
                    str(online.batches),
                    *(f"{online.learned.get(n, 0):,}" for n in names),
                    f"{online.monitor_batches}, {online.queued} ({online.queued_rows:,})",
                    "match" if r.matched else "MISMATCH",
                ]
            )  # fmt: skip
        projects = ", ".join(f"{n} ({a}, {t} on {y})" for n, a, t, y in REPLICATION_PROJECTS)
        sides = "; ".join(f"{side}: {text}" for side, text in SIDES.items())
        rates = ", ".join(f"{side} {self.rate(side):,.0f}" for side in SIDES)
        return (
            f"**replication with three online projects attached** ({self.rows:,} rows inserted"
            f" {self.batch:,} per transaction after {self.initial:,} copied; projects {projects}):"
            f" median ratio with models/plain = **{self.median_ratio('online'):.2f}** (target"
            f" >= 0.9); watched only {self.median_ratio('watched'):.2f}; a spinning thread"
            f" {self.median_ratio('spinning'):.2f}. Median rows/s: {rates}. Sides: {sides}."
            ' "learned": rows each model had learned when the replicator committed the last'
            " transaction\n\n" + w.markdown_table(headers, rows)
        )


def _replication_settings(dsn: str, mirror: Path, slot: str) -> ReplicationSettings:
    return ReplicationSettings(
        source_dsn=dsn, mirror_path=mirror, tables=[RELATION], publication=w.PUBLICATION,
        slot=slot, catch_up=True, memory_limit=MEMORY_LIMIT,
    )  # fmt: skip


def _source_checksum(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"select count(*), coalesce(sum(id), 0) from {RELATION}").fetchone()
    assert row is not None
    return [int(v) for v in row]


def _spin() -> None:
    count = 0
    while True:
        row = {"n": count}
        count += row["n"] % 7 + 1


def replication_child(side: str, dsn: str, mirror_path: Path, slot: str) -> int:
    """One timed side, in a process of its own (run by ``--child``): replicate to the end of the
    WAL; print the measurements as JSON; exit at once, leaving a monitor thread mid-batch."""
    mirror = Mirror(mirror_path, memory_limit=MEMORY_LIMIT)
    monitor: Monitor | None = None
    load_seconds = 0.0
    if side in _TRAINED:
        trainer = Trainer(mirror.con, artifact_home(mirror_path))
        started = time.perf_counter()
        monitor = attach_monitor(mirror, trainer)
        load_seconds = time.perf_counter() - started
        if len(monitor.watches) != len(REPLICATION_PROJECTS):
            raise w.BenchError(f"the monitor watches only {sorted(monitor.watches)}")
    if side == "online":
        assert monitor is not None
        threading.Thread(
            target=monitor.run, args=(threading.Event(),), name="monitor", daemon=True
        ).start()
    if side == "spinning":
        threading.Thread(target=_spin, name="spinning", daemon=True).start()
    before = {name: watch.model.estimator.rows_learned for name, watch in _watches(monitor)}
    replicator = Replicator(_replication_settings(dsn, mirror_path, slot), mirror=mirror)
    started = time.perf_counter()
    stats = replicator.run()
    seconds = time.perf_counter() - started
    learned = {
        name: watch.model.estimator.rows_learned - before[name] for name, watch in _watches(monitor)
    }
    waiting = list(monitor.changes.queue) if monitor else []
    queued_rows = sum(
        keys.num_rows
        for _, touched in waiting
        for keys in touched.get((SCHEMA, TABLE), Touched()).keys
    )
    monitor_batches = monitor.batches if monitor else 0
    cursor = mirror.con.cursor()
    row = cursor.execute(f"select count(*), coalesce(sum(id), 0) from {RELATION}").fetchone()
    assert row is not None
    result = ReplicationSide(
        seconds, stats.rows_applied, stats.batches, [int(v) for v in row], learned,
        len(waiting), queued_rows, monitor_batches, load_seconds,
    )  # fmt: skip
    print(json.dumps(asdict(result)), flush=True)
    os._exit(0)  # not waiting for the models to finish learning, nor for the spinning thread


def _watches(monitor: Monitor | None) -> list[tuple[str, Any]]:
    return [] if monitor is None else list(monitor.watches.items())


def run_child(side: str, dsn: str, mirror: Path, log: Path) -> ReplicationSide:
    command = [sys.executable, "-m", "bench.online", "--child", side, "--dsn", dsn]
    command += ["--mirror", str(mirror), "--slot", side]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(w.CODE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    with log.open("wb") as out:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=out, env=env, timeout=w.RUN_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = log.read_text(errors="replace")[-3000:]
        raise w.BenchError(f"{side} exited with {done.returncode}\n--- tail of {log} ---\n{tail}")
    return ReplicationSide(**json.loads(lines[-1]))


def prepare_mirror(dsn: str, path: Path, side: str, worker: FitWorker) -> None:
    """The initial copy into a side's mirror (creating its slot); the projects where needed."""
    mirror = Mirror(path, memory_limit=MEMORY_LIMIT)
    replicator = Replicator(_replication_settings(dsn, path, side), mirror=mirror)
    try:
        replicator.run()
        if side not in _TRAINED:
            return
        trainer = Trainer(mirror.con, artifact_home(path), worker=worker)
        try:
            for project, algorithm, task, label in REPLICATION_PROJECTS:
                result = trainer.train(
                    project, task=task, relation=RELATION, y=label, algorithm=algorithm,
                    test_sampling="last",
                )  # fmt: skip
                assert result.deployed, result
        finally:
            trainer.registry.close()
    finally:
        replicator.close()


def replication_round(
    server: LocalPostgres, scratch: Path, index: int, worker: FitWorker, args: argparse.Namespace
) -> ReplicationRound:
    name = f"online_repl_{index}"
    dsn = server.create_database(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(CREATE_SOURCE.encode())
            conn.execute(source_insert_sql(1, args.train_rows, args.seed).encode())
        mirrors = {side: scratch / f"{name}.{side}.duckdb" for side in SIDES}
        w.say(f"{name}: initial copies, training the projects")
        for side, path in mirrors.items():
            prepare_mirror(dsn, path, side, worker)
        w.create_ref_slot(dsn, w.WARM_SLOT)
        w.say(f"{name}: writing {args.replication_rows:,} rows")
        first = args.train_rows + 1
        last = args.train_rows + args.replication_rows
        with psycopg.connect(dsn) as conn:
            for lo in range(first, last + 1, args.replication_batch):
                hi = min(lo + args.replication_batch - 1, last)
                conn.execute(source_insert_sql(lo, hi, args.seed).encode())
                conn.commit()
        end = w.workload_end(dsn)
        expected = _source_checksum(dsn)
        # The first reader of fresh WAL pays more than the next ones (see bench.streaming).
        warm = w.recvlogical_command(server, dsn, end, slot=w.WARM_SLOT)
        w.run_timed("pg_recvlogical (warm-up)", warm, scratch / f"{name}.warm.log")
        order = tuple(SIDES) if index % 2 == 0 else tuple(reversed(SIDES))
        sides = {
            side: run_child(side, dsn, mirrors[side], scratch / f"{name}.{side}.log")
            for side in order
        }
        for side, done in sides.items():
            if done.rows_applied < args.replication_rows:
                raise w.BenchError(f"{side} applied {done.rows_applied} rows")
        return ReplicationRound(order, sides, expected)
    finally:
        w.drop_database(server, name)


def run_replication(worker: FitWorker, args: argparse.Namespace) -> ReplicationResult:
    result = ReplicationResult(args.replication_rows, args.replication_batch, args.train_rows)
    with w.cluster("pgml-bench-online-") as (server, scratch):
        for index in range(args.rounds):
            done = replication_round(server, scratch, index, worker, args)
            result.rounds.append(done)
            w.say(
                f"replication round {index + 1}: "
                + ", ".join(f"{side} {done.sides[side].seconds:.2f}s" for side in SIDES)
                + f"; ratio with models {done.ratio('online'):.2f}; learned"
                f" {done.sides['online'].learned}, mirrors {'match' if done.matched else 'DIFFER'}"
            )
    return result


# -- part 3: detection delay ---------------------------------------------------------------------

SHIFTS = {
    "classification concept": "y = x0 > 0, then y = x0 < 0 (5% of labels flipped throughout);"
    " online_logistic",
    "regression concept": "y = 2 x0 + noise, then y = -2 x0 + noise (noise sd 0.1); online_linear",
    "feature shift": "x0 ~ N(0, 1) then N(1, 1); color's mix a/b/c/d 40/30/20/10% then"
    " 10/20/30/40%; y = 2 x0 - x1 + noise unchanged; online_linear",
}
DETECTORS = (
    ("adwin", "classification concept"),
    ("adwin", "regression concept"),
    ("psi", "feature shift"),
    ("jensen_shannon", "feature shift"),
    ("adwin", "feature shift"),
)
COLORS = np.array(["a", "b", "c", "d"])


@dataclass
class DetectionResult:
    seeds: int
    reference_rows: int
    stream_rows: int
    shift_at: int
    batch: int
    delays: dict[tuple[str, str], list[int | None]] = field(default_factory=dict)
    false_alarms: dict[tuple[str, str], int] = field(default_factory=dict)

    def table(self) -> str:
        headers = ["detector", "stream", "detected", "median rows", "min", "max"]
        headers += ["false alarms before the shift"]
        rows = []
        for key in DETECTORS:
            delays = self.delays[key]
            found = [d for d in delays if d is not None]
            rows.append(
                [
                    key[0], key[1], f"{len(found)}/{len(delays)}",
                    f"{statistics.median(found):,.0f}" if found else "-",
                    f"{min(found):,}" if found else "-", f"{max(found):,}" if found else "-",
                    str(self.false_alarms[key]),
                ]
            )  # fmt: skip
        streams = "; ".join(f"{name}: {text}" for name, text in SHIFTS.items())
        return (
            f"**drift detection delay** (rows after the shift until the first detection;"
            f" {self.seeds} seeds; a model fitted on {self.reference_rows:,} rows, which are"
            f" also the feature reference, then {self.stream_rows:,} rows learned prequentially"
            f" in batches of {self.batch}, the shift at row {self.shift_at:,}; PSI and"
            f" Jensen-Shannon are evaluated per batch, so their delays are multiples of"
            f" {self.batch}; default thresholds. Streams: {streams})\n\n"
            + w.markdown_table(headers, rows)
        )


def _stream(kind: str, rows: int, shift: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """(raw features, labels) of a seeded stream whose rows from ``shift`` on are shifted."""
    rng = np.random.default_rng([seed, len(kind)])
    after = np.arange(rows) >= shift
    if kind == "feature shift":
        x0 = rng.standard_normal(rows) + after * 1.0
        x1 = rng.standard_normal(rows)
        mix = np.where(after[:, None], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
        color = COLORS[(rng.random(rows)[:, None] > np.cumsum(mix, axis=1)).sum(axis=1)]
        y = 2 * x0 - x1 + 0.1 * rng.standard_normal(rows)
        return pa.table({"x0": x0, "x1": x1, "color": pa.array(color)}), y
    x = rng.uniform(-1, 1, (rows, 3))
    if kind == "classification concept":
        flipped = np.where(after, x[:, 0] < 0, x[:, 0] > 0) ^ (rng.random(rows) < 0.05)
        return pa.table({f"x{i}": x[:, i] for i in range(3)}), flipped.astype(np.float64)
    y = np.where(after, -2.0, 2.0) * x[:, 0] + 0.1 * rng.standard_normal(rows)
    return pa.table({f"x{i}": x[:, i] for i in range(3)}), y


def _matrix(table: pa.Table) -> np.ndarray:
    """Numbers as they are, text one-hot (as the preprocessor would, unscaled)."""
    blocks: list[np.ndarray] = []
    for name in table.column_names:
        values = table[name].to_numpy(zero_copy_only=False)
        if values.dtype.kind == "O":
            blocks.extend((values == c).astype(np.float64) for c in COLORS)
        else:
            blocks.append(values.astype(np.float64))
    return np.column_stack(blocks)


def detection_seed(
    seed: int, args: argparse.Namespace
) -> dict[tuple[str, str], tuple[int | None, int]]:
    """Per (detector, stream): rows after the shift until the first detection (None if never),
    and how many detections came before the shift."""
    reference, shift = args.detection_reference, args.detection_shift
    total = reference + args.detection_rows
    out: dict[tuple[str, str], tuple[int | None, int]] = {}
    for kind in SHIFTS:
        raw, y = _stream(kind, total, reference + shift, seed)
        x = _matrix(raw)
        task = "classification" if kind == "classification concept" else "regression"
        algorithm = "online_logistic" if task == "classification" else "online_linear"
        model = RiverEstimator(algorithm, task, seed=seed)
        model.fit(x[:reference], y[:reference])
        errors = ErrorDrift(task)
        features = FeatureDrift(raw.slice(0, reference), thresholds=DriftThresholds())
        events: list[DriftEvent] = []
        for lo in range(reference, total, args.detection_batch):
            hi = min(lo + args.detection_batch, total)
            predicted = model.partial_fit(x[lo:hi], y[lo:hi])
            events += errors.update(y[lo:hi], predicted)
            if kind == "feature shift":
                events += features.update(raw.slice(lo, hi - lo))
        for detector, stream in DETECTORS:
            if stream != kind:
                continue
            rows = [e.rows for e in events if e.detector == detector]
            late = [r - shift for r in rows if r > shift]
            out[(detector, stream)] = (min(late) if late else None, len(rows) - len(late))
    return out


def run_detection(args: argparse.Namespace) -> DetectionResult:
    result = DetectionResult(
        args.detection_seeds, args.detection_reference, args.detection_rows,
        args.detection_shift, args.detection_batch,
    )  # fmt: skip
    for key in DETECTORS:
        result.delays[key] = []
        result.false_alarms[key] = 0
    for seed in range(args.seed, args.seed + args.detection_seeds):
        for key, (delay, early) in detection_seed(seed, args).items():
            result.delays[key].append(delay)
            result.false_alarms[key] += early
    w.say("detection: " + "; ".join(f"{d} on {s}: {result.delays[(d, s)]}" for d, s in DETECTORS))
    return result


# -- the command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = w.base_parser("bench.online", __doc__ or "")
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"parts to run (default {','.join(PARTS)})"
    )
    p.add_argument(
        "--rows", type=int, default=100_000, help="rows learned by one project in part 1"
    )
    p.add_argument(
        "--many-rows", type=int, default=20_000, help="rows learned by 13 projects in part 1"
    )
    p.add_argument(
        "--train-rows", type=int, default=10_000,
        help="rows the projects are trained on before (parts 1 and 2)",
    )  # fmt: skip
    p.add_argument(
        "--keys-per-commit", type=int, default=1000, help="touched keys per commit in part 1"
    )
    p.add_argument(
        "--replication-rows", type=int, default=300_000, help="rows replicated in part 2"
    )
    p.add_argument(
        "--replication-batch", type=int, default=1000, help="rows per transaction in part 2"
    )
    p.add_argument("--detection-seeds", type=int, default=10, help="streams per shift, part 3")
    p.add_argument("--detection-reference", type=int, default=2000, help="rows fitted first")
    p.add_argument("--detection-rows", type=int, default=20_000, help="rows learned after")
    p.add_argument(
        "--detection-shift", type=int, default=10_000, help="row of those where the shift is"
    )
    p.add_argument("--detection-batch", type=int, default=100, help="rows per learning batch")
    p.add_argument("--child", choices=tuple(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    p.add_argument("--mirror", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--slot", help=argparse.SUPPRESS)
    return p


Result = LearningResult | ReplicationResult | DetectionResult


def run(args: argparse.Namespace) -> list[Result]:
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))} (choose from {PARTS})")
    results: list[Result] = []
    worker = FitWorker()
    scratch = w.make_workdir("pgml-bench-online-")
    try:
        if "learning" in parts:
            results += run_learning(scratch, worker, args)
        if "replication" in parts:
            results.append(run_replication(worker, args))
        if "detection" in parts:
            results.append(run_detection(args))
    finally:
        worker.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:
        return replication_child(args.child, args.dsn, args.mirror, args.slot)
    for result in run(args):
        print(result.table() + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
