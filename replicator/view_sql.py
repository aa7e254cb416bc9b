"""A source view's definition, as ``pg_get_viewdef`` prints it, rewritten in DuckDB's SQL.

Pure functions over text: pglast parses the definition, the tree is rewritten where PostgreSQL
and DuckDB differ, and printed back. What differs:

- casts to PostgreSQL's type names (``pg_catalog.int4``, ``numeric``, ``text``, ``jsonb``,
  ``timestamp with time zone``) become DuckDB's, as the mirror maps columns (an unconstrained
  ``numeric`` is ``double``); array literals (``'{a,b}'::text[]``) become lists; interval
  literals in PostgreSQL's output style (``'-1 days +02:00:00'``) are spelled out;
- ``a / b`` of two integers divides as integers (DuckDB's ``/`` gives a fraction): DuckDB's
  ``divide`` where both sides are known integers (a column's source type, a literal, a cast),
  a fraction where one is known not to be, and otherwise a macro that decides by the operands'
  types (:data:`DIVIDE_MACRO`); a cast of a ``numeric`` to an integer type rounds first (half
  away from zero, as PostgreSQL; DuckDB holds it as a double and rounds half to even);
- ``LIKE`` keeps PostgreSQL's backslash escape, ``~*`` and ``!~*`` are ``regexp_matches`` with
  the ``i`` option, ``#>`` and ``#>>`` are ``json_extract`` with a JSON pointer;
- ``pg_catalog.f(x)`` is ``f(x)``; ``btrim``, ``jsonb_*`` and a few other functions take DuckDB's
  names;
- a ``GROUP BY`` that leaves out columns functionally dependent on a primary key (PostgreSQL
  allows it, DuckDB does not) gets them added: the groups are the same.

What has no DuckDB form (a function defined in the source, SIMILAR TO, ``to_char``, the user's
identity, XML, a catalog table, ...) raises :class:`UntranslatableView` naming it; DuckDB itself
judges the rest when the view is created.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream

from mirror.duckdb_sql import META
from mirror.errors import SidecarError

DIVIDE_MACRO = (META, "pg_divide")
"""``a / b`` where the operands' types are not known from the text: integer division for two
integers, as PostgreSQL's, a fraction otherwise."""
_INTEGER_TYPES = "('TINYINT','SMALLINT','INTEGER','BIGINT','HUGEINT','UTINYINT','USMALLINT','UINTEGER','UBIGINT')"  # noqa: E501
DIVIDE_MACRO_SQL = (
    f"create or replace macro {META}.pg_divide(a, b) as case when typeof(a) in {_INTEGER_TYPES}"
    f" and typeof(b) in {_INTEGER_TYPES} then a // b else a / b end"
)

ColumnTypes = Mapping[tuple[str, str], Mapping[str, str]]
"""The columns of the relations a view reads: (schema, name) to column name to its type as
PostgreSQL's ``format_type`` names it."""


class UntranslatableView(SidecarError):
    """A view uses what the mirror (DuckDB) cannot run."""

    sqlstate = "0A000"


_TYPES = {
    "int2": "smallint", "smallint": "smallint",
    "int4": "integer", "int": "integer", "integer": "integer",
    "int8": "bigint", "bigint": "bigint",
    "float4": "real", "real": "real",
    "float8": "double", "double precision": "double",
    "bool": "boolean", "boolean": "boolean",
    "text": "varchar", "varchar": "varchar", "character varying": "varchar",
    "bpchar": "varchar", "char": "varchar", "character": "varchar", "name": "varchar",
    "date": "date", "timestamp": "timestamp", "timestamp without time zone": "timestamp",
    "timestamptz": "timestamptz", "timestamp with time zone": "timestamptz",
    "time": "time", "time without time zone": "time", "timetz": "timetz",
    "interval": "interval", "json": "json", "jsonb": "json", "uuid": "uuid", "bytea": "blob",
}  # fmt: skip
"""PostgreSQL's type names (as the parser and ``format_type`` spell them) to DuckDB's."""
_NUMERIC = ("numeric", "decimal")
_INTEGERS = {"smallint", "integer", "bigint"}
_FRACTIONS = {"real", "double", "decimal"}

