"""PostgresML's vector functions through psql against the endpoint, checked against numpy.

Each function runs on rows of random vectors given as VALUES (``real[]`` and ``float8[]``);
the answers are compared with numpy's on the same numbers, in the type PostgresML answers in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import connect, psql

TYPES = {"real": np.float32, "float8": np.float64}
RTOL = {"real": 2e-6, "float8": 1e-12}
ROWS, DIMENSION = 6, 5


def _literal(vector: np.ndarray, pg_type: str) -> str:
    # repr of a numpy scalar's .item() is the shortest text that reads back to the same value
    return f"ARRAY[{', '.join(repr(v.item()) for v in vector)}]::{pg_type}[]"


def _values(columns: list[np.ndarray], pg_type: str) -> str:
    rows = [
        "(" + ", ".join([str(i), *(_literal(c[i], pg_type) for c in columns)]) + ")"
        for i in range(len(columns[0]))
    ]
    return "VALUES " + ", ".join(rows)


def _numbers(text: str) -> list[float]:
    """A psql array or scalar field as floats."""
    text = text.strip().strip("{}")
    return [float(v) for v in text.split(",")] if text else []


def _data(pg_type: str, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = TYPES[pg_type]
    a = rng.normal(size=(ROWS, DIMENSION)).astype(dtype)
    b = rng.normal(size=(ROWS, DIMENSION)).astype(dtype)
    a[0, 1] = 0.0  # norm_l0 counts the zeros out
    scalars = rng.uniform(0.5, 3.0, size=ROWS).astype(dtype)
    return a, b, scalars


def _vv(op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda a, b, s: op(a.astype(np.float64), b.astype(np.float64))


def _vs(op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda a, b, s: op(a.astype(np.float64), s.astype(np.float64)[:, None])


def _norm(a: np.ndarray, order: float) -> np.ndarray:
    return np.linalg.norm(a.astype(np.float64), ord=order, axis=1)


VECTOR_RESULTS: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "add_vector": ("pgml.add(a, b)", _vv(np.add)),
    "subtract_vector": ("pgml.subtract(a, b)", _vv(np.subtract)),
    "multiply_vector": ("pgml.multiply(a, b)", _vv(np.multiply)),
    "divide_vector": ("pgml.divide(a, b)", _vv(np.divide)),
    "add_scalar": ("pgml.add(a, s)", _vs(np.add)),
    "subtract_scalar": ("pgml.subtract(a, s)", _vs(np.subtract)),
    "multiply_scalar": ("pgml.multiply(a, s)", _vs(np.multiply)),
    "divide_scalar": ("pgml.divide(a, s)", _vs(np.divide)),
    "normalize_l1": ("pgml.normalize_l1(a)", lambda a, b, s: a / _norm(a, 1)[:, None]),
    "normalize_l2": ("pgml.normalize_l2(a)", lambda a, b, s: a / _norm(a, 2)[:, None]),
    "normalize_max": ("pgml.normalize_max(a)", lambda a, b, s: a / _norm(a, np.inf)[:, None]),
}

SCALAR_RESULTS: dict[str, tuple[str, Callable[..., np.ndarray]]] = {
    "norm_l0": ("pgml.norm_l0(a)", lambda a, b, s: np.count_nonzero(a, axis=1)),
    "norm_l1": ("pgml.norm_l1(a)", lambda a, b, s: _norm(a, 1)),
    "norm_l2": ("pgml.norm_l2(a)", lambda a, b, s: _norm(a, 2)),
    "norm_max": ("pgml.norm_max(a)", lambda a, b, s: _norm(a, np.inf)),
    "distance_l1": ("pgml.distance_l1(a, b)", lambda a, b, s: _norm(a - b.astype(a.dtype), 1)),
    "distance_l2": (
        "pgml.distance_l2(a, b)",
        lambda a, b, s: np.linalg.norm(a.astype(np.float64) - b, axis=1),
    ),
    "dot_product": (
        "pgml.dot_product(a, b)",
        lambda a, b, s: np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64)),
    ),
    "cosine_similarity": (
        "pgml.cosine_similarity(a, b)",
        lambda a, b, s: (
            np.einsum("ij,ij->i", a.astype(np.float64), b) / (_norm(a, 2) * _norm(b, 2))
        ),
    ),
}


REAL, REAL_ARRAY, FLOAT8, FLOAT8_ARRAY = 700, 1021, 701, 1022


@pytest.mark.parametrize(
    ("pg_type", "vector_oid", "scalar_oid"),
    [("real", REAL_ARRAY, REAL), ("float8", FLOAT8_ARRAY, FLOAT8)],
)
def test_answers_are_in_the_arguments_type(
    endpoint: SqlEndpoint, pg_type: str, vector_oid: int, scalar_oid: int
) -> None:
    """real[] in, real[] or real out; float8[] in, float8[] or float8 out (as PostgresML)."""
    v = f"ARRAY[3, 4]::{pg_type}[]"
    vectors = [f"pgml.{f}({v}, {v})" for f in ("add", "subtract", "multiply", "divide")]
    vectors += [f"pgml.{f}({v}, 2)" for f in ("add", "subtract", "multiply", "divide")]
    vectors += [f"pgml.normalize_{n}({v})" for n in ("l1", "l2", "max")]
    scalars = [f"pgml.norm_{n}({v})" for n in ("l0", "l1", "l2", "max")]
    scalars += [f"pgml.{f}({v}, {v})" for f in ("distance_l1", "distance_l2", "dot_product")]
    scalars += [f"pgml.cosine_similarity({v}, {v})"]
    aggregates = [f"pgml.{f}(x)" for f in ("sum", "min", "max", "max_abs", "min_abs")]
    with connect(endpoint) as conn:
        cursor = conn.execute(f"SELECT {', '.join(vectors + scalars)}")
        oids = [column.type_code for column in cursor.description or ()]
        assert oids == [vector_oid] * len(vectors) + [scalar_oid] * len(scalars)
        assert [column.name for column in cursor.description or ()][:2] == ["add", "subtract"]
        cursor = conn.execute(f"SELECT {', '.join(aggregates)} FROM (SELECT {v} AS x) AS t")
        assert [column.type_code for column in cursor.description or ()] == [vector_oid] * 5


def _query(expression: str, pg_type: str, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> str:
    scalars = ", ".join(f"({i}, {v.item()!r}::{pg_type})" for i, v in enumerate(s))
    return (
        f"SELECT {expression} FROM ({_values([a, b], pg_type)})"
        f" AS t(i, a, b) JOIN (VALUES {scalars}) AS u(i, s) USING (i) ORDER BY i;\n"
    )


@pytest.mark.parametrize("pg_type", TYPES)
def test_element_wise_functions_answer_as_numpy(
    pg_bin: Path, endpoint: SqlEndpoint, pg_type: str
) -> None:
    a, b, s = _data(pg_type)
    script = "".join(_query(e, pg_type, a, b, s) for e, _ in VECTOR_RESULTS.values())
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    for n, (name, (_, expected)) in enumerate(VECTOR_RESULTS.items()):
        rows = [line.split("|") for line in lines[n * ROWS : (n + 1) * ROWS]]
        got = np.array([_numbers(row[0]) for row in rows])
        want = expected(a, b, s).astype(TYPES[pg_type])
        np.testing.assert_allclose(got, want, rtol=RTOL[pg_type], err_msg=name)


@pytest.mark.parametrize("pg_type", TYPES)
def test_norms_and_distances_answer_as_numpy(
    pg_bin: Path, endpoint: SqlEndpoint, pg_type: str
) -> None:
    a, b, s = _data(pg_type, seed=11)
    script = "".join(_query(e, pg_type, a, b, s) for e, _ in SCALAR_RESULTS.values())
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    for n, (name, (_, expected)) in enumerate(SCALAR_RESULTS.items()):
        rows = [line.split("|") for line in lines[n * ROWS : (n + 1) * ROWS]]
        got = np.array([float(row[0]) for row in rows])
        want = expected(a, b, s).astype(TYPES[pg_type])
        np.testing.assert_allclose(got, want, rtol=RTOL[pg_type], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("pg_type", TYPES)
def test_aggregates_are_element_wise_per_group(
    pg_bin: Path, endpoint: SqlEndpoint, pg_type: str
) -> None:
    a, _, _ = _data(pg_type, seed=3)
    groups = np.arange(ROWS) % 2
    rows = ", ".join(f"({g}, {_literal(v, pg_type)})" for g, v in zip(groups, a, strict=True))
    script = (
        "SELECT g, pgml.sum(v), pgml.min(v), pgml.max(v), pgml.max_abs(v), pgml.min_abs(v)"
        f" FROM (VALUES {rows}, (0, NULL)) AS t(g, v) GROUP BY g"
        " ORDER BY g;\n"
    )
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    assert len(lines) == 2
    for g, line in enumerate(lines):
        fields = line.split("|")
        assert fields[0] == str(g)
        mine = a[groups == g].astype(np.float64)
        expected = [mine.sum(0), mine.min(0), mine.max(0), abs(mine).max(0), abs(mine).min(0)]
        for field, want in zip(fields[1:], expected, strict=True):
            np.testing.assert_allclose(
                _numbers(field), want.astype(TYPES[pg_type]), rtol=RTOL[pg_type]
            )


@pytest.mark.parametrize("pg_type", TYPES)
def test_vector_functions_take_aggregates_and_answer_in_their_type(
    pg_bin: Path, endpoint: SqlEndpoint, pg_type: str
) -> None:
    a, _, _ = _data(pg_type, seed=5)
    rows = ", ".join(f"({_literal(v, pg_type)})" for v in a)
    script = (
        "SELECT pgml.divide(pgml.sum(v), count(v)), pgml.norm_l2(pgml.sum(v)),"
        " pgml.add(pgml.max(v), pgml.min(v)), pgml.normalize_max(pgml.max_abs(v))"
        f" FROM (VALUES {rows}, (NULL)) AS t(v)"
    )
    (line,) = psql(pg_bin, endpoint, script + ";\n").stdout.splitlines()
    average, norm, spread, scaled = line.split("|")
    total = a.astype(np.float64).sum(0).astype(TYPES[pg_type]).astype(np.float64)
    rtol = RTOL[pg_type] * 4
    np.testing.assert_allclose(_numbers(average), total / ROWS, rtol=rtol)
    np.testing.assert_allclose(_numbers(norm), [np.linalg.norm(total)], rtol=rtol)
    np.testing.assert_allclose(_numbers(spread), a.max(0) + a.min(0), rtol=rtol, atol=1e-6)
    peak = abs(a).max(0)
    np.testing.assert_allclose(_numbers(scaled), peak / peak.max(), rtol=rtol)
    with connect(endpoint) as conn:
        described = conn.execute(script).description
    assert described is not None
    oids = {"real": (1021, 700), "float8": (1022, 701)}[pg_type]  # real[], real; float8[], float8
    assert [c.type_code for c in described] == [oids[0], oids[1], oids[0], oids[0]]


def test_nulls_and_empty_arrays(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    script = """
SELECT pgml.add(NULL::real[], 1) IS NULL, pgml.add(ARRAY[1, 2]::real[], NULL) IS NULL,
       pgml.add(ARRAY[1]::real[], NULL::real[]) IS NULL, pgml.norm_l2(NULL::float8[]) IS NULL,
       pgml.dot_product(NULL::real[], ARRAY[1]::real[]) IS NULL;
