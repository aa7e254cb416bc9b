"""Training time limits end to end: ``SET pgml.training_time_limit`` in the source and on the
SQL endpoint, the sidecar's ``training_time_limit``, and what a killed training leaves (nothing).

The source's trainings go through the control table to a running daemon; the endpoint's through
psycopg sessions. Every training killed here would otherwise fit for minutes.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from predictor.server import SqlEndpoint
from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.predictor.endpoint_client import connect
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, ROWS, finished, one, request_status
from tests.trainer.test_time_limit import alive, leftovers
from trainer.train import Trainer
from trainer.worker import FitWorker

SLOW = (
    "select pgml.train({project}, 'classification', 'public.accounts', 'churned',"
    " 'random_forest', '{{\"n_estimators\": 100000}}')"
)
"""A forest of 100,000 trees on 2,000 rows: minutes of fitting."""
SMALL = "select pgml.train({project}, 'classification', 'public.accounts', 'churned')"
OWN_LIMIT = (
    "canceling training of project {project}: it ran past its time limit of {limit}; raise"
    " pgml.training_time_limit or train on fewer rows / a smaller search"
)
SIDECARS_LIMIT = (
    "canceling training of project {project}: it ran past its time limit of {limit}; raise the"
    " sidecar's training_time_limit (the most a training may ask for) or train on fewer rows /"
    " a smaller search"
)


def request_row(dsn: str, request_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "select *, extract(epoch from finished_at - requested_at)::float8 as took"
            " from pgml.training_requests where id = %s",
            [request_id],
        )
        row = cur.fetchone()
        assert row is not None and cur.description is not None
        return dict(zip([c.name for c in cur.description], row, strict=True))


# -- the source: pgml.train records the session's limit ------------------------------------------


@pytest.fixture
def source(source_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
        yield conn


def test_pgml_train_records_the_sessions_limit(source: psycopg.Connection) -> None:
    def train() -> dict[str, Any]:
        row = source.execute("select pgml.train('p', 'regression', 'pgml.iris', 'y')").fetchone()
        assert row is not None
        return recorded(source, row[0])

    assert train()["time_limit"] is None  # never set: the sidecar's
    source.execute("set pgml.training_time_limit = '10min'")
    assert train()["time_limit"] == "10min"
    source.execute("set pgml.training_time_limit = ' 90 '")
    assert train()["time_limit"] == "90"
    source.execute("reset pgml.training_time_limit")
    assert train()["time_limit"] is None  # '' after RESET: the sidecar's
    with source.transaction():
        source.execute("set local pgml.training_time_limit = '2h'")
        assert train()["time_limit"] == "2h"
    assert train()["time_limit"] is None
    source.execute("set pgml.training_time_limit = '10min'")
    row = source.execute("select pgml.writeback('p')").fetchone()
    assert row is not None and recorded(source, row[0])["time_limit"] is None


def recorded(conn: psycopg.Connection, request_id: int) -> dict[str, Any]:
    """A request as ``conn`` sees it (in its own transaction too)."""
    cur = conn.execute("select * from pgml.training_requests where id = %s", [request_id])
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", 'invalid value for parameter "pgml.training_time_limit": "soon"'),
        ("10 minutes", 'invalid value for parameter "pgml.training_time_limit": "10 minutes"'),
        ("5MIN", 'invalid value for parameter "pgml.training_time_limit": "5MIN"'),
        ("1s; drop table x", 'invalid value for parameter "pgml.training_time_limit"'),
        ("-1", '-1 s is outside the valid range for parameter "pgml.training_time_limit"'),
        ("100000000d", 'is outside the valid range for parameter "pgml.training_time_limit"'),
        ("1e400", 'is outside the valid range for parameter "pgml.training_time_limit"'),
        ("1e999999", 'is outside the valid range for parameter "pgml.training_time_limit"'),
    ],
)
def test_pgml_train_refuses_a_limit_that_is_not_one(
    source: psycopg.Connection, value: str, message: str
) -> None:
    source.execute("select set_config('pgml.training_time_limit', %s, false)", [value])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        source.execute("select pgml.train('p', 'regression', 'pgml.iris', 'y')")
    assert message in str(refused.value.diag.message_primary)
    assert source.execute("select count(*) from pgml.training_requests").fetchone() == (0,)


# -- the source, carried out by a running daemon --------------------------------------------------


@pytest.fixture
def daemon(source_dsn: str, mirror_path: Path) -> Iterator[Daemon]:
    """A daemon that lets a training run 4 s at most."""
    with running_daemon(source_dsn, mirror_path, "4s") as running:
        yield running


@pytest.fixture
def patient_daemon(source_dsn: str, mirror_path: Path) -> Iterator[Daemon]:
    """A daemon that lets a training run 2 minutes."""
    with running_daemon(source_dsn, mirror_path, "2min") as running:
        yield running


@contextlib.contextmanager
def running_daemon(source_dsn: str, mirror_path: Path, limit: str) -> Iterator[Daemon]:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS))
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    running = Daemon(
        DaemonSettings(
            source_dsn=source_dsn,
            mirror_path=mirror_path,
            tables=["public.accounts"],
            port=0,
            metrics_port=0,
            training_time_limit=limit,
        )
    )
    running.start()
    pids: set[int] = set()
    try:
        yield running
    finally:
        pids = running.trainer.worker.pids()
        running.stop()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5, what="the workers to end")


def test_a_training_past_its_limit_from_the_source_fails_and_the_next_one_runs(
    daemon: Daemon, source_dsn: str
) -> None:
    warm = one(source_dsn, SMALL.format(project="'Warm'"))
    assert finished(source_dsn, warm)[0] == "done"
    trainer = daemon.trainer
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("set pgml.training_time_limit = '2s'")
        slow = conn.execute(SLOW.format(project="'Slow'")).fetchone()
        conn.execute("reset pgml.training_time_limit")
        small = conn.execute(SMALL.format(project="'Small'")).fetchone()  # meanwhile
    assert slow is not None and small is not None
    wait_for(lambda: bool(leftovers(trainer)), timeout=60, what="the slow training to fit")
    # Every worker process seen while the slow training runs: the one that fits it may start
    # after its snapshot is written (the other training may have taken the process there was).
    seen: set[int] = set()

    def slow_finished() -> bool:
        seen.update(trainer.worker.pids())
        return request_status(source_dsn, slow[0])[0] in ("done", "failed")

    wait_for(slow_finished, timeout=120, what="the slow training to be stopped")
    status, error, _ = finished(source_dsn, slow[0])
    assert (status, error) == ("failed", OWN_LIMIT.format(project="'Slow'", limit="2s"))
    row = request_row(source_dsn, slow[0])
    assert row["time_limit"] == "2s"
    assert 2.0 <= row["took"] < 20.0, row["took"]  # killed, where it would fit for minutes
    # Another project's training asked for meanwhile: done, in a new process.
    assert finished(source_dsn, small[0])[0] == "done"
    assert request_row(source_dsn, small[0])["took"] < 40.0
    killed = seen - trainer.worker.pids()  # the slow training's process, replaced
    assert killed and not any(alive(pid) for pid in killed)
    assert trainer.registry.project("Slow") is None
    assert leftovers(trainer) == set()  # no snapshot or model file without its registry row

    # The sidecar's 4 s is the most: asking for more, or for none, gets 4 s.
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("set pgml.training_time_limit = '1h'")
        more = conn.execute(SLOW.format(project="'More'")).fetchone()
        conn.execute("set pgml.training_time_limit = 0")
        none = conn.execute(SLOW.format(project="'None'")).fetchone()
    assert more is not None and none is not None
    for request, project in ((more[0], "'More'"), (none[0], "'None'")):
        status, error, _ = finished(source_dsn, request)
        assert (status, error) == ("failed", SIDECARS_LIMIT.format(project=project, limit="4s"))
        assert request_row(source_dsn, request)["took"] < 30.0
    assert leftovers(trainer) == set()
    # A row written by the table's owner, around pgml.train's check: the sidecar checks again.
    odd = one(
        source_dsn,
        "insert into pgml.training_requests (project_name, task, relation_name, y_column_name,"
        " requested_by, time_limit) values ('Odd', 'classification', 'public.accounts',"
        " 'churned', current_user, '2 fortnights') returning id",
    )
    status, error, _ = finished(source_dsn, odd)
    assert (status, error) == (
        "failed",
        'invalid value for parameter "pgml.training_time_limit": "2 fortnights"',
    )
    again = one(source_dsn, SMALL.format(project="'Slow'"))
    assert finished(source_dsn, again)[0] == "done"


def test_two_projects_requests_run_side_by_side_and_one_projects_in_order(
    patient_daemon: Daemon, source_dsn: str
) -> None:
    finished(source_dsn, one(source_dsn, SMALL.format(project="'Warm'")))  # processes up
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("set pgml.training_time_limit = '10s'")
        slow = conn.execute(SLOW.format(project="'Slow'")).fetchone()
    after = one(source_dsn, SMALL.format(project="'Slow'"))  # the same project: waits for it
    beside = one(source_dsn, SMALL.format(project="'Beside'"))  # another: does not
    assert slow is not None
    assert finished(source_dsn, beside)[0] == "done"
    assert finished(source_dsn, slow[0])[0] == "failed"  # past its 10 s
    assert finished(source_dsn, after)[0] == "done"
    ended = {r: request_row(source_dsn, r)["finished_at"] for r in (slow[0], after, beside)}
    assert ended[beside] < ended[slow[0]] < ended[after], ended


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_bad_training_time_limit_stops_the_start_with_one_line(
    command: str, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror.duckdb"
    args = ["--mirror", str(mirror), "--training-time-limit", "soon"]
    if command == "run":
        args += ["--source", "host=127.0.0.1 port=1 dbname=x"]
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", command, *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        'error: invalid value for parameter "training_time_limit": "soon"; give a time such as'
        ' \'30min\', \'2h\' or 0 (none) (valid units for this parameter are "us", "ms", "s",'
        ' "min", "h", and "d")'
    ]
    assert not mirror.exists()


def test_run_and_serve_document_the_limit() -> None:
    for command in ("run", "serve"):
        done = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", command, "--help"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0
        text = " ".join(done.stdout.split())
        assert "--training-time-limit" in text and "PGML_SIDECAR_TRAINING_TIME_LIMIT" in text
        assert "1h" in text


# -- the SQL endpoint -----------------------------------------------------------------------------

GRID = (
    "select * from pgml.train('Grid', 'classification', 'pgml.iris', 'target', 'random_forest',"
    " search => 'grid', search_params => '{\"n_estimators\": [1000, 2000, 4000],"
    ' "max_depth": [null, 3, 6]}\')'
)
"""A grid search that takes minutes on two cores."""


def test_a_grid_search_past_the_sessions_limit_on_the_endpoint(
    endpoint: SqlEndpoint, trainer: Trainer, fit_worker: FitWorker
) -> None:
    errors: list[psycopg.Error] = []
    took: list[float] = []

    def grid_search() -> None:
        with connect(endpoint) as conn:
            conn.execute("set pgml.training_time_limit = '6s'")  # the small one's time, loaded
            started = time.monotonic()
            try:
                conn.execute(GRID)
            except psycopg.Error as exc:
                errors.append(exc)
            took.append(time.monotonic() - started)

    with connect(endpoint) as conn:
        conn.execute("select * from pgml.load_dataset('iris')")
        conn.execute("select * from pgml.train('Warm', 'classification', 'pgml.iris', 'target')")
        long = threading.Thread(target=grid_search, daemon=True)
        long.start()
        wait_for(lambda: bool(leftovers(trainer)), timeout=60, what="the grid search to fit")
        busy = fit_worker.pids()
        # Another project, another session: trained beside the search, not behind it.
        small = conn.execute(
            "select * from pgml.train('Small', 'classification', 'pgml.iris', 'target')"
        ).fetchone()
        assert small == ("Small", "classification", "linear", True)
        assert long.is_alive(), "the small training waited for the search"
        long.join(timeout=60)
        assert not long.is_alive()

        assert len(errors) == 1, errors
        error = errors[0]
        assert error.sqlstate == "57014"
        assert error.diag.message_primary == OWN_LIMIT.format(project="'Grid'", limit="6s")
        assert 6.0 <= took[0] < 14.0, took
        killed = busy - fit_worker.pids()
        assert killed and not any(alive(pid) for pid in killed)
        assert trainer.registry.project("Grid") is None
        assert leftovers(trainer) == set()
        # The next training of it works.
        again = conn.execute(
            "select * from pgml.train('Grid', 'classification', 'pgml.iris', 'target')"
        ).fetchone()
        assert again == ("Grid", "classification", "linear", True)


def test_the_endpoint_checks_and_shows_the_setting(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as conn:
        conn.execute("set pgml.training_time_limit = 600")
        assert conn.execute("show pgml.training_time_limit").fetchone() == ("10min",)
        conn.execute("set pgml.training_time_limit to '90s'")
        assert conn.execute("show pgml.training_time_limit").fetchone() == ("90s",)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match='"soon"') as refused:
            conn.execute("set pgml.training_time_limit = 'soon'")
        assert refused.value.diag.message_hint is not None
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="outside the valid range"):
            conn.execute("set pgml.training_time_limit = '-1s'")
        assert conn.execute("show pgml.training_time_limit").fetchone() == ("90s",)
        conn.execute("set pgml.training_time_limit to default")
        conn.execute("set statement_timeout to default")
        conn.execute("reset pgml.training_time_limit")
        conn.execute("select * from pgml.load_dataset('iris')")
        trained = conn.execute(
            "select * from pgml.train('Reset', 'classification', 'pgml.iris', 'target')"
        ).fetchone()
        assert trained == ("Reset", "classification", "linear", True)
        # The limit is the session's, never an argument of pgml.train.
        with pytest.raises(psycopg.errors.UndefinedFunction, match="time_limit"):
            conn.execute("select * from pgml.train('Reset', time_limit => 0)")
