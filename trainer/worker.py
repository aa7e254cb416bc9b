"""The training worker: separate processes that run fits, so training never blocks the caller.

The processes come from a fork server started before the caller opens many threads, with the
training modules already imported, so each fit starts in milliseconds. A worker that dies (out
of memory, killed) fails only the fit it was running; the next fit gets a new process. A fit
has a time limit: past it, its process is killed and another started in its place. A caller
may also cancel its fit (:func:`cancelled_by`): the same happens at once.

Nothing the worker runs outlives the sidecar (:mod:`trainer.lifeline`): the fork server and
the worker die with their parent, and a fit's parallel work (``n_jobs``) runs in threads of the
worker, never in processes of its own.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from mirror.errors import TrainingError
from trainer import lifeline
from trainer.fit import FitJob, FitResult, fit

_PRELOAD = [
    "trainer._forkserver",  # first: arms the fork server's death signal
    "trainer.fit",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.model_selection",
]

lifeline.mark_parent()  # at import, before this process has threads: the fork server's parent


class _LifelongThread:
    """Runs the calls handed to it in one thread that ends only with the process."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def call(self, function: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="pgml-sidecar process starter", daemon=True
                )
                self._thread.start()
        result: Future[Any] = Future()
        self._calls.put((function, result))
        return result.result()

    def _serve(self) -> None:
        while True:
            function, result = self._calls.get()
            try:
                result.set_result(function())
            except BaseException as exc:
                result.set_exception(exc)


_STARTER = _LifelongThread()


def start_forkserver() -> None:
    """Start the fork server, if it is not running, from a thread that lasts as long as this
    process: the fork server's death signal fires when the thread that started it ends."""
    multiprocessing.forkserver.set_forkserver_preload(_PRELOAD)
    lifeline.mark_parent()  # a no-op but in a process forked after this module was imported

    def start() -> None:
        with script_hidden():
            multiprocessing.forkserver.ensure_running()

    _STARTER.call(start)


def _worker_started() -> None:
    """In each new worker process: die with the fork server, and let joblib (scikit-learn's
    ``n_jobs``, a search's folds) use threads, so a fit never leaves processes behind."""
    lifeline.arm_forked()
    import joblib

    joblib.parallel_config(backend="threading")


class FitTimeLimit(TrainingError):
    """A fit ran past its time limit: its process was killed (SQLSTATE 57014, as a statement
    PostgreSQL cancels); ``limit`` is the limit in seconds."""

    sqlstate = "57014"

    def __init__(self, limit: float) -> None:
        super().__init__(f"the fit ran past its time limit of {limit:g} s and was stopped")
        self.limit = limit


class FitCancelled(TrainingError):
    """The caller cancelled the fit (``reason``, as :func:`cancelled_by`'s test gave it): its
    process was killed."""

    sqlstate = "57014"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the fit was cancelled ({reason}) and stopped")
        self.reason = reason


CANCEL_TICK = 0.1
"""Seconds between two looks at whether a fit's caller cancelled it."""
_cancelled: ContextVar[Callable[[], str | None] | None] = ContextVar("fit_cancelled", default=None)


@contextmanager
def cancelled_by(test: Callable[[], str | None]) -> Iterator[None]:
    """Fits run by this thread inside are cancelled as soon as ``test()`` gives a reason (every
    :data:`CANCEL_TICK`): their process is killed and :class:`FitCancelled` raised."""
    token = _cancelled.set(test)
    try:
        yield
    finally:
        _cancelled.reset(token)


class _Process:
    """One worker process, as a one-process pool: started when first needed, and again after
    it died or was killed. Killing it touches no other fit: every process has its own pool."""

    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = None

    def executor(self) -> ProcessPoolExecutor:
        if self.pool is None:
            start_forkserver()
            with script_hidden():  # the pool starts its process on the first submit
                self.pool = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_worker_started,
                )
        return self.pool

    def start(self) -> None:
        """Start the process now, so the next fit does not wait for it."""
        with script_hidden():
            self.executor().submit(int)

    def submit(self, job: FitJob) -> Future[FitResult]:
        with script_hidden():
            return self.executor().submit(fit, job)

    def pids(self) -> set[int]:
        pool = self.pool
        return set((getattr(pool, "_processes", None) or {}) if pool is not None else ())

    def discard(self) -> None:
        """Forget a pool whose process died; the next fit starts a new one."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def kill(self) -> None:
        """Kill the process now and wait until it is gone: nothing it was doing goes on (a fit
        killed here writes no model file after its caller cleaned up)."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()
        for process in processes:
            process.join(timeout=5)


