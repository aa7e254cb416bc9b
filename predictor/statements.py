"""SQL from clients: split, checked against the allow-list, and translated to DuckDB with pglast.

Only what the endpoint understands runs. Every statement is parsed with pglast; reads (SELECT,
WITH, VALUES, EXPLAIN, cursors) run on DuckDB once every function, relation and clause in them
passed :mod:`predictor.allow_list`; session statements (SET and RESET of the session's own
settings, SHOW, transactions, cursors) are answered by the session itself; ``pgml.train`` and the
other PostgresML procedures are called by :mod:`predictor.procedures`. Everything else (writes,
COPY, CALL, DuckDB's own statements, files, extensions, other databases, DuckDB's settings) is
refused with SQLSTATE 42501 before DuckDB sees it.

Inside queries, ``pgml.predict(project, features)`` becomes the DuckDB function
``pgml_predict(project, CAST(features AS DOUBLE[]))``, evaluated a vector of rows at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError, scan
from pglast.stream import RawStream
from pglast.visitors import Visitor

from mirror.errors import SidecarError
from predictor import catalog
from predictor.allow_list import (
    DUCKDB_ONLY_STATEMENTS,
    READ_ONLY_SETTINGS,
    SQL_SYNTAX_FUNCTIONS,
    Readable,
    check_query,
    check_setting,
)
from predictor.catalog import ServedRelation, ServedRelations

PROCEDURES = ("train", "deploy", "load_dataset", "snapshot", "schedule", "retrain_on_drift")
SCALAR_FUNCTIONS = {"predict": "pgml_predict", "predict_proba": "pgml_predict_proba"}

_OID_TYPES = [["regclass"], ["regtype"], ["regproc"], ["regnamespace"], ["regprocedure"]]
_DUCKDB_NAMES = {"btrim": "trim"}
"""PostgreSQL functions DuckDB has under another name."""


class StatementError(SidecarError):
    """A statement the endpoint cannot or will not run."""

    sqlstate = "42601"


@dataclass(frozen=True, slots=True)
class ProcedureCall:
    """A top-level call of a pgml procedure, as ``SELECT pgml.x(...)`` or ``SELECT * FROM``."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    expanded: bool  # SELECT * FROM pgml.x(...): one column per field


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a query string, ready for the session to run."""

    kind: str
    text: str
    sql: str = ""
    tag: str = ""
    name: str | None = None
    value: str | None = None
    count: int | None = None
    params: int = 0
    procedure: ProcedureCall | None = None
    param_refs: tuple[int, ...] = field(default_factory=tuple)
    reads: tuple[ServedRelation, ...] = ()
    """The mirrored tables, score views and registry relations the statement reads."""


def split(
    sql: str,
    *,
    relations: ServedRelations | None = None,
    readable: Readable | None = None,
) -> list[Statement]:
    """Parse and check ``sql`` (one or more statements); an empty string gives none.

    ``relations`` are the relations the mirror serves (without them only the catalog and CTEs
    can be named); ``readable`` says which mirrored tables and score views the caller may read
    (a test on ``(schema, name)`` or a set of them; every served one when None). Per-user
    privileges come in through ``readable``.
    """
    try:
        raws = parse_sql(sql)
    except ParseError as exc:
        raise _unparsable(sql, exc) from None
    encoded = sql.encode()
    statements = []
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(encoded)
        text = encoded[start:end].decode().strip()
        assert raw.stmt is not None
        statements.append(classify(raw.stmt, text, relations=relations, readable=readable))
    return statements


_CLAUSES_AFTER_FROM = frozenset(
    ("where", "group", "having", "window", "order", "limit", "offset", "union", "except",
     "intersect", "on", "using", ";")
)  # fmt: skip


def _unparsable(sql: str, exc: ParseError) -> StatementError:
    """The error for SQL PostgreSQL cannot parse: 42501 if some statement in it is DuckDB's own
    (``ATTACH``, ``PRAGMA``, ``FROM 'file'``), else a syntax error."""
    encoded = sql.encode()
    try:
        tokens = scan(sql)
    except ParseError:
        tokens = []
    words = [encoded[t.start : t.end + 1].decode(errors="replace").lower() for t in tokens]
    names = [t.name for t in tokens]
    first, depth, from_depth = True, 0, -1
    for i, (word, name) in enumerate(zip(words, names, strict=True)):
        if name in ("SQL_COMMENT", "C_COMMENT"):
            continue
        following = words[i + 1] if i + 1 < len(words) else ""
        if first and word == "from":
            return StatementError(
                "permission denied: FROM-first queries are DuckDB's syntax; the endpoint runs"
                " PostgreSQL's SELECT ... FROM over the mirror only",
                sqlstate="42501",
            )
        duckdb_only = word != "set" or following in ("variable", "global")
        if first and word in DUCKDB_ONLY_STATEMENTS and duckdb_only:
            shown = f"SET {following.upper()}" if word == "set" else word.upper()
            return StatementError(
                f"{shown} is not allowed: the endpoint reads the mirror only, never files,"
                " extensions or other databases",
                sqlstate="42501",
            )
        depth += {"(": 1, ")": -1}.get(word, 0)
        if word in ("from", "join"):
            from_depth = depth
        elif word in _CLAUSES_AFTER_FROM or depth < from_depth:
            from_depth = -1
        in_from = word in ("from", "join") or (word == "," and depth == from_depth)
        if in_from and i + 1 < len(names) and names[i + 1] == "SCONST":
            return StatementError(
                "permission denied: a string in FROM names a file, and the endpoint reads the"
                " mirror only, never files",
                sqlstate="42501",
            )
        first = word == ";"
    return StatementError(f"syntax error: {exc}", sqlstate="42601")


def classify(
    node: ast.Node,
    text: str,
    *,
    relations: ServedRelations | None = None,
    readable: Readable | None = None,
) -> Statement:
    """What kind of statement ``node`` is, checked, and for queries its DuckDB translation."""
    access = _Access(relations, readable)
    if isinstance(node, ast.SelectStmt):
        return _select(node, text, access)
    if isinstance(node, ast.TransactionStmt):
        return _transaction(node, text)
    if isinstance(node, ast.VariableSetStmt):
        return _setting(node, text)
    if isinstance(node, ast.VariableShowStmt):
        return Statement("show", text, tag="SHOW", name=node.name)
    if isinstance(node, ast.DeclareCursorStmt):
        inner = node.query
        if not isinstance(inner, ast.SelectStmt):
            raise StatementError("a cursor must be declared for a SELECT", sqlstate="0A000")
        query = _select(inner, text, access)
        if query.kind != "select":
            raise StatementError("a cursor cannot run a pgml procedure", sqlstate="0A000")
        return Statement(
            "declare",
            text,
            sql=query.sql,
            tag="DECLARE CURSOR",
            name=node.portalname,
            params=query.params,
            reads=query.reads,
        )
    if isinstance(node, ast.FetchStmt):
        if node.direction != enums.FetchDirection.FETCH_FORWARD:
            raise StatementError("only FETCH FORWARD is supported", sqlstate="0A000")
        kind = "move" if node.ismove else "fetch"
        return Statement(kind, text, tag=kind.upper(), name=node.portalname, count=node.howMany)
    if isinstance(node, ast.ClosePortalStmt):
        return Statement("close", text, tag="CLOSE CURSOR", name=node.portalname)
    if isinstance(node, ast.DiscardStmt):
        return Statement("discard", text, tag="DISCARD ALL")
    if isinstance(node, ast.DeallocateStmt):
        return Statement("deallocate", text, tag="DEALLOCATE", name=node.name)
    if isinstance(node, ast.ExplainStmt) and isinstance(node.query, ast.SelectStmt):
        query = _select(node.query, text, access)
        if query.kind != "select":
            raise StatementError("EXPLAIN cannot run a pgml procedure", sqlstate="0A000")
        return Statement(
            "select", text, sql="explain " + query.sql, tag="EXPLAIN", reads=query.reads
        )
    raise _refused(node)


@dataclass(frozen=True, slots=True)
class _Access:
    relations: ServedRelations | None
    readable: Readable | None


# Statements that change nothing and reach nothing, but that the endpoint does not implement.
_UNSUPPORTED = (
    ast.ListenStmt, ast.UnlistenStmt, ast.NotifyStmt, ast.PrepareStmt, ast.ExecuteStmt,
    ast.ExplainStmt,
)  # fmt: skip


def _refused(node: ast.Node) -> StatementError:
    """Anything not on the allow-list: 42501, or 0A000 for the few harmless statements."""
    name = type(node).__name__.removesuffix("Stmt")
    if isinstance(node, _UNSUPPORTED):
        return StatementError(
            f"{name} statements are not supported by pgml-sidecar", sqlstate="0A000"
        )
    return StatementError(
        f"{command_name(node)} is not allowed: the mirror is read-only here; change the source"
        " database and the replicator brings the change",
        sqlstate="42501",
    )


_COMMANDS = {"CheckPoint": "CHECKPOINT", "Define": "CREATE", "CompositeType": "CREATE",
             "Rule": "CREATE", "SecLabel": "SECURITY LABEL", "Createdb": "CREATE",
             "Dropdb": "DROP", "CreateTableAs": "CREATE"}  # fmt: skip


def command_name(node: ast.Node) -> str:
    """The SQL command a statement node stands for, as PostgreSQL names it (``INSERT``)."""
    name = type(node).__name__.removesuffix("Stmt")
    if name in _COMMANDS:
        return _COMMANDS[name]
    match = re.match(r"[A-Z][a-z]*", name)
    return (match.group(0) if match else name).upper()


def _setting(node: ast.VariableSetStmt, text: str) -> Statement:
    """SET and RESET of the session's own settings; DuckDB's are never changed by clients."""
    kinds = enums.VariableSetKind
    if node.kind == kinds.VAR_RESET_ALL:
        return Statement("reset_all", text, tag="RESET")
    if node.kind == kinds.VAR_SET_MULTI:
        raise StatementError(
            f"SET {node.name} is not supported; transactions here are read-only and"
            " repeatable read",
            sqlstate="0A000",
        )
    check_setting(node.name)
    if node.kind in (kinds.VAR_RESET, kinds.VAR_SET_DEFAULT):
        return Statement("reset", text, tag="RESET", name=node.name)
    value = None
    if node.args:
        value = ", ".join(str(_constant(a)) for a in node.args)
    return Statement("set", text, tag="SET", name=node.name, value=value)


def _transaction(node: ast.TransactionStmt, text: str) -> Statement:
    kinds = enums.TransactionStmtKind
    table = {
        kinds.TRANS_STMT_BEGIN: ("begin", "BEGIN"),
        kinds.TRANS_STMT_START: ("begin", "START TRANSACTION"),
        kinds.TRANS_STMT_COMMIT: ("commit", "COMMIT"),
        kinds.TRANS_STMT_ROLLBACK: ("rollback", "ROLLBACK"),
        kinds.TRANS_STMT_SAVEPOINT: ("savepoint", "SAVEPOINT"),
        kinds.TRANS_STMT_RELEASE: ("release", "RELEASE"),
        kinds.TRANS_STMT_ROLLBACK_TO: ("rollback_to", "ROLLBACK"),
    }
    if node.kind not in table:
        raise StatementError("two-phase commit is not supported", sqlstate="0A000")
    kind, tag = table[node.kind]
    return Statement(kind, text, tag=tag)


# -- queries -------------------------------------------------------------------------------------


def _select(node: ast.SelectStmt, text: str, access: _Access) -> Statement:
    reads = check_query(node, relations=access.relations, readable=access.readable)
    procedure = _procedure(node)
    params = _Parameters()
    params(node)
    if procedure is not None:
        return Statement("procedure", text, tag="SELECT", procedure=procedure, params=params.count)
    direct = _direct_prediction(node)
    if direct is not None:
        return Statement("predict", text, tag="SELECT", procedure=direct, params=params.count)
    _Translator()(node)
    sql = RawStream(special_functions=True)(node)
    return Statement("select", text, sql=sql, tag="SELECT", params=params.count, reads=reads)


def _direct_prediction(node: ast.SelectStmt) -> ProcedureCall | None:
    """``SELECT pgml.predict(<constant>, ARRAY[<constants>])`` and nothing else: the one-row
    prediction that needs no table, answered without a query plan (the latency path)."""
    if node.fromClause or node.whereClause or node.groupClause or node.valuesLists:
        return None
    if node.sortClause or node.limitCount or node.distinctClause or node.withClause:
        return None
    if node.op != enums.SetOperation.SETOP_NONE or len(node.targetList or ()) != 1:
        return None
    target = (node.targetList or ())[0]
    call = target.val
    if not isinstance(call, ast.FuncCall) or target.indirection:
        return None
    name = _pgml_name(call.funcname)
    args = call.args or ()
    if name not in SCALAR_FUNCTIONS or len(args) != 2:
        return None
    try:
        values = tuple(_constant(a) for a in args)
    except StatementError:
        return None  # columns or expressions: DuckDB evaluates them
    return ProcedureCall(name, values, {"column": target.name or name}, expanded=False)


def _pgml_name(funcname: tuple[ast.String, ...] | None) -> str | None:
    names = [n.sval for n in funcname or ()]
    if len(names) == 2 and names[0] == "pgml":
        return names[1]
    return None


def _procedure(node: ast.SelectStmt) -> ProcedureCall | None:
    """The pgml procedure a statement calls, if it is one of the two forms that call one."""
    targets = node.targetList or ()
    if node.fromClause is None and len(targets) == 1:
        call = targets[0].val
        if isinstance(call, ast.FuncCall) and _pgml_name(call.funcname) in PROCEDURES:
            return _call(call, expanded=False)
        if isinstance(call, ast.FuncCall) and _pgml_name(call.funcname) == "version":
            return _call(call, expanded=False)
    if node.fromClause and len(node.fromClause) == 1:
        item = node.fromClause[0]
        if isinstance(item, ast.RangeFunction) and item.functions:
            call = item.functions[0][0]
            name = isinstance(call, ast.FuncCall) and _pgml_name(call.funcname)
            if name in PROCEDURES or name == "version":
                assert isinstance(call, ast.FuncCall)
                return _call(call, expanded=True)
    for found in _function_calls(node):
        if _pgml_name(found.funcname) in PROCEDURES:
            raise StatementError(
                f"pgml.{_pgml_name(found.funcname)} must be called on its own, as SELECT"
                f" pgml.{_pgml_name(found.funcname)}(...) or SELECT * FROM"
                f" pgml.{_pgml_name(found.funcname)}(...)",
                sqlstate="0A000",
            )
    return None


def _call(call: ast.FuncCall, *, expanded: bool) -> ProcedureCall:
    name = _pgml_name(call.funcname)
    assert name is not None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for arg in call.args or ():
        if isinstance(arg, ast.NamedArgExpr):
            kwargs[arg.name or ""] = _constant(arg.arg)
        elif kwargs:
            raise StatementError("positional arguments cannot follow named ones")
        else:
            args.append(_constant(arg))
    return ProcedureCall(name, tuple(args), kwargs, expanded)


@dataclass(frozen=True, slots=True)
class Parameter:
    """A ``$n`` placeholder among a procedure's arguments, filled in from Bind."""

    number: int


