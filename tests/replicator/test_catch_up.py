"""Catching up a backlog after downtime within the mirror's memory limit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from tests.replicator.mirror_check import assert_same_rows, catch_up, execute, query
from tests.replicator.test_failures import assert_clear_error, replicate_once

HOT_UPDATES = (
    "do $$ begin for i in 1..100 loop"
    " update hot set n = n + 1, v = repeat(md5((i * id)::text), 8);"
    " end loop; end $$"
)
"""200,000 updates of 2,000 rows in one transaction: applying a part of it needs DuckDB memory
in proportion to the part's messages, and the mirror transaction stays small."""


def test_a_batch_too_big_for_the_memory_limit_is_streamed_again_in_halves(
    source_dsn: str, mirror_path: Path
):
    execute(
        source_dsn,
        "create table hot (id int primary key, n bigint, v text)",
        "insert into hot select g, 0, '' from generate_series(1, 2000) g",
    )
    catch_up(source_dsn, mirror_path, ["hot"])
    execute(source_dsn, HOT_UPDATES)
    # A budget far above the memory limit: DuckDB runs out before the budget does. Protocol 1,
    # so that the transaction is applied in parts of the batch limits (not of the server's
    # stream blocks), the first of them 100,000 messages.
    stats = catch_up(
        source_dsn,
        mirror_path,
        memory_limit="16MB",
        batch_bytes=1 << 30,
        stream_large_transactions=False,
    )
    assert stats.memory_retries >= 1
    assert stats.transactions == 1
    assert assert_same_rows(source_dsn, mirror_path, "public.hot", "id") == 2000
    assert query(mirror_path, "select sum(n) from public.hot") == [(200_000,)]


def test_a_transaction_too_big_for_the_memory_limit_is_one_clear_error(
    source_dsn: str, mirror_path: Path
):
    execute(source_dsn, "create table big (id bigint primary key, c text)")
    catch_up(source_dsn, mirror_path, ["big"])
    position = query(mirror_path, "select lsn from _pgml_sidecar.positions")
    execute(source_dsn, "insert into big select g, md5(g::text) from generate_series(1, 400000) g")
    result = replicate_once(source_dsn, mirror_path, "--memory-limit", "8MB")
    assert_clear_error(result, "ran out of memory", "even in batches of", "--memory-limit")
    assert "streaming it again in batches" in result.stderr
    assert query(mirror_path, "select count(*) from public.big") == [(0,)]
    assert query(mirror_path, "select lsn from _pgml_sidecar.positions") == position


SMALL_TRANSACTION = """\\set id random(1, 10000)
\\set delta random(-500, 500)
\\set bid 5 * random(0, 103999) + random(1, 4)
begin;
update acct set balance = balance + :delta where id = :id;
insert into hist (acct, delta) values (:id, :delta);
update big set a = a + 1 where id = :bid;
insert into hist (acct, delta) values (:id, 0 - :delta);
end;
"""
"""pgbench's shape of transaction: four row changes to three tables (``bid`` is never a
multiple of 5: those ``big`` rows are deleted)."""

BIG_ROW = "g, g % 1000, g * 0.5, md5(g::text), '2024-01-01'::timestamptz + g * interval '1 s'"


def test_a_backlog_of_a_million_row_changes_catches_up_within_128mb(
    source_dsn: str, mirror_path: Path, pg_bin: Path, tmp_path: Path
):
    dbname = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]
    execute(
        source_dsn,
        # The server streams the large statements' transactions to the replicator before they
        # commit, in blocks of about this much of its memory (64MB by default).
        f"alter database \"{dbname}\" set logical_decoding_work_mem = '16MB'",
        "create table big (id bigint primary key, a int, b double precision, c text,"
        " d timestamptz)",
        f"insert into big select {BIG_ROW} from generate_series(1, 200000) g",
        "create table acct (id int primary key, balance bigint, note text)",
        "insert into acct select g, 0, 'acct ' || g from generate_series(1, 10000) g",
        "create table hist (id bigserial primary key, acct int, delta int,"
        " at timestamptz default now())",
    )
    tables = "public.big,public.acct,public.hist"
    assert replicate_once(source_dsn, mirror_path, "--tables", tables).returncode == 0
    idle = replicate_peak(source_dsn, mirror_path, "--memory-limit", "128MB")
    assert idle.returncode == 0, idle.stderr

    # Downtime: a few large statements (streamed by the server before they commit), then
    # pgbench's many small transactions.
    changes = bulk(
        source_dsn,
        f"insert into big select {BIG_ROW} from generate_series(200001, 520000) g",
        "update big set a = a + 1, c = upper(c) where id % 2 = 0",
        "delete from big where id % 5 = 0",
        "update big set b = b * 2 where id <= 300000",
    )
    script = tmp_path / "small.sql"
    script.write_text(SMALL_TRANSACTION)
    clients, each = 4, 6000
    subprocess.run(
        [str(pg_bin / "pgbench"), "-n", "-c", str(clients), "-j", "2", "-t", str(each),
         "-f", str(script), source_dsn],
        check=True, capture_output=True,
    )  # fmt: skip
    changes += 4 * clients * each
    assert changes >= 1_000_000

    started = time.monotonic()
    run = replicate_peak(source_dsn, mirror_path, "--memory-limit", "128MB")
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    print(
        f"\ncaught up {changes:,} row changes in {took:.1f}s ({changes / took:,.0f}/s)"
        f" with --memory-limit 128MB: peak RSS {run.peak_mib:.0f} MiB"
        f" (an idle catch-up: {idle.peak_mib:.0f} MiB);"
        f" {run.stderr.count('streaming it again')} batches streamed again in halves"
    )
    for table, key in [("public.big", "id"), ("public.acct", "id"), ("public.hist", "id")]:
        assert assert_same_rows(source_dsn, mirror_path, table, key) > 0
    # Over what the process needs idle: DuckDB's memory, the batch in Python (its messages
    # decoded and handed to DuckDB: a few times the eighth of the limit a batch may hold) and
    # what allocators keep.
    assert run.peak_mib <= idle.peak_mib + 2.5 * 128 * 1000**2 / 2**20


def bulk(dsn: str, *statements: str) -> int:
    """Run statements, each in its own transaction; return the rows they changed."""
    changed = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            changed += conn.execute(statement.encode()).rowcount
    return changed


class PeakRun(subprocess.CompletedProcess[str]):
    """A finished ``replicate --catch-up`` with the peak resident memory it reached."""

    peak_mib: float


def replicate_peak(dsn: str, mirror: Path, *args: str) -> PeakRun:
    """Run ``replicate --catch-up``, watching its peak resident set (VmHWM) until it exits."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "replicate", "--source", dsn,
         "--mirror", str(mirror), "--catch-up", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak = [0]

    def watch() -> None:
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                return  # gone
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = process.communicate(timeout=300)
    watcher.join()
    run = PeakRun(process.args, process.returncode, stdout, stderr)
    run.peak_mib = peak[0] / 1024
    return run
