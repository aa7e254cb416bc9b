"""Fixtures for training tests: a mirror with a trainer on it, and one shared worker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.mirror import Mirror
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker


@pytest.fixture(scope="session")
def fit_worker() -> Iterator[FitWorker]:
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
