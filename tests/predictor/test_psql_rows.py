"""pgml.predict and predict_proba on a whole row (a table's row, ``(a, b, c)``, ``ROW(...)``),
with text columns encoded as at training, and pgml.predict_batch, through psql; predictions
compared with scikit-learn's on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mirror.store import Mirror
from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import psql
from trainer.split import split
from trainer.train import Trainer

CITIES = ["Lyon", "Nice", "Paris"]
PRESERVE = '{"area": {"scale": "preserve"}, "rooms": {"scale": "preserve"}}'


def make_houses(mirror: Mirror, rows: int = 120) -> pa.Table:
    rng = np.random.default_rng(3)
    city = rng.choice(CITIES, rows)
    area = rng.uniform(20, 200, rows).round(1)
    rooms = rng.integers(1, 7, rows)
    bonus = np.select([city == "Paris", city == "Nice"], [900.0, 400.0], 0.0)
    price = 30 * area + 50 * rooms + bonus + rng.normal(0, 40, rows)
    kind = np.where(area > 110, "house", "flat")
    table = pa.table(
        {
            "id": pa.array(np.arange(1, rows + 1), pa.int32()),
            "area": area,
            "rooms": pa.array(rooms, pa.int32()),
            "city": city,
            "price": price,
            "kind": kind,
        }
    )
    con = mirror.con
    con.execute("create schema if not exists public")
    con.execute(
        "create table public.houses (id integer primary key, area double, rooms integer,"
        " city varchar, price double, kind varchar)"
    )
    con.register("houses_rows", table)
    con.execute("insert into public.houses select * from houses_rows")
    con.unregister("houses_rows")
    return table


def _design(table: pa.Table) -> np.ndarray:
    """area, rooms, then city and kind one-hot (categories sorted), as the training encodes
    them."""
    city = np.asarray(table["city"].to_pylist())
    kind = np.asarray(table["kind"].to_pylist())
    onehot = [(city == c).astype(np.float64) for c in CITIES]
    onehot += [(kind == k).astype(np.float64) for k in ("flat", "house")]
    return np.column_stack([table["area"].to_numpy(), table["rooms"].to_numpy(), *onehot])


def _floats(lines: list[str]) -> np.ndarray:
    return np.array([float(line.split("|")[-1]) for line in lines])


def test_predict_on_rows(
    pg_bin: Path, endpoint: SqlEndpoint, mirror: Mirror, trainer: Trainer
) -> None:
    from sklearn.linear_model import LinearRegression

    houses = make_houses(mirror)
    script = f"""
SELECT * FROM pgml.train('Houses', 'regression', 'public.houses', 'price',
                         preprocess => '{PRESERVE}');
SELECT id, pgml.predict('Houses', h) FROM public.houses h ORDER BY id;
SELECT pgml.predict('Houses', houses) FROM public.houses ORDER BY id;
SELECT pgml.predict('Houses', (area, rooms, city, kind)) FROM public.houses ORDER BY id;
SELECT pgml.predict('Houses', ROW(area, rooms, city, kind)) FROM public.houses ORDER BY id;
SELECT pgml.predict('Houses', ROW(120.5, 3, 'Paris', 'house'));
SELECT pgml.predict('Houses', h) FROM (SELECT area, rooms, city FROM public.houses) h
 WHERE false;
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    assert lines[0] == "Houses|regression|linear|t"
    project = trainer.registry.project("Houses")
    assert project is not None
    snapshot = trainer.registry.last_snapshot(project.id)
    assert snapshot is not None
    table = pq.read_table(trainer.home / snapshot.path)
    train, _ = split(table.num_rows, test_size=0.25, sampling="stratified", seed=0)
    reference = LinearRegression().fit(_design(table.take(train)), table["price"].to_numpy()[train])
    expected = reference.predict(_design(houses))
    rows = len(houses)
    for at in (1, 1 + rows, 1 + 2 * rows, 1 + 3 * rows):
        np.testing.assert_allclose(_floats(lines[at : at + rows]), expected, rtol=1e-6)
    given = {"area": [120.5], "rooms": [3], "city": ["Paris"], "kind": ["house"]}
    one = reference.predict(_design(pa.table(given)))
    np.testing.assert_allclose(float(lines[1 + 4 * rows]), one[0], rtol=1e-6)
    assert len(lines) == 2 + 4 * rows


