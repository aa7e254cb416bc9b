"""Mirrored rows as Chroma records: ids from primary keys, embeddings, documents, metadata.

A record's id is its row's primary key as text (DuckDB's ``::varchar`` of the value: ``42``,
``2024-01-31``, a uuid's usual form). A composite key is the JSON array of its columns' texts,
in the key's column order: ``["7","2024-01-31"]``. The embedding is the row's ``FLOAT[n]`` (a
pgvector ``vector(n)``), float32 as mirrored; a row whose embedding is NULL (or of another
length than the collection's) has no record. Metadata values are of the kinds Chroma takes:
booleans, integers (within int64; larger ones as text), floats (NaN and infinities left out),
text; dates, times and timestamps as ISO 8601 text (``2024-01-31``, ``2024-01-31T12:00:00``,
with the offset for ``timestamptz``), numerics as floats, uuids as text, anything else as its
JSON text. A NULL leaves the key out.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mirror.duckdb_sql import quote
from mirror.errors import ConfigError
from mirror.tables import MirroredTable

INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Records:
    """Records ready for Chroma: equal-length lists, embeddings one float32 row each."""

    ids: list[str]
    embeddings: np.ndarray
    documents: list[str | None] | None
    metadatas: list[dict[str, Any]] | None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: list[int]) -> Records:
        return Records(
            ids=[self.ids[i] for i in rows],
            embeddings=self.embeddings[rows],
            documents=None if self.documents is None else [self.documents[i] for i in rows],
            metadatas=None if self.metadatas is None else [self.metadatas[i] for i in rows],
        )


@dataclass(frozen=True, slots=True)
class RecordShape:
    """Which columns of a mirrored table make a collection's records."""

    table: MirroredTable
    embedding: str
    document: str | None
    metadata: tuple[str, ...]
    dimensions: int | None
    """The embedding's length (``FLOAT[n]``); None for a ``FLOAT[]`` of any length."""

    @classmethod
    def of(
        cls,
        table: MirroredTable,
        *,
        embedding: str,
        document: str | None,
        metadata: tuple[str, ...],
    ) -> RecordShape:
        """The shape, or ConfigError naming what the table lacks."""
        names = {c.name: c for c in table.columns}
        where = f"{table.schema}.{table.name}"
        if not table.keys:
            raise ConfigError(
                f"{where} has no primary key: a Chroma collection's ids are its rows' keys"
            )
        for role, name in [("embedding", embedding), ("document", document),
                           *(("metadata", m) for m in metadata)]:  # fmt: skip
            if name is not None and name not in names:
                raise ConfigError(
                    f"{where} has no column {name!r} (the collection's {role});"
                    f" its columns: {', '.join(names)}"
                )
        kind = names[embedding].sql.upper().replace(" ", "")
        match = re.fullmatch(r"(?:FLOAT|REAL|FLOAT4)\[(\d*)\]", kind)
        if match is None:
            raise ConfigError(
                f"{where}.{embedding} is {names[embedding].sql}, not a vector: the embedding"
                " column must be a pgvector vector (mirrored as FLOAT[n])"
            )
        dims = int(match[1]) if match[1] else None
        return cls(table, embedding, document, metadata, dims)

    def id_sql(self, alias: str, *, cast: dict[str, str] | None = None) -> str:
        """The SQL of a row's id; with ``cast``, of text key columns cast to their types."""
        parts = []
        for key in self.table.keys:
            column = f"{alias}.{quote(key.name)}"
            if cast is not None:
                column = f"try_cast({column} as {cast.get(key.name, 'varchar')})"
            parts.append(f"{column}::varchar")
        return parts[0] if len(parts) == 1 else f"to_json([{', '.join(parts)}])::varchar"

    def select_sql(self, alias: str = "r") -> str:
        """The columns of a records query: id, embedding, document, then metadata."""
        listed = [f"{self.id_sql(alias)} as _pgml_id", f"{alias}.{quote(self.embedding)}"]
        if self.document is not None:
            listed.append(f"{alias}.{quote(self.document)}::varchar")
        listed += [f"{alias}.{quote(m)}" for m in self.metadata]
        return ", ".join(listed)

    def has_record_sql(self, alias: str = "r") -> str:
        """The condition for a row to have a record (an embedding of the right length)."""
        column = f"{alias}.{quote(self.embedding)}"
        if self.dimensions is None:
            return f"{column} is not null and len({column}) > 0"
        return f"{column} is not null"

    def records(self, rows: pa.Table, *, dimensions: int | None = None) -> Records:
        """Records of rows selected with :meth:`select_sql` (every embedding not NULL); with
        a ``FLOAT[]`` embedding, rows of another length than ``dimensions`` are left out."""
        column = rows.column(1).combine_chunks()
        if self.dimensions is None:
            lengths = column.value_lengths().to_numpy(zero_copy_only=False)
            want = dimensions or (int(lengths[0]) if len(lengths) else 0)
            keep = np.flatnonzero(lengths == want)
            if len(keep) < rows.num_rows:
                rows = rows.take(pa.array(keep))
                column = rows.column(1).combine_chunks()
            dims = want
        else:
            dims = self.dimensions
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        embeddings = values.reshape(rows.num_rows, dims) if rows.num_rows else values.reshape(0, 0)
        ids = rows.column(0).to_pylist()
        at = 2
        documents = None
        if self.document is not None:
            documents = rows.column(at).to_pylist()
            at += 1
        metadatas = None
        if self.metadata:
            columns = [rows.column(at + i).to_pylist() for i in range(len(self.metadata))]
            metadatas = [
                {name: metadata_value(v[i]) for name, v in zip(self.metadata, columns, strict=True)}
                for i in range(rows.num_rows)
            ]
        return Records(ids, embeddings, documents, metadatas)


def metadata_value(value: Any) -> Any:
    """A mirrored value as a Chroma metadata value (None: leave the key out)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if INT64[0] <= value <= INT64[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, default=str, sort_keys=True)


def same_embedding(a: np.ndarray, b: np.ndarray, *, ulps: int = 4) -> np.ndarray:
    """Per row, whether two float32 matrices agree within ``ulps`` units in the last place.

    Chroma hands back what it was given in the l2 and ip spaces, bit for bit, but in the
    cosine space up to one unit in the last place off (it keeps vectors normalised); an edit
    by hand changes far more than that.
    """
    if a.shape != b.shape:
        return np.zeros(len(a), dtype=bool)
    x = a.astype(np.float32).view(np.int32).astype(np.int64)
    y = b.astype(np.float32).view(np.int32).astype(np.int64)
    x = np.where(x < 0, np.int64(-(2**31)) - x, x)  # sign-magnitude to a monotonic order
    y = np.where(y < 0, np.int64(-(2**31)) - y, y)
    return np.asarray(np.all(np.abs(x - y) <= ulps, axis=1))


def same_metadata(want: dict[str, Any] | None, got: dict[str, Any] | None) -> bool:
    """Whether Chroma's metadata of a record is the row's (NULLs being absent keys)."""
    left = {k: v for k, v in (want or {}).items() if v is not None}
    right = dict(got or {})
    if left.keys() != right.keys():
        return False
    for key, value in left.items():
        other = right[key]
        if isinstance(value, float) and isinstance(other, int | float):
            if not math.isclose(float(other), value, rel_tol=1e-12, abs_tol=1e-300):
                return False  # Chroma gives floats back a few units in the last place off
        elif type(value) is not type(other) or value != other:
            return False
    return True
