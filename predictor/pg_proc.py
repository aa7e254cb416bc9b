"""The ``pgml`` functions the endpoint serves, as ``pg_proc`` lists them (psql's ``\\df pgml.*``).

Each is declared as PostgresML declares it (its argument names, types and defaults, its result),
so that ``\\df`` on the endpoint reads as it does on a PostgresML database;
``pg_get_function_arguments`` and ``pg_get_function_result`` answer from the same rows.
"""

from __future__ import annotations

import duckdb

from mirror.duckdb_sql import sql_literal as literal
from predictor import metric_functions, python_environment, vectors

OID_BASE = 3_900_000_000
"""Where the functions' oids start (PostgreSQL's own are far below, DuckDB's too)."""

_TRAINING = (
    "project_name text, task text DEFAULT NULL::text, relation_name text DEFAULT NULL::text,"
    " y_column_name {y} DEFAULT NULL::{y}, algorithm pgml.algorithm DEFAULT"
    " 'linear'::pgml.algorithm, hyperparams jsonb DEFAULT '{{}}'::jsonb, search pgml.search"
    " DEFAULT NULL::pgml.search, search_params jsonb DEFAULT '{{}}'::jsonb, search_args jsonb"
    " DEFAULT '{{}}'::jsonb, test_size real DEFAULT 0.25, test_sampling pgml.sampling DEFAULT"
    " 'stratified'::pgml.sampling, runtime pgml.runtime DEFAULT NULL::pgml.runtime,"
    " automatic_deploy boolean DEFAULT true, materialize_snapshot boolean DEFAULT false,"
    " preprocess jsonb DEFAULT '{{}}'::jsonb"
)
_TRAINED = "TABLE(project text, task text, algorithm text, deployed boolean)"

FUNCTIONS: list[tuple[str, str, str]] = [
    ("train", _TRAINING.format(y="text"), _TRAINED),
    ("train_joint", _TRAINING.format(y="text[]"), _TRAINED),
    (
        "deploy",
        "project_name text, strategy pgml.strategy, algorithm pgml.algorithm DEFAULT"
        " NULL::pgml.algorithm",
        "TABLE(project text, strategy text, algorithm text)",
    ),
    ("deploy", "model_id bigint", "TABLE(project text, strategy text, algorithm text)"),
    (
        "load_dataset",
        'source text, subset text DEFAULT NULL::text, "limit" bigint DEFAULT NULL::bigint,'
        " kwargs jsonb DEFAULT '{}'::jsonb",
        "TABLE(table_name text, rows bigint)",
    ),
    (
        "snapshot",
        "relation_name text, y_column_name text[] DEFAULT NULL::text[], test_size real DEFAULT"
        " 0.25, test_sampling pgml.sampling DEFAULT 'stratified'::pgml.sampling",
        "TABLE(relation text, y_column_name text[])",
    ),
    ("schedule", "project_name text, cron text", "TABLE(project text, schedule text)"),
    (
        "retrain_on_drift",
        "project_name text, enabled boolean DEFAULT true",
        "TABLE(project text, retrain_on_drift boolean)",
    ),
    ("dump_all", "path text", "TABLE(table_name text, rows bigint)"),
    ("load_all", "path text", "TABLE(table_name text, rows bigint)"),
    ("version", "", "text"),
    *[
        ("predict", f"project_name text, features {t}", "real")
        for t in ("real[]", "bigint[]", "integer[]", "smallint[]", "double precision[]")
    ],
    ("predict", 'project_name text, "row" anyelement', "real"),
    ("predict", "model_id bigint, features real[]", "real"),
    ("predict_proba", "project_name text, features real[]", "real[]"),
    ("predict_joint", "project_name text, features real[]", "real[]"),
    ("predict_batch", "project_name text, features real[]", "SETOF real"),
    ("decompose", "project_name text, vector real[]", "real[]"),
    (
        "chunk",
        "splitter text, text text, kwargs jsonb DEFAULT '{}'::jsonb",
        "TABLE(chunk_index bigint, chunk text)",
    ),
    ("python_version", "", "text"),
    ("python_package_version", "name text", "text"),
    ("validate_python_dependencies", "", "void"),
    ("validate_shared_library", "", "void"),
    ("sklearn_f1_score", "ground_truth real[], y_hat real[]", "real"),
    ("sklearn_r2_score", "ground_truth real[], y_hat real[]", "real"),
    ("sklearn_regression_metrics", "ground_truth real[], y_hat real[]", "jsonb"),
    (
        "sklearn_classification_metrics",
        "ground_truth real[], y_hat real[], num_classes bigint",
        "jsonb",
    ),
]
"""(name, arguments, result) of each function and overload."""

