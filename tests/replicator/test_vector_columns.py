"""pgvector's columns mirrored as DuckDB floats, bit for bit: initial copy, stream, training."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from mirror.store import Mirror
from tests.replicator.mirror_check import catch_up, execute, mirror_columns, query
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker

ROWS = 2_000
DIMS = 384
BIG = 600  # 4 * 600 + 8 bytes: stored out of line (TOAST), so an update may leave it unchanged

ITEMS = f"""
create table items (
    id int primary key,
    embedding vector({DIMS}),
    loose vector,
    big vector({BIG}),
    note text
)"""


def random_floats(rng: np.random.Generator, count: int) -> np.ndarray:
    """Finite float32 values from random bits: every exponent, subnormals, both zeros."""
    values = rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = np.where(np.isfinite(values), values, np.float32(1.5))
    values[: min(count, 4)] = np.array([-0.0, 1e-45, -3.4028235e38, 1.1754942e-38])[: min(4, count)]
    return values


def vector_text(values: np.ndarray | None) -> str | None:
    """pgvector's input form; str() of a float32 is its shortest round-trip digits."""
    if values is None:
        return None
    return "[" + ",".join(str(v) for v in values) + "]"


def item_rows(rng: np.random.Generator, ids: Iterable[int]) -> list[tuple[Any, ...]]:
    rows = []
    for i in ids:
        embedding = None if i % 13 == 0 else random_floats(rng, DIMS)
        loose = None if i % 5 == 0 else random_floats(rng, int(rng.integers(1, 20)))
        big = random_floats(rng, BIG) if i % 40 == 1 else None
        rows.append((i, vector_text(embedding), vector_text(loose), vector_text(big), f"n{i}"))
    return rows


