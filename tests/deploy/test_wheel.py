"""pgml-sidecar installed from a wheel, away from the checkout, has everything ``init`` runs.

The SQL ``init`` installs into the source is package data of ``sidecar`` (``sidecar/sql/``):
a wheel is built from the project's files alone, installed into a fresh virtual environment
(its dependencies come from this one: nothing but the build's setuptools is downloaded) and
run from a directory outside the checkout, with no PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import psycopg
import pytest

from sidecar import source_schema
from tests.replicator.mirror_check import execute

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a fresh virtual environment with the project's wheel installed."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # the project's own files only: no build litter in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]:
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = work / "wheels"  # pip builds it in an environment of its own, with setuptools
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(source),
         cwd=work)  # fmt: skip
    (wheel,) = wheels.glob("pgml_sidecar-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"sidecar/sql/install.sql", "sidecar/sql/upgrade/2_to_3.sql"} <= names, names

    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=work)
    python = venv / "bin" / "python"
    site = Path(
        _run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=work)
        .stdout.strip()
    )  # fmt: skip
    # the dependencies (pip among them) from this environment; a path a .pth file adds is
    # not searched for .pth files, so this environment's editable pgml-sidecar stays out
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel), cwd=work)
    return venv / "bin"


def _run(*command: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    return done


def test_the_wheel_runs_from_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = _run(
        str(installed / "python"), "-c", "import sidecar; print(sidecar.__file__)", cwd=tmp_path
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), where  # the wheel's, not the checkout's
    shown = _run(str(installed / "pgml-sidecar"), "init", "--print-sql", "--tables",
                 "public.customers", cwd=tmp_path).stdout  # fmt: skip
    install_sql = (source_schema.SQL_DIR / "install.sql").read_text()
    assert install_sql in shown
    assert 'create publication "pgml_sidecar" for table "public"."customers"' in shown


def test_init_from_the_wheel_installs_into_a_source(
    installed: Path, tmp_path: Path, source_dsn: str
) -> None:
    execute(source_dsn, "create table customers (id int primary key, churned bool)")
    done = _run(str(installed / "pgml-sidecar"), "init", "--source", source_dsn, "--tables",
                "public.customers", cwd=tmp_path, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "installed pgml schema version 3" in done.stdout
    with psycopg.connect(source_dsn) as conn:
        assert source_schema.installed_version(conn) == source_schema.SCHEMA_VERSION
    # and what it installed works: a request from the source's side
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select pgml.train('Churn', 'classification', 'public.customers', 'churned')"
        ).fetchone()
    assert row is not None and isinstance(row[0], int)
