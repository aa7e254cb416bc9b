"""Online learning in a process of its own.

River learns row by row in Python. In the daemon's process that held the GIL the replicator
needs between its short numpy and DuckDB calls, and replication slowed to half its speed with
three online projects attached. Here the monitor sends each online model's labelled rows (its
feature matrix and targets, in commit order) and goes on; the learner predicts then learns each
row (prequentially) and feeds the errors to the model's error-drift detector. Detections come
back as they happen, with each batch's progressive metrics. Requests are carried out in the
order they were sent, so the state the monitor fetches includes every row sent before: the copy
that serves predictions is exact as of then. Checkpoints are written here too, as of the rows
sent before the request: the model is pickled once, straight into its file, while the monitor
goes on reading and sending rows (:class:`Checkpointed` says when the file is there).

A model that fails (cannot be loaded, raises while learning, cannot be pickled even on a deep
stack, see ``trainer.pickles``) is dropped from the learner with the reason (:class:`Failed`);
the others go on. If the process itself dies, :attr:`Learner.culprit` names the model it was
busy with, if any, so the monitor can tell one model killing it again and again from a kill.

The process runs at the lowest CPU priority (:data:`NICENESS`): on a machine with few cores,
learning at full speed took a core the replicator needed, and replication ran at half its
speed with three online projects attached (bench/online.py, part 2). Learning uses what the
sidecar's other work leaves; when it falls behind, the monitor's queue grows and the rows
waiting are read together. Loaded models are kept out of the garbage collector's full scans
(``gc.freeze``): a tree is hundreds of thousands of objects that live as long as the model.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from mirror.changes import Lsn
from mirror.errors import TrainingError
from trainer import lifeline, pickles
from trainer.drift import DriftEvent, ErrorDrift
from trainer.model import Model, save_model
from trainer.worker import script_hidden, start_forkserver

IDLE = -1
"""The learner's busy key while it waits for a request."""
NICENESS = 19
"""Added to the learner process's nice value: it runs when nothing else of the sidecar's
wants the CPU (within the sidecar's share of the machine, not below other programs')."""


@dataclass(frozen=True, slots=True)
class Learned:
    """A batch the learner has learned: how many labelled rows, the error drift it detected,
    and the model's progressive metrics after it (``rows_learned`` rows in all)."""

    key: int
    lsn: Lsn
    rows: int
    events: list[DriftEvent]
    rows_learned: int
    progressive: dict[str, float]


@dataclass(frozen=True, slots=True)
class Failed:
    """A model the learner could not load, learn with or pickle; it is no longer there."""

    key: int
    reason: str


@dataclass(frozen=True, slots=True)
class Checkpointed:
    """A checkpoint the learner wrote: the model as of every row sent up to ``lsn``, with
    its error detector, in ``path`` (SHA-256 ``sha256``), ``rows_learned`` rows in all."""

    key: int
    lsn: Lsn
    path: str
    sha256: str
    rows_learned: int
    progressive: dict[str, float]


Reply = Learned | Failed | Checkpointed
State = tuple[Any, ErrorDrift | None]
"""An online model's estimator and its error-drift detector, as the learner holds them."""


class LearnerGone(TrainingError):
    """The learner process died (killed, out of memory): its models' state since the last
    fetch is lost, and is learned again from the change log."""


