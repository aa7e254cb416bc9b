"""``pgml-sidecar demo``: the whole product on a throwaway local PostgreSQL, no configuration.

A customers table is created and filled; the daemon mirrors it; models are trained by calling
``pgml.train()`` in that database; write-back is turned on with ``pgml.writeback()``; new
customers stream in and show up scored in ``pgml_scores``; a leaderboard is printed with the
command to reach the SQL endpoint. Then everything is stopped and removed.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from sidecar.local_postgres import SUPERUSER, LocalPostgres, free_port

PROJECT = "Customer Churn"
ALGORITHMS = ("linear", "random_forest", "xgboost")

_CREATE = """
create table customers (
    id bigint primary key,
    signed_up date not null,
    plan text not null,
    monthly_spend double precision,
    support_tickets int,
    days_since_login int,
    churned boolean
)"""

# Churn follows the features (with noise), so there is something to learn.
_FILL = """
insert into customers
select g, date '2024-01-01' + (g %% 600)::int, plan, spend, tickets, idle,
       (tickets * 0.6 + idle * 0.05 - spend * 0.02 + case plan when 'free' then 1.5 else 0 end
        + (random() - 0.5) * 2) > 3.5
from (select g, (array['free','pro','team'])[1 + g %% 3] as plan,
             round((random() * 150)::numeric, 2)::double precision as spend,
             (random() * 8)::int as tickets, (random() * 60)::int as idle
      from generate_series(%s::bigint, %s::bigint) g) s"""


def _say(text: str) -> None:
    print(f"==> {text}", flush=True)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo waited {timeout:.0f}s for {what}")
        time.sleep(0.1)


def _one(conn: psycopg.Connection, sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params or None).fetchone()
    return None if row is None else row[0]


def _finished(conn: psycopg.Connection, request: int) -> bool:
    status = _one(conn, "select status from pgml.training_requests where id = %s", request)
    return status in ("done", "failed")


def run_demo(*, workdir: Path | None = None, rows: int = 20_000) -> int:
    """Run the demo; keep the work directory only if one was given."""
    own = workdir is None
    base = Path(tempfile.mkdtemp(prefix="pgml-sidecar-demo-")) if workdir is None else workdir
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    try:
        _say(f"starting a throwaway PostgreSQL in {base}")
        with LocalPostgres(base / "postgres") as server:
            _demo(server.dsn(), base, rows)
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def _demo(dsn: str, base: Path, rows: int) -> None:
    port = free_port()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop table if exists customers")
        conn.execute(_CREATE)
        conn.execute(_FILL, [1, rows])
        source_schema.install(conn, endpoint_dsn=f"host=127.0.0.1 port={port} user=pgml")
    _say(f"created public.customers ({rows} rows) and installed schema pgml in the source")
    daemon = Daemon(
        DaemonSettings(
            source_dsn=dsn,
            mirror_path=base / "mirror.duckdb",
            tables=["public.customers"],
            port=port,
            metrics_port=0,
        )
    )
    daemon.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            _session(conn, daemon, rows, port)
    finally:
        _say("stopping the sidecar and removing the throwaway database")
        daemon.stop()


def _session(conn: psycopg.Connection, daemon: Daemon, rows: int, port: int) -> None:
    for algorithm in ALGORITHMS:
        sql = (
            "select pgml.train(%s, 'classification', 'public.customers', 'churned', %s)"
            if algorithm == ALGORITHMS[0] else "select pgml.train(%s, algorithm => %s)"
        )  # fmt: skip
        print(f"    source> {sql % (repr(PROJECT), repr(algorithm))};")
        request = _one(conn, sql, PROJECT, algorithm)
        _wait(functools.partial(_finished, conn, request), f"training {algorithm}")
        status, error, model = conn.execute(
            "select status, error, model_id from pgml.training_requests where id = %s",
            (request,),
        ).fetchone() or ("?", None, None)
        print(f"    request {request}: {status}" + (f", model {model}" if model else "")
              + (f" ({error})" if error else ""))  # fmt: skip

    print("    source> select pgml.writeback('Customer Churn');")
    _one(conn, "select pgml.writeback(%s)", PROJECT)
    count = "select count(*) from pgml_scores.customer_churn"
    _wait(
        lambda: (
            _one(conn, "select to_regclass('pgml_scores.customer_churn')") is not None
            and _one(conn, count) == rows
        ),
        "the first scores",
    )
    _say(f"every customer has a score in pgml_scores.customer_churn ({rows} rows)")

    inserted_at = time.monotonic()
    conn.execute(_FILL, [rows + 1, rows + 100])
    _wait(lambda: _one(conn, count) == rows + 100, "the new customers' scores")
    fresh = (time.monotonic() - inserted_at) * 1000
    _say(f"100 new customers inserted; all scored in the source {fresh:.0f} ms later")
    print("    source> select id, plan, support_tickets, prediction, model_id")
    print("            from customers join pgml_scores.customer_churn using (id)")
    print("            order by id desc limit 5;")
    for row in conn.execute(
        "select id, plan, support_tickets, prediction, model_id from customers"
        " join pgml_scores.customer_churn using (id) order by id desc limit 5"
    ).fetchall():
        print("      " + " | ".join(str(v) for v in row))

    _say("leaderboard (pgml.trained_models on the endpoint)")
    with psycopg.connect(f"host=127.0.0.1 port={port} user=pgml dbname=pgml") as endpoint:
        board = endpoint.execute(
            "select id, algorithm, round((metrics->>'f1')::double, 3),"
            " round((metrics->>'accuracy')::double, 3), deployed from pgml.trained_models"
            " order by (metrics->>'f1')::double desc"
        ).fetchall()
    print("      model | algorithm      | f1    | accuracy | deployed")
    for model_id, algorithm, f1, accuracy, deployed in board:
        print(f"      {model_id:<5} | {algorithm:<14} | {f1:<5} | {accuracy:<8} | {deployed}")
    health = daemon.health()
    print(f"    sidecar: {health['status']}, {health['rows_applied']} row changes applied")
    # each endpoint user reads what the source role of its name may: the demo's superuser
    _say(f"the SQL endpoint: psql -h 127.0.0.1 -p {port} -U {SUPERUSER}")
    if sys.stdin.isatty():
        input("    press Enter to stop the demo and clean up... ")
