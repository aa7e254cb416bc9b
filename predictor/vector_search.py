"""Nearest-neighbour queries answered from an HNSW index, re-ranked exactly by DuckDB.

A checked query of the shape pgvector's indexes serve, ``SELECT ... FROM t [WHERE ...] ORDER BY
column <op> <vector> LIMIT k [OFFSET n]`` (one mirrored table, no grouping or aggregate, ``<op>``
one of ``<->``, ``<=>``, ``<#>``, the vector a constant or a parameter), is translated once with
a placeholder condition in its WHERE clause: the exact scan runs it as ``true``; the index path
(:mod:`predictor.execution`) puts ``key in (<the index's candidates>)`` there. So the index only
narrows the rows the query reads: the same query, checked against the same allow-list and the
caller's privileges, filters and orders the candidates by their exact distance. When fewer than
``k`` candidates pass the WHERE filter, more are asked for, then the table is scanned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pglast import ast, enums

from predictor import catalog, pgvector
from predictor.allow_list import CheckedQuery

PLACEHOLDER = "_pgml_sidecar_vector_candidates"
"""The condition the translated query carries where the candidates go."""
CANDIDATES = 100
"""Candidates asked of the index for up to 10 rows (10 per row beyond)."""
MAX_CANDIDATES = 10_000
"""Past this many candidates without ``k`` rows passing the filter, the table is scanned."""
_GROUPING = frozenset(
    [
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "every",
        "bit_and",
        "bit_or",
        "bit_xor",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "corr",
        "covar_pop",
        "covar_samp",
        "mode",
        "percentile_cont",
        "percentile_disc",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "unnest",
        "generate_series",
        "generate_subscripts",
        "regexp_split_to_table",
    ]
)
"""Functions that change how many rows a query gives (the index path must not)."""


@dataclass(frozen=True, slots=True)
class Parameter:
    """A ``$n`` of the statement (1-based)."""

    number: int


@dataclass(frozen=True, slots=True)
class VectorSearch:
    """A query the index path can answer."""

    schema: str
    table: str
    column: str
    distance: str
    """The pgvector macro it orders by (a key of :data:`predictor.vector_index.METRICS`)."""
    alias: str
    vector: str | Parameter
    limit: int | Parameter
    offset: int
    sql: str = ""
    """The translated query, :data:`PLACEHOLDER` where the candidates' condition goes."""


def find(node: ast.SelectStmt, checked: CheckedQuery, text: str) -> VectorSearch | None:
    """The index path's view of ``node`` (before its translation), with the placeholder
    condition added to its WHERE clause; None when the query is of another shape."""
    if PLACEHOLDER in text or not _plain(node) or len(node.fromClause or ()) != 1:
        return None
    relation = (node.fromClause or ())[0]
    if not isinstance(relation, ast.RangeVar) or any(
        id(relation) in found for found in (checked.workspace, checked.views, checked.registry)
    ):
        return None
    schema = checked.schemas.get(id(relation)) or relation.schemaname
    served = [r for r in checked.reads if r.kind == catalog.MIRRORED
              and catalog.fold(r.name) == catalog.fold(relation.relname or "")
              and (schema is None or catalog.fold(r.schema) == catalog.fold(schema))]  # fmt: skip
    if len(served) != 1:
        return None
    alias = relation.alias.aliasname if relation.alias is not None else relation.relname
    order = _order(node, alias or "")
    limit = _count(node.limitCount)
    offset = 0 if node.limitOffset is None else _count(node.limitOffset)
    if order is None or limit is None or not isinstance(offset, int):
        return None
    column, distance, vector = order
    placeholder = ast.ColumnRef(fields=(ast.String(PLACEHOLDER),))
    if node.whereClause is None:
        node.whereClause = placeholder
    else:
        node.whereClause = ast.BoolExpr(
            boolop=enums.BoolExprType.AND_EXPR, args=(node.whereClause, placeholder)
        )
    return VectorSearch(served[0].schema, served[0].name, column, distance, alias or "", vector,
                        limit, offset)  # fmt: skip


def _plain(node: ast.SelectStmt) -> bool:
    if node.op != enums.SetOperation.SETOP_NONE or node.withClause or node.valuesLists:
        return False
    if node.groupClause or node.havingClause or node.distinctClause or node.windowClause:
        return False
    if node.limitOption == enums.LimitOption.LIMIT_OPTION_WITH_TIES or node.intoClause:
        return False
    return not _groups(node.targetList)


