"""The training worker: a separate process that runs fits, so training never blocks the caller.

The process comes from a fork server started before the caller opens many threads, with the
training modules already imported, so each fit starts in milliseconds. A worker that dies (out
of memory, killed) fails only the fit it was running; the next fit gets a new process.

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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
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


class FitWorker:
    """Runs :func:`trainer.fit.fit` in a worker process, one fit at a time per worker."""

    def __init__(self, *, processes: int = 1) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise TrainingError(
                    "the sidecar is stopping: no training starts now; request it again",
                    sqlstate="57P01",
                )
            if self._pool is None:
                start_forkserver()
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_worker_started,
                )
            return self._pool

    def warm(self) -> None:
        """Start the worker process now, so the first fit does not wait for it."""
        with script_hidden():
            self._executor().submit(int)

    def submit(self, job: FitJob) -> Future[FitResult]:
        with script_hidden():  # the pool starts its process on the first submit
            return self._executor().submit(fit, job)

    def run(self, job: FitJob) -> FitResult:
        """Fit in the worker and wait for the result; errors come back as TrainingError."""
        try:
            return self.submit(job).result()
        except BrokenProcessPool:
            self._discard()
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

    def _discard(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker process now. A fit it is running is abandoned (its caller gets a
        TrainingError), never waited for: stopping takes seconds, not the rest of a training."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()
        for process in processes:
            process.join(timeout=5)


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
