"""Online learning in a process of its own.

River learns row by row in Python. In the daemon's process that held the GIL the replicator
needs between its short numpy and DuckDB calls, and replication slowed to half its speed with
three online projects attached. Here the monitor sends each online model's labelled rows (its
feature matrix and targets, in commit order) and goes on; the learner predicts then learns each
row (prequentially) and feeds the errors to the model's error-drift detector. Detections come
back as they happen. Requests are carried out in the order they were sent, so the state the
monitor fetches includes every row sent before: checkpoints and the copy that serves
predictions are exact as of then.
"""

from __future__ import annotations

import gc
import multiprocessing
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from mirror.errors import TrainingError
from trainer import lifeline
from trainer.drift import DriftEvent, ErrorDrift
from trainer.worker import script_hidden, start_forkserver


@dataclass(frozen=True, slots=True)
class Learned:
    """A batch the learner has learned: how many rows, and the error drift it detected."""

    key: int
    rows: int
    events: list[DriftEvent]
    error: str | None = None


class LearnerGone(TrainingError):
    """The learner process died (killed, out of memory): its models' state since the last
    fetch is lost, and is learned again from the change log."""


class Learner:
    """The learner process and the monitor's end of its pipe (one thread uses it)."""

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._process: Any = None
        self._replies: list[Learned] = []
        """Replies read but not yet handed out by :meth:`learned`."""
        self.dead = False
        """The process died: everything raises LearnerGone until :meth:`revive`."""

    def _connection(self) -> Connection:
        if self.dead:
            raise LearnerGone("the online learning process died; its models must be loaded again")
        if self._conn is None:
            start_forkserver()
            context = multiprocessing.get_context("forkserver")
            ours, theirs = context.Pipe()
            with script_hidden():
                process = context.Process(
                    target=serve, args=(theirs,), name="pgml-sidecar learner", daemon=True
                )
                process.start()
            theirs.close()
            self._conn, self._process = ours, process
        return self._conn

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._connection().send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._lost()

    def revive(self) -> None:
        """Start afresh (a new process on next use): the caller loads its models again."""
        self.dead = False
        self._replies = []

    def _lost(self) -> None:
        self.close()
        self.dead = True
        raise LearnerGone(
            "the online learning process died; its models resume from their checkpoints"
        )

    def load(self, key: int, estimator: Any, errors: ErrorDrift | None) -> None:
        """Give the learner a model (replacing any under ``key``) and its error detector."""
        self._send(("load", key, pickle.dumps((estimator, errors), pickle.HIGHEST_PROTOCOL)))

    def learn(self, key: int, x: np.ndarray, y: np.ndarray) -> None:
        """Queue rows for ``key`` to learn; returns at once (unless the pipe is full).

        The replies waiting are read first: a caller that sends many batches without asking
        for them (a replay) must not leave the learner blocked on a full pipe of replies while
        it waits on a full pipe of requests."""
        self._drain()
        self._send(("learn", key, x, y))

    def drop(self, key: int) -> None:
        self._send(("drop", key))

    def state(self, key: int, on_learned: Callable[[Learned], None]) -> Any:
        """The model ``key`` as it is after every row sent so far; batches learned meanwhile
        go to ``on_learned``."""
        for learned in self.learned():  # the replies read earlier first, in order
            on_learned(learned)
        self._send(("state", key))
        while True:
            reply = self._receive()
            if reply[0] == "state":
                return _unpickled(reply[2])
            on_learned(Learned(*reply[1:]))

    def learned(self) -> list[Learned]:
        """The batches learned since the last call (without waiting)."""
        self._drain()
        out, self._replies = self._replies, []
        return out

    def _drain(self) -> None:
        while self._conn is not None and self._poll():
            reply = self._receive()
            assert reply[0] == "learned", reply[0]
            self._replies.append(Learned(*reply[1:]))

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


def serve(conn: Connection) -> None:
    """The learner's loop: requests in order until the monitor closes its end."""
    lifeline.arm_forked()
    models: dict[int, tuple[Any, ErrorDrift | None]] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        kind, key = request[0], request[1]
        if kind == "load":
            models[key] = pickle.loads(request[2])
        elif kind == "drop":
            models.pop(key, None)
        elif kind == "state":
            model = models.get(key)
            state = None if model is None else model[0]
            conn.send(("state", key, pickle.dumps(state, pickle.HIGHEST_PROTOCOL)))
        elif kind == "learn":
            conn.send(("learned", *_learn(models.get(key), key, request[2], request[3])))


def _learn(
    model: tuple[Any, ErrorDrift | None] | None, key: int, x: np.ndarray, y: np.ndarray
) -> tuple[int, int, list[DriftEvent], str | None]:
    if model is None:
        return key, 0, [], f"no model {key} in the learner"
    estimator, errors = model
    try:
        predicted = np.asarray(estimator.partial_fit(x, y), dtype=np.float64)
    except Exception as exc:  # the learner must outlive a model's failure
        return (
            key,
            0,
            [],
            f"{type(exc).__name__}: {exc}" if not isinstance(exc, TrainingError) else str(exc),
        )
    rows = int(np.count_nonzero(~np.isnan(y)))
    events = errors.update(y, predicted) if errors is not None else []
    return key, rows, events, None
