"""Shared benchmark pieces: throwaway cluster, the 5-column table, timed runs, checksums, tables."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psycopg
from psycopg import sql

import sidecar
from sidecar.local_postgres import LocalPostgres

CODE_ROOT = Path(sidecar.__file__).resolve().parent.parent
"""The checkout whose code is benchmarked; subprocesses get it first on PYTHONPATH, so a bench
run from a snapshot of the code (``git archive``) measures that snapshot, not the editable one."""
TABLE = "t"
PUBLICATION = "bench"
OUR_SLOT = "ours"
REF_SLOT = "ref"
WARM_SLOT = "warm"
PROFILE_SLOT = "profiled"
PROFILE_LINES = 30
RUN_TIMEOUT_S = 1800.0
GNU_TIME = "/usr/bin/time"
SLOT_RELEASE_TIMEOUT_S = 30.0

CREATE_TABLE = (
    "create table {table} (id bigint primary key, a int not null, b double precision not null,"
    " c text not null, d timestamptz not null) with (autovacuum_enabled = false)"
)
"""The benchmark table; autovacuum is off so it does not run during a timed section."""

_ROW = (
    "g, ((g * 2654435761 + {seed}) % 2147483647)::int,"
    " (((g * 40503 + {seed}) % 1000003) / 1000.0)::double precision,"
    " md5({seed}::text || ':' || g::text),"
    " timestamptz '2024-01-01 00:00:00+00' + ((g * 7 + {seed}) % 31536000) * interval '1 second'"
)
"""Row ``g`` of the table, a function of ``g`` and the seed only (deterministic, ~32-char text)."""


def insert_sql(lo: int, hi: int, seed: int, table: str = TABLE) -> str:
    """An INSERT of rows ``lo..hi`` (inclusive) with deterministic values."""
    row = _ROW.format(seed=int(seed))
    series = f"generate_series({int(lo)}::bigint, {int(hi)}::bigint) g"
    return f"insert into {table} select {row} from {series}"


def create_table(dsn: str, table: str = TABLE) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE_TABLE.format(table=table).encode())


# -- the throwaway cluster -----------------------------------------------------------------------


def make_workdir(prefix: str) -> Path:
    """An empty directory the postgres OS user can reach."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def cluster(prefix: str) -> Iterator[tuple[LocalPostgres, Path]]:
    """Start a throwaway cluster; yield it and a scratch dir; stop it and remove both after."""
    workdir = make_workdir(prefix)
    scratch = workdir / "scratch"
    scratch.mkdir()
    try:
        with LocalPostgres(workdir / "pg") as server:
            yield server, scratch
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def server_version(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.info.server_version)


def workload_end(dsn: str) -> str:
    """``pg_current_wal_insert_lsn()`` after the workload, with the WAL flushed past it.

    The cluster runs with synchronous_commit off, so the workload's WAL reaches disk (and the
    walsenders) only when the WAL writer wakes. A transaction with an xid committed with
    synchronous_commit on flushes everything before it, so neither tool pays that wait.
    (pgoutput sends nothing for it: it changes no table.)
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()
        conn.execute("set synchronous_commit = on")
        with conn.transaction():
            conn.execute("select pg_current_xact_id()")
    assert row is not None
    return str(row[0])


def create_ref_slot(dsn: str, slot: str = REF_SLOT) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])


def drop_database(server: LocalPostgres, name: str) -> None:
    """Drop a database and the replication slots it holds, once their consumers have left."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = %s and pid <> pg_backend_pid()",
            [name],
        )
        deadline = time.monotonic() + SLOT_RELEASE_TIMEOUT_S
        while True:
            slots = conn.execute(
                "select slot_name, active_pid from pg_replication_slots where database = %s",
                [name],
            ).fetchall()
            if not slots:
                break
            for slot, pid in slots:
                with contextlib.suppress(psycopg.errors.ObjectInUse):
                    if pid is None:
                        conn.execute("select pg_drop_replication_slot(%s)", [slot])
                    else:
                        conn.execute("select pg_terminate_backend(%s)", [pid])
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication slots of {name} stay in use: {slots}")
            time.sleep(0.05)  # polling the condition (slots gone), not a fixed wait
        conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


