"""The binary COPY decoder, fed hand-built COPY data (no socket)."""

from __future__ import annotations

import datetime as dt
import struct

import numpy as np
import pyarrow as pa
import pytest

from mirror.changes import Column, Relation
from replicator.columnar import PADDING
from replicator.copy_format import (
    SIGNATURE,
    CopyFormatError,
    copy_columns,
    decode_rows,
    header_length,
    row_starts,
)

HEADER = SIGNATURE + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
RELATION = Relation(
    1,
    "public",
    "t",
    "d",
    (
        Column("id", 20, -1, True),
        Column("name", 25, -1, False),
        Column("score", 701, -1, False),
        Column("born", 1082, -1, False),
        Column("seen", 1184, -1, False),
        Column("ok", 16, -1, False),
        Column("blob", 17, -1, False),
        Column("price", 1700, -1, False),
    ),
)


def field(data: bytes | None) -> bytes:
    return struct.pack(">i", -1) if data is None else struct.pack(">i", len(data)) + data


def row(*fields: bytes | None) -> bytes:
    return struct.pack(">h", len(fields)) + b"".join(field(f) for f in fields)


def decode(messages: list[bytes]) -> pa.Table:
    data = b"".join(messages) + bytes(PADDING)
    ends = np.cumsum([len(m) for m in messages])
    starts = row_starts(ends, header_length(data))
    return decode_rows(np.frombuffer(data, dtype=np.uint8), starts, copy_columns(RELATION))


def test_typed_columns_decode_to_arrow_types_with_nulls():
    us_2000 = 946_684_800_000_000
    first = row(
        struct.pack(">q", 7),
        b"a name longer than twelve bytes",
        struct.pack(">d", 1.5),
        struct.pack(">i", 31),  # 2000-02-01
        struct.pack(">q", 86_400_000_000),  # 2000-01-02 00:00 UTC
        b"\x01",
        b"\x00\xff",
        b"12.50",
    )
    second = row(struct.pack(">q", -1), "ü".encode(), None, None, None, b"\x00", None, None)
    table = decode([HEADER + first, second, TRAILER])
    assert table.column("id").to_pylist() == [7, -1]
    assert table.column("name").to_pylist() == ["a name longer than twelve bytes", "ü"]
    assert table.column("score").to_pylist() == [1.5, None]
    assert table.column("born").to_pylist() == [dt.date(2000, 2, 1), None]
    assert table.column("seen").type == pa.timestamp("us", tz="UTC")
    assert table.column("seen").cast(pa.int64()).to_pylist() == [us_2000 + 86_400_000_000, None]
    assert table.column("ok").to_pylist() == [True, False]
    assert table.column("blob").to_pylist() == [b"\x00\xff", None]
    assert table.column("price").to_pylist() == ["12.50", None]  # selected as text


def test_infinite_timestamps_and_dates_stay_infinite():
    infinity = struct.pack(">q", 2**63 - 1)
    table = decode(
        [HEADER + row(b"\0" * 8, b"", None, struct.pack(">i", 2**31 - 1), infinity,
                      None, None, None), TRAILER]
    )  # fmt: skip
    assert table.column("seen").cast(pa.int64()).to_pylist() == [2**63 - 1]
    assert table.column("born").cast(pa.int32()).to_pylist() == [2**31 - 1]


def test_empty_table_has_no_rows():
    assert decode([HEADER + TRAILER]).num_rows == 0


def test_copy_data_must_start_with_the_signature():
    with pytest.raises(CopyFormatError, match="signature"):
        header_length(b"not a copy")


def test_rows_with_the_wrong_width_are_an_error():
    with pytest.raises(CopyFormatError, match="fields"):
        decode([HEADER + row(b"x"), TRAILER])
