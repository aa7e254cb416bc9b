"""Result columns named as PostgreSQL names them, written into a query as aliases.

DuckDB names an unaliased result column after its expression (``count_star()``, ``(a + b)``,
``CAST(x AS INTEGER)``); PostgreSQL after the rules of its ``FigureColname``: a column's own
name, a function's name (``count``, ``btrim`` for ``trim(...)``), the type of a bare cast
(``int4``), ``case``, ``array``, ``row``, ``coalesce``, ``exists``, a scalar subquery's column,
and ``?column?`` for anything else. :func:`name_columns` gives every unaliased target of every
SELECT in a parsed query the alias PostgreSQL would have named it by, before the query is
translated (the translator renames functions).

>>> from pglast import parse_sql
>>> query = parse_sql("select count(*), a + b, x::int, 1::int, case when c then 1 end")[0].stmt
>>> name_columns(query)
>>> [target.name for target in query.targetList]
['count', '?column?', 'x', 'int4', 'case']
"""

from __future__ import annotations

from typing import Any

from pglast import ast, enums
from pglast.visitors import Visitor

UNNAMED = "?column?"

_NAMED_NODES: dict[type, str] = {
    ast.A_ArrayExpr: "array",
    ast.RowExpr: "row",
    ast.CoalesceExpr: "coalesce",
    ast.GroupingFunc: "grouping",
}


def name_columns(node: ast.Node) -> None:
    """Alias every unaliased target of every SELECT under ``node`` (in place) as PostgreSQL
    names it; a plain column reference and ``*`` are left as they are (DuckDB names those the
    same)."""
    _Namer()(node)


def column_name(value: Any) -> str:
    """The name PostgreSQL gives a result column computed by ``value`` (a raw parse node)."""
    name, _ = _figure(value)
    return name or UNNAMED


class _Namer(Visitor):
    def visit_SelectStmt(self, ancestors: Any, node: ast.SelectStmt) -> None:
        for target in node.targetList or ():
            if not isinstance(target, ast.ResTarget) or target.name is not None:
                continue
            value = target.val
            if isinstance(value, ast.ColumnRef) or target.indirection:
                continue
            target.name = column_name(value)


def _figure(node: Any) -> tuple[str | None, int]:
    """PostgreSQL's ``FigureColnameInternal``: a name and its strength (0: none, 1: a guess
    a stronger name beats, 2: sure)."""
    if isinstance(node, ast.ColumnRef):
        strings = [f.sval for f in node.fields or () if isinstance(f, ast.String)]
        return (strings[-1], 2) if strings else (None, 0)
    if isinstance(node, ast.A_Indirection):
        last = (node.indirection or ())[-1:]
        if last and isinstance(last[0], ast.String):
            return last[0].sval, 2
        return _figure(node.arg)
    if isinstance(node, ast.FuncCall):
        return (node.funcname or ())[-1].sval, 2
    if isinstance(node, ast.A_Expr):
        if node.kind == enums.A_Expr_Kind.AEXPR_NULLIF:
            return "nullif", 2
        return None, 0
    if isinstance(node, ast.TypeCast):
        name, strength = _figure(node.arg)
        if strength == 0 and node.typeName is not None:
            names = node.typeName.names or ()
            if names:
                return names[-1].sval, 1
        return name, strength
    if isinstance(node, ast.CollateClause):
        return _figure(node.arg)
    if isinstance(node, ast.SubLink):
        return _sublink(node)
    if isinstance(node, ast.CaseExpr):
        name, strength = _figure(node.defresult)
        return ("case", 1) if strength <= 1 else (name, strength)
    if isinstance(node, ast.MinMaxExpr):
        return ("greatest" if node.op == enums.MinMaxOp.IS_GREATEST else "least"), 2
    if isinstance(node, ast.SQLValueFunction) and node.op is not None:
        return node.op.name.removeprefix("SVFOP_").removesuffix("_N").lower(), 2
    named = _NAMED_NODES.get(type(node))
    if named is not None:
        return named, 2
    return None, 0


def _sublink(node: ast.SubLink) -> tuple[str | None, int]:
    kind = node.subLinkType
    if kind == enums.SubLinkType.EXISTS_SUBLINK:
        return "exists", 2
    if kind == enums.SubLinkType.ARRAY_SUBLINK:
        return "array", 2
    if kind == enums.SubLinkType.EXPR_SUBLINK and isinstance(node.subselect, ast.SelectStmt):
        query = node.subselect
        while query.op != enums.SetOperation.SETOP_NONE and query.larg is not None:
            query = query.larg  # a UNION's columns are named by its first query
        targets = query.targetList or ()
        if targets and isinstance(targets[0], ast.ResTarget):
            first = targets[0]
            return first.name or column_name(first.val), 2
    return None, 0
