"""Copy a table out of the source with binary COPY, in bounded memory.

The calling thread reads COPY messages (the part that holds the GIL); a worker thread decodes
each chunk of rows into an Arrow table and hands it to the sink (the mirror), so reading,
decoding and loading overlap. At most ``IN_FLIGHT`` chunks wait at a time.
"""

from __future__ import annotations

import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import pq, sql

from replicator.copy_format import CopyColumns, copy_columns, decode_rows, header_length, row_starts
from sidecar.changes import Relation
from sidecar.errors import SourceError

CHUNK_ROWS = 131_072
CHUNK_BYTES = 32 << 20
IN_FLIGHT = 2
_TRAILER = b"\xff\xff"


def copy_statement(relation: Relation, columns: CopyColumns) -> sql.Composed:
    """``COPY (SELECT ...) TO STDOUT (FORMAT binary)``, casting unreadable types to text."""
    selected = [
        sql.SQL("{}::text").format(sql.Identifier(name)) if as_text else sql.Identifier(name)
        for name, as_text in zip(columns.names, columns.as_text, strict=True)
    ]
    return sql.SQL("copy (select {} from {}) to stdout (format binary)").format(
        sql.SQL(", ").join(selected) if selected else sql.SQL("null"),
        sql.Identifier(relation.schema, relation.name),
    )


def read_chunks(
    conn: psycopg.Connection, statement: sql.Composed
) -> Iterator[tuple[bytes, np.ndarray]]:
    """Run the COPY in the connection's open transaction; yield (rows, row start offsets)."""
    pg = conn.pgconn
    pg.send_query(statement.as_bytes(conn))
    result = pg.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        message = "" if result is None else (result.error_message or b"").decode().strip()
        raise SourceError(f"COPY failed: {message}")
    get, sock = pg.get_copy_data, pg.socket
    buf = bytearray()
    ends: list[int] = []
    first = -1
    while True:
        size, data = get(1)
        if size > 0:
            if first < 0:
                first = header_length(data)
                if size - first > len(_TRAILER):  # the header came with the first row
                    buf += data
                    ends.append(len(buf))
                else:
                    first = 0
                continue
            if size == 2 and bytes(data) == _TRAILER:
                continue
            buf += data
            ends.append(len(buf))
            if len(ends) >= CHUNK_ROWS or len(buf) >= CHUNK_BYTES:
                yield bytes(buf), row_starts(ends, first)
                buf.clear()
                ends.clear()
                first = 0
        elif size == 0:
            select.select([sock], [], [])
            pg.consume_input()
        else:
            break
    while (result := pg.get_result()) is not None:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise SourceError(f"COPY failed: {(result.error_message or b'').decode().strip()}")
    if ends:
        yield bytes(buf), row_starts(ends, first)


def copy_table(
    conn: psycopg.Connection,
    relation: Relation,
    sink: Callable[[pa.Table], None],
    *,
    progress: Progress | None = None,
) -> int:
    """Copy the table into ``sink`` chunk by chunk; return the number of rows."""
    columns = copy_columns(relation)
    statement = copy_statement(relation, columns)
    waiting: deque[Future[None]] = deque()
    rows = 0

    def load(data: bytes, starts: np.ndarray) -> None:
        sink(decode_rows(np.frombuffer(data, dtype=np.uint8), starts, columns))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgml-sidecar-copy") as pool:
        try:
            for data, starts in read_chunks(conn, statement):
                waiting.append(pool.submit(load, data, starts))
                rows += len(starts)
                if progress is not None:
                    progress.advance(len(starts))
                while len(waiting) > IN_FLIGHT:
                    waiting.popleft().result()
            while waiting:
                waiting.popleft().result()
        finally:
            for future in waiting:
                future.cancel()
    return rows


class Progress:
    """A one-line progress report on a terminal; silent otherwise."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total if total and total > 0 else None
        self.done = 0
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.enabled:
            sys.stderr.write("\r" + self._line())
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + self._line() + "\n")
            sys.stderr.flush()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            return (
                f"copying {self.label} [{bar:<30}] {self.done:,}/~{self.total:,} rows"
                f" {rate:,.0f} rows/s"
            )
        return f"copying {self.label}: {self.done:,} rows {rate:,.0f} rows/s"
