"""Arrays as text through psql against the endpoint, spelled as PostgreSQL's array_out does."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import psql


@pytest.mark.parametrize(
    ("expression", "text"),
    [
        ("ARRAY[0, 0, 5, 13.5]::float8[]::text", "{0,0,5,13.5}"),
        ("left(ARRAY[0, 0, 5, 13, 9, 1, 0, 0]::float8[]::text, 8) || ',...}'", "{0,0,5,1,...}"),
        ("CAST(ARRAY[0.1, 1e20, 1e-5]::real[] AS varchar)", "{0.1,1e+20,1e-05}"),
        ("ARRAY['Infinity', '-Infinity', 'NaN']::float8[]::text", "{Infinity,-Infinity,NaN}"),
        ("ARRAY[1, NULL, 3]::text", "{1,NULL,3}"),
        ("ARRAY[1.5, 2.0]::text", "{1.5,2.0}"),
        ("ARRAY[true, false]::text", "{t,f}"),
        ("ARRAY['a', '', 'null', 'b c', 'x\"y', '{']::text", '{a,"","null","b c","x\\"y","{"}'),
        ("ARRAY[[1, 2], [3, 4]]::text", "{{1,2},{3,4}}"),
        ("ARRAY[DATE '2024-01-02']::text", "{2024-01-02}"),
        ("array_to_string(ARRAY[1, 2.5, NULL]::float8[], ',')", "1,2.5"),
        ("array_to_string(ARRAY['a b', NULL, 'c'], '-', '*')", "a b-*-c"),
        ("12::text || 'abc'::text || (1.5)::text", "12abc1.5"),
        ("(SELECT pgml.sum(v)::text FROM (VALUES (ARRAY[1, 2]::real[]), (ARRAY[3, 4.5]::real[]))"
         " AS t(v))", "{4,6.5}"),
        ("(SELECT string_agg(x::text, ';') FROM (VALUES (ARRAY[1, 2]), (ARRAY[3])) AS t(x))",
         "{1,2};{3}"),
    ],
)  # fmt: skip
def test_an_array_as_text_is_postgresql_s(
    pg_bin: Path, endpoint: SqlEndpoint, expression: str, text: str
) -> None:
    assert psql(pg_bin, endpoint, f"SELECT {expression};\n").stdout == text + "\n"


def test_arrays_in_results_and_grouped_by_their_text(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    script = """
SELECT ARRAY[1.0, 2.5]::float8[], ARRAY['a b', NULL]::text[], ARRAY[0.5]::real[];
SELECT x::text, count(*) FROM (VALUES (ARRAY[1, 2]), (ARRAY[1, 2]), (ARRAY[3])) AS t(x)
  GROUP BY x::text ORDER BY x::text;
"""
    assert psql(pg_bin, endpoint, script).stdout.splitlines() == [
        '{1,2.5}|{"a b",NULL}|{0.5}',
        "{1,2}|2",
        "{3}|1",
    ]