def drop_slot(dsn: str, slot: str) -> None:
    """Drop a replication slot, waiting for its walsender to exit first."""
    deadline = time.monotonic() + SLOT_RELEASE_TIMEOUT_S
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "select active_pid from pg_replication_slots where slot_name = %s", [slot]
            ).fetchone()
            if row is None:
                return
            if row[0] is None:
                conn.execute("select pg_drop_replication_slot(%s)", [slot])
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication slot {slot} stays in use by pid {row[0]}")
            time.sleep(0.05)  # polling the condition (walsender gone), not a fixed wait


# -- the two tools -------------------------------------------------------------------------------


def our_command(
    dsn: str,
    mirror: Path,
    *,
    table: str = TABLE,
    publication: str = PUBLICATION,
    slot: str = OUR_SLOT,
    profile: bool = False,
) -> list[str]:
    """``pgml-sidecar replicate --catch-up``, as a user would run it (or under cProfile)."""
    script = Path(sys.executable).parent / "pgml-sidecar"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "sidecar.cli"]
    if profile:
        program = [sys.executable, "-m", "cProfile", "-s", "tottime", "-m", "sidecar.cli"]
    return [
        *program,
        "replicate",
        "--source",
        dsn,
        "--mirror",
        str(mirror),
        "--tables",
        f"public.{table}",
        "--publication",
        publication,
        "--slot",
        slot,
        "--catch-up",
    ]


def recvlogical_command(
    server: LocalPostgres, dsn: str, endpos: str, *, slot: str = REF_SLOT
) -> list[str]:
    """``pg_recvlogical`` reading a pgoutput slot up to ``endpos`` with our replicator's options."""
    streaming = server_version(dsn) >= 140000
    options = ["proto_version=2", "streaming=on"] if streaming else ["proto_version=1"]
    options.append(f"publication_names={PUBLICATION}")
    command = [str(server.bin_dir / "pg_recvlogical"), "-d", dsn, "--slot", slot, "--start"]
    command += ["--endpos", endpos, "--no-loop", "-f", "/dev/null"]
    for option in options:
        command += ["-o", option]
    return command


@dataclass
class Timed:
    """One whole-process run: wall time from spawn to exit, and the process's peak RSS."""

    label: str
    seconds: float
    max_rss_mb: float
    returncode: int
    log: Path

    def check(self, command: Sequence[str]) -> None:
        if self.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise BenchError(
                f"{self.label} exited with {self.returncode}\ncommand: {' '.join(command)}\n"
                f"--- tail of {self.log} ---\n{tail}"
            )


class BenchError(RuntimeError):
    """A tool failed or a mirror came out wrong; the message says exactly what happened."""


def run_timed(
    label: str, command: Sequence[str], log: Path, timeout: float = RUN_TIMEOUT_S
) -> Timed:
    """Run ``command`` to its end; measure wall time and the peak RSS of its process.

    The peak comes from GNU time (``apt-get install time``): a child forked straight from this
    Python process would count this process's own RSS at fork in its ru_maxrss. Without GNU
    time the peak is reported as nan.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if p)
    rss_file = log.with_suffix(".rss")
    wrapped = list(command)
    if Path(GNU_TIME).exists():
        wrapped = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *wrapped]
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            wrapped,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # GNU time and the tool under it
            process.wait()
            raise BenchError(
                f"{label} still ran after {timeout:.0f}s: {' '.join(command)}"
            ) from None
        seconds = time.perf_counter() - started
    rss_mb = float("nan")
    if rss_file.exists():
        last = rss_file.read_text().split()
        rss_mb = int(last[-1]) / 1024 if last and last[-1].isdigit() else rss_mb
    result = Timed(label, seconds, rss_mb, returncode, log)
    result.check(command)
    return result


def profile_top(log: Path, lines: int = PROFILE_LINES) -> str:
    """The header and top entries of a ``cProfile -s tottime`` report in a run's log."""
    text = log.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(text) if "function calls" in line), len(text))
    return "\n".join(text[start : start + lines + 6])


# -- checking the mirror -------------------------------------------------------------------------

_CHECKSUM = (
    "select count(*), coalesce(sum(id), 0), coalesce(sum(a), 0), coalesce(sum(length(c)), 0)"
    " from {table}"
)


def source_checksum(dsn: str, table: str = TABLE) -> tuple[int, ...]:
    """``count(*), sum(id), sum(a), sum(length(c))`` on the source."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(_CHECKSUM.format(table=f"public.{table}").encode()).fetchone()
    assert row is not None
    return tuple(int(v) for v in row)


def mirror_checksum(path: Path, table: str = TABLE) -> tuple[int, ...]:
    """The same checksum over the mirror file (opened read-only after the tool exited)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        row = con.execute(_CHECKSUM.format(table=f"public.{table}")).fetchone()
    finally:
        con.close()
    assert row is not None
    return tuple(int(v) for v in row)


