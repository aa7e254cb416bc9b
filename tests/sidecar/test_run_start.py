"""``run`` at start: what retrying cannot fix ends it with the line ``replicate`` prints; a
source that stops and starts again is retried until it answers, and nothing is lost.

Each cause is real: a wrong password on a cluster that asks for SCRAM, ``wal_level = replica``
on that cluster after a restart, a role without REPLICATION, a missing table, a table the role
may not publish; the transient one is the same cluster stopped, then started again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar.local_postgres import LocalPostgres, free_port
from tests.fix_pg import make_workdir
from tests.replicator.mirror_check import assert_same_rows, execute, streaming, wait_for
from tests.source_roles import MakeRole, as_role, make_role

__all__ = ["make_role"]  # the fixture, used by name

ROLE = "sidecar_pw"
PASSWORD = "Sc-ram-Pa55!"
HBA = f"""\
local   all           all                     trust
host    all           {ROLE}   127.0.0.1/32   scram-sha-256
host    replication   {ROLE}   127.0.0.1/32   scram-sha-256
host    all           all      127.0.0.1/32   trust
host    replication   all      127.0.0.1/32   trust
"""
STARTS_WITHIN = 120.0
"""Seconds ``run`` may take to start or to give up (it imports the trainer and the endpoint)."""


@pytest.fixture(scope="module")
def spare() -> Iterator[LocalPostgres]:
    """A cluster of this module's own, asking ``sidecar_pw`` for its password (SCRAM): one
    the tests may stop, start and restart with other settings."""
    workdir = make_workdir("pgml-sidecar-spare-")
    server = LocalPostgres(workdir, port=free_port())
    try:
        server.start()
        execute(
            server.dsn(),
            "set password_encryption = 'scram-sha-256'",
            f"create role {ROLE} login replication password '{PASSWORD}'",
            f"create database shop owner {ROLE}",
        )
        (server.data_dir / "pg_hba.conf").write_text(HBA)  # the file keeps its owner
        execute(server.dsn(), "select pg_reload_conf()")
        execute(server.dsn("shop"), "create table t (id int primary key, v text)",
                f"alter table t owner to {ROLE}")  # fmt: skip
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def shop(server: LocalPostgres) -> str:
    return server.dsn("shop", user=ROLE)


def cli(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """``pgml-sidecar <args>`` to its end, with PGPASSWORD set to ``password``."""
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True, text=True, timeout=STARTS_WITHIN, env=env, check=False,
    )  # fmt: skip


def run_args(dsn: str, mirror: Path, tables: str, metrics_port: int = 0) -> list[str]:
    return ["run", "--source", dsn, "--mirror", str(mirror), "--tables", tables,
            "--port", "0", "--metrics-port", str(metrics_port)]  # fmt: skip


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line a failed command printed; no traceback, nothing after it."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def run_ends_as_replicate_does(
    dsn: str, tmp_path: Path, tables: str, *words: str, password: str | None = None
) -> str:
    """Run ``replicate`` and ``run`` on the same source: both end non-zero with the same line,
    holding ``words``; return it."""
    replicate = cli("replicate", "--source", dsn, "--mirror", str(tmp_path / "r.duckdb"),
                    "--tables", tables, "--catch-up", password=password)  # fmt: skip
    expected = error_line(replicate)
    run = cli(*run_args(dsn, tmp_path / "m.duckdb", tables), password=password)
    assert error_line(run) == expected
    assert run.returncode == replicate.returncode == 1
    for word in words:
        assert word in expected, expected
    return expected


def test_a_wrong_password_ends_run(spare: LocalPostgres, tmp_path: Path) -> None:
    line = run_ends_as_replicate_does(shop(spare), tmp_path, "public.t",
                                      "password authentication failed", "PGPASSWORD",
                                      password="not-" + PASSWORD)  # fmt: skip
    assert PASSWORD not in line
    assert not (tmp_path / "m.duckdb").exists()  # given up before the mirror was made
    missing = cli(*run_args(shop(spare), tmp_path / "m.duckdb", "public.t"))
    assert "no password supplied" in error_line(missing)


def test_wal_level_replica_ends_run(spare: LocalPostgres, tmp_path: Path) -> None:
    execute(spare.dsn(), "alter system set wal_level = replica")
    spare.stop()
    spare.start()
    try:
        run_ends_as_replicate_does(shop(spare), tmp_path, "public.t", "wal_level = replica",
                                   "wal_level = logical", password=PASSWORD)  # fmt: skip
    finally:
        execute(spare.dsn(), "alter system reset wal_level")
        spare.stop()
        spare.start()
    assert not (tmp_path / "m.duckdb").exists()


def test_a_role_without_replication_ends_run(
    source_dsn: str, make_role: MakeRole, tmp_path: Path
) -> None:
    app = make_role("app")
    dbname = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]
    execute(
        source_dsn,
        f'grant create on database "{dbname}" to {app}',
        "create table owned (id int primary key)",
        f"alter table owned owner to {app}",
    )
    run_ends_as_replicate_does(as_role(source_dsn, app), tmp_path, "public.owned", "REPLICATION")


def test_a_missing_table_ends_run(source_dsn: str, tmp_path: Path) -> None:
    run_ends_as_replicate_does(source_dsn, tmp_path, "public.nope", "public.nope", "--tables")
    assert not (tmp_path / "m.duckdb").exists()


def test_a_table_the_role_may_not_publish_ends_run(
    source_dsn: str, make_role: MakeRole, tmp_path: Path
) -> None:
    """Found only when the replicator sets up the publication: the daemon then stops."""
    app = make_role("app", "replication")
    dbname = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]
    execute(
        source_dsn,
        f'grant create on database "{dbname}" to {app}',
        "create table theirs (id int primary key)",
        f"grant select on theirs to {app}",
    )
    line = run_ends_as_replicate_does(
        as_role(source_dsn, app), tmp_path, "public.theirs", "must be owner", "init --print-sql"
    )
    assert "restarting" not in line


def health(port: int) -> dict[str, Any]:
    """/healthz, whatever its status code; {} while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            return dict(json.loads(exc.read()))
    except OSError:
        return {}


