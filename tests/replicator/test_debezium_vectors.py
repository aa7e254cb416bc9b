"""pgvector's columns through Debezium and Kafka: mirrored as float32 lists, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import psycopg
import pytest

from tests.replicator.mirror_check import execute, wait_for
from tests.replicator.test_debezium import Consuming, settings_for
from tests.replicator.test_vector_columns import bits, random_floats, vector_text

pytestmark = pytest.mark.timeout(300)

ROWS = 300
DIMS = 384


def item_rows(rng: np.random.Generator, ids: range) -> list[tuple[Any, ...]]:
    return [
        (
            i,
            None if i % 13 == 0 else vector_text(random_floats(rng, DIMS)),
            None if i % 5 == 0 else vector_text(random_floats(rng, int(rng.integers(1, 20)))),
        )
        for i in ids
    ]


def load(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy("copy items from stdin") as c:
        for row in rows:
            c.write_row(row)


def as_bits(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(r[0], *(bits(v) for v in r[1:])) for r in rows]


def source_bits(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn, conn.cursor(binary=True) as cur:
        rows = cur.execute(
            "select id, embedding::real[], loose::real[] from items order by id"
        ).fetchall()
    return as_bits(rows)


def mirror_bits(consuming: Consuming) -> list[tuple[Any, ...]]:
    if consuming.error is not None:
        raise consuming.error
    try:
        rows = (
            consuming.con.cursor()
            .execute("select id, embedding, loose from public.items order by id")
            .fetchall()
        )
    except duckdb.CatalogException:
        return []  # not created yet
    return as_bits(rows)


def test_vectors_through_debezium_bit_for_bit(
    pgvector_dsn: str, debezium: Callable[..., Any], mirror_path: Path
) -> None:
    rng = np.random.default_rng(5)
    execute(
        pgvector_dsn,
        f"create table items (id int primary key, embedding vector({DIMS}), loose vector)",
    )
    load(pgvector_dsn, item_rows(rng, range(1, ROWS + 1)))
    stack = debezium(pgvector_dsn, ["public.items"], prefix="vectors")
    with Consuming(settings_for(stack, mirror_path, ["public.items"])) as consuming:
        expected = source_bits(pgvector_dsn)
        wait_for(lambda: mirror_bits(consuming) == expected, timeout=120, what="the snapshot")
        load(pgvector_dsn, item_rows(rng, range(ROWS + 1, ROWS + 51)))
        with psycopg.connect(pgvector_dsn) as conn:
            for i in range(2, ROWS, 9):
                embedding = None if i % 27 == 2 else vector_text(random_floats(rng, DIMS))
                conn.execute("update items set embedding = %s where id = %s", (embedding, i))
            conn.execute("delete from items where id % 7 = 0")
        expected = source_bits(pgvector_dsn)
        wait_for(lambda: mirror_bits(consuming) == expected, timeout=120, what="the stream")
        stats = consuming.stop()
    assert stats.dead_letters == {}
    types = dict(
        duckdb.connect(str(mirror_path), read_only=True)
        .execute(
            "select column_name, data_type from information_schema.columns"
            " where table_name = 'items'"
        )
        .fetchall()
    )
    # Debezium's schema has no dimension: a list of float32, as for vector without one
    assert types == {"id": "INTEGER", "embedding": "FLOAT[]", "loose": "FLOAT[]"}
