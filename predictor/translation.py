"""PostgreSQL's spellings in a checked query rewritten into DuckDB's, and printed back as SQL.

The query passed :mod:`predictor.allow_list` first; this only changes how it is spelled:
catalog references go to :mod:`predictor.catalog`'s views and functions, ``pg_catalog.f(x)``
becomes ``f(x)`` (DuckDB would read a column ``pg_catalog``), ``::regclass`` casts fall away,
``jsonb`` is ``json``, ``current_setting`` of a read-only setting is its value, and
``pgml.predict(project, features)`` becomes the DuckDB function ``pgml_predict(project,
CAST(features AS DOUBLE[]))``, evaluated a vector of rows at a time, and the vector functions
(``pgml.add``, ``pgml.norm_l2``, ``pgml.sum``, ...) the macros of :mod:`predictor.vectors`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from pglast import ast, enums, parse_sql
from pglast.stream import RawStream
from pglast.visitors import Visitor

from predictor import array_text, catalog, pgvector, python_environment, registry_rows, vectors
from predictor.allow_list import READ_ONLY_SETTINGS, SQL_SYNTAX_FUNCTIONS, Refused
from predictor.catalog_scope import NOTHING, CatalogScope
from predictor.column_names import name_columns
from predictor.workspace import WorkspaceRelation

SCALAR_FUNCTIONS = {
    "predict": "pgml_predict",
    "predict_proba": "pgml_predict_proba",
    "predict_joint": "pgml_predict_joint",
    "decompose": "pgml_decompose",
}
ARRAY_RESULTS = frozenset({"predict_proba", "predict_joint", "decompose"})
"""The scalar pgml functions that return an array per row."""
ROW_FUNCTIONS = frozenset({"predict", "predict_proba", "predict_joint"})
"""The scalar pgml functions that also take a whole row as features: ``(a, b, c)``, ``ROW(a,
b, c)`` or a table's row ``t``, turned into JSON for ``pgml_<name>_row``."""

_OID_TYPES = [["regclass"], ["regtype"], ["regproc"], ["regnamespace"], ["regprocedure"]]
_DUCKDB_NAMES = {"btrim": "trim"}
"""PostgreSQL functions DuckDB has under another name."""


def translate(
    node: ast.Node,
    narrowed: Mapping[int, tuple[str, ...]] | None = None,
    registry: Mapping[int, str] | None = None,
    viewer: str | None = None,
    *,
    workspace: Mapping[int, WorkspaceRelation] | None = None,
    views: Mapping[int, ast.SelectStmt] | None = None,
    schemas: Mapping[int, str] | None = None,
    scope: Callable[[], CatalogScope] | None = None,
) -> str:
    """The DuckDB SQL of ``node`` (which is rewritten in place).

    ``narrowed``: the tables the caller may read only some columns of, by ``id()`` of their
    ``RangeVar`` nodes (see :class:`predictor.allow_list.CheckedQuery`); each is read through a
    subquery of those columns under the table's name or alias, so ``*`` and every other column
    reference see only them. ``registry``: the registry relations the query reads, the same
    way; with ``viewer`` (a source role) each shows only the rows that role may see
    (:mod:`predictor.registry_rows`). ``workspace`` and ``views``: the caller's workspace
    tables the query names (each named by its DuckDB catalog) and views it reads (each replaced
    by its query, translated here as part of this one), the same way. ``schemas``: the schema
    each unqualified name was found in along the search path, by ``id()`` of its ``RangeVar``.
    ``scope``: the catalog the caller sees (:mod:`predictor.catalog_scope`), asked for only if
    the query reads the catalog or names the current user; without it, an empty one.
    """
    narrowed = narrowed or {}
    workspace, views = workspace or {}, views or {}
    replaced = set(narrowed) | set(workspace) | set(views)
    if replaced:
        for tree in (node, *views.values()):
            _unqualify_narrowed(tree, replaced)
    if workspace or views:
        _WorkspaceNames(workspace, views)(node)
    rows = _range_names(node, *views.values())  # before narrowing: what t may name in pgml.predict
    _ChunkRows()(node)
    name_columns(node)  # before the translator renames functions
    registry = (registry or {}) if viewer is not None else {}
    _Translator(narrowed, registry, viewer or "", schemas or {}, rows, scope)(node)
    return RawStream(special_functions=True)(node)


