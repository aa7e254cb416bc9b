"""The README's "Running it for real", run as written, and its headline SQL, on 50,000 customers.

The commands and the SQL are read from README.md, so the documentation and this test cannot
drift apart. Only what cannot be the same here is replaced: the README's example DSN by the
throwaway source's, its mirror path by one in the test's directory, and the ports, through the
environment variables the README documents, by free ones (several suites share this machine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from sidecar.local_postgres import free_port
from tests.customers import ROWS, create_customers
from tests.replicator.mirror_check import wait_for
from tests.sidecar.test_daemon import one

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_DSN = "host=db dbname=shop user=sidecar"
EXAMPLE_MIRROR = "/var/lib/pgml-sidecar/mirror.duckdb"


def code_block(text: str, *, after: str, language: str) -> str:
    """The first ```language block after the line ``after`` (a heading, or the text's start)."""
    start = text.index(after) if after else 0
    found = re.search(rf"^```{language}\n(.*?)^```", text[start:], re.MULTILINE | re.DOTALL)
    assert found is not None, f"README.md has no {language} block after {after!r}"
    return found.group(1)


def commands(block: str) -> list[list[str]]:
    """Each command of a shell block, continuation lines joined, split as sh does (no comments)."""
    return [
        shlex.split(line, comments=True)
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip()
    ]


def statements(block: str) -> list[str]:
    """The SQL statements of a block, comments left out."""
    code = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in code.split(";") if s.strip()]


def as_here(command: list[str], source_dsn: str, mirror: Path) -> list[str]:
    assert command[0] == "pgml-sidecar"
    swapped = {EXAMPLE_DSN: source_dsn, EXAMPLE_MIRROR: str(mirror)}
    return [sys.executable, "-m", "sidecar.cli", *(swapped.get(a, a) for a in command[1:])]


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` in a session of its own; its whole session killed at the end if still there."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def request_outcome(dsn: str, request_id: int) -> tuple[str, str | None, int | None, str | None]:
    def done() -> bool:
        return one(dsn, "select status from pgml.training_requests where id = %s", request_id) in (
            "done",
            "failed",
        )

    wait_for(done, timeout=600, what=f"request {request_id}")
    row = one(
        dsn,
        "select status, error, model_id, notice from pgml.training_requests where id = %s",
        request_id,
    )
    return row[0], row[1], row[2], row[3]


def test_running_it_for_real_as_the_readme_says(source_dsn: str, tmp_path: Path) -> None:
    text = README.read_text()
    steps = commands(code_block(text, after="## Running it for real", language="sh"))
    assert [step[:2] for step in steps] == [
        ["pgml-sidecar", "init"], ["pgml-sidecar", "run"], ["pgml-sidecar", "status"],
        ["pgml-sidecar", "uninstall"],
    ]  # fmt: skip
    assert all(EXAMPLE_DSN in step for step in steps) and EXAMPLE_MIRROR in steps[1]
    headline = statements(code_block(text, after="", language="sql"))
    assert [s.split(" ")[1].split("(")[0] for s in headline] == [
        "pgml.train", "pgml.writeback", "c.*,"
    ]  # fmt: skip

    with psycopg.connect(source_dsn, autocommit=True) as conn:
        create_customers(conn)
    mirror = tmp_path / "mirror.duckdb"
    init, run, status, uninstall = (as_here(step, source_dsn, mirror) for step in steps)
    endpoint_port, metrics_port = free_port(), free_port()
    env = os.environ | {
        "PGML_SIDECAR_PORT": str(endpoint_port),
        "PGML_SIDECAR_METRICS_PORT": str(metrics_port),
    }
    done = subprocess.run(init, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    log = tmp_path / "run.log"
    started = time.monotonic()
    with running(run, env, log) as daemon:
        trained = one(source_dsn, headline[0])
        state, error, model_id, notice = request_outcome(source_dsn, trained)
        assert (state, error) == ("done", None), log.read_text()[-3000:]
        print(f"pgml.train on {ROWS} customers: {time.monotonic() - started:.0f} s")
        # Identifiers are left out, and the request says so.
        assert notice is not None
        assert [line.split(":")[0] for line in notice.splitlines()] == [
            "column 'id' left out of the features",
            "column 'name' left out of the features",
            "column 'email' left out of the features",
        ]
        endpoint = f"host=127.0.0.1 port={endpoint_port} dbname=pgml user=postgres"
        with psycopg.connect(endpoint, autocommit=True) as conn:
            row = conn.execute(
                "select algorithm, (metrics->>'f1')::double,"
                " (notes->'baseline'->>'f1')::double, notes->'left_out'"
                " from pgml.models where id = %s",
                (model_id,),
            ).fetchone()
        assert row is not None
        algorithm, f1, baseline, left_out = row
        assert algorithm == "xgboost" and f1 > 0.9 and baseline < 0.4
        assert sorted(json.loads(left_out)) == ["email", "id", "name"]

        writeback = one(source_dsn, headline[1])
        assert request_outcome(source_dsn, writeback)[:2] == ("done", None)
        count = "select count(*) from pgml_scores.customer_churn"
        wait_for(
            lambda: one(source_dsn, "select to_regclass('pgml_scores.customer_churn')") is not None
            and one(source_dsn, count) == ROWS,
            timeout=300, what="every customer's score",
        )  # fmt: skip
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            cur = conn.execute(headline[2])
            names = [c.name for c in cur.description or ()]
            joined = cur.fetchall()
        assert len(joined) == ROWS and names[-1] == "prediction"
        churned = names.index("churned")
        right = sum((r[-1] == 1) == r[churned] for r in joined)
        assert right / ROWS > 0.9

        shown = subprocess.run(
            status, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert shown.returncode == 0, shown.stderr
        assert "daemon:  ok" in shown.stdout
        assert "project: Customer Churn: writeback done" in shown.stdout

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-3000:]

    # Leaving: uninstall says what it drops, asks, and drops it.
    left = subprocess.run(
        uninstall, env=env, input="y\n", capture_output=True, text=True, timeout=120, check=False
    )
    assert left.returncode == 0, left.stdout + left.stderr
    assert one(source_dsn, "select count(*) from pg_replication_slots") == 0
    assert one(source_dsn, "select to_regnamespace('pgml')") is None
    assert not mirror.exists()