_FUNCTIONS = {
    "btrim": "trim",
    "char_length": "length",
    "character_length": "length",
    "json_array_length": "json_array_length",
    "jsonb_array_length": "json_array_length",
    "json_build_object": "json_object",
    "jsonb_build_object": "json_object",
    "json_build_array": "json_array",
    "jsonb_build_array": "json_array",
    "to_jsonb": "to_json",
    "jsonb_agg": "json_group_array",
    "json_agg": "json_group_array",
    "jsonb_object_keys": "json_keys",
    "every": "bool_and",
}
"""PostgreSQL functions DuckDB has under another name."""
_REFUSED_FUNCTIONS = {
    "to_char": "to_char() (DuckDB formats with strftime and other patterns)",
    "to_date": "to_date() (DuckDB parses with strptime and other patterns)",
    "to_timestamp": "to_timestamp() with a format (DuckDB parses with strptime)",
    "to_number": "to_number()",
    "format": "format() (DuckDB's format() takes other placeholders)",
    "regexp_match": "regexp_match() (DuckDB's regexp functions answer differently)",
    "regexp_matches": "regexp_matches() (DuckDB's regexp_matches answers true or false)",
    "similar_to_escape": "SIMILAR TO (write it as a regular expression with ~)",
    "nextval": "nextval() (a sequence of the source)",
    "currval": "currval() (a sequence of the source)",
    "current_setting": "current_setting() (a setting of the source's session)",
    "jsonb_typeof": "jsonb_typeof()",
    "json_typeof": "json_typeof()",
    "jsonb_set": "jsonb_set()",
    "jsonb_path_query": "jsonb_path_query()",
    "jsonb_path_exists": "jsonb_path_exists()",
    "jsonb_each": "jsonb_each()",
    "jsonb_each_text": "jsonb_each_text()",
    "json_each": "json_each()",
    "json_each_text": "json_each_text()",
    "jsonb_array_elements": "jsonb_array_elements()",
    "json_array_elements": "json_array_elements()",
}
"""Functions whose DuckDB namesake (if any) answers differently: refused, by name."""
_REFUSED_PREFIXES = ("pg_", "txid_", "has_", "xml", "ts_", "to_tsvector", "to_tsquery")
_OPERATORS_REFUSED = {
    "?": "the jsonb operator ? (key exists)",
    "?|": "the jsonb operator ?| (any key exists)",
    "?&": "the jsonb operator ?& (all keys exist)",
    "@@": "the text search operator @@",
    "@?": "the jsonb path operator @?",
    "#-": "the jsonb operator #- (delete path)",
}
_LIKE = {"~~": "like_escape", "~~*": "ilike_escape"}
_NOT_LIKE = {"!~~": "like_escape", "!~~*": "ilike_escape"}
_SQL_VALUE_REFUSED = {
    enums.SQLValueFunctionOp.SVFOP_CURRENT_ROLE: "current_role",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_USER: "current_user",
    enums.SQLValueFunctionOp.SVFOP_USER: "user",
    enums.SQLValueFunctionOp.SVFOP_SESSION_USER: "session_user",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_CATALOG: "current_catalog",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_SCHEMA: "current_schema",
}
_AGGREGATES = {
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or",
    "every", "stddev", "stddev_samp", "stddev_pop", "variance", "var_samp", "var_pop", "corr",
    "covar_pop", "covar_samp", "json_agg", "jsonb_agg", "percentile_cont", "percentile_disc",
    "mode", "bit_and", "bit_or", "regr_slope", "regr_intercept", "regr_r2", "regr_count",
}  # fmt: skip
_NODES_REFUSED = {
    "XmlExpr": "XML functions",
    "XmlSerialize": "XMLSERIALIZE",
    "RangeTableFunc": "XMLTABLE",
    "RangeTableSample": "TABLESAMPLE",
    "CollateClause": "COLLATE (DuckDB's collations differ from PostgreSQL's)",
    "RangeTableFuncCol": "XMLTABLE",
    "JsonTable": "JSON_TABLE",
    "CurrentOfExpr": "CURRENT OF",
}