class Learner:
    """The learner process and the monitor's end of its pipe (one thread uses it).

    ``deep_pickle`` False leaves out the deep-stack retry of ``trainer.pickles``: a model too
    deep for pickle's default recursion then fails.
    """

    def __init__(self, *, deep_pickle: bool = True) -> None:
        self.deep_pickle = deep_pickle
        self._conn: Connection | None = None
        self._process: Any = None
        self._busy: Any = None
        self._replies: list[Reply] = []
        """Replies read but not yet handed out by :meth:`learned`."""
        self.dead = False
        """The process died: everything raises LearnerGone until :meth:`revive`."""
        self.culprit: int | None = None
        """The model the process was busy with when it died (None: idle, or alive)."""

    def _connection(self) -> Connection:
        if self.dead:
            raise LearnerGone("the online learning process died; its models must be loaded again")
        if self._conn is None:
            start_forkserver()
            context = multiprocessing.get_context("forkserver")
            ours, theirs = context.Pipe()
            busy = context.RawValue("q", IDLE)
            with script_hidden():
                process = context.Process(
                    target=serve, args=(theirs, busy, self.deep_pickle),
                    name="pgml-sidecar learner", daemon=True,
                )  # fmt: skip
                process.start()
            theirs.close()
            self._conn, self._process, self._busy = ours, process, busy
        return self._conn

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._connection().send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._lost()

    def revive(self) -> None:
        """Start afresh (a new process on next use): the caller loads its models again."""
        self.dead = False
        self.culprit = None
        self._replies = []

    def _lost(self) -> None:
        process, busy = self._process, self._busy
        self.close()
        if process is not None and busy is not None and process.exitcode is not None:
            self.culprit = None if busy.value == IDLE else int(busy.value)
        self.dead = True
        raise LearnerGone(
            "the online learning process died; its models resume from their checkpoints"
        )

    def load(self, key: int, estimator: Any, errors: ErrorDrift | None) -> None:
        """Give the learner a model (replacing any under ``key``) and its error detector."""
        self._send(("load", key, pickles.dumps((estimator, errors))))

    def learn(self, key: int, lsn: Lsn, x: np.ndarray, y: np.ndarray) -> None:
        """Queue rows committed at ``lsn`` for ``key`` to learn; returns at once (unless the
        pipe is full).

        The replies waiting are read first: a caller that sends many batches without asking
        for them (a replay) must not leave the learner blocked on a full pipe of replies while
        it waits on a full pipe of requests."""
        self._drain()
        self._send(("learn", key, lsn, x, y))

    def checkpoint(self, key: int, lsn: Lsn, shell: Model, path: Path) -> None:
        """Have the learner write ``key`` as of the rows sent so far (``lsn``) to ``path``:
        ``shell`` (without estimator) with the learner's estimator and error detector put in;
        returns at once, a :class:`Checkpointed` or :class:`Failed` reply follows."""
        self._drain()
        self._send(("checkpoint", key, lsn, pickles.dumps(shell), str(path)))

    def drop(self, key: int) -> None:
        self._send(("drop", key))

    def state(self, key: int, on_reply: Callable[[Reply], None]) -> State | None:
        """The model ``key`` as it is after every row sent so far, or None if the learner does
        not have it (a :class:`Failed` reply says why); replies meanwhile go to ``on_reply``."""
        for reply in self.learned():  # the replies read earlier first, in order
            on_reply(reply)
        self._send(("state", key))
        while True:
            message = self._receive()
            if message[0] == "state":
                return None if message[2] is None else _unpickled(message[2])
            on_reply(_reply(message))

    def flush(self, on_reply: Callable[[Reply], None]) -> None:
        """Wait until every request sent so far is carried out; their replies go to
        ``on_reply``."""
        for reply in self.learned():
            on_reply(reply)
        self._send(("flush", IDLE))
        while True:
            message = self._receive()
            if message[0] == "flushed":
                return
            on_reply(_reply(message))

    def learned(self) -> list[Reply]:
        """The replies since the last call (without waiting)."""
        self._drain()
        out, self._replies = self._replies, []
        return out

    def _drain(self) -> None:
        while self._conn is not None and self._poll():
            message = self._receive()
            assert message[0] not in ("state", "flushed"), message[0]
            self._replies.append(_reply(message))

    def _poll(self) -> bool:
        assert self._conn is not None
        try:
            return self._conn.poll()
        except (EOFError, OSError):
            self._lost()
            return False

    def _receive(self) -> tuple[Any, ...]:
        conn = self._connection()
        try:
            reply: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):
            self._lost()
            raise
        return reply

    def close(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            conn.close()  # the learner sees the end of its pipe and exits
        if process is not None:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


def _reply(message: tuple[Any, ...]) -> Reply:
    if message[0] == "failed":
        return Failed(*message[1:])
    if message[0] == "checkpointed":
        return Checkpointed(*message[1:])
    assert message[0] == "learned", message[0]
    return Learned(*message[1:])


def _unpickled(data: bytes) -> Any:
    """Unpickle without the garbage collector: a large tree is a million new objects, none
    of them garbage, and collecting while they arrive costs more than the unpickling."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return pickle.loads(data)
    finally:
        if enabled:
            gc.enable()


def serve(conn: Connection, busy: Any, deep_pickle: bool = True) -> None:
    """The learner's loop: requests in order until the monitor closes its end. ``busy`` holds
    the key of the model a request is about while it is carried out (not while its reply is
    sent: a caller that has the reply must not find it busy)."""
    lifeline.arm_forked()
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    models: dict[int, State] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        kind, key = request[0], request[1]
        busy.value = key
        replies: list[tuple[Any, ...]] = []
        if kind == "load":
            try:
                models[key] = _unpickled(request[2])
            except Exception as exc:  # the learner must outlive a model's failure
                models.pop(key, None)
                replies.append(("failed", key, f"cannot be loaded: {_reason(exc)}"))
            gc.freeze()  # the model lives on: full collections need not walk it
        elif kind == "drop":
            models.pop(key, None)
        elif kind == "state":
            replies += _state(models, key, deep_pickle)
        elif kind == "learn":
            replies.append(_learn(models, key, *request[2:]))
        elif kind == "checkpoint":
            replies.append(_checkpoint(models, key, *request[2:]))
        elif kind == "flush":
            replies.append(("flushed", key))
        busy.value = IDLE
        for reply in replies:
            conn.send(reply)


def _state(models: dict[int, State], key: int, deep: bool) -> list[tuple[Any, ...]]:
    model = models.get(key)
    if model is None:
        return [("state", key, None)]
    try:
        return [("state", key, pickles.dumps(model, deep=deep))]
    except Exception as exc:
        del models[key]
        return [("failed", key, f"cannot be pickled: {_reason(exc)}"), ("state", key, None)]


def _checkpoint(
    models: dict[int, State], key: int, lsn: Lsn, shell: bytes, path: str
) -> tuple[Any, ...]:
    model = models.get(key)
    if model is None:
        return ("failed", key, "not in the learner (it failed before)")
    estimator, errors = model
    target = Path(path)
    try:
        saved = _unpickled(shell)
        saved.estimator = estimator
        saved.monitoring = {**(saved.monitoring or {}), "errors": errors}
        sha = save_model(saved, target)
    except Exception as exc:  # deeper than even the deep stack, or the disk: it fails alone
        target.with_suffix(target.suffix + ".tmp").unlink(missing_ok=True)
        del models[key]
        return ("failed", key, f"cannot be checkpointed: {_reason(exc)}")
    progressive = dict(getattr(estimator, "progressive", {}))
    rows = int(getattr(estimator, "rows_learned", 0))
    return ("checkpointed", key, lsn, path, sha, rows, progressive)


def _learn(
    models: dict[int, State], key: int, lsn: Lsn, x: np.ndarray, y: np.ndarray
) -> tuple[Any, ...]:
    model = models.get(key)
    if model is None:
        return ("failed", key, "not in the learner (it failed before)")
    estimator, errors = model
    try:
        predicted = np.asarray(estimator.partial_fit(x, y), dtype=np.float64)
        events = errors.update(y, predicted) if errors is not None else []
    except Exception as exc:
        del models[key]
        return ("failed", key, f"failed to learn: {_reason(exc)}")
    rows = int(np.count_nonzero(~np.isnan(y)))
    events = [replace(event, lsn=lsn) for event in events]
    progressive = dict(getattr(estimator, "progressive", {}))
    return ("learned", key, lsn, rows, events, int(estimator.rows_learned), progressive)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
