"""SQL from clients: split, classified and translated from PostgreSQL to DuckDB with pglast.

Only reads run on DuckDB. Session statements (SET, SHOW, transactions, cursors) are answered by
the session itself; ``pgml.train`` and the other PostgresML procedures are called by
:mod:`predictor.procedures`; everything that would write, or reach outside the mirror (files,
extensions, other databases), is refused with SQLSTATE 42501 before DuckDB sees it.

Inside queries, ``pgml.predict(project, features)`` becomes the DuckDB function
``pgml_predict(project, CAST(features AS DOUBLE[]))``, evaluated a vector of rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream
from pglast.visitors import Visitor

from mirror.errors import SidecarError
from predictor import catalog

PROCEDURES = ("train", "deploy", "load_dataset", "snapshot", "schedule", "retrain_on_drift")
SCALAR_FUNCTIONS = {"predict": "pgml_predict", "predict_proba": "pgml_predict_proba"}

# DuckDB functions that read or write files, reach other databases or run SQL text.
_REFUSED_FUNCTIONS = {
    "glob", "query", "query_table", "sniff_csv", "getenv", "load_extension", "install_extension",
    "duckdb_secrets", "which_secret", "parquet_scan", "iceberg_scan", "delta_scan",
    "sqlite_scan", "sqlite_attach", "postgres_scan", "postgres_scan_pushdown", "postgres_attach",
    "postgres_query", "postgres_execute", "mysql_scan", "mysql_query", "st_read", "pg_read_file",
    "pg_read_binary_file", "pg_ls_dir", "lo_import", "lo_export", "duckdb_extensions",
    "ducklake_snapshots", "httpfs", "from_csv_auto", "arrow_scan", "python_map_function",
}  # fmt: skip
# DuckDB statements PostgreSQL's grammar does not have; refused, never run.
_DUCKDB_ONLY = {
    "attach", "detach", "install", "force", "pragma", "export", "import", "use", "checkpoint",
    "force_checkpoint", "summarize", "describe", "pivot", "unpivot",
}  # fmt: skip
_OID_TYPES = [["regclass"], ["regtype"], ["regproc"], ["regnamespace"], ["regprocedure"]]
_REFUSED_PREFIXES = ("read_", "parquet_", "iceberg_", "delta_", "sqlite_", "postgres_", "mysql_")


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


def split(sql: str) -> list[Statement]:
    """Parse ``sql`` (one or more statements) into statements; an empty string gives none."""
    try:
        raws = parse_sql(sql)
    except ParseError as exc:
        first = sql.lstrip().split(None, 1)[0].lower() if sql.strip() else ""
        if first in _DUCKDB_ONLY:
            raise StatementError(
                f"{first.upper()} is not allowed: the endpoint reads the mirror only, never"
                " files, extensions or other databases",
                sqlstate="42501",
            ) from None
        raise StatementError(f"syntax error: {exc}", sqlstate="42601") from None
    encoded = sql.encode()
    statements = []
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(encoded)
        text = encoded[start:end].decode().strip()
        assert raw.stmt is not None
        statements.append(classify(raw.stmt, text))
    return statements


def classify(node: ast.Node, text: str) -> Statement:
    """What kind of statement ``node`` is, and for queries its DuckDB translation."""
    if isinstance(node, ast.SelectStmt):
        return _select(node, text)
    if isinstance(node, ast.TransactionStmt):
        return _transaction(node, text)
    if isinstance(node, ast.VariableSetStmt):
        value = None
        if node.args:
            value = ", ".join(str(_constant(a)) for a in node.args)
        if node.kind == enums.VariableSetKind.VAR_RESET_ALL:
            return Statement("reset_all", text, tag="RESET")
        if node.kind in (enums.VariableSetKind.VAR_RESET, enums.VariableSetKind.VAR_SET_DEFAULT):
            return Statement("reset", text, tag="RESET", name=node.name)
        return Statement("set", text, tag="SET", name=node.name, value=value)
    if isinstance(node, ast.VariableShowStmt):
        return Statement("show", text, tag="SHOW", name=node.name)
    if isinstance(node, ast.DeclareCursorStmt):
        inner = node.query
        if not isinstance(inner, ast.SelectStmt):
            raise StatementError("a cursor must be declared for a SELECT", sqlstate="0A000")
        query = _select(inner, text)
        if query.kind != "select":
            raise StatementError("a cursor cannot run a pgml procedure", sqlstate="0A000")
        return Statement(
            "declare",
            text,
            sql=query.sql,
            tag="DECLARE CURSOR",
            name=node.portalname,
            params=query.params,
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
        query = _select(node.query, text)
        if query.kind != "select":
            raise StatementError("EXPLAIN cannot run a pgml procedure", sqlstate="0A000")
        return Statement("select", text, sql="explain " + query.sql, tag="EXPLAIN")
    raise _refused(node)


def _refused(node: ast.Node) -> StatementError:
    name = type(node).__name__.removesuffix("Stmt")
    writes = (
        ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt, ast.TruncateStmt,
        ast.CopyStmt, ast.CreateStmt, ast.DropStmt, ast.AlterTableStmt, ast.IndexStmt,
        ast.ViewStmt, ast.CreateTableAsStmt, ast.CreateSchemaStmt, ast.RenameStmt,
        ast.CreateFunctionStmt, ast.GrantStmt, ast.LoadStmt, ast.CreateExtensionStmt,
        ast.VacuumStmt, ast.CreateSeqStmt,
    )  # fmt: skip
    if isinstance(node, writes):
        return StatementError(
            f"{name.upper()} is not allowed: the mirror is read-only here; change the source"
            " database and the replicator brings the change",
            sqlstate="42501",
        )
    return StatementError(f"{name} statements are not supported by pgml-sidecar", sqlstate="0A000")


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


def _select(node: ast.SelectStmt, text: str) -> Statement:
    if node.intoClause is not None:
        raise StatementError(
            "SELECT INTO is not allowed: the mirror is read-only here", sqlstate="42501"
        )
    procedure = _procedure(node)
    params = _Parameters()
    params(node)
    if procedure is not None:
        return Statement("procedure", text, tag="SELECT", procedure=procedure, params=params.count)
    direct = _direct_prediction(node)
    if direct is not None:
        return Statement("predict", text, tag="SELECT", procedure=direct, params=params.count)
    _Translator()(node)
    return Statement("select", text, sql=RawStream()(node), tag="SELECT", params=params.count)


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
    """Rewrite PostgreSQL-only spellings into DuckDB's, and refuse what reaches outside."""

    def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> Any:
        names = [n.sval for n in node.funcname or ()]
        pgml = _pgml_name(node.funcname)
        if pgml is not None:
            return self._pgml(pgml, node)
        _check_function(names[-1] or "")
        if names[-1] in catalog.FUNCTIONS and names[:-1] in ([], ["pg_catalog"]):
            node.funcname = (ast.String(catalog.SCHEMA), ast.String(names[-1]))
        return None

    def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> None:
        if node.relname in catalog.TABLES and node.schemaname in (None, "pg_catalog"):
            node.schemaname = catalog.SCHEMA

    def visit_RangeFunction(self, ancestors: Any, node: ast.RangeFunction) -> None:
        for item in node.functions or ():
            call = item[0]
            if isinstance(call, ast.FuncCall) and _pgml_name(call.funcname) is None:
                _check_function((call.funcname or (ast.String(""),))[-1].sval or "")

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


def _check_function(name: str) -> None:
    lowered = name.lower()
    if lowered in _REFUSED_FUNCTIONS or lowered.startswith(_REFUSED_PREFIXES):
        raise StatementError(
            f"function {name} is not allowed here: the endpoint reads the mirror only, never"
            " files or other databases",
            sqlstate="42501",
        )


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return f"pgml-sidecar {package_version('pgml-sidecar')}"
    except PackageNotFoundError:
        return "pgml-sidecar (development)"
