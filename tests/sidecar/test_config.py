"""Settings: flags over environment over the TOML file; secrets kept out of flags and files."""

from __future__ import annotations

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
