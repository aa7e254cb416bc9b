"""SQL from clients: split, checked against the allow-list, and translated to DuckDB with pglast.

Only what the endpoint understands runs. Every statement is parsed with pglast; reads (SELECT,
WITH, VALUES, EXPLAIN, cursors) run on DuckDB once every function, relation and clause in them
passed :mod:`predictor.allow_list`; session statements (SET and RESET of the session's own
settings, SHOW, transactions, cursors) are answered by the session itself; ``pgml.train`` and the
other PostgresML procedures are called by :mod:`predictor.procedures`. Everything else (writes,
COPY, CALL, DuckDB's own statements, files, extensions, other databases, DuckDB's settings) is
refused with SQLSTATE 42501 before DuckDB sees it. A query's DuckDB spelling comes from
:mod:`predictor.translation`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError, scan

from mirror.errors import SidecarError
from predictor import vector_search
from predictor.allow_list import (
    DUCKDB_ONLY_STATEMENTS,
    PROCEDURES,
    Readable,
    ScoredModel,
    check_query,
    check_relation_name,
    check_setting,
)
from predictor.catalog import ServedRelation, ServedRelations
from predictor.catalog_scope import CatalogScope
from predictor.translation import SCALAR_FUNCTIONS, pgml_name, translate
from predictor.vector_search import VectorSearch
from predictor.workspace import WorkspaceNames, WorkspaceWrite
from predictor.workspace_statements import classify_write, read_only

PROCEDURES = PROCEDURES  # the names callers of this module use


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
    check_relation: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    """Refuses a relation the caller may not train on or snapshot (the allow-list's check of
    ``relation_name``, run once its ``$n`` parameters are known)."""


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
    scored: tuple[ScoredModel, ...] = ()
    """The models its ``pgml.predict`` calls score with (checked against the caller at run)."""
    columns: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """The tables it reads only some columns of (the caller's role may read no more), with
    those columns; every other table in ``reads`` it reads whole."""
    write: WorkspaceWrite | None = None
    """What a statement writing to the caller's workspace does (kind ``write``)."""
    vector_search: VectorSearch | None = None
    """How the index path may answer this query (kind ``select``), if it can."""


def split(
    sql: str,
    *,
    relations: ServedRelations | None = None,
    readable: Readable | None = None,
    viewer: str | None = None,
    workspace: WorkspaceNames | None = None,
) -> list[Statement]:
    """Parse and check ``sql`` (one or more statements); an empty string gives none.

    ``relations`` are the relations the mirror serves (without them only the catalog and CTEs
    can be named); ``readable`` says which mirrored tables and score views the caller may read
    (a test on ``(schema, name)`` or a set of them; every served one when None). Per-user
    privileges come in through ``readable``, and ``viewer`` (a source role) sees only its
    projects' rows of the registry (all of them when None). ``workspace``: the caller's
    workspace, where its names are looked for first and where it may write (None: nowhere).
    """
    return [
        classify(
            node, text, relations=relations, readable=readable, viewer=viewer, workspace=workspace
        )
        for node, text in parse(sql)
    ]


def parse(sql: str) -> list[tuple[ast.Node, str]]:
    """The statements of ``sql``, parsed, each with its text (nothing checked yet: a statement
    that writes changes the names the next one sees, so each is checked just before it runs)."""
    try:
        raws = parse_sql(sql)
    except ParseError as exc:
        raise _unparsable(sql, exc) from None
    encoded = sql.encode()
    parsed = []
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(encoded)
        assert raw.stmt is not None
        parsed.append((raw.stmt, encoded[start:end].decode().strip()))
    return parsed


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
    message, location = exc.args if len(exc.args) == 2 else (str(exc), None)
    error = StatementError(str(message), sqlstate="42601")
    error.position = (location if location is not None else len(sql)) + 1  # type: ignore[attr-defined]
    return error


def classify(
    node: ast.Node,
    text: str,
    *,
    relations: ServedRelations | None = None,
    readable: Readable | None = None,
    viewer: str | None = None,
    workspace: WorkspaceNames | None = None,
    scope: Callable[[], CatalogScope] | None = None,
) -> Statement:
    """What kind of statement ``node`` is, checked, and for queries its DuckDB translation.

    ``scope``: the catalog the caller sees, asked for if the statement reads the catalog."""
    access = _Access(relations, readable, viewer, workspace, scope)
    try:
        return _classify(node, text, access)
    except RecursionError:  # expressions nested deeper than a check or print can follow
        raise StatementError(
            "stack depth limit exceeded: the statement nests expressions too deeply",
            sqlstate="54001",
        ) from None


def _classify(node: ast.Node, text: str, access: _Access) -> Statement:
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
            scored=query.scored,
            columns=query.columns,
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
            "select",
            text,
            sql="explain " + query.sql,
            tag="EXPLAIN",
            reads=query.reads,
            scored=query.scored,
            columns=query.columns,
        )
    if access.workspace is not None:
        written = classify_write(
            node,
            relations=access.relations,
            readable=access.readable,
            viewer=access.viewer,
            names=access.workspace,
            scope=access.scope,
        )
        if written is not None:
            checked = written.checked
            return Statement(
                "write",
                text,
                tag=written.write.tag,
                write=written.write,
                params=checked.params if checked else 0,
                reads=checked.reads if checked else (),
                scored=checked.scored if checked else (),
                columns=checked.columns if checked else {},
            )
    raise _refused(node, access)


