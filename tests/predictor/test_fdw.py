"""A real PostgreSQL reaching the endpoint through postgres_fdw and dblink."""

from __future__ import annotations

import psycopg

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import connect


def prepare(endpoint: SqlEndpoint, source_dsn: str) -> psycopg.Connection:
    with connect(endpoint) as conn:
        conn.execute("select * from pgml.load_dataset('iris')")
        conn.execute(
            "select * from pgml.train('Iris', 'classification', 'pgml.iris', 'target', 'linear')"
        )
    source = psycopg.connect(source_dsn, autocommit=True)
    source.execute("create extension if not exists postgres_fdw")
    source.execute(
        "create server sidecar foreign data wrapper postgres_fdw"
        f" options (host '127.0.0.1', port '{endpoint.port}', dbname 'pgml')"
    )
    source.execute("create user mapping for current_user server sidecar options (user 'pgml')")
    return source


def test_import_foreign_schema_and_filtered_scans(endpoint: SqlEndpoint, source_dsn: str):
    with prepare(endpoint, source_dsn) as source:
        source.execute("create schema mirror")
        source.execute("import foreign schema pgml from server sidecar into mirror")
        tables = {
            r[0]
            for r in source.execute(
                "select foreign_table_name from information_schema.foreign_tables"
            ).fetchall()
        }
        assert {"iris", "models", "projects", "deployed_models"} <= tables
        count = source.execute("select count(*) from mirror.iris where target = 2").fetchone()
        assert count == (50,)
        plan = "\n".join(
            r[0]
            for r in source.execute(
                "explain verbose select sepal_length from mirror.iris where target = 2"
            ).fetchall()
        )
        assert "WHERE ((target = 2))" in plan  # pushed down to the endpoint
        rows = source.execute(
            "select i.target, count(*) from mirror.iris i join (values (0), (1)) v(t)"
            " on v.t = i.target group by 1 order by 1"
        ).fetchall()
        assert rows == [(0, 50), (1, 50)]
        deployed = source.execute("select name, algorithm from mirror.deployed_models").fetchall()
        assert deployed == [("Iris", "linear")]
        source.execute("analyze mirror.iris")


def test_dblink_predict(endpoint: SqlEndpoint, source_dsn: str) -> None:
    with prepare(endpoint, source_dsn) as source:
        source.execute("create extension if not exists dblink")
        row = source.execute(
            "select * from dblink(%s, 'select pgml.predict(''Iris'', ARRAY[5.1, 3.5, 1.4, 0.2])')"
            " as t(prediction float8)",
            (f"host=127.0.0.1 port={endpoint.port} dbname=pgml user=pgml",),
        ).fetchone()
        assert row == (0.0,)


def test_scores_as_foreign_tables(endpoint: SqlEndpoint, source_dsn: str) -> None:
    con = endpoint.con
    con.execute("create schema if not exists public")
    con.execute(
        "create table public.homes"
        " (id integer primary key, area double, city varchar, price double)"
    )
    con.execute(
        "insert into public.homes select i, 30 + i % 170, ['paris', 'lyon'][1 + i % 2],"
        " (30 + i % 170) * 10 + (i % 2) * 500 from range(1, 501) t(i)"
    )
    with prepare(endpoint, source_dsn) as source:
        with connect(endpoint) as conn:
            conn.execute("select * from pgml.train('Home Prices!', 'regression', 'homes', 'price')")
        source.execute("create schema scores")
        source.execute("import foreign schema pgml_scores from server sidecar into scores")
        columns = source.execute(
            "select column_name, data_type from information_schema.columns"
            " where table_schema = 'scores' and table_name = 'home_prices_'"
            " order by ordinal_position"
        ).fetchall()
        assert columns == [("id", "integer"), ("prediction", "double precision"),
                           ("model_id", "bigint")]  # fmt: skip
        before = endpoint.scorer.rows_scored
        row = source.execute(
            "select id, prediction, model_id from scores.home_prices_ where id = 42"
        ).fetchone()
        assert endpoint.scorer.rows_scored - before == 1  # the key filter ran before scoring
        assert row is not None and row[0] == 42 and row[2] == 2
        assert abs(row[1] - 720) < 50  # area 72 in paris
        joined = source.execute(
            "select count(*) from scores.home_prices_ s join (select generate_series(1, 10) id) l"
            " using (id) where s.prediction > 0"
        ).fetchone()
        assert joined == (10,)
