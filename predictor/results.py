"""What statements leave for the client: outcomes, rows read lazily, and portals that hold them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from predictor import wire
from predictor.pg_types import PgType, pg_type_for_arrow
from predictor.statements import Statement

FETCH_BATCH = 65_536
_TYPES = {
    "text": PgType(25, -1, "text"),
    "bool": PgType(16, 1, "bool"),
    "int8": PgType(20, 8, "int8"),
    "float4": PgType(700, 4, "float4"),
    "text[]": PgType(1009, -1, "_text"),
    "record": PgType(2249, -1, "record"),
}
_STREAM_ERRORS: dict[str, type[duckdb.Error]] = {
    "INTERRUPT Error": duckdb.InterruptException,
    "Conversion Error": duckdb.ConversionException,
    "Out of Range Error": duckdb.OutOfRangeException,
    "Invalid Input Error": duckdb.InvalidInputException,
    "Out of Memory Error": duckdb.OutOfMemoryException,
    "Binder Error": duckdb.BinderException,
    "Catalog Error": duckdb.CatalogException,
    "Permission Error": duckdb.PermissionException,
}


@dataclass(slots=True)
class Outcome:
    """What one statement produced: a command tag, and rows if it returns any."""

    tag: str
    fields: list[wire.Field] | None = None
    rows: Rows | None = None
    notices: list[str] = field(default_factory=list)
    """What the user should know (a training's columns left out...): sent as NOTICEs, once."""

    def take_notices(self) -> list[bytes]:
        """The notices as NoticeResponse messages; none the next time."""
        sent = [wire.notice_response(sqlstate="00000", message=n) for n in self.notices]
        self.notices = []
        return sent


@dataclass(slots=True)
class Rows:
    """Rows read lazily from a DuckDB result (or given at once), for FETCH and Execute limits."""

    reader: pa.RecordBatchReader | None
    buffer: list[pa.RecordBatch] = field(default_factory=list)
    buffered: int = 0
    sent: int = 0
    cursor: duckdb.DuckDBPyConnection | None = None  # a cursor of its own, closed with it
    encoded: bytes = b""
    """One DataRow ready to send (the one-row prediction path: no Arrow on the way)."""

    def drain(self) -> None:
        """Read the rest of the result now, so its DuckDB connection can run other queries."""
        self._read(None)

    def _read(self, limit: int | None) -> None:
        """Buffer batches until ``limit`` rows are buffered (all if None) or the result ends."""
        while self.reader is not None and (limit is None or self.buffered < limit):
            try:
                batch = self.reader.read_next_batch()
            except StopIteration:
                self.reader = None
                break
            except (OSError, pa.ArrowException) as exc:
                raise stream_error(exc) from None
            self.buffer.append(batch)
            self.buffered += batch.num_rows

    def take(self, limit: int | None) -> tuple[pa.Table | None, bool]:
        """Up to ``limit`` rows (all if None), and whether rows remain after them."""
        self._read(limit)
        if not self.buffer:
            return None, False
        table = pa.Table.from_batches(self.buffer)
        if limit is not None and table.num_rows > limit:
            rest = table.slice(limit)
            table = table.slice(0, limit)
            self.buffer = rest.to_batches()
            self.buffered = rest.num_rows
        else:
            self.buffer, self.buffered = [], 0
        self.sent += table.num_rows
        return table, bool(self.buffer) or self.reader is not None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.buffer = []
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None


@dataclass(slots=True)
class Prepared:
    """A statement made by Parse, with the parameter type OIDs the client gave."""

    statement: Statement | None  # None: the empty query
    param_types: tuple[int, ...]


@dataclass(slots=True)
class Portal:
    """A prepared statement bound to parameters (Bind); its outcome is made when first needed."""

    prepared: Prepared
    params: list[Any]
    outcome: Outcome | None = None
    done: bool = False


def stream_error(exc: Exception) -> duckdb.Error:
    """The DuckDB error behind one raised while reading a result (Arrow hands it on as OSError)."""
    text = str(exc)
    return _STREAM_ERRORS.get(text.split(":", 1)[0], duckdb.Error)(text)


def given(table: pa.Table) -> Rows:
    """Rows given at once: a table already in memory."""
    return Rows(None, table.to_batches(), table.num_rows)


def arrow_fields(schema: pa.Schema) -> list[wire.Field]:
    """The RowDescription fields of an Arrow schema, typed as its columns are sent."""
    fields = []
    for item in schema:
        kind = pg_type_for_arrow(item.type)
        fields.append(wire.Field(item.name, kind.oid, kind.size))
    return fields


def fields(columns: list[tuple[str, str]]) -> list[wire.Field]:
    """The RowDescription fields of columns named with a PostgreSQL type name (a procedure's)."""
    return [wire.Field(name, _TYPES[kind].oid, _TYPES[kind].size) for name, kind in columns]
