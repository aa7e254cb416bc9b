"""Pytest plugin: a mirror with a trainer on it, one shared training worker, the SQL endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker


@pytest.fixture(scope="session")
def fit_worker() -> Iterator[FitWorker]:
    """One training worker process for the whole session (it starts once)."""
    worker = FitWorker()
    try:
        yield worker
    finally:
        worker.close()


@pytest.fixture
def mirror(mirror_path: Path) -> Iterator[Mirror]:
    opened = Mirror(mirror_path)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def trainer(mirror: Mirror, fit_worker: FitWorker) -> Iterator[Trainer]:
    opened = Trainer(mirror.con, artifact_home(mirror.path), worker=fit_worker)
    try:
        yield opened
    finally:
        opened.close()


@contextmanager
def serving(con: duckdb.DuckDBPyConnection, trainer: Trainer) -> Iterator[SqlEndpoint]:
    """An SQL endpoint over ``con``, on a free loopback port, without a password; stopped
    after."""
    served = SqlEndpoint(EndpointSettings(port=0), con, trainer)
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def endpoint(mirror: Mirror, trainer: Trainer) -> Iterator[SqlEndpoint]:
    """The SQL endpoint on a fresh mirror, on a free loopback port, without a password."""
    with serving(mirror.con, trainer) as served:
        yield served