def _unqualify_narrowed(node: ast.Node, narrowed: Collection[int]) -> None:
    """``schema.table.column`` as ``table.column`` where ``table`` becomes a narrowing subquery,
    a view's query or a workspace table without an alias of its own (a subquery's name has no
    schema)."""
    tables = [
        found
        for found in _nodes(node, ast.RangeVar)
        if id(found) in narrowed and found.alias is None and found.schemaname
    ]
    if not tables:
        return
    names = {(catalog.fold(t.schemaname or ""), catalog.fold(t.relname or "")) for t in tables}
    for ref in _nodes(node, ast.ColumnRef):
        fields: tuple[Any, ...] = tuple(ref.fields or ())
        if len(fields) == 3 and all(isinstance(f, ast.String) for f in fields[:2]):
            qualifier = (catalog.fold(fields[0].sval or ""), catalog.fold(fields[1].sval or ""))
            if qualifier in names:
                ref.fields = tuple(fields[1:])


def _nodes(node: ast.Node, kind: type[Any]) -> list[Any]:
    """Every node of ``kind`` in the tree under ``node``."""
    found: list[Any] = []

    class Collect(Visitor):
        def visit(self, ancestors: Any, visited: ast.Node) -> None:
            if isinstance(visited, kind):
                found.append(visited)

    Collect()(node)
    return found


