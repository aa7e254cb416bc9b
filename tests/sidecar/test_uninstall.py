"""``pgml-sidecar uninstall``: the slot, the publication, the schemas and the local state go.

It says what it will drop and asks (``--yes`` does not), refuses while a replicator still
streams from the slot, tells a role that does not own the publication and the schemas what
their owner must run, and can be run again at any point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sidecar import source_schema
from tests.replicator.mirror_check import execute, slot_active, wait_for
from tests.sidecar.test_daemon import one
from tests.sidecar.test_least_privilege import TABLES, Shop, shop
from tests.source_roles import as_role, make_role, run

__all__ = ["make_role", "shop"]  # the fixtures, used by name

TIMEOUT = 120


def cli(*args: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        input=answer if answer is not None else "", capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )  # fmt: skip


def replicate_once(dsn: str, mirror: Path, tables: str) -> None:
    done = cli("replicate", "--source", dsn, "--mirror", str(mirror), "--tables", tables,
               "--catch-up")  # fmt: skip
    assert done.returncode == 0, done.stderr


def installed(dsn: str) -> dict[str, object]:
    """What pgml-sidecar leaves in the source: slots, publications, schemas."""
    return {
        "slots": one(dsn, "select count(*) from pg_replication_slots"),
        "publications": one(dsn, "select count(*) from pg_publication"),
        "schemas": one(
            dsn, "select count(*) from pg_namespace where nspname in ('pgml', 'pgml_scores')"
        ),
    }


NOTHING = {"slots": 0, "publications": 0, "schemas": 0}
EVERYTHING = {"slots": 1, "publications": 1, "schemas": 2}


@pytest.fixture
def set_up(source_dsn: str, mirror_path: Path) -> Path:
    """init and a first replication, as the database's owner: everything to drop is there."""
    execute(source_dsn, "create table items (id int primary key, v text)",
            "insert into items values (1, 'a')")  # fmt: skip
    done = cli("init", "--source", source_dsn, "--tables", "public.items")
    assert done.returncode == 0, done.stderr
    replicate_once(source_dsn, mirror_path, "public.items")
    (mirror_path.parent / "mirror.pgml").mkdir(exist_ok=True)  # snapshots and models live here
    (mirror_path.parent / "mirror.pgml" / "model.bin").write_bytes(b"x")
    assert installed(source_dsn) == EVERYTHING
    return mirror_path


def test_uninstall_says_what_it_drops_and_asks(source_dsn: str, set_up: Path) -> None:
    mirror = set_up
    args = ("uninstall", "--source", source_dsn, "--mirror", str(mirror))
    declined = cli(*args, answer="n\n")
    assert declined.returncode == 1
    listed = declined.stdout
    assert "pgml-sidecar uninstall will drop:" in listed
    assert "replication slot pgml_sidecar" in listed and "bytes of WAL" in listed
    assert "publication pgml_sidecar" in listed
    assert "schemas pgml and pgml_scores" in listed
    assert str(mirror) in listed and str(mirror.parent / "mirror.pgml") in listed
    assert "nothing dropped" in declined.stderr
    assert installed(source_dsn) == EVERYTHING and mirror.exists()

    no_answer = cli(*args)  # no terminal, no --yes: nothing is dropped
    assert no_answer.returncode == 1 and "--yes" in no_answer.stderr
    assert installed(source_dsn) == EVERYTHING

    holder = subprocess.Popen(  # another process with the mirror open, as serve would have it
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]);"
         " print('open', flush=True); sys.stdin.read()", str(mirror)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        refused = cli(*args, "--yes")
        assert refused.returncode == 1
        assert f"error: the mirror {mirror} is open in another process" in refused.stderr
        assert installed(source_dsn) == EVERYTHING and mirror.exists()
    finally:
        holder.communicate(timeout=60)

    dropped = cli(*args, answer="y\n")
    assert dropped.returncode == 0, dropped.stderr
    assert installed(source_dsn) == NOTHING
    assert not mirror.exists() and not (mirror.parent / "mirror.pgml").exists()
    assert list(mirror.parent.iterdir()) == []
    execute(source_dsn, "update items set v = 'b'", "delete from items")

    again = cli(*args, "--yes")  # idempotent
    assert again.returncode == 0, again.stderr
    assert "nothing to drop" in again.stdout