def parse(definition: str) -> ast.SelectStmt:
    """The view's query as a tree."""
    try:
        statements = parse_sql(definition)
    except ParseError as exc:
        raise UntranslatableView(f"cannot parse the view's definition: {exc}") from None
    statement = statements[0].stmt if len(statements) == 1 else None
    if not isinstance(statement, ast.SelectStmt):
        raise UntranslatableView("a view's definition is one SELECT")
    return statement


def relations_read(definition: str) -> list[tuple[str, str]]:
    """The relations the view reads, as (schema, name), in order of first mention; names
    without a schema (CTEs) are left out: ``pg_get_viewdef`` under an empty search_path
    qualifies every relation."""
    found: list[tuple[str, str]] = []

    def walk(value: Any) -> None:
        if isinstance(value, tuple):
            for item in value:
                walk(item)
        elif isinstance(value, ast.Node):
            if isinstance(value, ast.RangeVar) and value.schemaname and value.relname:
                key = (value.schemaname, value.relname)
                if key not in found:
                    found.append(key)
            for member in value:
                walk(getattr(value, member))

    walk(parse(definition))
    return found


def translate(definition: str, *, view: str, columns: ColumnTypes | None = None) -> str:
    """The DuckDB SQL of the view's query; raise :class:`UntranslatableView` naming what has
    no DuckDB form. ``columns``: the types of the columns it reads, to tell integer division."""
    query = parse(definition)
    rewriter = _Rewriter(view, columns or {})
    rewriter.ctes = _cte_names(query)
    rewritten = rewriter.rewrite(query, ())
    return str(RawStream(special_functions=True)(rewritten))


Scope = tuple[dict[str, tuple[str, str]], ...]
"""The relations in reach of a column reference, innermost query first: alias to relation."""


