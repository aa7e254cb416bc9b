"""Decode PostgreSQL's binary COPY format into Arrow columns: bytes in, table out.

Types with a simple binary form (integers, floats, bool, date, time, timestamps, text, bytea,
and pgvector's vector, halfvec and sparsevec) are decoded straight into typed Arrow arrays; the
SELECT casts every other column to text, which the mirror then casts as it does streamed values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mirror.changes import Relation
from mirror.column_types import SourceType, mirror_type, pgvector_type
from replicator.columnar import be_int32, fixed_width, validity, views
from replicator.vector_format import VectorFormatError, dense_reader, sparse_reader

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_POSTGRES_EPOCH_DAYS = 10_957  # 2000-01-01 - 1970-01-01
_POSTGRES_EPOCH_US = _POSTGRES_EPOCH_DAYS * 86_400_000_000
_INFINITY = np.iinfo(np.int64).max
_MINUS_INFINITY = np.iinfo(np.int64).min


class CopyFormatError(ValueError):
    """The data does not follow the binary COPY format."""


Reader = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], pa.Array]
"""(buffer, value starts, value lengths, valid) -> Arrow array."""


def _fixed(
    dtype: str, arrow: pa.DataType, adjust: Callable[[np.ndarray], np.ndarray] | None = None
) -> Reader:
    def read(
        buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, valid: np.ndarray
    ) -> pa.Array:
        values = fixed_width(buf, starts, dtype)
        if adjust is not None:
            values = adjust(values)
        count = len(values)
        return pa.Array.from_buffers(
            arrow,
            count,
            [validity(valid), pa.py_buffer(np.ascontiguousarray(values))],
            null_count=count - int(np.count_nonzero(valid)),
        )

    return read


def _shift_timestamp(values: np.ndarray) -> np.ndarray:
    """Postgres' epoch to Unix'; its infinities (INT64 max and min) to DuckDB's (+-INT64 max)."""
    shifted = np.where(values == _INFINITY, _INFINITY, values + _POSTGRES_EPOCH_US)
    return np.where(values == _MINUS_INFINITY, -_INFINITY, shifted)


def _shift_date(values: np.ndarray) -> np.ndarray:
    top = np.iinfo(np.int32).max
    shifted = np.where(values == top, top, values.astype(np.int64) + _POSTGRES_EPOCH_DAYS)
    return np.where(values == np.iinfo(np.int32).min, -top, shifted).astype(np.int32)


def _bool(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, valid: np.ndarray) -> pa.Array:
    values = buf[np.minimum(starts, len(buf) - 1)] != 0
    return pa.array(values, mask=~valid)


def _text(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, valid: np.ndarray) -> pa.Array:
    return views(buf, starts, lengths, valid)


def _bytes(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, valid: np.ndarray) -> pa.Array:
    return views(buf, starts, lengths, valid, pa.binary_view())


READERS: dict[int, Reader] = {
    16: _bool,
    21: _fixed(">i2", pa.int16()),
    23: _fixed(">i4", pa.int32()),
    20: _fixed(">i8", pa.int64()),
    700: _fixed(">f4", pa.float32()),
    701: _fixed(">f8", pa.float64()),
    1082: _fixed(">i4", pa.date32(), _shift_date),
    1083: _fixed(">i8", pa.time64("us")),
    1114: _fixed(">i8", pa.timestamp("us"), _shift_timestamp),
    1184: _fixed(">i8", pa.timestamp("us", tz="UTC"), _shift_timestamp),
    25: _text,
    1043: _text,
    1042: _text,
    19: _text,
    114: _text,
    17: _bytes,
}
"""Readers of the binary forms the copy keeps; every other type is selected as text."""


@dataclass(frozen=True, slots=True)
class CopyColumns:
    """How each column of a relation is selected and read."""

    names: list[str]
    readers: list[Reader]
    as_text: list[bool]


def copy_columns(relation: Relation, types: Mapping[int, SourceType] | None = None) -> CopyColumns:
    """How to copy ``relation``, whose non-built-in types ``types`` describes."""
    readers: list[Reader] = []
    as_text: list[bool] = []
    for column in relation.columns:
        reader = READERS.get(column.type_oid) or _vector_reader(
            column.type_oid, column.type_modifier, types
        )
        as_text.append(reader is None)
        readers.append(reader or _text)
    return CopyColumns(relation.column_names, readers, as_text)


def _vector_reader(
    type_oid: int, modifier: int, types: Mapping[int, SourceType] | None
) -> Reader | None:
    """A reader of pgvector's binary form, when the mirror keeps the column as floats."""
    vector = pgvector_type(type_oid, modifier, types)
    if vector is None or not mirror_type(type_oid, modifier, types).sql.startswith("FLOAT["):
        return None
    kind, dims = vector
    return sparse_reader(dims) if kind == "sparsevec" else dense_reader(kind, dims)


def header_length(first: bytes | bytearray | memoryview) -> int:
    """Length of the file header at the start of the first COPY message."""
    if bytes(first[: len(SIGNATURE)]) != SIGNATURE:
        raise CopyFormatError("binary COPY data does not start with the PGCOPY signature")
    extension = int.from_bytes(first[15:19], "big")
    return len(SIGNATURE) + 8 + extension


def decode_rows(buf: np.ndarray, starts: np.ndarray, columns: CopyColumns) -> pa.Table:
    """Decode the rows beginning at ``starts`` (each at its field count) into a table.

    ``buf`` must be ``columnar.padded``; text columns are views into it."""
    width = len(columns.names)
    fields = (buf[starts].astype(np.int64) << 8) | buf[starts + 1]
    starts = starts[fields != 0xFFFF]  # the trailer, and a header that came without a row
    if not np.all(fields[fields != 0xFFFF] == width):
        raise CopyFormatError(f"rows with other than {width} fields in binary COPY data")
    pos = starts + 2
    arrays = []
    for name, reader in zip(columns.names, columns.readers, strict=True):
        lengths = be_int32(buf, pos)
        valid = lengths >= 0
        value_starts = pos + 4
        try:
            arrays.append(reader(buf, value_starts, lengths, valid))
        except VectorFormatError as exc:
            raise CopyFormatError(f"column {name}: {exc}") from None
        pos = value_starts + np.where(valid, lengths, 0)
    return pa.Table.from_arrays(arrays, names=columns.names)


def row_starts(ends: Sequence[int] | np.ndarray, first: int) -> np.ndarray:
    """Start of each row in a buffer of rows whose end offsets are ``ends``."""
    ends = np.asarray(ends, dtype=np.int64)
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = first
        starts[1:] = ends[:-1]
    return starts
