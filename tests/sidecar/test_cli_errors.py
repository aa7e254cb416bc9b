"""Every command, given broken input, says so in one line that tells what to do next.

The commands come from the parser itself, so a new one is covered as soon as it exists. Each
gets what it needs to work (a source, a mirror, a project name), with one thing broken: a
connection string libpq cannot read (from a flag, or from the environment with a password in
it), a server nobody answers at, a missing file or directory, a bad flag value, a bad value in
the environment. Each run is a real process; the password in the environment never shows.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mirror.store import Mirror
from sidecar.cli import build_parser
from sidecar.local_postgres import free_port
from tests.replicator.mirror_check import execute

SECRET = "Pa55-in-env-9731"
MALFORMED = "host=127.0.0.1 dbname"
MISSING = "/nonexistent-pgml-sidecar"
ADVICE = re.compile(
    r"[;:,] (?:\w+ )?(pass|set|check|run|use|give|grant|allow|write|create|fix|choose|see|"
    r"stop|type|name|put|raise|leave|install|start|remove|drop|ALTER|GRANT)\b"
)
"""An error line goes on to say what to do: '...; pass --mirror PATH', '...; check dbname='."""
FILE_OPTIONS = ("config", "users_file", "password_file", "kafka_config", "tls_cert")
"""Options naming a file the command reads (--tls-key goes with --tls-cert)."""
BAD_VALUES = {
    "memory_limit": "lots",
    "training_time_limit": "forever",
    "statement_timeout": "soon",
    "authentication_timeout": "never",
    "iterations": "0",
}
"""Values the flag's type lets through, which the command must refuse itself."""
BASELINE: dict[str, dict[str, list[str]]] = {
    "replicate": {"tables": ["t"], "catch_up": []},
    "init": {"tables": ["t"]},
    "run": {"tables": ["t"], "port": ["0"], "metrics_port": ["0"]},
    "serve": {"port": ["0"]},
    "adduser": {"users_file": ["{tmp}/users"]},
    "status": {"metrics_port": ["{closed}"]},  # no daemon: 2 (down), never 3
    "chroma verify": {"metrics_port": ["{closed}"]},
    "chroma rebuild": {"metrics_port": ["{closed}"]},
}
"""What each command needs besides a source, a mirror and its positional arguments to work:
with nothing broken it would succeed, or run until stopped ([]: a flag without a value)."""
RUNS_UNTIL_STOPPED = ("run", "serve")
DROPS_THE_MIRROR = ("uninstall",)
"""A mirror already gone is nothing to drop, not an error."""
WITHIN = 90.0


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every command by its words (``chroma verify``: a command's own subcommands too)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(words: str, parser: argparse.ArgumentParser) -> None:
        action = next(
            (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        if action is None:
            found[words] = parser
            return
        for name, sub in action.choices.items():
            walk(f"{words} {name}".strip(), sub)

    walk("", build_parser())
    return found


@dataclass
class Case:
    command: str
    broken: str
    replace: dict[str, list[str] | None] = field(default_factory=dict)
    """Options set to these values (None: left out)."""
    env: dict[str, str] = field(default_factory=dict)
    waits: bool = False
    """A transient problem: the command keeps running, says so, and stops on SIGTERM."""

    @property
    def id(self) -> str:
        return f"{self.command}: {self.broken}"


def cases() -> Iterator[Case]:
    for command, parser in subcommands().items():
        options = {a.dest: a for a in parser._actions if a.option_strings}
        if "source" in options:
            yield Case(command, "a malformed connection string", {"source": [MALFORMED]})
            yield Case(
                command,
                "a malformed connection string with a password, from the environment",
                {"source": None},
                {"PGML_SIDECAR_SOURCE": f"host=127.0.0.1 password={SECRET} dbname"},
            )
            yield Case(
                command,
                "a server that does not answer",
                {"source": ["host=127.0.0.1 port={closed} dbname=x user=x connect_timeout=3"]},
                waits=command in RUNS_UNTIL_STOPPED,
            )
        if "mirror" in options and command not in DROPS_THE_MIRROR:
            yield Case(command, "a mirror in a missing directory",
                       {"mirror": [f"{MISSING}/mirror.duckdb"]})  # fmt: skip
        for name in FILE_OPTIONS:
            if name in options:
                replace: dict[str, list[str] | None] = {name: [f"{MISSING}/{name}"]}
                if name == "tls_cert":
                    replace["tls_key"] = [f"{MISSING}/tls_key"]
                if name == "kafka_config":  # read with the Debezium source only
                    replace |= {"kafka": ["127.0.0.1:{closed}"], "topic_prefix": ["shop"]}
                yield Case(command, f"a missing {name} file", replace)
        typed = [a for a in options.values() if a.type in (int, float)]
        if typed:
            yield Case(command, f"--{typed[0].dest} that is no number", {typed[0].dest: ["x1"]})
        for name, value in BAD_VALUES.items():
            if name in options:
                yield Case(command, f"a bad {name}", {name: [value]})
        if "config" in options:  # settings from the environment are checked as flags are
            yield Case(command, "a bad number in the environment", {},
                       {"PGML_SIDECAR_CHECKPOINT_ROWS": "many"})  # fmt: skip


CASES = list(cases())


def test_every_command_is_covered() -> None:
    covered = {case.command for case in CASES}
    assert covered == set(subcommands()), set(subcommands()) - covered


@pytest.fixture
def source(source_dsn: str) -> str:
    execute(source_dsn, "create table t (id int primary key)")
    return source_dsn


def argv(case: Case, parser: argparse.ArgumentParser, source: str, tmp: Path) -> list[str]:
    """The command with everything it needs, then the broken part in place of the good."""
    args = case.command.split()
    for action in parser._actions:
        if not action.option_strings and action.required:
            args.append("p")  # a project, a user name
    options = {a.dest: a for a in parser._actions if a.option_strings}
    given: dict[str, list[str] | None] = {"source": [source], "mirror": [str(tmp / "m.duckdb")]}
    given = {k: v for k, v in given.items() if k in options}
    given |= BASELINE.get(case.command, {})
    given |= case.replace
    for dest, values in given.items():
        if values is not None:
            args += [options[dest].option_strings[0], *values]
    closed = str(free_port())
    return [a.replace("{tmp}", str(tmp)).replace("{closed}", closed) for a in args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_input_is_one_line_that_says_what_to_do(
    case: Case, source: str, tmp_path: Path
) -> None:
    parser = subcommands()[case.command]
    Mirror(tmp_path / "m.duckdb").close()  # train and deploy need one to exist
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGML_SIDECAR_", "PG"))}
    env.update(PGPASSWORD=SECRET, **case.env)
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", *argv(case, parser, source, tmp_path)],
        stdin=subprocess.DEVNULL if case.waits else subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    if case.waits:
        stdout, stderr = waits_then_stops(process)
    else:
        try:
            stdout, stderr = process.communicate("a-new-password\n", timeout=WITHIN)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"still running after {WITHIN} s: {stderr}")
        assert process.returncode != 0, stdout + stderr
        if case.command == "status" and "does not answer" not in case.broken:
            assert process.returncode == 3, stderr  # 1 and 2 say degraded and down
        lines = stderr.strip().splitlines()
        assert 1 <= len(lines) <= 3, stderr
        assert lines[-1].startswith("error: "), stderr
        assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], stderr
        assert ADVICE.search(lines[-1]), lines[-1]
    assert "Traceback" not in stderr
    assert SECRET not in stdout + stderr


def waits_then_stops(process: subprocess.Popen[str]) -> tuple[str, str]:
    """A command that runs on: wait until it says, in one warning, that the source does not
    answer and it goes on; then stop it with SIGTERM: it exits 0."""
    assert process.stderr is not None
    seen: list[str] = []
    try:
        for line in process.stderr:
            seen.append(line)
            if "cannot connect to the source database" in line:
                assert " WARNING " in line and re.search(r"anyway|retrying", line), line
                break
        else:
            pytest.fail("ended without saying the source does not answer: " + "".join(seen))
    finally:
        process.send_signal(signal.SIGTERM)
    stdout, rest = process.communicate(timeout=WITHIN)
    assert process.returncode == 0, "".join(seen) + rest
    return stdout, "".join(seen) + rest