class _Rewriter:
    """One bottom-up pass over a view's query, with the relations each query level sees."""

    def __init__(self, view: str, columns: ColumnTypes) -> None:
        self.view = view
        self.columns = columns
        self.ctes: set[str] = set()
        """The names the query's WITH clauses give (unqualified, as the catalogs are)."""
        self.numeric_casts: set[int] = set()
        """Casts that were to PostgreSQL's numeric, by id()."""

    def refuse(self, what: str, advice: str = "") -> UntranslatableView:
        advice = advice or (
            "rewrite the view without it, or compute it in a column of a table the view reads"
        )
        return UntranslatableView(
            f"view {self.view} uses {what}, which the mirror (DuckDB) cannot run: {advice}"
        )

    def rewrite(self, value: Any, scope: Scope) -> Any:
        if isinstance(value, tuple):
            return tuple(self.rewrite(v, scope) for v in value)
        if not isinstance(value, ast.Node):
            return value
        name = type(value).__name__
        if name in _NODES_REFUSED:
            raise self.refuse(_NODES_REFUSED[name])
        if isinstance(value, ast.SelectStmt):
            scope = (_relations_in(value.fromClause), *scope)
        for member in value:
            child = getattr(value, member)
            if isinstance(child, tuple | ast.Node):
                setattr(value, member, self.rewrite(child, scope))
        handler = getattr(self, f"_{name}", None)
        return value if handler is None else handler(value, scope)

    # -- nodes -----------------------------------------------------------------------------------

    def _RangeVar(self, node: ast.RangeVar, scope: Scope) -> ast.Node:
        if node.catalogname:
            raise self.refuse(f"{node.catalogname}.{node.schemaname}.{node.relname}")
        schema = node.schemaname
        if schema is None and node.relname not in self.ctes:
            schema = "pg_catalog"  # what an empty search_path leaves unqualified
        if schema in ("pg_catalog", "information_schema"):
            raise self.refuse(
                f"{schema}.{node.relname}, a catalog of the source",
                "train on a view that reads tables only",
            )
        return node

    def _SQLValueFunction(self, node: ast.SQLValueFunction, scope: Scope) -> ast.Node:
        refused = _SQL_VALUE_REFUSED.get(node.op) if node.op is not None else None
        if refused is not None:
            raise self.refuse(f"{refused} (the mirror has no sessions of the source's roles)")
        return node

    def _TypeCast(self, node: ast.TypeCast, scope: Scope) -> ast.Node:
        target = node.typeName
        assert target is not None
        base = self._type(target)
        arg = node.arg
        literal = _string(arg)
        if target.arrayBounds:
            if literal is not None:
                elements = tuple(
                    ast.A_Const(isnull=True) if e is None
                    else ast.TypeCast(arg=ast.A_Const(val=ast.String(e)), typeName=base)
                    for e in _array_elements(literal, self)
                )  # fmt: skip
                return ast.A_ArrayExpr(elements=elements)
            base.arrayBounds = target.arrayBounds
        elif literal is not None and base.names and base.names[0].sval == "interval":
            node.arg = ast.A_Const(val=ast.String(_interval(literal)))
        elif base.names and base.names[0].sval in _INTEGERS and self._is_numeric(arg, scope):
            node.arg = _call("round", arg)  # numeric to integer rounds half away from zero
        node.typeName = base
        if (target.names or (ast.String(""),))[-1].sval in _NUMERIC:
            self.numeric_casts.add(id(node))
        return node

    def _is_numeric(self, node: Any, scope: Scope) -> bool:
        """Whether an expression is PostgreSQL's ``numeric`` (the mirror holds an
        unconstrained one as a double, which DuckDB rounds half to even)."""
        if isinstance(node, ast.A_Const):
            return isinstance(node.val, ast.Float)
        if isinstance(node, ast.TypeCast):
            return id(node) in self.numeric_casts
        if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP:
            return self._is_numeric(node.lexpr, scope) or self._is_numeric(node.rexpr, scope)
        if isinstance(node, ast.FuncCall) and node.args:
            name = (node.funcname or (ast.String(""),))[-1].sval
            if name in ("sum", "avg", "min", "max", "round", "trunc", "abs", DIVIDE_MACRO[1]):
                return self._is_numeric(node.args[0], scope)
        pg_type = self._column_type(node, scope)
        return pg_type is not None and pg_type.split("(")[0] in _NUMERIC

    def _type(self, target: ast.TypeName) -> ast.TypeName:
        names = [n.sval or "" for n in target.names or ()]
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        if len(names) != 1:
            raise self.refuse(f"the type {'.'.join(names)}", "cast to a built-in type instead")
        pg_name = names[0].lower()
        if pg_name in _NUMERIC:
            modifiers = [
                m.val.ival or 0 for m in target.typmods or () if isinstance(m, ast.A_Const)
                and isinstance(m.val, ast.Integer)
            ]  # fmt: skip
            if modifiers and modifiers[0] <= 38:
                typmods = tuple(ast.A_Const(val=ast.Integer(m)) for m in modifiers)
                return ast.TypeName(names=(ast.String("decimal"),), typmods=typmods)
            return ast.TypeName(names=(ast.String("double"),))
        duck = _TYPES.get(pg_name)
        if duck is None:
            raise self.refuse(f"the type {pg_name}", "cast to a built-in type instead")
        return ast.TypeName(names=(ast.String(duck),))

    def _A_Expr(self, node: ast.A_Expr, scope: Scope) -> ast.Node:
        if node.kind != enums.A_Expr_Kind.AEXPR_OP:  # ANY, ALL, IN, BETWEEN...: DuckDB's too
            return node
        names = [n.sval or "" for n in node.name or ()]
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
            node.name = (ast.String(names[0]),)
        if len(names) != 1:
            raise self.refuse(f"the operator {'.'.join(names)}, defined in the source")
        op = names[0]
        left, right = node.lexpr, node.rexpr
        if op in _OPERATORS_REFUSED:
            raise self.refuse(_OPERATORS_REFUSED[op])
        if op in _LIKE or op in _NOT_LIKE:
            call = _call(_LIKE.get(op) or _NOT_LIKE[op], left, right, _text("\\"))
            return _not(call) if op in _NOT_LIKE else call
        if op in ("~*", "!~*"):
            call = _call("regexp_matches", left, right, _text("i"))
            return _not(call) if op == "!~*" else call
        if op in ("#>", "#>>"):
            pointer = _json_pointer(right)
            if pointer is None:
                raise self.refuse(f"{op} with a path that is not a constant")
            function = "json_extract_string" if op == "#>>" else "json_extract"
            return _call(function, left, _text(pointer))
        if op == "/" and left is not None and right is not None:
            return self._divide(left, right, scope)
        return node

    def _divide(self, left: Any, right: Any, scope: Scope) -> ast.Node:
        kinds = {self._kind(left, scope), self._kind(right, scope)}
        if kinds == {"integer"}:
            return _call("divide", left, right)  # DuckDB's integer division, as a call
        if "fraction" in kinds:
            return ast.A_Expr(
                kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String("/"),), lexpr=left, rexpr=right
            )
        return ast.FuncCall(funcname=tuple(ast.String(n) for n in DIVIDE_MACRO), args=(left, right))

    def _kind(self, node: Any, scope: Scope) -> str | None:
        """``integer``, ``fraction`` or None (not known) for an expression's type."""
        if isinstance(node, ast.A_Const):
            return {ast.Integer: "integer", ast.Float: "fraction"}.get(type(node.val))
        if isinstance(node, ast.TypeCast) and node.typeName is not None:
            duck = (node.typeName.names or (ast.String(""),))[-1].sval
            return "integer" if duck in _INTEGERS else "fraction" if duck in _FRACTIONS else None
        if isinstance(node, ast.ColumnRef):
            return self._column_kind(node, scope)
        if isinstance(node, ast.FuncCall):
            name = (node.funcname or (ast.String(""),))[-1].sval
            if name in ("count", "row_number", "rank", "dense_rank", "ntile", "length", "divide"):
                return "integer"
            if name in ("avg", "random", "stddev", "variance", "sqrt", "exp", "ln"):
                return "fraction"
            return None
        if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP:
            op = (node.name or (ast.String(""),))[-1].sval
            if op in ("+", "-", "*", "%"):
                kinds = {self._kind(node.lexpr, scope), self._kind(node.rexpr, scope)}
                if node.lexpr is None:
                    kinds.discard(None)
                if kinds == {"integer"}:
                    return "integer"
                return "fraction" if "fraction" in kinds else None
            if op == "/":
                return "fraction"
        if (
            isinstance(node, ast.FuncCall)
            and tuple(n.sval for n in node.funcname or ()) == DIVIDE_MACRO
        ):
            return None
        return None

    def _column_kind(self, node: ast.ColumnRef, scope: Scope) -> str | None:
        pg_type = self._column_type(node, scope)
        if pg_type is None:
            return None
        base = re.sub(r"\(.*\)", "", pg_type).strip()
        duck = "decimal" if base in _NUMERIC else _TYPES.get(base)
        return "integer" if duck in _INTEGERS else "fraction" if duck in _FRACTIONS else None

    def _column_type(self, node: Any, scope: Scope) -> str | None:
        """The source type (``format_type``'s name) of a column reference, if known."""
        if not isinstance(node, ast.ColumnRef):
            return None
        fields = [f.sval for f in node.fields or () if isinstance(f, ast.String)]
        if len(fields) != len(node.fields or ()) or not fields:
            return None
        column = fields[-1] or ""
        for level in scope:
            if len(fields) >= 2:
                relation = level.get(fields[-2] or "")
                candidates = [relation] if relation is not None else []
            else:
                candidates = list(level.values())
            for candidate in candidates:
                found = self.columns.get(candidate, {}).get(column)
                if found is not None:
                    return found
            if candidates and len(fields) >= 2:
                return None
        return None

    def _FuncCall(self, node: ast.FuncCall, scope: Scope) -> ast.Node:
        names = [n.sval or "" for n in node.funcname or ()]
        if tuple(names) == DIVIDE_MACRO:
            return node
        if node.funcformat == enums.CoercionForm.COERCE_SQL_SYNTAX:
            return node  # EXTRACT(...), SUBSTRING(... FROM ...), AT TIME ZONE: DuckDB's too
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        if len(names) != 1:
            raise self.refuse(
                f"{'.'.join(names)}(), a function defined in the source database",
            )
        name = names[0].lower()
        refused = _REFUSED_FUNCTIONS.get(name)
        if name == "to_timestamp" and len(node.args or ()) == 1:
            refused = None  # to_timestamp(epoch seconds) is DuckDB's too
        if refused is None and name.startswith(_REFUSED_PREFIXES):
            refused = f"{name}()"
        if refused is not None:
            raise self.refuse(refused)
        if name in ("jsonb_extract_path_text", "json_extract_path_text", "jsonb_extract_path",
                    "json_extract_path"):  # fmt: skip
            return self._extract_path(name, node)
        node.funcname = (ast.String(_FUNCTIONS.get(name, name)),)
        return node

    def _extract_path(self, name: str, node: ast.FuncCall) -> ast.Node:
        args = list(node.args or ())
        keys = [_string(a.arg if isinstance(a, ast.TypeCast) else a) for a in args[1:]]
        if not args or any(k is None for k in keys):
            raise self.refuse(f"{name}() with a path that is not constant")
        pointer = "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)
        function = "json_extract_string" if name.endswith("_text") else "json_extract"
        return _call(function, args[0], _text(pointer))

    def _SelectStmt(self, node: ast.SelectStmt, scope: Scope) -> ast.Node:
        _complete_group_by(node)
        return node


