"""A view's definition in DuckDB's SQL: what is rewritten, what is refused (no server)."""

from __future__ import annotations

import duckdb
import pytest

from replicator import view_sql
from replicator.view_sql import UntranslatableView

COLUMNS = {("public", "t"): {"n": "integer", "x": "numeric", "d": "numeric(10,2)", "s": "text"}}


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("create schema _pgml_sidecar")
    con.execute(view_sql.DIVIDE_MACRO_SQL)
    con.execute("create table t (n integer, x double, d decimal(10,2), s varchar, j json)")
    con.execute("""insert into t values (7, 4.5, 2.50, 'a_b', '{"a": {"b": [5, 6]}}')""")
    return con


def answer(con: duckdb.DuckDBPyConnection, definition: str) -> tuple[object, ...]:
    sql = view_sql.translate(definition, view="public.v", columns=COLUMNS)
    row = con.execute(sql.replace("public.t", "t")).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("t.n / 2", 3),  # integer division, as PostgreSQL's
        ("t.x / 2", 2.25),
        ("(t.n + 1) / (t.n - 3)", 2),
        ("sum(t.n) / 2", 3),  # not known from the text: the macro decides, by type
        ("t.x::integer", 5),  # numeric to integer rounds half away from zero
        ("(t.d * 3)::integer", 8),
        ("'{1,2,3}'::integer[]", [1, 2, 3]),
        ("('{\"a,b\",NULL}'::text[])[1]", "a,b"),
        ("'-1 days +02:00:00'::interval", "-1 day, 2:00:00"),
        ("t.s ~~ 'a\\_b'::text", True),  # LIKE's backslash escape
        ("t.s ~~ 'a\\%b'::text", False),
        ("t.s ~* '^A'::text", True),
        ("t.j #>> '{a,b,1}'::text[]", "6"),
        ("(t.j -> 'a'::text) ->> 'b'::text", "[5,6]"),
        ("jsonb_extract_path_text(t.j, 'a', 'b')", "[5,6]"),
        ("btrim('xax'::text, 'x'::text)", "a"),
        ("t.x::numeric(10,2)", 4.5),
    ],
)
def test_expressions_answer_as_postgresql(
    con: duckdb.DuckDBPyConnection, expression: str, expected: object
) -> None:
    (got,) = answer(con, f"SELECT {expression} AS v FROM public.t")
    shown = str(got) if isinstance(expected, str) and not isinstance(got, str) else got
    assert shown == expected


def test_group_by_a_key_alone_gets_the_columns_it_decides(con: duckdb.DuckDBPyConnection) -> None:
    sql = view_sql.translate(
        "SELECT t.n, t.s, count(*) AS c, upper(t.s) AS u FROM public.t GROUP BY t.n",
        view="public.v",
    )
    assert sql.endswith("GROUP BY t.n, t.s")
    assert con.execute(sql.replace("public.t", "t")).fetchall() == [(7, "a_b", 1, "A_B")]


def test_relations_read_are_the_qualified_names() -> None:
    definition = (
        "WITH w AS (SELECT 1 AS a) SELECT * FROM public.a JOIN s.b ON true, w"
        " WHERE EXISTS (SELECT 1 FROM public.a x)"
    )
    assert view_sql.relations_read(definition) == [("public", "a"), ("s", "b")]


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("to_char(t.x, '999'::text)", "to_char()"),
        ("public.my_function(t.n)", "public.my_function(), a function defined in the source"),
        ("t.j ? 'a'::text", "the jsonb operator ?"),
        ("t.s ~ similar_to_escape('a%'::text)", "SIMILAR TO"),
        ("CURRENT_USER", "current_user"),
        ("t.s::inet", "the type inet"),
        ('t.s COLLATE "C"', "COLLATE"),
        ("nextval('seq'::text)", "nextval()"),
        ("t.j #>> ARRAY[t.s]", "#>> with a path that is not a constant"),
    ],
)
def test_what_duckdb_cannot_run_is_refused_by_name(expression: str, named: str) -> None:
    with pytest.raises(UntranslatableView) as refused:
        view_sql.translate(f"SELECT {expression} AS v FROM public.t", view="public.v")
    message = str(refused.value)
    assert named in message and message.startswith("view public.v uses ")
    assert refused.value.sqlstate == "0A000"


@pytest.mark.parametrize("table", ["pg_catalog.pg_class", "pg_class"])
def test_a_catalog_is_refused(table: str) -> None:
    """Under an empty search_path only the catalogs (and CTEs) are named without a schema."""
    with pytest.raises(UntranslatableView, match=r"pg_catalog\.pg_class, a catalog"):
        view_sql.translate(f"SELECT relname FROM {table}", view="public.v")


def test_a_cte_is_not_a_catalog(con: duckdb.DuckDBPyConnection) -> None:
    sql = view_sql.translate(
        "WITH w AS (SELECT t.n FROM public.t) SELECT w.n FROM w", view="public.v"
    )
    assert con.execute(sql.replace("public.t", "t")).fetchall() == [(7,)]