SELECT pgml.add(ARRAY[]::real[], ARRAY[]::real[]), pgml.norm_l1(ARRAY[]::real[]),
       pgml.norm_l2(ARRAY[]::float8[]), pgml.norm_max(ARRAY[]::real[]),
       pgml.normalize_l2(ARRAY[]::real[]), pgml.dot_product(ARRAY[]::real[], ARRAY[]::real[]),
       pgml.cosine_similarity(ARRAY[]::real[], ARRAY[]::real[]);
SELECT pgml.normalize_l2(ARRAY[0, 0]::float8[]), pgml.divide(ARRAY[1, -1, 0]::real[], 0);
SELECT pgml.sum(v) IS NULL FROM (VALUES (NULL::real[])) AS t(v);
SELECT pgml.sum(v) IS NULL FROM (VALUES (ARRAY[1]::real[])) AS t(v) WHERE false;
SELECT pgml.sum(v) FROM (VALUES (ARRAY[]::real[]), (ARRAY[]::real[])) AS t(v);
SELECT pgml.add(ARRAY[1, 2, 3], 1);
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    assert lines == [
        "t|t|t|t|t",
        "{}|0|0|0|{}|0|NaN",
        "{NaN,NaN}|{Infinity,-Infinity,NaN}",
        "t",
        "t",
        "{}",
        "{2,3,4}",
    ]