def _cte_names(query: ast.Node) -> set[str]:
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, tuple):
            for item in value:
                walk(item)
        elif isinstance(value, ast.Node):
            if isinstance(value, ast.CommonTableExpr) and value.ctename:
                names.add(value.ctename)
            for member in value:
                walk(getattr(value, member))

    walk(query)
    return names


def _relations_in(from_clause: Any) -> dict[str, tuple[str, str]]:
    """The relations a FROM clause names, by the name they go by there."""
    found: dict[str, tuple[str, str]] = {}

    def walk(item: Any) -> None:
        if isinstance(item, tuple):
            for each in item:
                walk(each)
        elif isinstance(item, ast.RangeVar) and item.relname:
            alias = item.alias.aliasname if item.alias is not None else item.relname
            found[alias or item.relname] = (item.schemaname or "", item.relname)
        elif isinstance(item, ast.JoinExpr):
            walk(item.larg)
            walk(item.rarg)

    walk(from_clause)
    return found


def _complete_group_by(node: ast.SelectStmt) -> None:
    """Add to GROUP BY the columns the select list and HAVING read outside aggregates:
    PostgreSQL lets a query group by a primary key alone, DuckDB wants them all."""
    groups = list(node.groupClause or ())
    if not groups or any(isinstance(g, ast.GroupingSet) for g in groups):
        return
    present = {RawStream()(g) for g in groups}
    for ref in _plain_column_refs((node.targetList, node.havingClause)):
        text = RawStream()(ref)
        if text not in present:
            present.add(text)
            groups.append(ast.ColumnRef(fields=ref.fields))
    node.groupClause = tuple(groups)


