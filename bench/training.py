"""Training: a feature matrix read from the mirror vs ``pandas.read_sql``; ``train``'s time split.

Part 1 runs the same query both ways, each load in a fresh Python process timed from after its
imports: DuckDB on the mirror file (Arrow batches into one float64 matrix) and
``pandas.read_sql`` over psycopg from the source (``to_numpy(dtype=float64)``), and checks that
the two matrices hold the same rows. Part 2 times ``Trainer.train`` end to end and splits the
time into snapshot, the worker's load, fit, score and save, registration, and the rest.
PostgresML itself cannot run here, so part 2 has no reference ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import duckdb
import numpy as np
import pandas as pd
import psycopg

from bench import workload as w
from mirror.store import Mirror
from replicator.replicate import ReplicationSettings, Replicator

if TYPE_CHECKING:
    from trainer.train import Trainer

RELATION = "public.features"
FEATURES = [f"f{k:02d}" for k in range(1, 19)]
MATRIX_COLUMNS = [*FEATURES, "cat", "y"]
"""The training matrix: every column but the key ``id``, label ``y`` last (20 columns)."""
QUERY = f"select {', '.join(MATRIX_COLUMNS)} from {RELATION}"
"""The same query on both sides; a training matrix needs no row order (``matrix_digest``)."""
ORDERED_QUERY = f"{QUERY} order by id"
ALGORITHMS = ("linear", "hist_gradient_boosting")
FILL_CHUNK = 1_000_000
_PRIME = 2147483647
_BUCKETS = 1000003

CREATE_FEATURES = (
    f"create table {RELATION} (id bigint primary key, "
    + ", ".join(f"{name} double precision not null" for name in FEATURES)
    + ", cat int not null, y double precision not null) with (autovacuum_enabled = false)"
)


def _hashed(stream: int, seed: int) -> str:
    """A pseudo-random integer in ``[0, 1000003)`` of row ``g``, one stream per ``stream``."""
    step = 2654435761 + 7919 * stream
    offset = 40503 * stream + seed
    mixed = f"((g * {step} + {offset}) % {_PRIME})"
    return f"({mixed} * {mixed}) % {_BUCKETS}"


def _uniform(stream: int, seed: int) -> str:
    """A deterministic value in ``[-1, 1)`` of row ``g``."""
    return f"({_hashed(stream, seed)} / {_BUCKETS / 2}::double precision - 1)"


_LABEL = (
    "2 * f01 - 1.5 * f02 + f03 + 0.5 * f04 + 2 * f05 * f06 + sin(3 * f07) + f08 * f08"
    " + 0.3 * cat + case when cat % 3 = 0 then 1 else 0 end + 0.5 * noise"
)
"""Label ``y``: linear and non-linear terms of 8 features and ``cat``, plus uniform noise."""


def insert_features_sql(lo: int, hi: int, seed: int) -> str:
    """An INSERT of rows ``lo..hi`` (inclusive) of the features table, deterministic per seed."""
    values = [f"{_uniform(k, seed)} as {name}" for k, name in enumerate(FEATURES, 1)]
    values.append(f"({_hashed(19, seed)} % 10)::int as cat")
    values.append(f"{_uniform(20, seed)} as noise")
    series = f"generate_series({int(lo)}::bigint, {int(hi)}::bigint) g"
    return (
        f"insert into {RELATION} select g, {', '.join(FEATURES)}, cat, {_LABEL}"
        f" from (select g, {', '.join(values)} from {series}) s"
    )


def fill(dsn: str, rows: int, seed: int) -> None:
    """Create and fill the features table, then vacuum it so no timed reader sets hint bits."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE_FEATURES.encode())
        for lo in range(1, rows + 1, FILL_CHUNK):
            conn.execute(insert_features_sql(lo, min(lo + FILL_CHUNK - 1, rows), seed).encode())
        conn.execute(f"vacuum (freeze, analyze) {RELATION}".encode())
        conn.execute("checkpoint")


def mirror_table(dsn: str, path: Path) -> float:
    """Copy the table into a fresh mirror with the replicator in catch-up mode; seconds taken."""
    started = time.perf_counter()
    replicator = Replicator(
        ReplicationSettings(source_dsn=dsn, mirror_path=path, tables=[RELATION], catch_up=True)
    )
    try:
        replicator.run()
    finally:
        replicator.close()
    return time.perf_counter() - started


