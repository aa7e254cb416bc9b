"""Settings: flags over environment over the TOML file; secrets kept out of flags and files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirror.errors import ConfigError
from sidecar import config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return str(path)


def test_flags_then_environment_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = write(
        tmp_path,
        'source = "host=db dbname=shop"\nmirror = "/m.duckdb"\nport = 7000\n'
        'tables = ["public.a", "public.b"]\nmetrics_port = 9000\n',
    )
    monkeypatch.setenv("PGML_SIDECAR_PORT", "7100")
    monkeypatch.delenv("PGML_SIDECAR_SOURCE", raising=False)
    settings = config.load({"metrics_port": 9999}, path)
    assert settings["source"] == "host=db dbname=shop"
    assert settings["tables"] == "public.a,public.b"
    assert settings["port"] == 7100  # the environment beats the file
    assert settings["metrics_port"] == 9999  # a flag beats both
    assert settings["slot"] == "pgml_sidecar"  # the default


def test_secrets_stay_out_of_flags_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PGML_SIDECAR_SOURCE", raising=False)
    with pytest.raises(ConfigError, match="does not belong in the config file"):
        config.load({}, write(tmp_path, 'password = "hunter2"\n'))
    with pytest.raises(ConfigError, match="holds a password"):
        config.load({"source": "host=db password=hunter2"}, None)
    monkeypatch.setenv("PGML_SIDECAR_SOURCE", "host=db password=hunter2")
    assert config.load({}, None)["source"] == "host=db password=hunter2"
    assert config.masked("host=db password='a b' user=x") == "host=db password=******** user=x"


def test_bad_files_and_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        config.load({}, write(tmp_path, "prot = 1\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load({}, write(tmp_path, "port = \n"))
    with pytest.raises(ConfigError, match="must be a whole number, not 'many'; give"):
        config.load({}, write(tmp_path, 'port = "many"\n'))
    with pytest.raises(ConfigError, match="cannot read the config file"):
        config.load({}, str(tmp_path / "missing.toml"))


def run_check(config_file: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "run", "--config", config_file, "--check"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_run_check_reads_everything_and_connects_to_nothing(tmp_path: Path) -> None:
    """The source is a port nothing listens on: --check never tries it."""
    password_file = tmp_path / "endpoint-password"
    password_file.write_text("file-Secret-1\n")
    path = write(
        tmp_path,
        f'mirror = "{tmp_path / "m.duckdb"}"\ntables = ["public.a"]\n'
        f'password_file = "{password_file}"\nhost = "0.0.0.0"\n',
    )
    env = {"PGML_SIDECAR_SOURCE": "host=127.0.0.1 port=1 user=x password=dsn-Secret-2"}
    checked = run_check(path, env)
    assert checked.returncode == 0, checked.stderr
    assert 'source = "host=127.0.0.1 port=1 user=x password=********"' in checked.stdout
    assert 'tables = "public.a"' in checked.stdout and "the settings are valid" in checked.stdout
    for secret in ("file-Secret-1", "dsn-Secret-2"):
        assert secret not in checked.stdout + checked.stderr
    assert not (tmp_path / "m.duckdb").exists()

    refused = run_check(path, {**env, "PGML_SIDECAR_TRAINING_TIME_LIMIT": "a fortnight"})
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.startswith("error: ") and "training_time_limit" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