def _constant(node: Any) -> Any:
    """The Python value of a constant argument: a literal, a cast literal or a parameter."""
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        value = node.val
        if isinstance(value, ast.Integer):
            return value.ival
        if isinstance(value, ast.Float):
            return float(value.fval or 0)
        if isinstance(value, ast.Boolean):
            return value.boolval
        if isinstance(value, ast.String):
            return value.sval
        return str(getattr(value, "sval", value))
    if isinstance(node, ast.TypeCast):
        return _constant(node.arg)
    if isinstance(node, ast.ParamRef):
        return Parameter(node.number or 0)
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP:
        operator = [n.sval for n in node.name or ()]
        if operator == ["-"] and node.lexpr is None:
            value = _constant(node.rexpr)
            if isinstance(value, int | float):
                return -value
    if isinstance(node, ast.String):
        return node.sval
    if isinstance(node, ast.A_ArrayExpr):
        return [_constant(element) for element in node.elements or ()]
    if isinstance(node, ast.ColumnRef) and node.fields and len(node.fields) == 1:
        field_ = node.fields[0]
        if isinstance(field_, ast.String):
            return field_.sval  # SET datestyle = ISO
    raise StatementError(
        "arguments of pgml procedures and SET must be constants or parameters",
        sqlstate="0A000",
    )


