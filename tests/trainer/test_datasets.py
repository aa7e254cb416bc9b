"""pgml.load_dataset builds PostgresML's tables in DuckDB from scikit-learn's bundled files."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest

from mirror.errors import TrainingError
from trainer.datasets import DATASETS, load_dataset

MEASURES = (
    "radius",
    "texture",
    "perimeter",
    "area",
    "smoothness",
    "compactness",
    "concavity",
    "concave points",
    "symmetry",
    "fractal dimension",
)
BREAST_CANCER_FEATURES = (
    [f"mean {m}" for m in MEASURES]
    + [f"{m} error" for m in MEASURES]
    + [f"worst {m}" for m in MEASURES]
)
WINE_FEATURES = [
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "hue",
    "color_intensity",
    "od280/od315_of_diluted_wines",
    "proline",
]
# DuckDB reports REAL as FLOAT.
EXPECTED = {
    "breast_cancer": (
        569,
        [(name, "FLOAT") for name in BREAST_CANCER_FEATURES] + [("malignant", "BOOLEAN")],
    ),
    "diabetes": (
        442,
        [(name, "FLOAT") for name in ["age", "sex", "bmi", "bp"]]
        + [(f"s{i}", "FLOAT") for i in range(1, 7)]
        + [("target", "FLOAT")],
    ),
    "digits": (1797, [("image", "SMALLINT[]"), ("target", "SMALLINT")]),
    "iris": (
        150,
        [
            ("sepal_length", "FLOAT"),
            ("sepal_width", "FLOAT"),
            ("petal_length", "FLOAT"),
            ("petal_width", "FLOAT"),
            ("target", "INTEGER"),
        ],
    ),
    "linnerud": (
        20,
        [(name, "FLOAT") for name in ["chins", "situps", "jumps", "weight", "waist", "pulse"]],
    ),
    "wine": (178, [(name, "FLOAT") for name in WINE_FEATURES] + [("target", "INTEGER")]),
}


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return [
        (str(name), str(kind))
        for name, kind in con.execute(
            "select column_name, data_type from information_schema.columns"
            " where table_schema = 'pgml' and table_name = ? order by ordinal_position",
            [table],
        ).fetchall()
    ]


def scalar(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("name", DATASETS)
def test_loads_postgresml_columns_and_rows(con: duckdb.DuckDBPyConnection, name: str) -> None:
    rows, expected_columns = EXPECTED[name]
    assert load_dataset(con, name) == (f"pgml.{name}", rows)
    assert columns(con, name) == expected_columns
    assert scalar(con, f'select count(*) from pgml."{name}"') == rows


def test_breast_cancer_malignant_is_sklearn_class_zero(con: duckdb.DuckDBPyConnection) -> None:
    load_dataset(con, "breast_cancer")
    assert scalar(con, "select count(*) from pgml.breast_cancer where malignant") == 212
    first = con.execute('select "mean radius", malignant from pgml.breast_cancer').fetchone()
    assert first is not None
    assert first[0] == pytest.approx(17.99) and first[1] is True


def test_digits_images_hold_64_pixels(con: duckdb.DuckDBPyConnection) -> None:
    load_dataset(con, "digits")
    assert con.execute("select min(len(image)), max(len(image)) from pgml.digits").fetchall() == [
        (64, 64)
    ]
    assert scalar(con, "select count(distinct target) from pgml.digits") == 10
    first = con.execute("select image[1:8], target from pgml.digits").fetchone()
    assert first == ([0, 0, 5, 13, 9, 1, 0, 0], 0)


def test_values_land_in_their_own_columns(con: duckdb.DuckDBPyConnection) -> None:
    load_dataset(con, "iris")
    load_dataset(con, "wine")
    load_dataset(con, "linnerud")
    iris = con.execute("select * from pgml.iris").fetchone()
    assert iris == pytest.approx((5.1, 3.5, 1.4, 0.2, 0))
    wine = con.execute("select hue, color_intensity, proline, target from pgml.wine").fetchone()
    assert wine == pytest.approx((1.04, 5.64, 1065.0, 0))
    linnerud = con.execute("select * from pgml.linnerud").fetchone()
    assert linnerud == pytest.approx((5.0, 162.0, 60.0, 191.0, 36.0, 50.0))


def test_loading_again_replaces_the_table(con: duckdb.DuckDBPyConnection) -> None:
    load_dataset(con, "iris")
    con.execute("delete from pgml.iris where target = 0")
    con.execute("alter table pgml.iris add column note varchar")
    assert load_dataset(con, "iris") == ("pgml.iris", 150)
    assert scalar(con, "select count(*) from pgml.iris") == 150
    assert [name for name, _ in columns(con, "iris")] == [name for name, _ in EXPECTED["iris"][1]]


def test_unknown_dataset_lists_the_choices_and_changes_nothing(
    con: duckdb.DuckDBPyConnection,
) -> None:
    with pytest.raises(TrainingError) as caught:
        load_dataset(con, "titanic")
    assert caught.value.sqlstate == "22023"
    assert "titanic" in str(caught.value)
    assert all(name in str(caught.value) for name in DATASETS)
    assert scalar(con, "select count(*) from duckdb_schemas() where schema_name = 'pgml'") == 0
