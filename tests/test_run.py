"""./run: its help, and what it shows while it installs the Python dependencies.

The install is run in a throwaway copy of ./run beside a tiny project of the same shape (a
pyproject.toml whose ``pgml-sidecar`` script stands in for the demo), so the whole path, a
fresh .venv, pip's own output and the demo started after it, runs in seconds, offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_PROJECT = """\
[project]
name = "tiny-sidecar"
version = "1.0"
dependencies = []

[project.optional-dependencies]
dev = []

[project.scripts]
pgml-sidecar = "tiny_sidecar:main"

[tool.setuptools]
py-modules = ["tiny_sidecar"]
"""

TINY_MODULE = """\
import sys


def main():
    print("tiny demo ran with", sys.argv[1:])
"""


def run(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",  # nothing to download: the test stays offline
        # install with the setuptools the new .venv has, which cannot build wheels (setup.py
        # develop, as pip's --no-use-pep517 does)
        "PIP_USE_PEP517": "0",
    }
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        [str(where / "run"), *args],
        cwd=where, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_help_says_what_each_command_installs_and_does() -> None:
    shown = run(ROOT, "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: ./run test")
    for needle in ("./run demo", "apt-get", "pip", "pyproject.toml"):
        assert needle in shown.stdout, needle
    wrong = run(ROOT, "tset")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("usage:") and not wrong.stdout


@pytest.fixture
def tiny_checkout(tmp_path: Path) -> Path:
    shutil.copy2(ROOT / "run", tmp_path / "run")
    (tmp_path / "pyproject.toml").write_text(TINY_PROJECT)
    (tmp_path / "tiny_sidecar.py").write_text(TINY_MODULE)
    (tmp_path / "setup.py").write_text("from setuptools import setup\n\nsetup()\n")
    return tmp_path


def lines_in_order(text: str, *needles: str) -> None:
    at = 0
    for needle in needles:
        found = text.find(needle, at)
        assert found >= 0, f"{needle!r} not shown (after position {at}) in:\n{text}"
        at = found + len(needle)


def test_demo_shows_what_it_installs_then_runs(tiny_checkout: Path) -> None:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")) and not os.environ.get(
        "PGML_SIDECAR_PG_BIN"
    ):
        pytest.fail("PostgreSQL's server binaries are missing: ./run test installs them")
    first = run(tiny_checkout, "demo", "--rows", "5")
    assert first.returncode == 0, first.stdout + first.stderr
    lines_in_order(
        first.stdout,
        "==> creating .venv with Python 3.",
        "==> installing Python dependencies into .venv: pip install -e '.[dev]'",
        "    runtime: nothing",
        "    dev:     nothing",
        "the first time",
        "Successfully installed tiny-sidecar-1.0",  # pip's own output, no longer silenced
        "==> Python dependencies installed in ",
        "==> running the demo",
        "tiny demo ran with ['demo', '--rows', '5']",
    )

    again = run(tiny_checkout, "demo")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "installing" not in again.stdout and "creating" not in again.stdout
    assert "tiny demo ran with ['demo']" in again.stdout

    pyproject = tiny_checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("dev = []", 'dev = ["tiny-sidecar"]'))
    changed = run(tiny_checkout, "demo")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    lines_in_order(
        changed.stdout,
        "==> installing Python dependencies",
        "    dev:     tiny-sidecar",
        "==> Python dependencies installed in ",
        "tiny demo ran",
    )
    assert "the first time" not in changed.stdout