def test_predict_proba_on_rows_and_refusals(
    pg_bin: Path, endpoint: SqlEndpoint, mirror: Mirror, trainer: Trainer
) -> None:
    houses = make_houses(mirror)
    script = """
SELECT * FROM pgml.train('Kind', 'classification', 'public.houses', 'kind',
                         algorithm => 'random_forest', hyperparams => '{"n_estimators": 10}');
SELECT pgml.predict_proba('Kind', h) FROM public.houses h ORDER BY id;
SELECT pgml.predict('Kind', h) FROM public.houses h ORDER BY id;
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    assert lines[0] == "Kind|classification|random_forest|t"
    _, model = trainer.deployed_model("Kind")
    rows = len(houses)
    features = houses.select(["area", "rooms", "city", "price"])
    got = np.array([[float(v) for v in row.strip("{}").split(",")] for row in lines[1 : 1 + rows]])
    np.testing.assert_allclose(got, model.predict_proba(features), rtol=1e-9)
    classes = model.classes
    assert classes is not None
    indices = {label: i for i, label in enumerate(classes.tolist())}
    expected = [indices[label] for label in model.predict(features).tolist()]
    assert [int(float(v)) for v in lines[1 + rows :]] == expected
    refused = {
        "SELECT pgml.predict('Kind', ROW(1, 2)) ;": "the model takes one per feature column",
        "SELECT pgml.predict('Kind', h) FROM (SELECT area FROM public.houses) h;": (
            "the row has no column rooms"
        ),
    }
    for statement, message in refused.items():
        done = psql(pg_bin, endpoint, statement, check=False)
        assert done.returncode != 0 and message in done.stderr, (statement, done.stderr)


def test_predict_batch(pg_bin: Path, endpoint: SqlEndpoint, trainer: Trainer) -> None:
    from sklearn.linear_model import LinearRegression

    script = """
SELECT * FROM pgml.load_dataset('diabetes');
SELECT * FROM pgml.train('Diabetes', 'regression', 'pgml.diabetes', 'target',
                         preprocess => '{"age": {"scale": "preserve"}, "sex": {"scale": "preserve"},
                         "bmi": {"scale": "preserve"}, "bp": {"scale": "preserve"},
                         "s1": {"scale": "preserve"}, "s2": {"scale": "preserve"},
                         "s3": {"scale": "preserve"}, "s4": {"scale": "preserve"},
                         "s5": {"scale": "preserve"}, "s6": {"scale": "preserve"}}');
SELECT * FROM pgml.predict_batch('Diabetes', ARRAY[0.03, 0.05, 0.06, 0.02, -0.04, -0.03,
  -0.04, -0.002, 0.02, -0.02,  -0.001, -0.04, -0.05, -0.03, -0.008, -0.02, 0.07, -0.04,
  -0.07, -0.09]);
SELECT pgml.predict_batch('Diabetes', array_agg(v ORDER BY n))
  FROM (SELECT unnest(ARRAY[0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02])
               AS v, generate_subscripts(ARRAY[0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04,
               -0.002, 0.02, -0.02], 1) AS n) AS features;
SELECT count(*) FROM pgml.predict_batch('Diabetes', ARRAY[]::real[]);
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    project = trainer.registry.project("Diabetes")
    assert project is not None
    snapshot = trainer.registry.last_snapshot(project.id)
    assert snapshot is not None
    table = pq.read_table(trainer.home / snapshot.path)
    names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    x = np.column_stack([table[c].to_numpy() for c in names]).astype(np.float64)
    train, _ = split(len(x), test_size=0.25, sampling="stratified", seed=0)
    reference = LinearRegression().fit(x[train], table["target"].to_numpy()[train])
    rows = np.array(
        [
            [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02],
            [-0.001, -0.04, -0.05, -0.03, -0.008, -0.02, 0.07, -0.04, -0.07, -0.09],
        ]
    )
    expected = reference.predict(rows)
    np.testing.assert_allclose([float(v) for v in lines[2:4]], expected, rtol=1e-5)
    np.testing.assert_allclose(float(lines[4]), expected[0], rtol=1e-5)
    assert lines[5] == "0"
    done = psql(pg_bin, endpoint, "SELECT pgml.predict_batch('Diabetes', ARRAY[1, 2, 3]);",
                check=False)  # fmt: skip
    assert "not a whole number of rows of 10" in done.stderr