def _function_calls(node: ast.Node) -> Iterator[ast.FuncCall]:
    finder = _Finder()
    finder(node)
    return iter(finder.calls)


class _Finder(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[ast.FuncCall] = []

    def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> None:
        self.calls.append(node)


class _Parameters(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def visit_ParamRef(self, ancestors: Any, node: ast.ParamRef) -> None:
        self.count = max(self.count, node.number or 0)


class _Translator(Visitor):
    """Rewrite PostgreSQL-only spellings into DuckDB's (the statement passed the allow-list)."""

    def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> Any:
        names = [n.sval or "" for n in node.funcname or ()]
        pgml = _pgml_name(node.funcname)
        if pgml is not None:
            return self._pgml(pgml, node)
        name, qualifier = names[-1], names[:-1]
        if qualifier not in ([], ["pg_catalog"]):
            return None
        if name in catalog.FUNCTIONS:
            node.funcname = (ast.String(catalog.SCHEMA), ast.String(name))
        elif name.lower() == "current_setting":
            return ast.A_Const(val=ast.String(_setting_value(node)))
        elif qualifier and not (
            name in SQL_SYNTAX_FUNCTIONS and node.funcformat == enums.CoercionForm.COERCE_SQL_SYNTAX
        ):
            # DuckDB reads pg_catalog.lower(x) as lower(pg_catalog), a column
            node.funcname = (ast.String(_DUCKDB_NAMES.get(name, name)),)
        elif name in _DUCKDB_NAMES and not qualifier:
            node.funcname = (ast.String(_DUCKDB_NAMES[name]),)
        return None

    def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> None:
        if node.relname in catalog.TABLES and node.schemaname in (None, "pg_catalog"):
            node.schemaname = catalog.SCHEMA

    def visit_ResTarget(self, ancestors: Any, node: ast.ResTarget) -> Any:
        value = node.val
        if node.name is None and isinstance(value, ast.FuncCall):
            name = _pgml_name(value.funcname)
            if name is not None:
                node.name = name  # PostgreSQL names the column after the function
        return None

    def visit_TypeCast(self, ancestors: Any, node: ast.TypeCast) -> Any:
        cast_to = node.typeName
        if cast_to is not None and [n.sval for n in cast_to.names or ()][-1:] in _OID_TYPES:
            return node.arg  # a name stands for the relation or type it names
        if cast_to is not None and [n.sval for n in cast_to.names or ()][-1:] == ["jsonb"]:
            type_name = ast.TypeName(names=(ast.String("json"),), arrayBounds=cast_to.arrayBounds)
            return ast.TypeCast(arg=node.arg, typeName=type_name)
        return None

    def visit_SelectStmt(self, ancestors: Any, node: ast.SelectStmt) -> None:
        node.lockingClause = None  # nothing to lock in a read-only mirror

    def _pgml(self, name: str, node: ast.FuncCall) -> Any:
        if name == "version":
            return ast.A_Const(val=ast.String(version()))
        if name not in SCALAR_FUNCTIONS:
            raise StatementError(f"function pgml.{name} does not exist", sqlstate="42883")
        args = list(node.args or ())
        if len(args) != 2 or any(isinstance(a, ast.NamedArgExpr) for a in args):
            raise StatementError(
                f"pgml.{name} takes two arguments: a project name (or model id) and an array"
                " of features",
                sqlstate="42883",
            )
        project = ast.TypeCast(arg=args[0], typeName=_type("varchar"))
        features = ast.TypeCast(arg=args[1], typeName=_type("double", array=True))
        return ast.FuncCall(
            funcname=(ast.String(SCALAR_FUNCTIONS[name]),), args=(project, features)
        )


def _type(name: str, *, array: bool = False) -> ast.TypeName:
    bounds = (ast.Integer(-1),) if array else None
    return ast.TypeName(names=(ast.String(name),), arrayBounds=bounds)


def _setting_value(node: ast.FuncCall) -> str:
    """The value of ``current_setting('<read-only setting>')`` (the allow-list let only those
    through), as the session reports it at startup."""
    from predictor.execution import DEFAULT_SETTINGS  # the session's module imports this one

    first = (node.args or ())[0]
    assert isinstance(first, ast.A_Const) and isinstance(first.val, ast.String)
    name = (first.val.sval or "").lower()
    assert name in READ_ONLY_SETTINGS
    return DEFAULT_SETTINGS[name]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return f"pgml-sidecar {package_version('pgml-sidecar')}"
    except PackageNotFoundError:
        return "pgml-sidecar (development)"