@dataclass(frozen=True, slots=True)
class _Access:
    relations: ServedRelations | None
    readable: Readable | None
    viewer: str | None
    workspace: WorkspaceNames | None = None
    scope: Callable[[], CatalogScope] | None = None


# Statements that change nothing and reach nothing, but that the endpoint does not implement.
_UNSUPPORTED = (
    ast.ListenStmt, ast.UnlistenStmt, ast.NotifyStmt, ast.PrepareStmt, ast.ExecuteStmt,
    ast.ExplainStmt,
)  # fmt: skip


def _refused(node: ast.Node, access: _Access) -> StatementError:
    """Anything not on the allow-list: 42501, or 0A000 for the few harmless statements; the
    message names the command as PostgreSQL does (``CREATE FUNCTION``), never a parser node."""
    command = command_name(node)
    if isinstance(node, _UNSUPPORTED):
        return StatementError(f"{command} is not supported by pgml-sidecar", sqlstate="0A000")
    relation = None if isinstance(node, ast.CopyStmt) else getattr(node, "relation", None)
    if isinstance(relation, ast.RangeVar) and access.relations is not None:
        found = access.relations.find(relation.schemaname or "public", relation.relname or "")
        if found is not None:
            error = read_only(found)
            return StatementError(str(error), sqlstate=error.sqlstate)
    if access.workspace is None:
        reason = "the mirror is read-only here; change the source database and the replicator"
        reason += " brings the change"
    else:
        reason = (
            "the endpoint reads the mirror, and in your workspace runs CREATE VIEW, CREATE"
            " TABLE [AS], ALTER TABLE, INSERT, UPDATE, DELETE, TRUNCATE and DROP TABLE or VIEW"
        )
    return StatementError(f"{command} is not allowed: {reason}", sqlstate="42501")


_COMMANDS = {
    "ViewStmt": "CREATE VIEW", "CreateTableAsStmt": "CREATE TABLE AS", "CreateStmt": "CREATE TABLE",
    "IndexStmt": "CREATE INDEX", "CreatedbStmt": "CREATE DATABASE", "DropdbStmt": "DROP DATABASE",
    "DefineStmt": "CREATE", "CompositeTypeStmt": "CREATE TYPE", "CreateEnumStmt": "CREATE TYPE",
    "RuleStmt": "CREATE RULE", "SecLabelStmt": "SECURITY LABEL", "CheckPointStmt": "CHECKPOINT",
    "CreateFunctionStmt": "CREATE FUNCTION", "DoStmt": "DO", "CopyStmt": "COPY",
    "VariableSetStmt": "SET", "CreateSeqStmt": "CREATE SEQUENCE", "GrantStmt": "GRANT",
    "GrantRoleStmt": "GRANT", "RenameStmt": "ALTER ... RENAME", "CreateRoleStmt": "CREATE ROLE",
    "AlterObjectSchemaStmt": "ALTER ... SET SCHEMA", "CreateTrigStmt": "CREATE TRIGGER",
    "CreateExtensionStmt": "CREATE EXTENSION", "LoadStmt": "LOAD", "CallStmt": "CALL",
    "DropStmt": "DROP", "DropRoleStmt": "DROP ROLE", "ExplainStmt": "EXPLAIN",
    "PrepareStmt": "PREPARE", "ExecuteStmt": "EXECUTE", "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN", "NotifyStmt": "NOTIFY", "VacuumStmt": "VACUUM",
    "CommentStmt": "COMMENT", "LockStmt": "LOCK", "CreateMatViewStmt": "CREATE MATERIALIZED VIEW",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW", "CreateSchemaStmt": "CREATE SCHEMA",
}  # fmt: skip