def replicator_up(port: int) -> float | None:
    """``pgml_sidecar_replicator_up`` as /metrics shows it now (None: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("pgml_sidecar_replicator_up "):
            return float(line.split()[1])
    return None


def test_a_source_down_at_start_and_later_is_retried_and_caught_up(
    spare: LocalPostgres, tmp_path: Path
) -> None:
    dsn, port = shop(spare), free_port()
    execute(spare.dsn("shop"), "truncate t", "insert into t select g, 'before' from"
            " generate_series(1, 100) g")  # fmt: skip
    spare.stop()
    log = tmp_path / "run.log"
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli",
             *run_args(dsn, tmp_path / "m.duckdb", "public.t", port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, text=True,
        )  # fmt: skip
    try:
        wait_for(lambda: health(port).get("status") == "degraded", timeout=STARTS_WITHIN,
                 what="run to serve /healthz while the source is down")  # fmt: skip
        wait_for(lambda: health(port)["parts"]["replicator"]["restarts"] >= 1,
                 what="the replicator to retry")  # fmt: skip
        assert process.poll() is None, log.read_text()
        assert "starting anyway, and retrying with backoff" in log.read_text()

        spare.start()
        wait_for(lambda: streaming(spare.dsn("shop")), timeout=60, what="streaming after start")
        wait_for(lambda: health(port).get("status") == "ok", timeout=60, what="/healthz ok")

        wait_for(lambda: replicator_up(port) == 1.0, timeout=30, what="replicator_up")
        spare.stop()  # while it streams
        wait_for(lambda: health(port).get("status") == "degraded", timeout=60,
                 what="the lost source to show")  # fmt: skip
        wait_for(lambda: replicator_up(port) == 0.0, timeout=60,
                 what="replicator_up to say the source is lost (the alert's series)")  # fmt: skip
        spare.start()
        execute(spare.dsn("shop"), "insert into t select g, 'after' from"
                " generate_series(101, 150) g")  # fmt: skip
        wait_for(lambda: health(port).get("rows_applied", 0) >= 50, timeout=90,
                 what="the rows written after the restart")  # fmt: skip
        wait_for(lambda: health(port).get("status") == "ok", timeout=60, what="/healthz ok")
        wait_for(lambda: replicator_up(port) == 1.0, timeout=30, what="replicator_up again")
        assert process.poll() is None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    text = log.read_text()
    assert process.returncode == 0, text
    assert "Traceback" not in text
    assert PASSWORD not in text
    assert assert_same_rows(spare.dsn("shop"), tmp_path / "m.duckdb", "public.t", "id") == 150
    execute(spare.dsn("shop"), "select pg_drop_replication_slot('pgml_sidecar')")  # wal_level