def _plain_column_refs(value: Any) -> list[ast.ColumnRef]:
    """Column references outside aggregates, window functions and subqueries."""
    found: list[ast.ColumnRef] = []

    def walk(item: Any) -> None:
        if isinstance(item, tuple):
            for each in item:
                walk(each)
            return
        if not isinstance(item, ast.Node) or isinstance(item, ast.SubLink | ast.SelectStmt):
            return
        if isinstance(item, ast.ColumnRef):
            if not any(isinstance(f, ast.A_Star) for f in item.fields or ()):
                found.append(item)
            return
        if isinstance(item, ast.FuncCall) and _is_aggregate(item):
            return
        for member in item:
            walk(getattr(item, member))

    walk(value)
    return found


def _is_aggregate(node: ast.FuncCall) -> bool:
    name = (node.funcname or (ast.String(""),))[-1].sval or ""
    return bool(
        node.agg_star
        or node.agg_distinct
        or node.agg_filter is not None
        or node.agg_order
        or node.agg_within_group
        or node.over is not None
        or name.lower() in _AGGREGATES
    )


def _string(node: Any) -> str | None:
    """The text of a string constant, or None for anything else."""
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return node.val.sval or ""
    return None


def _call(name: str, *args: Any) -> ast.FuncCall:
    return ast.FuncCall(funcname=(ast.String(name),), args=args)


