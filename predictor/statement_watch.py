"""The watch over running statements: it interrupts those past their timeout or whose client left.

A session's thread is inside DuckDB while its statement runs, so it can neither see the clock
nor its socket; one thread per endpoint looks at both for every statement running, every
``TICK`` seconds (sooner when a deadline comes first). A client that hung up (the peer closed
its end: ``POLLRDHUP``, as PostgreSQL's ``client_connection_check_interval`` checks) gets its
query interrupted too, so nobody leaves a heavy query running behind them.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Protocol

log = logging.getLogger("pgml_sidecar")

TICK = 0.1
"""Seconds between looks at the running statements (a timeout fires at most this late)."""
_HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class Watched(Protocol):
    """A session while its statement runs, as the watch sees it."""

    deadline: float | None
    """``time.monotonic()`` at which the statement times out; None: no timeout."""
    client_fd: int | None
    """The client's socket, to notice it hang up; None: not watched for that."""
    interrupted: str | None
    """Why it is being interrupted already (the interrupt is repeated until it stops)."""

    def interrupt(self, reason: str) -> None:
        """Stop the statement running now (``reason``: 'timeout' or 'disconnect')."""


class StatementWatch:
    """One thread that interrupts statements past their deadline or left by their client."""

    def __init__(self) -> None:
        self._running: set[Watched] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> int:
        """How many statements are running now."""
        return len(self._running)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="pgml-statement-watch",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add(self, statement: Watched) -> None:
        """Watch ``statement`` until :meth:`discard`."""
        with self._lock:
            self._running.add(statement)
        deadline = statement.deadline
        if deadline is not None and deadline - time.monotonic() < TICK:
            self._wake.set()  # the watch sleeps a whole tick otherwise

    def discard(self, statement: Watched) -> None:
        with self._lock:
            self._running.discard(statement)

    def _watch(self) -> None:
        while not self._stopping:
            with self._lock:
                running = list(self._running)
            try:
                self._look(running)
            except Exception:  # the watch must outlive any one session's trouble
                log.exception("SQL endpoint: the statement watch failed once")
            now = time.monotonic()
            deadlines = [s.deadline for s in running if s.deadline is not None]
            pause = min([TICK, *(d - now for d in deadlines if d > now)])
            self._wake.wait(max(pause, 0.001))
            self._wake.clear()

    @staticmethod
    def _look(running: list[Watched]) -> None:
        now = time.monotonic()
        poll = select.poll()
        by_fd: dict[int, Watched] = {}
        for statement in running:
            deadline = statement.deadline
            if statement.interrupted is not None:  # DuckDB may have started after it
                statement.interrupt(statement.interrupted)
            elif deadline is not None and now >= deadline:
                statement.interrupt("timeout")
            elif statement.client_fd is not None:
                by_fd[statement.client_fd] = statement
                poll.register(statement.client_fd, select.POLLRDHUP)
        if not by_fd:
            return
        for fd, events in poll.poll(0):
            if events & _HUNG_UP:
                by_fd[fd].interrupt("disconnect")
