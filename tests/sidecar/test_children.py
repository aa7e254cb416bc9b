"""No process of ``run`` or ``serve`` outlives it: ``kill -9``, or SIGTERM at any moment of its
start; a snapshot left by a killed training is removed at the next start.

Each command runs as a real subprocess in a session of its own, against a real source. Its
descendants are read from /proc before the signal; afterwards, neither they nor any other
process of its session may remain (a zombie has ended: it only waits to be reaped).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sidecar.local_postgres import free_port
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, finished, one, request_status
from trainer.train import artifact_home

ROWS = 3000
GONE_WITHIN = 5.0
"""Seconds every process of a killed command has to end."""


def processes() -> dict[int, tuple[int, int, str]]:
    """Every process: pid -> (parent pid, session id, state), from /proc/*/stat."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        found[int(entry)] = (int(fields[1]), int(fields[3]), fields[0])
    return found


def descendants(pid: int) -> set[int]:
    """The processes below ``pid``, following parent links."""
    table = processes()
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def living(pids: set[int], session: int) -> set[int]:
    """Those of ``pids``, and any process of ``session``, that still run (not zombies)."""
    return {
        pid
        for pid, (_, sid, state) in processes().items()
        if (pid in pids or sid == session) and state != "Z"
    }


def assert_all_gone(pids: set[int], session: int) -> None:
    deadline = time.monotonic() + GONE_WITHIN
    while left := living(pids, session):
        if time.monotonic() > deadline:
            shown = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left}
            for pid in left:  # do not leave them to the next test
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"still running {GONE_WITHIN} s after the parent: {shown}")
        time.sleep(0.05)


@contextmanager
def command(*args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``pgml-sidecar <args>`` in a session of its own; killed at the end whatever happened."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", *args],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for pid in living(set(), process.pid):
            os.kill(pid, signal.SIGKILL)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def source(source_dsn: str) -> str:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS))
    init = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "init", "--source", source_dsn,
         "--tables", "public.accounts"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    return source_dsn


def run_args(dsn: str, mirror: Path, port: int) -> list[str]:
    return ["run", "--source", dsn, "--mirror", str(mirror), "--tables", "public.accounts",
            "--port", str(port), "--metrics-port", "0"]  # fmt: skip


def test_kill_9_of_run_while_training(source: str, mirror_path: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "run.log"
    snapshots = artifact_home(mirror_path) / "snapshots"
    with command(*run_args(source, mirror_path, port), log=log) as run:
        wait_for(lambda: listening(port), timeout=120, what="the SQL endpoint")
        online = "'Online', 'classification', 'public.accounts', 'churned', 'online_logistic'"
        assert finished(source, one(source, f"select pgml.train({online})"))[0] == "done"
        registered = set(snapshots.iterdir())
        slow = one(
            source,
            "select pgml.train('Slow', 'classification', 'public.accounts', 'churned',"
            " 'random_forest', '{\"n_estimators\": 5000, \"n_jobs\": 2}')",
        )
        # Its snapshot is written before the fit starts: then it is fitting.
        wait_for(lambda: len(set(snapshots.iterdir()) - registered) == 1, timeout=60,
                 what="the slow training's snapshot")  # fmt: skip
        orphan = (set(snapshots.iterdir()) - registered).pop()
        assert request_status(source, slow)[0] == "running"
        # The fork server, the resource tracker, the fit worker and the online learner.
        wait_for(lambda: len(descendants(run.pid)) >= 4, timeout=30, what="the children")
        children = descendants(run.pid)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        assert_all_gone(children, run.pid)
    assert orphan.exists()

    with command(*run_args(source, mirror_path, port), log=log) as run:
        wait_for(lambda: listening(port), timeout=120, what="the SQL endpoint again")
        assert not orphan.exists()  # removed at the start: no registry row names it
        assert registered <= set(snapshots.iterdir())
        status, error, _ = finished(source, slow)
        assert status == "failed" and error is not None and error.startswith("interrupted")
        children = descendants(run.pid)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert_all_gone(children, run.pid)


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5, 1.0, 2.0, 4.0])
def test_sigterm_at_any_moment_of_the_start_of_run(
    source: str, mirror_path: Path, tmp_path: Path, delay: float
) -> None:
    port, log = free_port(), tmp_path / "run.log"
    with command(*run_args(source, mirror_path, port), log=log) as run:
        time.sleep(delay)  # the moment to stop it at: a time, not a condition
        children = descendants(run.pid)
        run.send_signal(signal.SIGTERM)
        code = run.wait(timeout=60)
        assert code in (0, -signal.SIGTERM), log.read_text()[-3000:]
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        assert_all_gone(children, run.pid)


def serve_args(mirror: Path, port: int) -> list[str]:
    return ["serve", "--mirror", str(mirror), "--port", str(port)]


def test_kill_9_of_serve(mirror_path: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    with command(*serve_args(mirror_path, port), log=log) as serve:
        wait_for(lambda: b"serving" in log.read_bytes(), timeout=120, what="the endpoint")
        wait_for(lambda: len(descendants(serve.pid)) >= 3, timeout=30, what="the children")
        children = descendants(serve.pid)
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=30)
        assert_all_gone(children, serve.pid)


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0, 3.0])
def test_sigterm_at_any_moment_of_the_start_of_serve(
    mirror_path: Path, tmp_path: Path, delay: float
) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    with command(*serve_args(mirror_path, port), log=log) as serve:
        time.sleep(delay)  # the moment to stop it at: a time, not a condition
        children = descendants(serve.pid)
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
        assert code in (0, -signal.SIGTERM), log.read_text()[-3000:]
        assert_all_gone(children, serve.pid)