def command_name(node: ast.Node) -> str:
    """The SQL command a statement node stands for, in PostgreSQL's words (``ALTER TABLE``)."""
    kind = type(node).__name__
    if kind in _COMMANDS:
        command = _COMMANDS[kind]
        if isinstance(node, ast.DropStmt) and node.removeType is not None:
            command += " " + node.removeType.name.removeprefix("OBJECT_").replace("_", " ")
        return command
    words = re.findall(r"[A-Z][a-z]*", kind.removesuffix("Stmt"))
    return " ".join(words).upper() or kind.upper()


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
    direct = _direct_prediction(node)
    if direct is not None:  # constants only, never given to DuckDB: nothing else to check
        params = _highest_parameter(direct.args)
        return Statement("predict", text, tag="SELECT", procedure=direct, params=params)
    checked = check_query(
        node, relations=access.relations, readable=access.readable, workspace=access.workspace
    )
    procedure = _procedure(node, checked.pgml_calls)
    if procedure is not None:
        check = partial(check_relation_name, relations=access.relations, readable=access.readable)
        procedure = replace(procedure, check_relation=check)
        return Statement(
            "procedure", text, tag="SELECT", procedure=procedure, params=checked.params
        )
    search = vector_search.find(node, checked, text)
    sql = translate(
        node,
        checked.narrowed,
        checked.registry,
        access.viewer,
        workspace=checked.workspace,
        views=checked.views,
        schemas=checked.schemas,
        scope=access.scope,
    )
    if search is not None:
        search = replace(search, sql=sql)
    return Statement(
        "select",
        text,
        sql=vector_search.exact(sql),
        vector_search=search,
        tag="SELECT",
        params=checked.params,
        reads=checked.reads,
        scored=checked.scored,
        columns=checked.columns,
    )


def _highest_parameter(values: Sequence[Any]) -> int:
    found = 0
    for value in values:
        if isinstance(value, Parameter):
            found = max(found, value.number)
        elif isinstance(value, list):
            found = max(found, _highest_parameter(value))
    return found


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
    name = pgml_name(call.funcname)
    args = call.args or ()
    if name not in SCALAR_FUNCTIONS or len(args) != 2:
        return None
    try:
        values = tuple(_constant(a) for a in args)
    except StatementError:
        return None  # columns or expressions: DuckDB evaluates them
    return ProcedureCall(name, values, {"column": target.name or name}, expanded=False)


def _procedure(node: ast.SelectStmt, pgml_calls: Sequence[str]) -> ProcedureCall | None:
    """The pgml procedure a statement calls, if it is one of the two forms that call one
    (``pgml_calls``: every pgml function the statement calls, by name)."""
    targets = node.targetList or ()
    if node.fromClause is None and len(targets) == 1:
        call = targets[0].val
        if isinstance(call, ast.FuncCall) and pgml_name(call.funcname) in PROCEDURES:
            return _call(call, expanded=False)
        if isinstance(call, ast.FuncCall) and pgml_name(call.funcname) == "version":
            return _call(call, expanded=False)
    if node.fromClause and len(node.fromClause) == 1:
        item = node.fromClause[0]
        if isinstance(item, ast.RangeFunction) and item.functions:
            call = item.functions[0][0]
            name = isinstance(call, ast.FuncCall) and pgml_name(call.funcname)
            if name in PROCEDURES or name == "version":
                assert isinstance(call, ast.FuncCall)
                return _call(call, expanded=True)
    for name in pgml_calls:
        if name in PROCEDURES:
            raise StatementError(
                f"pgml.{name} must be called on its own, as SELECT pgml.{name}(...) or"
                f" SELECT * FROM pgml.{name}(...)",
                sqlstate="0A000",
            )
    return None


def _call(call: ast.FuncCall, *, expanded: bool) -> ProcedureCall:
    name = pgml_name(call.funcname)
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