class FitWorker:
    """Runs :func:`trainer.fit.fit` in worker processes: at most ``processes`` fits at once,
    one per process, each stopped at its time limit.

    Fits wait for a free process in the order they came, so a fit waits behind another for no
    longer than that fit's own time limit. A fit that runs past its limit has its process
    killed and a new one started at once; a fit that waits for a process is never handed to
    one that is killed (fits go to a process only when it is free), so no other fit fails.

    Two processes by default: a small fit then runs beside a long one instead of behind it.
    Measured on 2 shared cores, a linear fit on iris (0.2-0.35 s alone) took 0.2 s beside a
    random-forest grid search in one run, 1.0 s in another (starting the second process takes
    about 30 ms), and 18.6 s with one process (the rest of the search, up to its limit). The
    cost: a second process (about 45 MB of its own, idle; it shares the fork server's pages),
    started only when two fits run at once, and a second fit's memory while both run.
    """

    def __init__(self, *, processes: int = 2) -> None:
        if processes < 1:
            raise ValueError("a FitWorker needs at least one process")
        self.processes = processes
        self._all = [_Process() for _ in range(processes)]
        self._free = list(reversed(self._all))  # the first one (warmed) is taken first
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()
        self._closed = False

    def warm(self) -> None:
        """Start a worker process now, so the first fit does not wait for it."""
        with self._changed:
            self._check_open()
            self._all[0].start()

    def pids(self) -> set[int]:
        """The worker processes started and not (yet) known to be gone."""
        with self._changed:
            return set().union(*(process.pids() for process in self._all))

    def run(self, job: FitJob, *, time_limit: float | None = None) -> FitResult:
        """Fit in a worker process and wait for the result; errors come back as TrainingError.

        ``time_limit`` (seconds, counted once a process is free for it; None or 0: none):
        past it the process is killed and :class:`FitTimeLimit` raised.
        """
        process = self._take()
        try:
            return self._run(process, job, time_limit or None)
        finally:
            self._give_back(process)

    def _run(self, process: _Process, job: FitJob, time_limit: float | None) -> FitResult:
        try:
            with self._changed:
                self._check_open()
                future = process.submit(job)
            self._wait(process, future, time_limit, _cancelled.get())
            return future.result()
        except BrokenProcessPool:
            with self._changed:
                process.discard()
            if self._closed:
                raise TrainingError(
                    "the sidecar stopped while this model trained; request it again",
                    sqlstate="57P01",
                ) from None
            raise TrainingError(
                "the training process died (out of memory or killed); try a smaller relation,"
                " fewer rows or a lighter algorithm",
                sqlstate="53200",
            ) from None

    def _wait(
        self,
        process: _Process,
        future: Future[FitResult],
        time_limit: float | None,
        cancelled: Callable[[], str | None] | None,
    ) -> None:
        """Wait for ``future``; kill its process past ``time_limit`` or once ``cancelled``."""
        deadline = None if time_limit is None else time.monotonic() + time_limit
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            tick = left if cancelled is None else min(CANCEL_TICK, left or CANCEL_TICK)
            if wait([future], timeout=tick).done:
                return
            reason = cancelled() if cancelled is not None else None
            if reason:
                self._kill(process)
                raise FitCancelled(reason)
            if deadline is not None and time.monotonic() >= deadline:
                self._kill(process)
                raise FitTimeLimit(time_limit or 0.0)

    def _kill(self, process: _Process) -> None:
        """Kill the process of a fit past its limit, and start its successor now."""
        with self._changed:
            process.kill()
            if not self._closed:
                process.start()

    def _check_open(self) -> None:
        if self._closed:
            raise TrainingError(
                "the sidecar is stopping: no training starts now; request it again",
                sqlstate="57P01",
            )

    def _take(self) -> _Process:
        """A free process, once every fit that asked before has one (first come, first
        served)."""
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            try:
                while not (self._free and self._waiting[0] is ticket):
                    self._check_open()
                    self._changed.wait()
                self._check_open()
            except BaseException:
                self._waiting.remove(ticket)
                self._changed.notify_all()
                raise
            self._waiting.popleft()
            self._changed.notify_all()  # the next one may take another free process
            return self._free.pop()

    def _give_back(self, process: _Process) -> None:
        with self._changed:
            self._free.append(process)
            self._changed.notify_all()

    def close(self) -> None:
        """Stop the worker processes now. Fits they run are abandoned (their callers get a
        TrainingError), never waited for: stopping takes seconds, not the rest of a training;
        fits waiting for a process get one too."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            for process in self._all:
                process.kill()


@contextmanager
def script_hidden() -> Iterator[None]:
    """Keep a worker from running the caller's script again as it starts.

    A new process re-imports the main module when it was run as a file, which runs a script
    without an ``if __name__ == "__main__"`` guard a second time. The worker needs nothing from
    it: it imports what it runs by module name.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path
