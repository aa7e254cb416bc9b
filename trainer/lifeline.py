"""Processes the sidecar starts die with it, even after ``kill -9``: Linux's parent-death signal.

The sidecar's children come from multiprocessing's fork server: the sidecar starts the fork
server, and the fork server forks the fit worker and the online learner. Each of them arms
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` as it starts, so the kernel kills it the moment its parent
is gone, however the parent ended: the fork server dies with the sidecar, the worker and the
learner with the fork server. A fit busy in C code holding the GIL dies at once too; a pipe the
child watched would need a thread of its own to get the GIL first. The resource tracker needs
nothing: it exits when the last process holding its pipe is gone, which is then.

Two details make it exact. The signal fires when the parent *thread* that started the child
ends, so the fork server is started from a thread that lasts as long as the process
(:func:`trainer.worker.start_forkserver`). And a parent may die before its child armed the
signal: the child then checks that its parent is still the one expected, and exits if not.
The sidecar's pid reaches the fork server in ``PGML_SIDECAR_PARENT_PID``; what the fork server
forks knows the fork server's pid from the fork.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_PID_ENV = "PGML_SIDECAR_PARENT_PID"
_PR_SET_PDEATHSIG = 1

forkserver_pid: int | None = None
"""The fork server's pid, set in the fork server as it starts; its children inherit it."""


def die_with(parent: int) -> None:
    """Be killed (SIGKILL) when ``parent`` ends; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)  # the parent ended before the signal was armed: it will never come


def arm_forkserver() -> None:
    """In the fork server as it starts: die with the sidecar that started it."""
    global forkserver_pid
    forkserver_pid = os.getpid()
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        die_with(int(parent))


def arm_forked() -> None:
    """In a process the fork server forked (the fit worker, the learner): die with it."""
    if forkserver_pid is not None and forkserver_pid != os.getpid():
        die_with(forkserver_pid)


def mark_parent() -> None:
    """Name this process as the parent a fork server it starts must die with (the environment
    is written only when it names another process: rarely, as other threads may read it)."""
    if os.environ.get(PARENT_PID_ENV) != str(os.getpid()):
        os.environ[PARENT_PID_ENV] = str(os.getpid())
