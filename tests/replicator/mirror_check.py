"""Compare a mirrored table with its source, row by row, and run the replicator for tests."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import duckdb
import psycopg

from replicator.kafka import KafkaReplicator
from replicator.replicate import ReplicationSettings, ReplicationStats, Replicator


def execute(dsn: str, *statements: str) -> None:
    """Run statements on the source, each in its own transaction (autocommit)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def query(mirror: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the mirror, read-only."""
    con = duckdb.connect(str(mirror), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def catch_up(
    dsn: str, mirror: Path, tables: Sequence[str] = (), **options: Any
) -> ReplicationStats:
    """Run the replicator in this process until the mirror holds everything committed so far."""
    replicator = Replicator(
        ReplicationSettings(
            source_dsn=dsn, mirror_path=mirror, tables=tables, catch_up=True, **options
        )
    )
    try:
        return replicator.run()
    finally:
        replicator.close()


class InThread:
    """A replicator (either source) running in a thread, for tests that act while it runs."""

    def __init__(self, replicator: Replicator | KafkaReplicator) -> None:
        self.replicator = replicator
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.replicator.run()
        except BaseException as exc:  # handed to the test through stop()
            self.error = exc

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> ReplicationStats:
        if self.thread.is_alive():
            self.replicator.stopping.set()
            self.thread.join(timeout=60)
            assert not self.thread.is_alive(), "the replicator did not stop within 60s"
        self.replicator.close()
        if self.error is not None:
            raise self.error
        return self.replicator.stats


class Running(InThread):
    """The pgoutput replicator streaming in a thread."""

    def __init__(self, dsn: str, mirror: Path, tables: Sequence[str] = (), **options: Any):
        super().__init__(
            Replicator(
                ReplicationSettings(source_dsn=dsn, mirror_path=mirror, tables=tables, **options)
            )
        )


def wait_for(condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.05)


def holds_for(condition: Callable[[], bool], *, seconds: float, what: str = "") -> None:
    """Check ``condition`` every 0.2 s for ``seconds``; fail the test the first time it fails."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), (
            f"{what or condition} ended after {seconds - (deadline - time.monotonic()):.1f}s"
        )
        time.sleep(0.2)


def slot_confirmed(dsn: str, slot: str = "pgml_sidecar") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select confirmed_flush_lsn - '0/0' from pg_replication_slots where slot_name = %s",
            [slot],
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def slot_active(dsn: str, slot: str = "pgml_sidecar") -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select active from pg_replication_slots where slot_name = %s", [slot]
        ).fetchone()
    return bool(row and row[0])


def streaming(dsn: str) -> bool:
    """Whether a walsender is past START_REPLICATION (a slot is also active while created)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select count(*) from pg_stat_replication"
            " where application_name = 'pgml-sidecar' and state in ('streaming', 'catchup')"
        ).fetchone()
    return bool(row and row[0])


def terminate_walsender(dsn: str, slot: str = "pgml_sidecar") -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots"
            " where slot_name = %s and active_pid is not null",
            [slot],
        ).fetchone()
    return bool(row and row[0])


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select pg_current_wal_insert_lsn() - '0/0'").fetchone()
    assert row is not None
    return int(row[0])


def normalise(value: Any) -> Any:
    """A form in which a Postgres value and its mirrored DuckDB value compare equal."""
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return value if value.is_finite() else str(value)
    if isinstance(value, float):
        return decimal.Decimal(repr(value)) if value == value else "NaN"
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def source_rows(dsn: str, table: str, order_by: str, casts: dict[str, str] | None = None) -> list:
    casts = casts or {}
    with psycopg.connect(dsn) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0"
                " and not attisdropped order by attnum",
                [table],
            ).fetchall()
        ]
        select = ", ".join(f'"{c}"{casts.get(c, "")}' for c in columns)
        rows = conn.execute(f"select {select} from {table} order by {order_by}").fetchall()
    return [tuple(normalise(v) for v in row) for row in rows]


def mirror_rows(
    path: Path | duckdb.DuckDBPyConnection,
    table: str,
    order_by: str,
    json_columns: Sequence[str] = (),
) -> list:
    """A mirrored table's rows, from its file (read-only) or through an open connection's
    cursor (while a replicator in this process holds the file)."""
    con = path.cursor() if isinstance(path, duckdb.DuckDBPyConnection) else None
    con = con or duckdb.connect(str(path), read_only=True)
    try:
        cursor = con.execute(f"select * from {table} order by {order_by}")
        names = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall()
    finally:
        con.close()
    out = []
    for row in rows:
        values = []
        for name, value in zip(names, row, strict=True):
            if name in json_columns and value is not None:
                value = json.loads(value)
            values.append(normalise(value))
        out.append(tuple(values))
    return out


def assert_same_rows(
    dsn: str,
    path: Path | duckdb.DuckDBPyConnection,
    table: str,
    order_by: str = "1",
    json_columns: Sequence[str] = (),
    casts: dict[str, str] | None = None,
) -> int:
    """Assert the mirror holds exactly the source's rows; return how many there are."""
    expected = source_rows(dsn, table, order_by, casts)
    actual = mirror_rows(path, table, order_by, json_columns)
    assert len(actual) == len(expected), (
        f"{table}: mirror {len(actual)} rows, source {len(expected)}"
    )
    for want, got in zip(expected, actual, strict=True):
        assert got == want, f"{table}: mirror row {got} differs from source row {want}"
    return len(expected)


def mirror_columns(path: Path, table: str) -> list[tuple[str, str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        schema, name = table.split(".")
        rows = con.execute(
            "select column_name, data_type from information_schema.columns"
            " where table_schema = ? and table_name = ? order by ordinal_position",
            [schema, name],
        ).fetchall()
    finally:
        con.close()
    return [(r[0], r[1]) for r in rows]
