"""A table of embeddings in a pgvector source, loaded with COPY, and pgvector's own answers."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import psycopg

DIMS = 384
ROWS = 20_000
CATEGORIES = 20
OPERATORS = ("<->", "<=>", "<#>", "<+>")

DOCS = f"""
create table docs (
    id bigint primary key,
    embedding vector({DIMS}),
    body text not null,
    category int not null,
    score double precision
)"""


def embeddings(rng: np.random.Generator, count: int, *, clusters: int = 200) -> np.ndarray:
    """Float32 vectors grouped around ``clusters`` centres, as a text model's embeddings are."""
    centres = rng.standard_normal((clusters, DIMS)).astype(np.float32)
    which = rng.integers(0, clusters, count)
    noise = rng.standard_normal((count, DIMS)).astype(np.float32)
    return (centres[which] + 0.8 * noise).astype(np.float32)


def vector_text(vector: np.ndarray) -> str:
    """pgvector's input form (a float32's str() is its shortest round-trip digits)."""
    return "[" + ",".join(str(v) for v in vector.astype(np.float32).tolist()) + "]"


def copy_docs(dsn: str, ids: Sequence[int], vectors: np.ndarray) -> None:
    """COPY rows into docs in PostgreSQL's binary format (pgvector's: dims, 0, float4s)."""
    out = bytearray(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
    big_endian = vectors.astype(">f4")
    for i, vector in zip(ids, big_endian, strict=True):
        body = f"document {i}".encode()
        out += struct.pack(">hiq", 5, 8, i)
        out += struct.pack(">ihh", 4 + 4 * DIMS, DIMS, 0) + vector.tobytes()
        out += struct.pack(">i", len(body)) + body
        out += struct.pack(">ii", 4, i % CATEGORIES)
        out += struct.pack(">id", 8, i / 7)
    out += struct.pack(">h", -1)
    statement = "copy docs (id, embedding, body, category, score) from stdin (format binary)"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        copy.write(bytes(out))


def source_top(
    conn: psycopg.Connection, operator: str, query: np.ndarray, *, where: str = "", k: int = 10
) -> list[tuple[int, float]]:
    """pgvector's exact answer (no index on docs): the ids and distances of the ``k`` nearest."""
    condition = f"where {where}" if where else ""
    rows = conn.execute(
        f"select id, embedding {operator} %s::vector from docs {condition}"  # operator: ours
        f" order by embedding {operator} %s::vector limit {k}",
        (vector_text(query), vector_text(query)),
    ).fetchall()
    return [(int(i), float(d)) for i, d in rows]