@pytest.mark.parametrize(
    ("statement", "sqlstate", "message"),
    [
        ("SELECT pgml.add(ARRAY[1, 2, 3]::real[], ARRAY[1, 2]::real[])", "22000",
         "different vector dimensions 3 and 2"),
        ("SELECT pgml.distance_l2(ARRAY[1]::float8[], ARRAY[1, 2]::float8[])", "22000",
         "different vector dimensions 1 and 2"),
        ("SELECT pgml.cosine_similarity(ARRAY[1, 2]::real[], ARRAY[1]::real[])", "22000",
         "different vector dimensions 2 and 1"),
        ("SELECT pgml.sum(v) FROM (VALUES (ARRAY[1, 2]::real[]), (ARRAY[1]::real[])) t(v)",
         "22000", "different vector dimensions 1 and 2"),
        ("SELECT pgml.norm_l2(ARRAY[1, NULL]::real[])", "22004",
         "array must not contain nulls"),
        ("SELECT pgml.add(ARRAY[1, NULL]::float8[], 2)", "22004", "array must not contain nulls"),
        ("SELECT pgml.max(v) FROM (VALUES (ARRAY[1, NULL]::real[])) t(v)", "22004",
         "array must not contain nulls"),
        ("SELECT pgml.add(ARRAY['a', 'b'], 1)", "42883", "function pgml.add does not exist"),
        ("SELECT pgml.norm_l2('not an array')", "42883", "function pgml.norm_l2 does not exist"),
        ("SELECT pgml.dot_product(ARRAY[1]::real[], 2)", "42883",
         "function pgml.dot_product does not exist"),
        ("SELECT pgml.norm_l3(ARRAY[1]::real[])", "42883", "function pgml.norm_l3 does not exist"),
    ],
)  # fmt: skip
def test_bad_arguments_get_postgres_errors(
    pg_bin: Path, endpoint: SqlEndpoint, statement: str, sqlstate: str, message: str
) -> None:
    done = psql(pg_bin, endpoint, f"\\set VERBOSITY verbose\n{statement};\n", check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"ERROR:  {sqlstate}: {message}" in done.stderr, done.stderr
    assert psql(pg_bin, endpoint, "SELECT pgml.norm_l1(ARRAY[1, -2]::real[]);").stdout == "3\n"