def load_items(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    statement = "copy items (id, embedding, loose, big, note) from stdin"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def bits(values: Any) -> tuple[int, ...] | None:
    """A list of floats as the bits of their float32 values (None stays None)."""
    if values is None:
        return None
    return tuple(np.asarray(values, dtype=np.float32).view(np.uint32).tolist())


def assert_bitwise_equal(dsn: str, mirror: Path, columns: list[str]) -> int:
    """Compare ``columns`` of items, as the source's ``::real[]`` (read binary), bit for bit."""
    selected = ", ".join(f"{c}::real[]" for c in columns)
    with psycopg.connect(dsn) as conn, conn.cursor(binary=True) as cur:
        source = cur.execute(f"select id, {selected} from items order by id").fetchall()
    mirrored = query(mirror, f"select id, {', '.join(columns)} from public.items order by id")
    assert [r[0] for r in mirrored] == [r[0] for r in source]
    for want, got in zip(source, mirrored, strict=True):
        for name, a, b in zip(columns, want[1:], got[1:], strict=True):
            assert bits(b) == bits(a), f"row {want[0]}, column {name}"
    return len(source)


def test_vectors_copy_and_stream_bit_for_bit(pgvector_dsn: str, mirror_path: Path) -> None:
    rng = np.random.default_rng(17)
    execute(pgvector_dsn, ITEMS)
    load_items(pgvector_dsn, item_rows(rng, range(1, ROWS + 1)))
    stats = catch_up(pgvector_dsn, mirror_path, ["public.items"])
    assert stats.copied_rows == {"public.items": ROWS}
    types = dict(mirror_columns(mirror_path, "public.items"))
    assert types["embedding"] == f"FLOAT[{DIMS}]"
    assert types["loose"] == "FLOAT[]"
    assert types["big"] == f"FLOAT[{BIG}]"
    columns = ["embedding", "loose", "big"]
    assert assert_bitwise_equal(pgvector_dsn, mirror_path, columns) == ROWS

    load_items(pgvector_dsn, item_rows(rng, range(ROWS + 1, ROWS + 301)))
    with psycopg.connect(pgvector_dsn) as conn:
        for i in range(3, ROWS, 7):  # new values, a NULL now and then, a NULL made a value
            embedding = None if i % 49 == 3 else vector_text(random_floats(rng, DIMS))
            loose = vector_text(random_floats(rng, int(rng.integers(1, 30))))
            conn.execute(
                "update items set embedding = %s, loose = %s where id = %s", (embedding, loose, i)
            )
        conn.execute("update items set note = 'toast stays' where big is not null")
        conn.execute("delete from items where id % 11 = 0")
        conn.execute(
            "update items set id = id + 10000, big = %s where id = 41",
            (vector_text(random_floats(rng, BIG)),),
        )
    stats = catch_up(pgvector_dsn, mirror_path)
    assert stats.rows_applied > 300
    same = assert_bitwise_equal(pgvector_dsn, mirror_path, columns)
    assert same == ROWS + 300 - len(range(11, ROWS + 301, 11))
    notes = query(mirror_path, "select count(*) from public.items where note = 'toast stays'")
    big = range(1, ROWS + 301, 40)  # the rows with a big vector, left unchanged by the update
    assert notes[0][0] == len([i for i in big if i % 11])


def test_vectors_of_a_domain_and_arrays_of_vectors(pgvector_dsn: str, mirror_path: Path) -> None:
    execute(
        pgvector_dsn,
        "create domain embedding3 as vector(3)",
        "create table items (id int primary key, e embedding3, many vector[])",
        "insert into items values (1, '[1,2,3]', array['[1,2]'::vector, '[3]']), (2, null, null)",
    )
    catch_up(pgvector_dsn, mirror_path, ["public.items"])
    execute(pgvector_dsn, "insert into items values (3, '[0.1,-0,4e-45]', '{}')")
    catch_up(pgvector_dsn, mirror_path)
    types = dict(mirror_columns(mirror_path, "public.items"))
    assert types == {"id": "INTEGER", "e": "FLOAT[3]", "many": "VARCHAR"}
    assert assert_bitwise_equal(pgvector_dsn, mirror_path, ["e"]) == 3
    rows = query(mirror_path, "select many from public.items order by id")
    assert rows == [('{"[1,2]",[3]}',), (None,), ("{}",)]  # Postgres' text form


def test_a_dimension_change_copies_the_table_again(pgvector_dsn: str, mirror_path: Path) -> None:
    execute(
        pgvector_dsn,
        "create table items (id int primary key, v vector(2))",
        "insert into items values (1, '[1,2]')",
    )
    catch_up(pgvector_dsn, mirror_path, ["public.items"])
    execute(
        pgvector_dsn,
        "alter table items alter column v type vector(3) using (v::real[] || 0.5::real)::vector",
        "insert into items values (2, '[4,5,6]')",
    )
    catch_up(pgvector_dsn, mirror_path)
    assert dict(mirror_columns(mirror_path, "public.items"))["v"] == "FLOAT[3]"
    assert assert_bitwise_equal(pgvector_dsn, mirror_path, ["v"]) == 2


def test_halfvec_and_sparsevec(
    pgvector_dsn: str, pgvector_version: tuple[int, ...], mirror_path: Path
) -> None:
    if pgvector_version < (0, 7):
        pytest.skip(f"pgvector {pgvector_version} has neither halfvec nor sparsevec (0.7 has)")
    execute(
        pgvector_dsn,
        "create table items (id int primary key, h halfvec(3), s sparsevec(5), w sparsevec)",
        "insert into items values (1, '[1,0.1,-65504]', '{1:0.1,5:-2}/5', '{2:1}/100000'),"
        " (2, null, null, null), (3, '[6e-8,0,-0]', '{}/5', '{}/1')",
    )
    catch_up(pgvector_dsn, mirror_path, ["public.items"])
    execute(pgvector_dsn, "insert into items select id + 10, h, s, w from items")
    catch_up(pgvector_dsn, mirror_path)
    types = dict(mirror_columns(mirror_path, "public.items"))
    assert types == {"id": "INTEGER", "h": "FLOAT[3]", "s": "FLOAT[5]", "w": "VARCHAR"}
    # sparsevec has no cast to real[]; through vector it is dense
    execute(pgvector_dsn, "alter table items add column s_dense vector(5)")
    execute(pgvector_dsn, "update items set s_dense = s::vector")
    catch_up(pgvector_dsn, mirror_path)
    assert assert_bitwise_equal(pgvector_dsn, mirror_path, ["h"]) == 6
    source = query(mirror_path, "select s, s_dense from public.items order by id")
    assert all(bits(s) == bits(dense) for s, dense in source)


# -- training on a vector column -------------------------------------------------------------


def test_a_vector_column_trains_as_one_feature_per_dimension(
    pgvector_dsn: str, mirror_path: Path, fit_worker: FitWorker
) -> None:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    rows, dims = 300, 8
    x = rng.normal(size=(rows, dims)).astype(np.float32)
    size = rng.uniform(1, 10, rows)
    y = x.astype(np.float64) @ np.arange(1, dims + 1) + 2 * size + rng.normal(0, 0.1, rows)
    execute(
        pgvector_dsn,
        f"create table items (id int primary key, e vector({dims}), size float8, y float8)",
    )
    with (
        psycopg.connect(pgvector_dsn) as conn,
        conn.cursor() as cur,
        cur.copy("copy items from stdin") as copy,
    ):
        for i in range(rows):
            copy.write_row((i, vector_text(x[i]), float(size[i]), float(y[i])))
    catch_up(pgvector_dsn, mirror_path, ["public.items"])

    mirror = Mirror(mirror_path)
    trainer = Trainer(mirror.con, artifact_home(mirror.path), worker=fit_worker)
    try:
        result = trainer.train(
            "vectors", task="regression", relation="public.items", y="y",
            algorithm="linear", test_size=0.25, test_sampling="last",
        )  # fmt: skip
        _, model = trainer.model(result.model_id)
    finally:
        trainer.close()
        mirror.close()
    assert len(model.feature_names) == dims + 1
    features = np.column_stack([x.astype(np.float64), size])
    train = np.arange(rows - 75)  # the snapshot is in key order, the last quarter held out
    by_hand = LinearRegression().fit(features[train], y[train])
    mine = model.predict_matrix(features)
    np.testing.assert_allclose(mine, by_hand.predict(features), rtol=1e-6, atol=1e-6)
    assert result.metrics["r2"] > 0.99