# -- part 1: the training matrix -----------------------------------------------------------------


def load_ours(path: Path, query: str = QUERY) -> np.ndarray:
    """The matrix from the mirror: DuckDB's Arrow batches copied into one float64 matrix.

    Column-major (as pandas' ``to_numpy`` returns it); the fastest of the paths measured here
    (``fetchnumpy`` or a whole Arrow table, then the same copy, and a ``double[20]`` array
    column, all took longer).
    """
    con = duckdb.connect(str(path), read_only=True)
    try:
        batches = list(con.sql(query).arrow())
    finally:
        con.close()
    rows = sum(batch.num_rows for batch in batches)
    matrix = np.empty((rows, len(MATRIX_COLUMNS)), dtype=np.float64, order="F")
    start = 0
    for batch in batches:
        for index, column in enumerate(batch.columns):
            matrix[start : start + batch.num_rows, index] = column.to_numpy()
        start += batch.num_rows
    return matrix


def load_reference(dsn: str, query: str = QUERY) -> np.ndarray:
    """The matrix from the source: ``pandas.read_sql`` over psycopg, then ``to_numpy``."""
    with psycopg.connect(dsn) as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "only supports SQLAlchemy connectable"
        frame = pd.read_sql(query, conn)
    return frame.to_numpy(dtype=np.float64)


def matrix_digest(matrix: np.ndarray) -> str:
    """A hash of the matrix's rows in a canonical order (sorted on every column), and its shape."""
    rows = matrix[np.lexsort(matrix.T[::-1])]
    digest = hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()[:16]
    return f"{digest} {matrix.shape[0]}x{matrix.shape[1]}"


def _memory_mb(field_name: str) -> float:
    found = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(found.group(1)) / 1024 if found else float("nan")


def load_here(tool: str, source: str) -> dict[str, Any]:
    """Load the matrix in this process (a fresh one): seconds, peak RSS growth, digest."""
    loads: dict[str, Callable[[], np.ndarray]] = {
        "ours": lambda: load_ours(Path(source)),
        "ours_ordered": lambda: load_ours(Path(source), ORDERED_QUERY),
        "ref": lambda: load_reference(source),
    }
    before = _memory_mb("VmRSS")
    started = time.perf_counter()
    matrix = loads[tool]()
    seconds = time.perf_counter() - started
    peak = _memory_mb("VmHWM") - before
    return {"seconds": seconds, "peak_mb": peak, "digest": matrix_digest(matrix)}


@dataclass
class Load:
    """One load in its own process: seconds, peak RSS above the RSS before, matrix digest."""

    seconds: float
    peak_mb: float
    digest: str


def load_in_process(tool: str, source: str, log: Path) -> Load:
    """Run one load in a fresh Python process (imports done before the clock starts)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(w.CODE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    command = [sys.executable, "-m", "bench.training", "--load", tool, "--source", source]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False, timeout=w.RUN_TIMEOUT_S
    )
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise w.BenchError(f"{tool} load exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return Load(**json.loads(done.stdout.splitlines()[-1]))


@dataclass
class MatrixRound:
    first: str
    ours: Load
    ref: Load
    ours_ordered: Load

    @property
    def ratio(self) -> float:
        return self.ref.seconds / self.ours.seconds

    @property
    def matched(self) -> bool:
        return self.ours.digest == self.ref.digest == self.ours_ordered.digest


@dataclass
class MatrixLoad:
    """Rounds of part 1; the reported ratio is the median of the rounds'."""

    rows: int
    mirror_seconds: float
    rounds: list[MatrixRound] = field(default_factory=list)

    def table(self) -> str:
        headers = ["round", "first", "read_sql s", "ours s", "ratio", "read_sql MB", "ours MB"]
        headers += ["ours, order by id s", "matrices"]
        rows = [
            [
                str(index),
                r.first,
                f"{r.ref.seconds:.2f}",
                f"{r.ours.seconds:.3f}",
                f"{r.ratio:.1f}",
                f"{r.ref.peak_mb:.0f}",
                f"{r.ours.peak_mb:.0f}",
                f"{r.ours_ordered.seconds:.3f}",
                "match" if r.matched else f"MISMATCH ({r.ref.digest} vs {r.ours.digest})",
            ]
            for index, r in enumerate(self.rounds, 1)
        ]
        ratio = statistics.median(r.ratio for r in self.rounds)
        ours = statistics.median(r.ours.seconds for r in self.rounds)
        ref = statistics.median(r.ref.seconds for r in self.rounds)
        return (
            f"**training matrix** ({self.rows:,} rows x {len(MATRIX_COLUMNS)} columns:"
            f" 18 double, 1 int, the label; `id` left out): median ratio read_sql/ours ="
            f" **{ratio:.1f}** (target >= 30); median s ours {ours:.3f}, pandas.read_sql"
            f" {ref:.2f}; ours peak RSS +{max(r.ours.peak_mb for r in self.rounds):.0f} MB;"
            f" every matrix {'matches' if self.matched else 'DOES NOT match'}; mirror filled by"
            f" the replicator (catch-up) in {self.mirror_seconds:.1f}s, untimed\n\n"
            + w.markdown_table(headers, rows)
        )

    @property
    def matched(self) -> bool:
        return all(r.matched for r in self.rounds)


