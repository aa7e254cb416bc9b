"""pgml.dump_all and pgml.load_all through psql: the registry and its files exported to a
directory of the sidecar's own, loaded into another sidecar, which then predicts as the first
did; names that reach outside the export directory and changed files are refused."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from tests.predictor.endpoint_client import psql
from tests.source_roles import MakeRole, as_role, make_role, run
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker

__all__ = ["make_role"]  # the fixture, used by name
TRAINING = """
SELECT * FROM pgml.load_dataset('diabetes');
SELECT * FROM pgml.load_dataset('linnerud');
SELECT * FROM pgml.train('Diabetes', 'regression', 'pgml.diabetes', 'target');
SELECT * FROM pgml.train('Diabetes', algorithm => 'ridge');
SELECT * FROM pgml.deploy('Diabetes', 'most_recent');
SELECT * FROM pgml.train_joint('Exercise', 'regression', 'pgml.linnerud',
                               ARRAY['weight', 'waist', 'pulse']);
"""
PREDICTIONS = """
SELECT pgml.predict('Diabetes', ARRAY[0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002,
                                      0.02, -0.02]);
SELECT pgml.predict_joint('Exercise', ARRAY[5, 162, 60]);
SELECT name, algorithm FROM pgml.deployed_models ORDER BY name;
SELECT count(*) FROM pgml.models;
"""


@pytest.fixture
def other_endpoint(tmp_path: Path, fit_worker: FitWorker) -> Iterator[SqlEndpoint]:
    """A second sidecar with a mirror of its own, empty."""
    (tmp_path / "other").mkdir()
    mirror = Mirror(tmp_path / "other" / "mirror.duckdb")
    trainer = Trainer(mirror.con, artifact_home(mirror.path), worker=fit_worker)
    served = SqlEndpoint(EndpointSettings(port=0), mirror.con, trainer)
    served.start()
    try:
        yield served
    finally:
        served.stop()
        trainer.close()
        mirror.close()


def test_dump_all_and_load_all(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer, other_endpoint: SqlEndpoint
) -> None:
    psql(pg_bin, endpoint, TRAINING)
    before = psql(pg_bin, endpoint, PREDICTIONS).stdout
    done = psql(pg_bin, endpoint, "SELECT * FROM pgml.dump_all('backups/monday');")
    assert done.stdout.splitlines() == [
        "pgml.projects|2",
        "pgml.snapshots|2",
        "pgml.models|3",
        "pgml.deployments|3",
        "files|5",
    ]
    export = trainer.home / "exports" / "backups" / "monday"
    assert f"NOTICE:  exported the registry and 5 files to {export}" in done.stderr
    with open(export / "models.csv", newline="") as f:
        models = list(csv.DictReader(f))
    assert [m["algorithm"] for m in models] == ["linear", "ridge", "linear"]
    assert all((export / m["path"]).is_file() for m in models)
    with open(export / "snapshots.csv", newline="") as f:
        assert [s["y_column_name"] for s in csv.DictReader(f)] == [
            '{"target"}',
            '{"weight","waist","pulse"}',
        ]

    # the same sidecar already has these projects: nothing is loaded
    done = psql(pg_bin, endpoint, "SELECT * FROM pgml.load_all('backups/monday');", check=False)
    assert "projects 'Diabetes', 'Exercise' exist already" in done.stderr

    other = other_endpoint.trainer
    shutil.copytree(export, other.home / "exports" / "monday")
    tampered = other.home / "exports" / "tampered"
    shutil.copytree(export, tampered)
    with open(tampered / models[1]["path"], "ab") as f:
        f.write(b"\0")
    done = psql(pg_bin, other_endpoint, "SELECT * FROM pgml.load_all('tampered');", check=False)
    assert "does not match the SHA-256 its row of models.csv names" in done.stderr
    assert other.registry.projects() == []
    assert not any((other.home / "models").glob("*"))  # the copies made are gone again

    done = psql(pg_bin, other_endpoint, "SELECT * FROM pgml.load_all('monday');")
    assert done.stdout.splitlines()[-1] == "files|5"
    after = psql(pg_bin, other_endpoint, PREDICTIONS).stdout
    assert after == before
    lines = after.splitlines()
    assert lines[2:4] == ["Diabetes|ridge", "Exercise|linear"]
    assert len(np.array(lines[1].strip("{}").split(","), dtype=float)) == 3
    # deploying and rolling back walk the loaded deployments as they were
    done = psql(pg_bin, other_endpoint, "SELECT * FROM pgml.deploy('Diabetes', 'rollback');")
    assert done.stdout.strip() == "Diabetes|rollback|linear"


@pytest.mark.parametrize(
    "name",
    ["/tmp/x", "../x", "a/../../b", "", ".", "a/./b", "..", "~root", "a\\..\\b", "c:/x", ".hidden"],
)
def test_export_names_stay_inside_the_export_directory(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer, name: str
) -> None:
    for function in ("dump_all", "load_all"):
        quoted = name.replace("'", "''")
        done = psql(pg_bin, endpoint, f"SELECT * FROM pgml.{function}('{quoted}');", check=False)
        assert done.returncode != 0
        assert "is not a plain relative name" in done.stderr, (function, name, done.stderr)
    assert not (trainer.home / "exports").exists()


def test_dump_all_refuses_a_used_directory_and_a_changed_file(
    pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer
) -> None:
    psql(pg_bin, endpoint, TRAINING)
    psql(pg_bin, endpoint, "SELECT * FROM pgml.dump_all('first');")
    done = psql(pg_bin, endpoint, "SELECT * FROM pgml.dump_all('first');", check=False)
    assert "already holds an export" in done.stderr
    record = trainer.registry.model(1)
    assert record is not None
    with open(trainer.home / record.path, "ab") as f:
        f.write(b"\0")
    done = psql(pg_bin, endpoint, "SELECT * FROM pgml.dump_all('second');", check=False)
    assert "does not match the SHA-256 in the registry" in done.stderr
    assert sorted(p.name for p in (trainer.home / "exports").iterdir()) == ["first"]


def test_only_members_of_pgml_admin_export_and_import(
    pg_bin: Path, source_dsn: str, make_role: MakeRole, mirror: Mirror, trainer: Trainer
) -> None:
    sidecar, nobody, admin = (
        make_role("sidecar", "replication"),
        make_role("nobody"),
        make_role("a"),
    )
    run(
        source_dsn,
        "do $$ begin create role pgml_admin; exception when duplicate_object then null; end $$",
        f"grant pgml_admin to {admin}",
    )
    served = SqlEndpoint(
        EndpointSettings(port=0), mirror.con, trainer, source_dsn=as_role(source_dsn, sidecar)
    )
    served.start()
    try:
        for function in ("dump_all", "load_all"):
            statement = f"SELECT * FROM pgml.{function}('nightly');"
            done = psql(pg_bin, served, statement, check=False, user=nobody)
            assert done.returncode != 0
            assert f"permission denied for function pgml.{function}" in done.stderr
            assert "only members of pgml_admin may call it" in done.stderr
        done = psql(pg_bin, served, "SELECT * FROM pgml.dump_all('nightly');", user=admin)
        assert done.stdout.splitlines()[0] == "pgml.projects|0"
    finally:
        served.stop()
