"""pgvector's binary forms in the copy decoder, and sparsevec's text form, hand-built (no server).

The pgvector that the test server has (pgserver's, 0.6) knows neither halfvec nor sparsevec:
these tests hold their decoding to the forms pgvector 0.7 documents.
"""

from __future__ import annotations

import struct

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from mirror.changes import Column, Relation
from mirror.column_types import SourceType, mirror_type, sparse_to_dense
from replicator.columnar import PADDING
from replicator.copy_format import (
    CopyFormatError,
    copy_columns,
    decode_rows,
    header_length,
    row_starts,
)
from tests.replicator.test_copy_format import HEADER, TRAILER, row

VECTOR, HALFVEC, SPARSEVEC, DOMAIN = 90001, 90002, 90003, 90004
TYPES = {
    VECTOR: SourceType(VECTOR, "b", input_function="vector_in"),
    HALFVEC: SourceType(HALFVEC, "b", input_function="halfvec_in"),
    SPARSEVEC: SourceType(SPARSEVEC, "b", input_function="sparsevec_in"),
    DOMAIN: SourceType(DOMAIN, "d", base_oid=VECTOR, base_modifier=2),
}


def vector(values: list[float], dims: int | None = None, kind: str = ">f4") -> bytes:
    dims = len(values) if dims is None else dims
    return struct.pack(">hh", dims, 0) + np.array(values, dtype=kind).tobytes()


def sparse(dims: int, entries: dict[int, float]) -> bytes:
    indices = np.array(list(entries), dtype=">i4").tobytes()
    values = np.array(list(entries.values()), dtype=">f4").tobytes()
    return struct.pack(">iii", dims, len(entries), 0) + indices + values


def decode(columns: list[Column], rows: list[bytes]) -> pa.Table:
    relation = Relation(1, "public", "t", "d", tuple(columns))
    messages = [HEADER + rows[0], *rows[1:], TRAILER]
    data = b"".join(messages) + bytes(PADDING)
    ends = np.cumsum([len(m) for m in messages])
    starts = row_starts(ends, header_length(data))
    return decode_rows(np.frombuffer(data, dtype=np.uint8), starts, copy_columns(relation, TYPES))


def test_each_kind_decodes_to_float32_lists_with_nulls() -> None:
    tiny = float(np.float32(1e-45))
    columns = [
        Column("v", VECTOR, 3, False),
        Column("loose", VECTOR, -1, False),
        Column("h", HALFVEC, 2, False),
        Column("s", SPARSEVEC, 4, False),
        Column("d", DOMAIN, -1, False),
    ]
    table = decode(
        columns,
        [
            row(
                vector([1, -0.0, tiny]),
                vector([0.1]),
                vector([65504, 6e-8], kind=">f2"),
                sparse(4, {0: 0.5, 3: -2}),
                vector([7, 8]),
            ),
            row(None, None, None, None, None),
            row(
                vector([3, 2, 1]),
                vector([1, 2, 3, 4]),
                vector([0, 1], kind=">f2"),
                sparse(4, {}),
                None,
            ),
        ],
    )
    assert table.schema.field("v").type == pa.list_(pa.float32(), 3)
    assert table.schema.field("loose").type == pa.list_(pa.float32())
    assert table.schema.field("d").type == pa.list_(pa.float32(), 2)
    got = table.to_pylist()
    assert np.array(got[0]["v"], np.float32).view(np.uint32).tolist() == [
        0x3F800000, 0x80000000, 0x00000001,
    ]  # fmt: skip
    assert got[0]["loose"] == [float(np.float32(0.1))]
    assert got[0]["h"] == [65504.0, float(np.float16(6e-8))]
    assert got[0]["s"] == [0.5, 0, 0, -2]
    assert got[1] == dict.fromkeys(["v", "loose", "h", "s", "d"])
    assert got[2]["loose"] == [1, 2, 3, 4]
    assert got[2]["s"] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [
        (Column("v", VECTOR, 3, False), vector([1, 2]), r"vector of 2 dimensions in a vector\(3\)"),
        (Column("v", VECTOR, 2, False), vector([1, 2], dims=3), "length disagrees"),
        (Column("v", VECTOR, -1, False), vector([1, 2])[:-1], "length disagrees"),
        (Column("s", SPARSEVEC, 4, False), sparse(4, {4: 1}), "outside its 4 dimensions"),
        (Column("s", SPARSEVEC, 4, False), sparse(5, {1: 1}), "sparsevec of 5 dimensions"),
        (Column("s", SPARSEVEC, 4, False), sparse(4, {1: 1})[:-4], "disagrees with its entries"),
    ],
)
def test_malformed_values_are_refused(column: Column, value: bytes, error: str) -> None:
    with pytest.raises(CopyFormatError, match=f"column {column.name}: .*{error}"):
        decode([column], [row(value)])


def test_mirror_types() -> None:
    assert mirror_type(VECTOR, 384, TYPES).sql == "FLOAT[384]"
    assert mirror_type(VECTOR, -1, TYPES).sql == "FLOAT[]"
    assert mirror_type(HALFVEC, 16, TYPES).sql == "FLOAT[16]"
    assert mirror_type(SPARSEVEC, 16_000, TYPES).sql == "FLOAT[16000]"
    assert mirror_type(SPARSEVEC, 16_001, TYPES).sql == "VARCHAR"  # kept as text
    assert mirror_type(SPARSEVEC, -1, TYPES).sql == "VARCHAR"
    assert mirror_type(DOMAIN, -1, TYPES).sql == "FLOAT[2]"
    other = {VECTOR: SourceType(VECTOR, "b", input_function="my_vector_in")}
    assert mirror_type(VECTOR, 3, other).sql == "VARCHAR"


def test_sparsevec_text_becomes_dense_for_the_cast() -> None:
    texts = pa.array(["{1:0.1,3:-2e-45}/4", None, "{}/2", "{2:1}/3"])
    assert sparse_to_dense(texts).to_pylist() == ["[0.1,0,-2e-45,0]", None, "[0,0]", "[0,1,0]"]
    kind = mirror_type(SPARSEVEC, 4, TYPES)
    con = duckdb.connect()
    value = con.execute(f"select {kind.cast_sql('?')}", ["[0.1,0,-2e-45,0]"]).fetchone()
    assert value is not None
    assert (
        np.array(value[0], np.float32).tolist()
        == np.array([0.1, 0, -2e-45, 0], np.float32).tolist()
    )
    with pytest.raises(duckdb.ConversionException):
        con.execute(f"select {kind.cast_sql('?')}", ["[1,2]"])  # 2 values in a sparsevec(4)
