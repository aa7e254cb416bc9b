"""The functions that touch no table answer a source role that may read nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from tests.predictor.endpoint_client import psql
from tests.source_roles import MakeRole, as_role, make_role
from trainer.train import Trainer

__all__ = ["make_role"]  # the fixture, used by name


@pytest.fixture
def guarded(
    source_dsn: str, make_role: MakeRole, mirror: Mirror, trainer: Trainer
) -> Iterator[tuple[SqlEndpoint, str]]:
    sidecar, nobody = make_role("sidecar", "replication"), make_role("nobody")
    served = SqlEndpoint(
        EndpointSettings(port=0), mirror.con, trainer, source_dsn=as_role(source_dsn, sidecar)
    )
    served.start()
    try:
        yield served, nobody
    finally:
        served.stop()


def test_a_role_without_privileges_may_call_them(
    pg_bin: Path, guarded: tuple[SqlEndpoint, str]
) -> None:
    endpoint, nobody = guarded
    script = """
SELECT pgml.norm_l2(pgml.add(ARRAY[1, 2]::real[], ARRAY[2, 2]::real[]));
SELECT pgml.sum(v) FROM (VALUES (ARRAY[1, 2]::float8[]), (ARRAY[3, 4]::float8[])) AS t(v);
SELECT pgml.sklearn_r2_score(ARRAY[1, 2, 3]::real[], ARRAY[1, 2, 3]::real[]);
SELECT pgml.validate_python_dependencies();
SELECT chunk FROM pgml.chunk('character', 'a b', '{"separator": " ", "chunk_size": 1,
                                                   "chunk_overlap": 0}');
"""
    lines = psql(pg_bin, endpoint, script, user=nobody).stdout.splitlines()
    assert lines == ["5", "{4,6}", "1", "t", "a", "b"]
    reading = "SELECT * FROM pgml.chunk('character', pg_read_file('/etc/passwd'));"
    done = psql(pg_bin, endpoint, reading, check=False, user=nobody)
    assert done.returncode == 3 and "permission denied for function pg_read_file" in done.stderr