def _narrowed(node: ast.RangeVar, columns: tuple[str, ...]) -> ast.RangeSubselect:
    """``(SELECT columns FROM table) AS alias``: the table as a role that may read only
    ``columns`` of it sees it."""
    table = ast.RangeVar(
        schemaname=node.schemaname, relname=node.relname, inh=True, relpersistence="p"
    )
    query = ast.SelectStmt(
        targetList=tuple(
            ast.ResTarget(val=ast.ColumnRef(fields=(ast.String(c),))) for c in columns
        ),
        fromClause=(table,),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    alias = node.alias or ast.Alias(aliasname=node.relname)
    return ast.RangeSubselect(lateral=False, subquery=query, alias=alias)


def pgml_name(funcname: tuple[ast.String, ...] | None) -> str | None:
    """``x`` for a function named ``pgml.x``, else None."""
    names = [n.sval for n in funcname or ()]
    if len(names) == 2 and names[0] == "pgml":
        return names[1]
    return None


class _WorkspaceNames(Visitor):
    """The caller's workspace tables named by their DuckDB catalog, its views replaced by their
    queries (under the view's name or alias), before the translator visits them."""

    def __init__(
        self, workspace: Mapping[int, WorkspaceRelation], views: Mapping[int, ast.SelectStmt]
    ) -> None:
        super().__init__()
        self.workspace = workspace
        self.views = views

    def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> Any:
        alias = node.alias or ast.Alias(aliasname=node.relname)
        query = self.views.get(id(node))
        if query is not None:
            _WorkspaceNames(self.workspace, self.views)(query)  # views read through views
            return ast.RangeSubselect(lateral=False, subquery=query, alias=alias)
        relation = self.workspace.get(id(node))
        if relation is not None:
            node.catalogname, node.schemaname, node.relname = (
                relation.catalog, relation.schema, relation.name
            )  # fmt: skip
            if not _is_target(ancestors):
                node.alias = alias
        return None


def _is_target(ancestors: Any) -> bool:
    """Whether the RangeVar visited is the relation a CREATE TABLE, INSERT, UPDATE or DELETE
    writes to (its alias, if any, is the statement's own)."""
    targets = ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.CreateStmt
    return isinstance(ancestors.node, targets) and ancestors.member == "relation"


class _ChunkRows(Visitor):
    """``pgml.chunk(...)`` in FROM as a subquery of its rows (before the translator visits its
    arguments there)."""

    def visit_RangeFunction(self, ancestors: Any, node: ast.RangeFunction) -> Any:
        functions = node.functions or ()
        call = functions[0][0] if len(functions) == 1 else None
        if isinstance(call, ast.FuncCall) and pgml_name(call.funcname) == "chunk":
            return _chunk_rows(call, node.alias)
        if isinstance(call, ast.FuncCall) and pgml_name(call.funcname) == "predict_batch":
            return _batch_rows(call, node.alias)
        return None


class _Translator(Visitor):
    """Rewrite PostgreSQL-only spellings into DuckDB's (the statement passed the allow-list)."""

    def __init__(
        self,
        narrowed: Mapping[int, tuple[str, ...]],
        registry: Mapping[int, str],
        viewer: str,
        schemas: Mapping[int, str],
        rows: Collection[str] = (),
        scope: Callable[[], CatalogScope] | None = None,
    ) -> None:
        super().__init__()
        self._scope_source = scope
        self._scope: CatalogScope | None = None
        self.schemas = schemas
        self.narrowed = narrowed
        self.registry = registry
        self.viewer = viewer
        self.rows = rows
        """The names a bare ``t`` in pgml.predict's features may mean a whole row of."""

    def scope(self) -> CatalogScope:
        """The caller's catalog, asked for once."""
        if self._scope is None:
            self._scope = self._scope_source() if self._scope_source is not None else NOTHING
        return self._scope

    def scope_text(self) -> ast.A_Const:
        return ast.A_Const(val=ast.String(self.scope().text()))

    def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> Any:
        names = [n.sval or "" for n in node.funcname or ()]
        pgml = pgml_name(node.funcname)
        if pgml is not None:
            return self._pgml(pgml, node)
        name, qualifier = names[-1], names[:-1]
        if qualifier not in ([], ["pg_catalog"]):
            return None
        if name in pgvector.FUNCTIONS and not qualifier:
            return self._again(pgvector.macro_call(name, tuple(node.args or ())))
        if name in catalog.FUNCTIONS:
            node.funcname = (ast.String(catalog.SCHEMA), ast.String(name))
            if name in catalog.SCOPED_FUNCTIONS:
                node.args = (*(node.args or ()), self.scope_text())
        elif name == "array_to_string":
            node.funcname = (ast.String(array_text.SCHEMA), ast.String(array_text.TO_STRING))
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

    def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> Any:
        schema = self.schemas.get(id(node))
        if schema is not None:
            node.schemaname = schema  # found along the search path; DuckDB looks in main
        columns = self.narrowed.get(id(node))
        if columns is not None:
            return _narrowed(node, columns)
        relation = self.registry.get(id(node))
        if relation is not None:
            return registry_rows.filtered(node, relation, self.viewer)
        if node.relname in catalog.SCOPED_TABLES and node.schemaname in (None, "pg_catalog"):
            return self._scoped(node, node.relname)
        if node.relname in catalog.TABLES and node.schemaname in (None, "pg_catalog"):
            node.schemaname = catalog.SCHEMA
        elif node.schemaname == "information_schema" and node.relname:
            view = catalog.INFORMATION_SCHEMA.get(node.relname)
            if view is not None:
                return self._scoped(node, view)
        return None

    def _scoped(self, node: ast.RangeVar, macro: str) -> ast.RangeFunction:
        """A catalog relation as the caller sees it: ``_pgml_catalog.<macro>('<scope>') AS
        <alias or its name>``."""
        call = ast.FuncCall(
            funcname=(ast.String(catalog.SCHEMA), ast.String(macro)),
            args=(self.scope_text(),),
            funcformat=_PLAIN_CALL,
        )
        alias = node.alias or ast.Alias(aliasname=node.relname)  # pg_class.relname, tables.x
        return ast.RangeFunction(
            lateral=False, ordinality=False, is_rowsfrom=False, functions=((call, None),),
            alias=alias,
        )  # fmt: skip

    def visit_CollateClause(self, ancestors: Any, node: ast.CollateClause) -> Any:
        names = [(n.sval or "").lower() for n in node.collname or ()]
        if names[-1:] in (["default"], ["c"], ["posix"]):  # DuckDB compares bytes already
            return node.arg
        return None

    def visit_SQLValueFunction(self, ancestors: Any, node: ast.SQLValueFunction) -> Any:
        # as a call: DuckDB reads a bare CURRENT_DATE as a column first, and so as the result
        # column PostgreSQL names current_date
        name = node.op.name.removeprefix("SVFOP_").removesuffix("_N").lower() if node.op else ""
        found = _VALUE_FUNCTIONS.get(name)
        if found is None:
            return None
        function, cast_to = found
        if name in _USER_FUNCTIONS:  # the endpoint user, never DuckDB's
            return ast.A_Const(val=ast.String(self.scope().user))
        call = ast.FuncCall(funcname=(ast.String(function),), funcformat=_PLAIN_CALL)
        return ast.TypeCast(arg=call, typeName=_type(cast_to)) if cast_to else call

    def visit_A_Expr(self, ancestors: Any, node: ast.A_Expr) -> Any:
        names = [n.sval for n in node.name or ()]
        if len(names) == 2 and names[0] == "pg_catalog":  # OPERATOR(pg_catalog.~): DuckDB's ~
            node.name = (ast.String(names[1]),)
        if node.kind != enums.A_Expr_Kind.AEXPR_OP:
            return None
        name = pgvector.operator_name(node)
        if name is None:
            return None
        assert isinstance(node.lexpr, ast.Node) and isinstance(node.rexpr, ast.Node)
        return self._again(pgvector.macro_call(name, (node.lexpr, node.rexpr)))

    def _again(self, node: ast.Node) -> ast.Node:
        """``node``, made here in place of another, with its own parts translated (a visitor
        does not visit what a visit put in place)."""
        _Translator(self.narrowed, self.registry, self.viewer, self.schemas, self.rows,
                    self._scope_source)(node)  # fmt: skip
        return node

    def visit_TypeCast(self, ancestors: Any, node: ast.TypeCast) -> Any:
        cast_to = node.typeName
        if pgvector.is_vector_type(cast_to):
            return self._again(pgvector.cast(node))
        if cast_to is not None and [n.sval for n in cast_to.names or ()][-1:] in _OID_TYPES:
            return node.arg  # a name stands for the relation or type it names
        names = [n.sval for n in cast_to.names or ()] if cast_to is not None else []
        if cast_to is not None and names[:1] == ["pg_catalog"] and names[1:] in _BARE_TYPES:
            cast_to.names = (ast.String(names[1]),)  # DuckDB knows text, not pg_catalog.text
        if cast_to is not None and names[-1:] == ["jsonb"]:
            type_name = ast.TypeName(names=(ast.String("json"),), arrayBounds=cast_to.arrayBounds)
            return ast.TypeCast(arg=node.arg, typeName=type_name)
        if (
            cast_to is not None
            and names[-1:] in (["text"], ["varchar"])
            and not cast_to.arrayBounds
            and not isinstance(node.arg, ast.A_Const)
            and ancestors.find_nearest((ast.ColumnDef, ast.Constraint)) is None
        ):  # an array's text in PostgreSQL's spelling ({1,2}); any other value's as it was
            node.arg = _catalog_call(array_text.TEXT, node.arg)
        return None

    def visit_SelectStmt(self, ancestors: Any, node: ast.SelectStmt) -> None:
        node.lockingClause = None  # nothing to lock in a read-only mirror

    def _pgml(self, name: str, node: ast.FuncCall) -> Any:
        if name == "version":
            return ast.A_Const(val=ast.String(version()))
        if name in vectors.FUNCTIONS:
            node.funcname = tuple(ast.String(part) for part in vectors.duckdb_name(name))
            return None
        if name in python_environment.CONSTANT_NAMES:
            _arguments(name, node, ())
            answer = python_environment.constant(name)
            value = ast.Boolean(answer) if isinstance(answer, bool) else ast.String(answer)
            return ast.A_Const(val=value)
        if name == "chunk":  # in a select list: one row per chunk, shown as a record
            records = _udf_call(name, node, duckdb_name="pgml_chunk_records")
            return ast.FuncCall(funcname=(ast.String("unnest"),), args=(records,))
        if name in _UDF_ARGUMENTS:
            return _udf_call(name, node)
        if name == "predict_batch":  # in a select list: one row per prediction
            return ast.FuncCall(funcname=(ast.String("unnest"),), args=(_batch_call(node),))
        if name not in SCALAR_FUNCTIONS:
            raise Refused(f"function pgml.{name} does not exist", sqlstate="42883")
        args = list(node.args or ())
        if len(args) != 2 or any(isinstance(a, ast.NamedArgExpr) for a in args):
            raise Refused(
                f"pgml.{name} takes two arguments: a project name (or model id) and an array"
                " of features",
                sqlstate="42883",
            )
        project = ast.TypeCast(arg=args[0], typeName=_type("varchar"))
        row = _row_json(args[1], self.rows) if name in ROW_FUNCTIONS else None
        if row is not None:
            function = f"{SCALAR_FUNCTIONS[name]}_row"
            return ast.FuncCall(funcname=(ast.String(function),), args=(project, row))
        features = ast.TypeCast(arg=args[1], typeName=_type("double", array=True))
        return ast.FuncCall(
            funcname=(ast.String(SCALAR_FUNCTIONS[name]),), args=(project, features)
        )


def _range_names(*trees: ast.Node) -> frozenset[str]:
    """The names of the relations, subqueries and functions in the FROM clauses of ``trees``
    (aliases where given): what a bare name may refer to as a whole row."""
    names: set[str] = set()
    for tree in trees:
        for found in _nodes(tree, ast.RangeVar):
            names.add(found.alias.aliasname if found.alias else found.relname)
        for kind in (ast.RangeSubselect, ast.RangeFunction):
            names.update(f.alias.aliasname for f in _nodes(tree, kind) if f.alias is not None)
    return frozenset(n for n in names if n)


def _row_json(features: Any, rows: Collection[str]) -> Any:
    """The features of a pgml.predict as JSON text when they are a whole row: ``(a, b, c)``
    or ``ROW(a, b, c)`` (a JSON array, values in order) or a bare name of a relation in FROM
    (its row, a JSON object by column name); None for an array of features."""
    if isinstance(features, ast.RowExpr):
        values = ast.FuncCall(funcname=(ast.String("json_array"),), args=features.args or ())
    elif (
        isinstance(features, ast.ColumnRef)
        and len(features.fields or ()) == 1
        and isinstance((features.fields or ())[0], ast.String)
        and (features.fields or ())[0].sval in rows
    ):
        values = ast.FuncCall(funcname=(ast.String("to_json"),), args=(features,))
    else:
        return None
    return ast.TypeCast(arg=values, typeName=_type("varchar"))


def _batch_call(node: ast.FuncCall) -> ast.FuncCall:
    """``pgml_predict_batch(project, features)``: a list of predictions, one per row of the
    flat features."""
    args = list(node.args or ())
    if len(args) != 2 or any(isinstance(a, ast.NamedArgExpr) for a in args):
        raise Refused(
            "pgml.predict_batch takes two arguments: a project name (or model id) and an array"
            " of the features of many rows, one row after another",
            sqlstate="42883",
        )
    project = ast.TypeCast(arg=args[0], typeName=_type("varchar"))
    features = ast.TypeCast(arg=args[1], typeName=_type("double", array=True))
    return ast.FuncCall(funcname=(ast.String("pgml_predict_batch"),), args=(project, features))


def _batch_rows(call: ast.FuncCall, alias: ast.Alias | None) -> ast.RangeSubselect:
    """``pgml.predict_batch(...)`` in FROM: a lateral subquery of its rows, one column named
    after the function, as PostgreSQL names a set-returning function's column."""
    name = alias.aliasname if alias is not None and alias.aliasname else "predict_batch"
    column = (alias.colnames or (ast.String(name),))[0] if alias is not None else None
    column_name = column.sval if isinstance(column, ast.String) else name
    unnest = ast.FuncCall(funcname=(ast.String("unnest"),), args=(_batch_call(call),))
    query = ast.SelectStmt(
        targetList=(ast.ResTarget(name=column_name, val=unnest),),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    return ast.RangeSubselect(lateral=True, subquery=query, alias=ast.Alias(aliasname=name))


_VALUE_FUNCTIONS = {
    "current_date": ("current_date", ""), "current_timestamp": ("now", ""),
    "current_time": ("now", "timetz"), "localtimestamp": ("now", "timestamp"),
    "localtime": ("now", "time"), "current_role": ("current_role", ""),
    "current_user": ("current_user", ""), "user": ("user", ""),
    "session_user": ("session_user", ""), "current_catalog": ("current_database", ""),
    "current_schema": ("current_schema", ""),
}  # fmt: skip
_PLAIN_CALL = enums.CoercionForm.COERCE_EXPLICIT_CALL
_USER_FUNCTIONS = frozenset({"current_user", "session_user", "user", "current_role"})
_BARE_TYPES = (["text"], ["oid"], ["name"], ["char"])
"""SQL's value functions (``CURRENT_DATE``, ``CURRENT_USER``) as DuckDB's calls."""

_UDF_ARGUMENTS = {
    "python_package_version": (("name", "varchar"),),
    "sklearn_f1_score": (("ground_truth", "real[]"), ("y_hat", "real[]")),
    "sklearn_r2_score": (("ground_truth", "real[]"), ("y_hat", "real[]")),
    "sklearn_regression_metrics": (("ground_truth", "real[]"), ("y_hat", "real[]")),
    "sklearn_classification_metrics": (
        ("ground_truth", "real[]"), ("y_hat", "real[]"), ("num_classes", "bigint"),
    ),
    "chunk": (("splitter", "varchar"), ("text", "varchar"), ("kwargs", "varchar")),
}  # fmt: skip
"""``pgml.*`` functions answered by a DuckDB function ``pgml_<name>`` of
:mod:`predictor.metric_functions` or :mod:`predictor.python_environment`: their arguments,
each cast to the type PostgresML declares."""
_JSON_RESULTS = ("sklearn_regression_metrics", "sklearn_classification_metrics")
_DEFAULTS = {("chunk", "kwargs"): "{}"}
_CHUNK_ROWS = (
    "select struct_extract(piece, 'chunk_index') as chunk_index,"
    " struct_extract(piece, 'chunk') as chunk"
    " from (select unnest(pgml_chunk(null, null, null)) as piece) as pieces"
)


def _chunk_rows(call: ast.FuncCall, alias: ast.Alias | None) -> ast.RangeSubselect:
    """``pgml.chunk(...)`` in FROM: a lateral subquery of its rows (chunk_index, chunk), under
    the function's name as PostgreSQL names it."""
    query = parse_sql(_CHUNK_ROWS)[0].stmt
    assert isinstance(query, ast.SelectStmt)
    (inner,) = _nodes(query, ast.FuncCall)[-1:]
    chunks = _udf_call("chunk", call)
    inner.funcname, inner.args = chunks.funcname, chunks.args
    return ast.RangeSubselect(
        lateral=True, subquery=query, alias=alias or ast.Alias(aliasname="chunk")
    )


def _arguments(name: str, node: ast.FuncCall, parameters: tuple[tuple[str, str], ...]) -> list[Any]:
    """The arguments of ``pgml.<name>`` in the order of ``parameters`` (positional or
    ``name => value``)."""
    given: list[Any] = []
    named: dict[str, Any] = {}
    for arg in node.args or ():
        if isinstance(arg, ast.NamedArgExpr):
            named[arg.name or ""] = arg.arg
        else:
            given.append(arg)
    names = [p for p, _ in parameters]
    for (function, parameter), default in _DEFAULTS.items():
        if function == name and parameter not in named and len(given) < len(names):
            named[parameter] = ast.A_Const(val=ast.String(default))
    unknown = [n for n in named if n not in names[len(given) :]]
    if len(given) + len(named) != len(names) or unknown:
        shown = ", ".join(f"{p} {t}" for p, t in parameters)
        raise Refused(f"function pgml.{name} takes ({shown})", sqlstate="42883")
    return given + [named[n] for n in names[len(given) :]]


def _udf_call(name: str, node: ast.FuncCall, *, duckdb_name: str = "") -> Any:
    parameters = _UDF_ARGUMENTS[name]
    args = _arguments(name, node, parameters)
    cast = tuple(
        ast.TypeCast(arg=arg, typeName=_type(t.removesuffix("[]"), array=t.endswith("[]")))
        for arg, (_, t) in zip(args, parameters, strict=True)
    )
    call = ast.FuncCall(funcname=(ast.String(duckdb_name or f"pgml_{name}"),), args=cast)
    return ast.TypeCast(arg=call, typeName=_type("json")) if name in _JSON_RESULTS else call


def _catalog_call(name: str, *args: Any) -> ast.FuncCall:
    return ast.FuncCall(
        funcname=(ast.String(array_text.SCHEMA), ast.String(name)), args=args,
        funcformat=_PLAIN_CALL,
    )  # fmt: skip


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