_VECTOR_ARGUMENTS = {
    "add": ("vector", "addend"), "subtract": ("minuend", "subtrahend"),
    "multiply": ("multiplicand", "multiplier"), "divide": ("dividend", "divisor"),
    "distance_l1": ("a", "b"), "distance_l2": ("a", "b"), "dot_product": ("a", "b"),
    "cosine_similarity": ("a", "b"),
}  # fmt: skip
_SCALAR_RESULTS = ("norm_", "distance_", "dot_product", "cosine_similarity")


def _vector_functions() -> list[tuple[str, str, str, str]]:
    """(name, arguments, result, kind) of the vector functions, for real[] and double[]."""
    rows = []
    for t in ("real", "double precision"):
        for name in sorted(vectors.SCALAR_FUNCTIONS):
            result = t if name.startswith(_SCALAR_RESULTS) else f"{t}[]"
            first, second = _VECTOR_ARGUMENTS.get(name, ("vector", ""))
            if name in ("add", "subtract", "multiply", "divide"):
                rows.append((name, f"{first} {t}[], {second} {t}", f"{t}[]", "f"))
                rows.append((name, f"{first} {t}[], {second} {t}[]", f"{t}[]", "f"))
            elif second:
                rows.append((name, f"{first} {t}[], {second} {t}[]", result, "f"))
            else:
                rows.append((name, f"{first} {t}[]", result, "f"))
        rows.extend((name, f"{t}[]", f"{t}[]", "a") for name in sorted(vectors.AGGREGATES))
    return rows


def rows() -> list[tuple[int, str, str, str, str]]:
    """(oid, name, arguments, result, kind) of every function listed."""
    listed = [(n, a, r, "f") for n, a, r in FUNCTIONS] + _vector_functions()
    served = {n for n, *_ in listed}
    missing = (
        set(metric_functions.NAMES) | set(python_environment.NAMES) | vectors.FUNCTIONS
    ) - served
    assert not missing, f"pgml functions served but not declared: {sorted(missing)}"
    return [(OID_BASE + i, *row) for i, row in enumerate(listed)]


def install(con: duckdb.DuckDBPyConnection, schema: str) -> None:
    """``schema.pg_proc`` and the two functions that describe its rows."""
    values = ", ".join(
        f"({oid}, {literal(name)}, {literal(arguments)}, {literal(result)}, {literal(kind)})"
        for oid, name, arguments, result, kind in rows()
    )
    namespace = (
        "(select oid from duckdb_schemas() where database_name = current_database()"
        " and schema_name = 'pgml')"
    )
    for statement in (
        f"create or replace view {schema}.pgml_functions as select * from (values {values})"
        " as f(oid, proname, arguments, result, prokind)",
        f"create or replace view {schema}.pg_proc as select oid, proname, {namespace} as"
        " pronamespace, 10::bigint as proowner, 13::bigint as prolang, prokind,"
        " result like 'SETOF %' or result like 'TABLE(%' as proretset, 0::bigint as prorettype,"
        " null::varchar as prosrc, false as prosecdef, 'v' as provolatile"
        f" from {schema}.pgml_functions",
        f"create or replace macro {schema}.pg_get_function_arguments(_function) as"
        f" (select arguments from {schema}.pgml_functions where oid = _function)",
        f"create or replace macro {schema}.pg_get_function_identity_arguments(_function) as"
        f" (select arguments from {schema}.pgml_functions where oid = _function)",
        f"create or replace macro {schema}.pg_get_function_result(_function) as"
        f" (select result from {schema}.pgml_functions where oid = _function)",
    ):
        con.execute(statement)