# -- rounds and reporting ------------------------------------------------------------------------


@dataclass
class Round:
    """One round of a side-by-side comparison."""

    first: str
    ref: Timed
    ours: Timed
    matched: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ref.seconds / self.ours.seconds


@dataclass
class Comparison:
    """Rounds of one benchmark variant; the reported ratio is the median of the rounds'."""

    name: str
    ref_tool: str
    target: str
    rows: int
    rounds: list[Round] = field(default_factory=list)

    @property
    def median_ratio(self) -> float:
        return statistics.median(r.ratio for r in self.rounds)

    def table(self) -> str:
        headers = ["round", "first", f"{self.ref_tool} s", "ours s", "ratio"]
        headers += [f"{self.ref_tool} MB", "ours MB", "mirror"]
        rows = []
        for index, r in enumerate(self.rounds, 1):
            matched = "-" if r.matched is None else ("match" if r.matched else "MISMATCH")
            rows.append(
                [
                    str(index),
                    r.first,
                    f"{r.ref.seconds:.2f}",
                    f"{r.ours.seconds:.2f}",
                    f"{r.ratio:.2f}",
                    f"{r.ref.max_rss_mb:.0f}",
                    f"{r.ours.max_rss_mb:.0f}",
                    matched + (f" ({r.note})" if r.note else ""),
                ]
            )
        ours_rate = self.rows / statistics.median(r.ours.seconds for r in self.rounds)
        ref_rate = self.rows / statistics.median(r.ref.seconds for r in self.rounds)
        return (
            f"**{self.name}** ({self.rows:,} rows): median ratio {self.ref_tool}/ours ="
            f" **{self.median_ratio:.2f}** (target {self.target});"
            f" median rows/s ours {ours_rate:,.0f}, {self.ref_tool} {ref_rate:,.0f};"
            f" ours peak RSS {max(r.ours.max_rss_mb for r in self.rounds):.0f} MB\n\n"
            + markdown_table(headers, rows)
        )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def alternate(round_index: int) -> tuple[str, str]:
    """The order of the two tools in a round: ours first in even rounds, the reference in odd."""
    return ("ours", "ref") if round_index % 2 == 0 else ("ref", "ours")


def say(text: str) -> None:
    print(f"--> {text}", file=sys.stderr, flush=True)


def base_parser(module: str, description: str, *, seed: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; tool order alternates (default 3)"
    )
    if seed:
        parser.add_argument("--seed", type=int, default=42, help="seed of the generated values")
    return parser


def machine_info() -> str:
    """nproc, CPU model, memory, PostgreSQL, Python and library versions, as markdown bullets."""
    import numpy
    import pyarrow

    model = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from sidecar.local_postgres import find_bin_dir

    postgres = subprocess.run(
        [str(find_bin_dir() / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return "\n".join(
        [
            f"- CPUs: {os.cpu_count()} ({model}), memory {mem_gb:.1f} GiB, {platform.platform()}",
            f"- {postgres} (throwaway cluster: fsync, full_page_writes, synchronous_commit off)",
            f"- Python {platform.python_version()}, duckdb {duckdb.__version__},"
            f" psycopg {psycopg.__version__}, pyarrow {pyarrow.__version__},"
            f" numpy {numpy.__version__}",
        ]
    )


def run_pgbench(
    server: LocalPostgres, script: Path, dbname: str, args: argparse.Namespace
) -> float:
    """Run a pgbench ``script`` at ``args.rate`` for ``args.duration`` s; return its tps.

    ``args`` carries ``rate``, ``duration``, ``clients``, ``threads`` and
    ``synchronous_commit`` (the benchmarks' shared pgbench flags).
    """
    command = [str(server.bin_dir / "pgbench"), "-n", "-f", str(script)]
    command += ["-R", str(args.rate), "-T", str(args.duration)]
    command += ["-c", str(args.clients), "-j", str(args.threads)]
    command += ["-h", "127.0.0.1", "-p", str(server.port), "-U", server.superuser, dbname]
    env = dict(os.environ, PGOPTIONS=f"-c synchronous_commit={args.synchronous_commit}")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise BenchError(f"pgbench failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    for line in done.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    return float("nan")
