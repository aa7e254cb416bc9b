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
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import pq, sql

from mirror.changes import Relation
from mirror.column_types import SourceType
from mirror.errors import SourceError
from replicator.columnar import PADDING
from replicator.copy_format import CopyColumns, copy_columns, decode_rows, header_length, row_starts

CHUNK_ROWS = 1 << 20
CHUNK_BYTES = 32 << 20
"""A chunk is decoded and inserted at once: large enough for DuckDB to compress its row groups
in parallel, small enough to bound memory."""
IN_FLIGHT = 1


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
) -> Iterator[tuple[bytearray, np.ndarray]]:
    """Run the COPY in the connection's open transaction; yield chunks of rows (followed by
    ``PADDING`` zero bytes, ready for the decoder) with the offset where each row starts."""
    pg = conn.pgconn
    pg.send_query(statement.as_bytes(conn))
    result = pg.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        message = "" if result is None else (result.error_message or b"").decode().strip()
        raise SourceError(f"COPY failed: {message}")
    get, sock = pg.get_copy_data, pg.socket
    buf = bytearray()
    ends: list[int] = []
    append = ends.append
    first = -1  # where the first row starts in buf: after the file header
    rows = 0
    while True:
        size, data = get(1)
        if size > 0:
            buf += data
            append(len(buf))
            rows += 1
            if rows >= CHUNK_ROWS or len(buf) >= CHUNK_BYTES:
                if first < 0:
                    first = _skip_header(buf, ends)
                buf += bytes(PADDING)
                yield buf, row_starts(ends, first)
                buf = bytearray()
                ends.clear()
                first, rows = 0, 0
        elif size == 0:
            select.select([sock], [], [])
            pg.consume_input()
        else:
            break
    while (result := pg.get_result()) is not None:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise SourceError(f"COPY failed: {(result.error_message or b'').decode().strip()}")
    if ends:
        if first < 0:
            first = _skip_header(buf, ends)
        buf += bytes(PADDING)
        yield buf, row_starts(ends, first)


def _skip_header(buf: bytearray, ends: list[int]) -> int:
    """Where the first row starts; forget the header's message if it came alone."""
    first = header_length(buf)
    if ends and ends[0] == first:
        ends.pop(0)
    return first


def copy_table(
    conn: psycopg.Connection,
    relation: Relation,
    sink: Callable[[pa.Table], None],
    *,
    progress: Progress | None = None,
    types: Mapping[int, SourceType] | None = None,
) -> int:
    """Copy the table into ``sink`` chunk by chunk; return the number of rows.

    ``types`` describes the relation's non-built-in types (pgvector's are copied binary)."""
    columns = copy_columns(relation, types)
    statement = copy_statement(relation, columns)
    waiting: deque[Future[int]] = deque()
    rows = 0

    def load(data: bytearray, starts: np.ndarray) -> int:
        rows = decode_rows(np.frombuffer(data, dtype=np.uint8), starts, columns)
        sink(rows)
        return rows.num_rows

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgml-sidecar-copy") as pool:
        try:
            for data, starts in read_chunks(conn, statement):
                waiting.append(pool.submit(load, data, starts))
                while len(waiting) > IN_FLIGHT:
                    done = waiting.popleft().result()
                    rows += done
                    if progress is not None:
                        progress.advance(done)
            while waiting:
                done = waiting.popleft().result()
                rows += done
                if progress is not None:
                    progress.advance(done)
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
