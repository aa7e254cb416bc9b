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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
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
        registered = set(snapshots.glob("*.parquet"))
        slow = one(source, SLOW)
        # Its snapshot is written before the fit starts: then it is fitting.
        wait_for(lambda: len(set(snapshots.glob("*.parquet")) - registered) == 1, timeout=60,
                 what="the slow training's snapshot")  # fmt: skip
        orphan = (set(snapshots.glob("*.parquet")) - registered).pop()
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
        assert registered <= set(snapshots.glob("*.parquet"))
        status, error, _ = finished(source, slow)
        assert status == "failed" and error is not None and error.startswith("interrupted")
        children = descendants(run.pid)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert_all_gone(children, run.pid)


SLOW = (
    "select pgml.train('Slow', 'classification', 'public.accounts', 'churned',"
    " 'random_forest', '{\"n_estimators\": 5000, \"n_jobs\": 2}')"
)


def fitting(process: subprocess.Popen[bytes]) -> bool:
    """Whether a fit worker below ``process`` is busy (it has used a second of CPU)."""
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in descendants(process.pid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if (
            int(fields[11]) / ticks > 1.0
            and b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
            and int(fields[1]) != process.pid
        ):
            return True
    return False


def test_sigterm_of_run_while_training(source: str, mirror_path: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "run.log"
    with command(*run_args(source, mirror_path, port), log=log) as run:
        wait_for(lambda: listening(port), timeout=120, what="the SQL endpoint")
        slow = one(source, SLOW)
        wait_for(lambda: fitting(run), timeout=60, what="the fit to be under way")
        children = descendants(run.pid)
        started = time.monotonic()
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 15  # the fit is abandoned, not waited for
        assert_all_gone(children, run.pid)
    status, error, _ = request_status(source, slow)
    assert status in ("failed", "running"), status  # running: failed as interrupted at start
    assert status == "running" or (error is not None and "stopped" in error), error


def test_a_killed_fork_server_is_started_again(
    source: str, mirror_path: Path, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "run.log"
    train = "select pgml.train('Again', 'classification', 'public.accounts', 'churned')"
    with command(*run_args(source, mirror_path, port), log=log) as run:
        wait_for(lambda: listening(port), timeout=120, what="the SQL endpoint")
        assert finished(source, one(source, train))[0] == "done"
        servers = {
            pid for pid in descendants(run.pid)
            if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
            and processes()[pid][0] == run.pid
        }  # fmt: skip
        assert len(servers) == 1
        old = descendants(next(iter(servers))) | servers
        os.kill(next(iter(servers)), signal.SIGKILL)
        assert_all_gone(old, -1)  # the worker and the learner die with it
        # The next training may hear that its worker died; the one after works.
        finished(source, one(source, train))
        assert finished(source, one(source, train))[0] == "done", log.read_text()[-3000:]
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


def test_sigterm_of_serve_while_training(mirror_path: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    errors: list[BaseException] = []

    def train() -> None:
        dsn = f"host=127.0.0.1 port={port} user=pgml dbname=pgml"
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("select * from pgml.load_dataset('iris')")
                conn.execute(
                    "select * from pgml.train('Slow', 'classification', 'pgml.iris', 'target',"
                    " 'random_forest', '{\"n_estimators\": 50000}')"
                )
        except psycopg.Error as exc:
            errors.append(exc)

    with command(*serve_args(mirror_path, port), log=log) as serve:
        wait_for(lambda: b"serving" in log.read_bytes(), timeout=120, what="the endpoint")
        client = threading.Thread(target=train, daemon=True)
        client.start()
        wait_for(lambda: fitting(serve), timeout=60, what="the fit to be under way")
        children = descendants(serve.pid)
        started = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 15  # the fit is abandoned, not waited for
        assert_all_gone(children, serve.pid)
        client.join(30)
    assert errors  # the client heard that its training did not finish
