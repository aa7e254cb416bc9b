"""``pgml-sidecar demo``: the whole flow on a throwaway local PostgreSQL, no configuration."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import psycopg

from replicator.replicate import ReplicationSettings, Replicator
from sidecar.local_postgres import LocalPostgres
from sidecar.mirror import Mirror

SAMPLE_TABLE = "public.customers"

_CREATE = """
create table customers (
    id bigint primary key,
    signed_up date not null,
    plan text not null,
    monthly_spend numeric(10,2),
    support_tickets int,
    last_seen timestamptz,
    tags text[],
    churned boolean
)"""

_FILL = """
insert into customers
select g,
       date '2024-01-01' + (g %% 600),
       (array['free','pro','team'])[1 + g %% 3],
       round((random() * 200)::numeric, 2),
       (random() * 10)::int,
       now() - (g %% 90) * interval '1 day',
       array['demo', 'cohort-' || (g %% 4)],
       random() < 0.2
from generate_series(1, %s) g"""

_CHANGES = [
    "update customers set plan = 'team', monthly_spend = monthly_spend + 10 where id % 10 = 0",
    "delete from customers where id % 97 = 0",
    "insert into customers (id, signed_up, plan, churned)"
    " select g, current_date, 'free', false from generate_series({start}, {start} + 99) g",
]


def _say(text: str) -> None:
    print(f"==> {text}", flush=True)


def _catch_up(dsn: str, mirror_path: Path) -> Replicator:
    settings = ReplicationSettings(
        source_dsn=dsn, mirror_path=mirror_path, tables=[SAMPLE_TABLE], catch_up=True
    )
    replicator = Replicator(settings)
    try:
        replicator.run()
    finally:
        replicator.close()
    return replicator


def _show_mirror(mirror_path: Path) -> None:
    mirror = Mirror(mirror_path, read_only=True)
    try:
        con = mirror.con
        count, churned, spend = con.execute(
            "select count(*), count(*) filter (where churned), round(avg(monthly_spend), 2)"
            " from public.customers"
        ).fetchone() or (0, 0, 0)
        print(f"    public.customers: {count} rows, {churned} churned, avg spend {spend}")
        print("    by plan:")
        for plan, rows in con.execute(
            "select plan, count(*) from public.customers group by 1 order by 1"
        ).fetchall():
            print(f"      {plan:<6} {rows}")
        columns = con.execute("describe public.customers").fetchall()
        print("    mirrored columns: " + ", ".join(f"{c[0]} {c[1]}" for c in columns))
    finally:
        mirror.close()


def run_demo(*, workdir: Path | None = None, rows: int = 10_000) -> int:
    """Start Postgres, fill a table, mirror it, change it, mirror again; print the mirror."""
    own = workdir is None
    base = Path(tempfile.mkdtemp(prefix="pgml-sidecar-demo-")) if workdir is None else workdir
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    mirror_path = base / "mirror.duckdb"
    try:
        _say(f"starting a throwaway PostgreSQL in {base}")
        with LocalPostgres(base / "postgres") as server:
            dsn = server.dsn()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("drop table if exists customers")
                conn.execute(_CREATE)
                conn.execute(_FILL, [rows])
            _say(f"created {SAMPLE_TABLE} with {rows} rows; replicating it into {mirror_path}")
            started = time.monotonic()
            first = _catch_up(dsn, mirror_path)
            copied = sum(first.stats.copied_rows.values())
            print(f"    initial copy: {copied} rows in {time.monotonic() - started:.2f}s")
            with psycopg.connect(dsn, autocommit=True) as conn:
                for statement in _CHANGES:
                    conn.execute(statement.format(start=rows + 1).encode())
            _say("updated, deleted and inserted rows on the source; streaming the changes")
            second = _catch_up(dsn, mirror_path)
            print(
                f"    streamed {second.stats.rows_applied} row changes"
                f" in {second.stats.transactions} transaction(s)"
            )
            _say("what the mirror holds")
            _show_mirror(mirror_path)
            with psycopg.connect(dsn) as conn:
                row = conn.execute("select count(*) from customers").fetchone()
            print(f"    source public.customers: {row[0] if row else 0} rows")
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)
    _say("done")
    return 0
