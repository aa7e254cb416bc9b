"""A daemon on River's streams through real replication: tables, rows, what it exposes."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.replicator.mirror_check import current_lsn, slot_confirmed, wait_for
from tests.river_streams import Stream
from trainer.algorithms import algorithm_names, is_online


def online_algorithms(task: str) -> list[str]:
    """Every online algorithm the sidecar offers for ``task``."""
    return [name for name in algorithm_names(task) if is_online(name)]


def create_table(dsn: str, table: str, stream: Stream) -> None:
    """``public.<table>``: a text key ``id`` (a model started on the empty table has no
    category of it, so its features are the stream's), ``x0``, ``x1``, ... in the order of the
    stream's features, and the label ``y``."""
    label = "double precision" if stream.task == "regression" else "boolean"
    columns = ", ".join(f"x{i} double precision" for i in range(len(stream.features)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"create table {table} (id text primary key, {columns}, y {label})".encode())


def insert(dsn: str, table: str, stream: Stream, *, per_transaction: int, first: int = 0,
           flip: slice | None = None) -> None:  # fmt: skip
    """The stream's rows (keys ``r00000``... from ``first``) in transactions of
    ``per_transaction`` rows; labels in ``flip`` negated (classification)."""
    names = ", ".join(f"x{i}" for i in range(len(stream.features)))
    marks = ", ".join(["%s"] * (len(stream.features) + 2))
    statement = f"insert into {table} (id, {names}, y) values ({marks})".encode()
    rows: list[tuple[Any, ...]] = []
    flipped = range(len(stream.rows))[flip] if flip is not None else range(0)
    for i, (x, y) in enumerate(stream.rows):
        label = (not y if i in flipped else bool(y)) if stream.task != "regression" else y
        rows.append((f"r{first + i:05}", *(float(x[f]) for f in stream.features), label))
    with psycopg.connect(dsn) as conn:
        for lo in range(0, len(rows), per_transaction):
            with conn.cursor() as cursor:
                cursor.executemany(statement, rows[lo : lo + per_transaction])
            conn.commit()


def caught_up(dsn: str) -> None:
    """Wait until the mirror holds everything committed in the source so far."""
    target = current_lsn(dsn)
    wait_for(lambda: slot_confirmed(dsn) >= target, timeout=60, what="the mirror to catch up")


@contextmanager
def running(dsn: str, mirror: Path, tables: Sequence[str], **monitor: Any) -> Iterator[Daemon]:
    """A daemon replicating ``tables`` (made already), its monitor's attributes set from
    ``monitor`` before it starts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        source_schema.install(conn)
    daemon = Daemon(
        DaemonSettings(
            source_dsn=dsn, mirror_path=mirror, tables=list(tables), port=0, metrics_port=0
        )
    )
    for name, value in monitor.items():
        setattr(daemon.monitor, name, value)
    daemon.start()
    try:
        wait_for(lambda: all(mirrored(daemon, t) for t in tables), timeout=60,
                 what="the tables in the mirror")  # fmt: skip
        yield daemon
    finally:
        daemon.stop()


def mirrored(daemon: Daemon, table: str) -> bool:
    cursor = daemon.mirror.con.cursor()
    try:
        cursor.execute(f"select count(*) from {table}")
    except duckdb.CatalogException:
        return False
    finally:
        cursor.close()
    return True


def live_rows(daemon: Daemon, model_id: int) -> int:
    """Rows the serving copy of an online model has learned (0 before it is live)."""
    model = daemon.trainer.live.get(model_id)
    return 0 if model is None else int(model.estimator.rows_learned)


def metrics_text(daemon: Daemon) -> str:
    port = daemon.metrics_server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())