def test_uninstall_refuses_while_the_slot_is_in_use(source_dsn: str, set_up: Path) -> None:
    mirror = set_up
    streaming = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "replicate", "--source", source_dsn,
         "--mirror", str(mirror)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: slot_active(source_dsn), timeout=60, what="the replicator to stream")
        refused = cli("uninstall", "--source", source_dsn, "--mirror", str(mirror), "--yes")
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("error: replication slot pgml_sidecar is in use by process")
        assert "stop" in line
        assert installed(source_dsn) == EVERYTHING and mirror.exists()
    finally:
        streaming.terminate()
        streaming.wait(timeout=60)
    dropped = cli("uninstall", "--source", source_dsn, "--mirror", str(mirror), "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert installed(source_dsn) == NOTHING


def test_a_least_privileged_sidecar_leaves_the_owner_what_to_run(
    shop: Shop, mirror_path: Path
) -> None:
    shop.set_up_as_owner()
    sidecar_dsn = as_role(shop.dsn, shop.sidecar)
    replicate_once(sidecar_dsn, mirror_path, TABLES)
    run(sidecar_dsn, "create table pgml_scores.spend (id int primary key)")  # a score table

    partly = shop.cli("uninstall", "--mirror", str(mirror_path), "--yes")
    assert partly.returncode == 1
    [line] = partly.stderr.strip().splitlines()
    assert line == (
        f"error: publication pgml_sidecar and schemas pgml and pgml_scores belong to"
        f" {shop.owner}: have it run the SQL above through psql (`pgml-sidecar uninstall"
        " --print-sql` prints it again), then run uninstall again"
    )
    assert f"run this as {shop.owner}," in partly.stdout and "drop publication" in partly.stdout
    assert installed(shop.dsn) == {"slots": 0, "publications": 1, "schemas": 2}
    assert not mirror_path.exists()

    printed = shop.cli("uninstall", "--print-sql")
    assert printed.returncode == 0, printed.stderr
    ran = shop.psql(shop.owner, printed.stdout)
    assert ran.returncode == 0, ran.stderr
    assert installed(shop.dsn) == NOTHING
    shop.application_writes(1)

    done = shop.cli("uninstall", "--mirror", str(mirror_path), "--yes")
    assert done.returncode == 0, done.stderr
    assert "nothing to drop" in done.stdout


def test_status_lists_slots_left_by_earlier_runs(source_dsn: str) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
        conn.execute("select pg_create_logical_replication_slot('pgml_sidecar_old', 'pgoutput')")
        conn.execute("create table filler as select generate_series(1, 20000) as n")
    done = cli("status", "--source", source_dsn, "--metrics-port", "1", "--json")
    [old] = json.loads(done.stdout)["other_slots"]
    assert old["name"] == "pgml_sidecar_old" and old["active"] is False
    assert old["retained_wal_bytes"] > 100_000
    text = cli("status", "--source", source_dsn, "--metrics-port", "1").stdout
    assert "slot:    pgml_sidecar_old (another slot in this database) INACTIVE, retains" in text
    assert "SELECT pg_drop_replication_slot('pgml_sidecar_old')" in text


def test_the_owner_drops_its_part_and_leaves_the_slot_to_the_sidecar(
    shop: Shop, mirror_path: Path
) -> None:
    shop.set_up_as_owner()
    replicate_once(as_role(shop.dsn, shop.sidecar), mirror_path, TABLES)

    owners = shop.cli("uninstall", "--yes", role=shop.owner)
    assert owners.returncode == 1
    [line] = owners.stderr.strip().splitlines()
    assert line == (
        "error: replication slot pgml_sidecar is dropped only by a role with REPLICATION: run"
        " uninstall as the sidecar's role, then run uninstall again"
    )
    assert installed(shop.dsn) == {"slots": 1, "publications": 0, "schemas": 0}
    shop.application_writes(2)

    sidecars = shop.cli("uninstall", "--mirror", str(mirror_path), "--yes")
    assert sidecars.returncode == 0, sidecars.stderr
    assert installed(shop.dsn) == NOTHING and not mirror_path.exists()
