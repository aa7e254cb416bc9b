"""``pgml.writeback()`` is done only once its table exists and fills, refresh in flight or not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from predictor.writeback import Target
from sidecar.daemon import Daemon
from tests.predictor.test_names import (
    ROWS,
    mirrored_rows,
    scored,
    source,
    start_daemon,
    train,
    write_back,
)  # fmt: skip
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import one, request_status

__all__ = ["source"]  # the fixture


@pytest.fixture
def daemon(source: str, mirror_path: Path) -> Iterator[Daemon]:
    running = start_daemon(source, mirror_path)
    try:
        yield running
    finally:
        running.stop()


class HeldRefresh:
    """Holds the write-back thread inside a refresh, at the target of ``project``, until
    released: the refresh is in flight for as long as the test needs."""

    def __init__(self, daemon: Daemon, project: str) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        writeback = daemon.writeback
        original = writeback._target
        refreshing = writeback._refresh_targets

        def refresh() -> None:
            self.in_refresh = True
            try:
                refreshing()
            finally:
                self.in_refresh = False

        def target(name: str) -> Target:
            if name == project and self.in_refresh and not self.release.is_set():
                self.reached.set()
                self.release.wait(60)
            return original(name)

        self.in_refresh = False
        writeback._refresh_targets = refresh  # type: ignore[method-assign]
        writeback._target = target  # type: ignore[method-assign, assignment]


def test_a_request_during_a_refresh_is_carried_out(daemon: Daemon, source: str) -> None:
    assert train(source, "'Big', 'classification', 'public.accounts', 'churned'")[0] == "done"
    assert train(source, "'Small', 'regression', 'public.accounts', 'spend'")[0] == "done"
    assert write_back(source, "Big")[:2] == ("done", None)
    wait_for(lambda: scored(source, "big") == ROWS, timeout=60, what="Big's backfill")

    held = HeldRefresh(daemon, "Big")
    _, _, model_id = train(source, "'Big', algorithm => 'random_forest'")
    assert model_id is not None
    daemon.trainer.deploy(model_id=model_id)  # a deployment: the write-back refreshes
    assert held.reached.wait(30), "the refresh did not start"

    request = one(source, "select pgml.writeback('Small')")
    wait_for(lambda: request_status(source, request)[0] != "pending", timeout=30,
             what="the request to be claimed")  # fmt: skip
    # Not done while the refresh holds the write-back thread, for there is no table yet.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert state(source, request) == ("running", None)
        time.sleep(0.05)

    held.release.set()
    seen: list[tuple[str, str | None]] = []

    def answered() -> bool:
        seen.append(state(source, request))
        return seen[-1][0] != "running"

    wait_for(answered, timeout=60, what="the request")
    assert seen[-1] == ("done", "pgml_scores.small")  # the table exists once it is done
    # It fills, with no other deployment to wake it up.
    generation = daemon.trainer.generation
    wait_for(lambda: scored(source, "small") == ROWS, timeout=60, what="Small's backfill")
    assert daemon.trainer.generation == generation
    wait_for(lambda: one(source, "select array_agg(distinct model_id) from pgml_scores.big")
             == [model_id], timeout=60, what="Big's rescore with its new model")  # fmt: skip


def state(dsn: str, request: int) -> tuple[str, str | None]:
    """The request's status and its table, read in one snapshot."""
    row = one(
        dsn,
        "select status, to_regclass('pgml_scores.small')::text from pgml.training_requests"
        " where id = %s",
        request,
    )
    return row[0], row[1]


def test_write_back_turned_off_stops_at_once(daemon: Daemon, source: str) -> None:
    assert train(source, "'Off', 'classification', 'public.accounts', 'churned'")[0] == "done"
    assert write_back(source, "Off")[:2] == ("done", None)
    wait_for(lambda: scored(source, "off") == ROWS, timeout=60, what="the backfill")
    request = one(source, "select pgml.writeback('Off', false)")
    wait_for(lambda: request_status(source, request)[0] != "pending", timeout=60,
             what="the request")  # fmt: skip
    wait_for(lambda: request_status(source, request)[0] != "running", timeout=60,
             what="the request")  # fmt: skip
    assert request_status(source, request)[:2] == ("done", None)
    assert ("public", "accounts") not in daemon.writeback.watched
    execute(source, "delete from accounts where id = 11")
    wait_for(lambda: mirrored_rows(daemon) == ROWS - 1, timeout=30, what="the delete mirrored")
    assert scored(source, "off") == ROWS  # write-back is off: the deleted row keeps its score