def matrix_round(dsn: str, path: Path, scratch: Path, index: int) -> MatrixRound:
    sources = {"ours": str(path), "ref": dsn}
    order = w.alternate(index)
    timed = {
        tool: load_in_process(tool, sources[tool], scratch / f"load_{index}.{tool}.log")
        for tool in order
    }
    ordered = load_in_process("ours_ordered", str(path), scratch / f"load_{index}.ordered.log")
    return MatrixRound(order[0], timed["ours"], timed["ref"], ordered)


# -- part 2: train end to end --------------------------------------------------------------------

STEPS = ("snapshot", "load", "fit", "score", "save", "register", "other")
"""Steps of ``train``: load, fit, score and save are the worker's own timings; other is the
total minus the rest (checks, sending the job to the worker process and back, worker start)."""
SNAPSHOT_PARTS = ("parquet", "statistics", "sha256")


@dataclass
class TrainRound:
    """One ``Trainer.train`` call: total seconds, seconds per step, and the model's r2."""

    algorithm: str
    total: float
    steps: dict[str, float]
    r2: float


def _timed(spent: dict[str, float], step: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent[step] = time.perf_counter() - started

    return timed


@contextlib.contextmanager
def step_timers(spent: dict[str, float]) -> Iterator[None]:
    """Time steps of ``Trainer.train`` that run in this process, by wrapping what they call.

    Snapshot and register always; inside the snapshot, its statistics scan and file hash when
    ``trainer.snapshots`` still has those functions (the Parquet write is the rest).
    """
    from trainer import snapshots
    from trainer import train as train_module

    targets: list[tuple[object, str, str]] = [
        (train_module, "materialise", "snapshot"),
        (train_module.Trainer, "_register", "register"),
        (snapshots, "_statistics", "statistics"),
        (snapshots, "file_sha256", "sha256"),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, step in targets:
            if hasattr(owner, name):
                wrapped = _timed(spent, step, getattr(owner, name))
                stack.enter_context(mock.patch.object(owner, name, wrapped))
        yield


def train_once(trainer: Trainer, algorithm: str) -> TrainRound:
    spent: dict[str, float] = {}
    with step_timers(spent):
        started = time.perf_counter()
        result = trainer.train(
            f"bench_{algorithm}",
            task="regression",
            relation=RELATION,
            y="y",
            algorithm=algorithm,
        )
        total = time.perf_counter() - started
    for step in ("load", "fit", "score", "save"):
        spent[step] = float(result.timings.get(step, float("nan")))
    spent["other"] = total - sum(spent[s] for s in STEPS if s != "other")
    if "statistics" in spent and "sha256" in spent:
        spent["parquet"] = spent["snapshot"] - spent["statistics"] - spent["sha256"]
    return TrainRound(algorithm, total, spent, float(result.metrics.get("r2", float("nan"))))


def _snapshot_cell(steps: dict[str, float]) -> str:
    parts = [steps.get(part) for part in SNAPSHOT_PARTS]
    inside = "/".join("?" if p is None else f"{p:.2f}" for p in parts)
    return f"{steps['snapshot']:.2f} ({inside})"


@dataclass
class TrainSplit:
    """Rounds of part 2: where the time of ``train`` goes, per algorithm."""

    rows: int
    rounds: list[tuple[int, TrainRound]] = field(default_factory=list)

    def table(self) -> str:
        headers = ["round", "algorithm", f"snapshot s ({'/'.join(SNAPSHOT_PARTS)})"]
        headers += [*(f"{s} s" for s in STEPS[1:]), "total s", "r2"]
        rows = [
            [
                str(index),
                r.algorithm,
                _snapshot_cell(r.steps),
                *(f"{r.steps[s]:.2f}" for s in STEPS[1:]),
                f"{r.total:.2f}",
                f"{r.r2:.4f}",
            ]
            for index, r in self.rounds
        ]
        medians = []
        for algorithm in ALGORITHMS:
            runs = [r for _, r in self.rounds if r.algorithm == algorithm]
            if not runs:
                continue
            parts = ", ".join(
                f"{s} {statistics.median(r.steps[s] for r in runs):.2f}" for s in STEPS
            )
            total = statistics.median(r.total for r in runs)
            medians.append(f"{algorithm} **{total:.2f}s** ({parts})")
        return (
            f"**train end to end** ({self.rows:,} rows, regression on `y`, features: the 20"
            " other columns, `id` included as PostgresML would): median s "
            + "; ".join(medians)
            + ". No reference ratio: PostgresML cannot run here.\n\n"
            + w.markdown_table(headers, rows)
        )


def train_rounds(path: Path, rounds: int, rows: int) -> TrainSplit:
    # Imported here, so part 1 (and `python -m bench`) runs while the trainer cannot import.
    from trainer.train import Trainer, artifact_home

    split = TrainSplit(rows)
    mirror = Mirror(path)
    trainer = Trainer(mirror.con, artifact_home(path))
    try:
        for index in range(1, rounds + 1):
            for algorithm in ALGORITHMS:
                done = train_once(trainer, algorithm)
                split.rounds.append((index, done))
                w.say(
                    f"train {index} {algorithm}: {done.total:.2f}s"
                    f" (snapshot {_snapshot_cell(done.steps)}, "
                    + ", ".join(f"{s} {done.steps[s]:.2f}" for s in STEPS[1:])
                    + f"), r2 {done.r2:.4f}"
                )
    finally:
        trainer.close()
        mirror.close()
    return split


# -- running -------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = w.base_parser("bench.training", __doc__ or "")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows in the table")
    p.add_argument("--skip-train", action="store_true", help="run part 1 only")
    # One load in this process, for the parent's timed rounds.
    p.add_argument("--load", choices=("ours", "ours_ordered", "ref"), help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace) -> list[MatrixLoad | TrainSplit]:
    with w.cluster("pgml-bench-training-") as (server, scratch):
        dsn = server.create_database("training")
        w.say(f"filling {args.rows:,} rows")
        fill(dsn, args.rows, args.seed)
        path = scratch / "training.duckdb"
        mirror_seconds = mirror_table(dsn, path)
        w.say(f"mirrored in {mirror_seconds:.1f}s")
        matrix = MatrixLoad(args.rows, mirror_seconds)
        for tool, source in (("ours", str(path)), ("ref", dsn)):  # untimed: warm both caches
            load_in_process(tool, source, scratch / f"warm.{tool}.log")
        for index in range(args.rounds):
            matrix.rounds.append(matrix_round(dsn, path, scratch, index))
            last = matrix.rounds[-1]
            w.say(
                f"matrix {index}: read_sql {last.ref.seconds:.2f}s ({last.ref.peak_mb:.0f} MB),"
                f" ours {last.ours.seconds:.3f}s ({last.ours.peak_mb:.0f} MB),"
                f" ordered {last.ours_ordered.seconds:.3f}s, ratio {last.ratio:.1f},"
                f" {'match' if last.matched else 'MISMATCH'}"
            )
        results: list[MatrixLoad | TrainSplit] = [matrix]
        if not args.skip_train:
            results.append(train_rounds(path, args.rounds, args.rows))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.load:
        print(json.dumps(load_here(args.load, args.source)))
        return 0
    results = run(args)
    for result in results:
        print(result.table() + "\n")
    return 0 if all(r.matched for r in results if isinstance(r, MatrixLoad)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