def _groups(value: Any) -> bool:
    """Whether ``value`` calls an aggregate, a window or a set-returning function."""
    if isinstance(value, ast.FuncCall):
        name = (value.funcname or (ast.String(""),))[-1].sval or ""
        if value.over is not None or value.agg_star or name.lower() in _GROUPING:
            return True
        return _groups(value.args)
    if isinstance(value, ast.SubLink):
        return False  # a scalar subquery gives one value per row
    if isinstance(value, tuple | list):
        return any(_groups(v) for v in value)
    if isinstance(value, ast.Node):
        return any(_groups(getattr(value, f)) for f in value)
    return False


def _order(node: ast.SelectStmt, alias: str) -> tuple[str, str, str | Parameter] | None:
    """The column, the distance and the query vector of ``ORDER BY column <op> vector``."""
    sort = node.sortClause or ()
    if len(sort) != 1 or not isinstance(sort[0], ast.SortBy):
        return None
    by = sort[0]
    if by.sortby_dir not in (enums.SortByDir.SORTBY_DEFAULT, enums.SortByDir.SORTBY_ASC):
        return None
    if by.sortby_nulls != enums.SortByNulls.SORTBY_NULLS_DEFAULT:
        return None
    expression = by.node
    if not isinstance(expression, ast.A_Expr) or expression.kind != enums.A_Expr_Kind.AEXPR_OP:
        return None
    distance = pgvector.operator_name(expression)
    if distance is None or distance == "l1_distance":
        return None
    for column_side, vector_side in ((expression.lexpr, expression.rexpr),
                                     (expression.rexpr, expression.lexpr)):  # fmt: skip
        column = _column(column_side, alias)
        vector = _vector(vector_side)
        if column is not None and vector is not None:
            return column, distance, vector
    return None


def _column(node: Any, alias: str) -> str | None:
    if not isinstance(node, ast.ColumnRef):
        return None
    names = [f.sval for f in node.fields or () if isinstance(f, ast.String)]
    if len(names) != len(node.fields or ()):
        return None
    if len(names) == 1 or (len(names) == 2 and catalog.fold(names[0] or "") == catalog.fold(alias)):
        return names[-1]
    return None


def _vector(node: Any) -> str | Parameter | None:
    if isinstance(node, ast.TypeCast) and pgvector.is_vector_type(node.typeName):
        node = node.arg
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return node.val.sval
    if isinstance(node, ast.ParamRef) and node.number:
        return Parameter(node.number)
    return None


def _count(node: Any) -> int | Parameter | None:
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
        return int(node.val.ival or 0)
    if isinstance(node, ast.ParamRef) and node.number:
        return Parameter(node.number)
    return None


def resolved(value: int | str | Parameter, params: Any) -> Any:
    """A constant, or the value bound to a parameter (None if none was)."""
    if isinstance(value, Parameter):
        return params[value.number - 1] if 1 <= value.number <= len(params) else None
    return value


def exact(sql: str) -> str:
    """The translated query as the exact scan runs it."""
    return sql.replace(PLACEHOLDER, "true")


def with_candidates(sql: str, alias: str, key: str, keys: np.ndarray) -> str:
    """The translated query reading only the rows whose ``key`` is one of ``keys``."""
    listed = ", ".join(str(int(k)) for k in keys)
    column = f"{_quoted(alias)}.{_quoted(key)}"
    return sql.replace(PLACEHOLDER, f"({column} in ({listed}))" if listed else "false")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_TEXT = re.compile(r"\s*\[([^\[\]]*)\]\s*")


def query_vector(value: Any) -> np.ndarray | None:
    """A query vector given as pgvector's text or an array, as float32; None if it is not one
    (the exact scan then reports the error)."""
    if isinstance(value, str):
        found = _TEXT.fullmatch(value)
        if found is None or not found.group(1).strip():
            return None
        try:
            vector = np.array([float(v) for v in found.group(1).split(",")], dtype=np.float32)
        except ValueError:
            return None
    elif (
        isinstance(value, list | tuple) and value and all(isinstance(v, int | float) for v in value)
    ):
        vector = np.array(value, dtype=np.float32)
    else:
        return None
    return vector if bool(np.isfinite(vector).all()) else None