def _not(node: ast.Node) -> ast.BoolExpr:
    return ast.BoolExpr(boolop=enums.BoolExprType.NOT_EXPR, args=(node,))


def _text(value: str) -> ast.A_Const:
    return ast.A_Const(val=ast.String(value))


def _json_pointer(path: Any) -> str | None:
    """The JSON pointer (``/a/0``) of a constant PostgreSQL path (``'{a,0}'::text[]``), after
    the array literal became a list."""
    if isinstance(path, ast.A_ArrayExpr):
        keys = []
        for element in path.elements or ():
            key = _string(element.arg if isinstance(element, ast.TypeCast) else element)
            if key is None:
                return None
            keys.append(key)
        return "".join("/" + k.replace("~", "~0").replace("/", "~1") for k in keys)
    return None


def _array_elements(literal: str, rewriter: _Rewriter) -> list[str | None]:
    """The elements of a one-dimensional PostgreSQL array literal (``{a,"b c",NULL}``)."""
    text = literal.strip()
    if not (text.startswith("{") and text.endswith("}")) or text.startswith("{{"):
        raise rewriter.refuse(f"the array literal {literal!r}", "write it as ARRAY[...]")
    body = text[1:-1]
    elements: list[str | None] = []
    if not body.strip():
        return elements
    current: list[str] = []
    quoted = was_quoted = False
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            current.append(body[index + 1])
            index += 2
            continue
        if char == '"':
            quoted, was_quoted = not quoted, True
        elif char == "," and not quoted:
            item = "".join(current) if was_quoted else "".join(current).strip()
            elements.append(None if not was_quoted and item.upper() == "NULL" else item)
            current, was_quoted = [], False
        else:
            current.append(char)
        index += 1
    item = "".join(current) if was_quoted else "".join(current).strip()
    elements.append(None if not was_quoted and item.upper() == "NULL" else item)
    return elements


_INTERVAL_PART = re.compile(
    r"([+-]?\d+(?:\.\d+)?)\s+(years?|mons?|months?|days?|hours?|mins?|minutes?|secs?|seconds?)"
    r"|([+-])?(\d+):(\d{2})(?::(\d{2}(?:\.\d+)?))?"
)
_INTERVAL_UNITS = {"year": "years", "mon": "months", "mont": "months", "day": "days",
                   "hour": "hours", "min": "minutes", "minu": "minutes", "sec": "seconds",
                   "seco": "seconds"}  # fmt: skip


def _interval(text: str) -> str:
    """PostgreSQL's interval output (``-1 days +02:00:00``, ``1 year 2 mons``) as a string
    DuckDB reads: every part spelled with its unit and its own sign."""
    parts: list[str] = []
    rest = _INTERVAL_PART.sub(lambda m: parts.append(_interval_part(m)) or "", text)  # type: ignore[func-returns-value]
    if rest.strip() or not parts:
        return text  # another style: DuckDB judges it
    return " ".join(parts)


def _interval_part(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        unit = match.group(2).lower()
        key = unit[:4] if unit[:4] in _INTERVAL_UNITS else unit[:3]
        return f"{match.group(1)} {_INTERVAL_UNITS[key]}"
    sign = "-" if match.group(3) == "-" else ""
    hours, minutes, seconds = match.group(4), match.group(5), match.group(6) or "0"
    return f"{sign}{hours} hours {sign}{minutes} minutes {sign}{seconds} seconds"
