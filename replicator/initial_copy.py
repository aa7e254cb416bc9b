"""Copy a table's rows out of the source as Arrow batches of text, in bounded memory."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator

import psycopg
import pyarrow as pa
from psycopg import sql
from pyarrow import csv

from sidecar.changes import Relation

BLOCK_SIZE = 16 << 20
"""Bytes of CSV parsed into one Arrow batch; with one batch in flight this bounds memory."""


class _CopyReader(io.RawIOBase):
    """A file over the COPY data of a cursor, for pyarrow's streaming CSV reader."""

    def __init__(self, copy: psycopg.Copy) -> None:
        self._copy = copy
        self._chunks: list[bytes] = []
        self._buffer = b""
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = BLOCK_SIZE
        parts = [self._buffer]
        have = len(self._buffer)
        while have < size:
            data = self._copy.read()
            if not data:
                break
            parts.append(bytes(data))
            have += len(data)
        joined = b"".join(parts)
        self._buffer = joined[size:]
        out = joined[:size]
        self.bytes_read += len(out)
        return out

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def copy_rows(
    conn: psycopg.Connection, relation: Relation, *, progress: Progress | None = None
) -> Iterator[pa.RecordBatch]:
    """Yield the table's rows as batches of text columns, read with COPY in the open transaction."""
    names = relation.column_names
    statement = sql.SQL("copy {} ({}) to stdout (format csv)").format(
        sql.Identifier(relation.schema, relation.name),
        sql.SQL(", ").join(sql.Identifier(n) for n in names),
    )
    convert = csv.ConvertOptions(
        column_types={n: pa.large_string() for n in names},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        null_values=[""],
    )
    read = csv.ReadOptions(column_names=names, block_size=BLOCK_SIZE, use_threads=True)
    parse = csv.ParseOptions(newlines_in_values=True)
    with conn.cursor().copy(statement) as copy:
        reader = _CopyReader(copy)
        if not names:
            while copy.read():
                pass
            return
        try:
            batches = csv.open_csv(
                reader, read_options=read, parse_options=parse, convert_options=convert
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return
            raise
        for batch in batches:
            if progress is not None:
                progress.advance(batch.num_rows)
            yield batch


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
