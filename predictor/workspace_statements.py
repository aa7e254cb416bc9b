"""Statements that write to the caller's workspace: checked, resolved, spelled for DuckDB.

``CREATE [OR REPLACE] VIEW``, ``CREATE TABLE [AS]``, ``INSERT``, ``UPDATE``, ``DELETE``,
``TRUNCATE``, ``DROP VIEW|TABLE [IF EXISTS]`` and ``CREATE SCHEMA`` write only to the
workspace of the caller's role (:mod:`predictor.workspace`), whose catalog name the client
never writes: a name with a catalog (``mirror.public.x``) is refused. Every query inside them
(a view's, ``AS SELECT``, ``INSERT ... SELECT``, a WHERE's subquery) passes the same
allow-list and privilege checks as a query. A mirrored table, the registry and the score views
stay read-only, with a message that says where they change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
from pglast import ast, enums, parse_sql
from pglast.stream import RawStream

from mirror.duckdb_sql import quote
from predictor import catalog
from predictor.allow_list import (
    INTERNAL_SCHEMAS,
    PROCEDURES,
    CheckedQuery,
    Readable,
    Refused,
    check_query,
    check_statement,
    parse_view,
)
from predictor.catalog import ServedRelation, ServedRelations
from predictor.catalog_scope import CatalogScope
from predictor.translation import translate
from predictor.workspace import (
    DEFAULT_SCHEMA,
    TABLE,
    VIEW,
    WorkspaceNames,
    WorkspaceRelation,
    WorkspaceWrite,
)
from trainer.snapshots import RelationColumns

SCORES_SCHEMA = "pgml_scores"
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


@dataclass(frozen=True, slots=True)
class Written:
    """A statement that writes to the workspace, checked: what it does and what it reads."""

    write: WorkspaceWrite
    checked: CheckedQuery | None = None


@dataclass(frozen=True, slots=True)
class _Context:
    relations: ServedRelations | None
    readable: Readable | None
    viewer: str | None
    names: WorkspaceNames
    scope: Callable[[], CatalogScope] | None = None

    def check(self, node: ast.SelectStmt, names: WorkspaceNames | None = None) -> CheckedQuery:
        checked = check_query(
            node, relations=self.relations, readable=self.readable, workspace=names or self.names
        )
        _no_procedures(checked)
        return checked

    def check_fields(self, node: ast.Node, skip: Sequence[str]) -> CheckedQuery:
        checked = check_statement(
            node, skip=skip, relations=self.relations, readable=self.readable, workspace=self.names
        )
        _no_procedures(checked)
        return checked

    def translate(self, node: ast.Node, checked: CheckedQuery, **targets: WorkspaceRelation) -> str:
        workspace = dict(checked.workspace)
        for relation_node, relation in _targets(node, targets):
            workspace[id(relation_node)] = relation
        return translate(
            node,
            checked.narrowed,
            checked.registry,
            self.viewer,
            workspace=workspace,
            views=checked.views,
            schemas=checked.schemas,
            scope=self.scope,
        )

    def served(self, schema: str | None, name: str) -> ServedRelation | None:
        if self.relations is None:
            return None
        for candidate in [schema] if schema else [DEFAULT_SCHEMA, "main"]:
            found = self.relations.find(candidate, name)
            if found is not None:
                return found
        return None


def _targets(
    node: ast.Node, targets: dict[str, WorkspaceRelation]
) -> list[tuple[ast.Node, WorkspaceRelation]]:
    return [(getattr(node, field), relation) for field, relation in targets.items()]


def classify_write(
    node: ast.Node,
    *,
    relations: ServedRelations | None,
    readable: Readable | None,
    viewer: str | None,
    names: WorkspaceNames,
    scope: Callable[[], CatalogScope] | None = None,
) -> Written | None:
    """``node`` checked as a statement writing to the workspace ``names`` (None: it is no such
    statement); ``scope``: the catalog the caller sees."""
    context = _Context(relations, readable, viewer, names, scope)
    handler: Callable[[Any, _Context], Written | None] | None = _HANDLERS.get(type(node))
    return None if handler is None else handler(node, context)


# -- names ---------------------------------------------------------------------------------------


def _schema_checked(schema: str | None, *, creating: bool) -> None:
    folded = catalog.fold(schema or "")
    if folded in INTERNAL_SCHEMAS or folded in _SYSTEM_SCHEMAS:
        raise Refused(f"permission denied for schema {schema}")
    if creating and folded == SCORES_SCHEMA:
        raise Refused(
            f"permission denied for schema {schema}: it holds the projects' score views; make"
            " your tables and views in another schema (public, pgml, one of your own)"
        )


def _no_catalog(node: ast.RangeVar) -> None:
    if node.catalogname:
        shown = ".".join(n for n in (node.catalogname, node.schemaname, node.relname) if n)
        raise Refused(
            f"permission denied for relation {shown}: name relations as schema.name; your"
            " workspace is the only database you write to here"
        )


def read_only(found: ServedRelation) -> Refused:
    """The error for a statement that would change a relation the mirror serves."""
    name = found.qualified
    if found.kind == catalog.MIRRORED:
        reason = f"{name} is a mirrored table: change it in the source database"
    elif found.kind == catalog.REGISTRY:
        reason = (
            f"{name} belongs to the sidecar's registry: it changes through pgml.train,"
            " pgml.deploy and the other pgml functions"
        )
    elif found.kind == catalog.SCORES:
        reason = f"{name} shows a project's scores: it changes with the project's deployed model"
    else:
        reason = f"{name} is a table of the mirror file, read-only here"
    return Refused(reason + "; make tables and views of your own in your workspace instead")


def _existing(node: ast.RangeVar, context: _Context, kind: str, verb: str) -> WorkspaceRelation:
    """The workspace relation an INSERT, UPDATE, DELETE or TRUNCATE writes to."""
    _no_catalog(node)
    _schema_checked(node.schemaname, creating=False)
    name = node.relname or ""
    own = context.names.find(node.schemaname, name)
    if own is None:
        served = context.served(node.schemaname, name)
        if served is not None:
            raise read_only(served)
        shown = f"{node.schemaname}.{name}" if node.schemaname else name
        raise Refused(f'relation "{shown}" does not exist', sqlstate="42P01")
    if own.kind != kind:
        raise Refused(
            f'cannot {verb} view "{own.qualified}": views in your workspace are read-only;'
            " write to the tables they read",
            sqlstate="55000",
        )
    return own


def _new(
    node: ast.RangeVar, context: _Context, *, kind: str, replace: bool = False
) -> tuple[str, str, WorkspaceRelation | None]:
    """The schema and name a CREATE makes, and the workspace relation it replaces (OR
    REPLACE) or finds (IF NOT EXISTS)."""
    _no_catalog(node)
    what = "views" if kind == VIEW else "tables"
    if node.relpersistence == "t":
        raise Refused(
            f"temporary {what} are not supported: make it in your workspace (it lasts until"
            " you drop it)",
            sqlstate="0A000",
        )
    schema, name = node.schemaname or DEFAULT_SCHEMA, node.relname or ""
    _schema_checked(schema, creating=True)
    own = context.names.find(schema, name)
    if own is not None:
        if replace and own.kind != kind:
            raise Refused(f'"{own.qualified}" is not a {kind}', sqlstate="42809")
        return own.schema, own.name, own
    served = context.served(schema, name)
    if served is not None:
        raise Refused(
            f'relation "{served.qualified}" already exists: {str(read_only(served)).split(";")[0]}',
            sqlstate="42P07",
        )
    return schema, name, None


def _already(relation: WorkspaceRelation) -> Refused:
    return Refused(f'relation "{relation.qualified}" already exists', sqlstate="42P07")


def _no_procedures(checked: CheckedQuery) -> None:
    for name in checked.pgml_calls:
        if name in PROCEDURES:
            raise Refused(
                f"pgml.{name} must be called on its own, as SELECT pgml.{name}(...) or"
                f" SELECT * FROM pgml.{name}(...)",
                sqlstate="0A000",
            )


def _no_returning(node: ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt) -> None:
    if node.returningClause is not None:
        raise Refused("RETURNING is not supported in the workspace", sqlstate="0A000")


# -- statements ----------------------------------------------------------------------------------


def _create_view(node: ast.ViewStmt, context: _Context) -> Written:
    assert node.view is not None
    schema, name, own = _new(node.view, context, kind=VIEW, replace=bool(node.replace))
    if own is not None and not node.replace:
        raise _already(own)
    if not isinstance(node.query, ast.SelectStmt):
        raise Refused("a view's query must be a SELECT", sqlstate="0A000")
    definition = RawStream()(node.query)
    if node.aliases:
        columns = ", ".join(quote(a.sval or "") for a in node.aliases)
        definition = f"select * from ({definition}) as {quote(name)} ({columns})"
    names = context.names.with_view(schema, name, definition)  # a view reading itself: refused
    view = names.find(schema, name)
    assert view is not None
    query = parse_view(view)
    checked = context.check(query, names)
    if checked.params:
        raise Refused(f"there is no parameter ${checked.params}", sqlstate="42P02")
    sql = context.translate(query, checked)
    return Written(
        WorkspaceWrite(
            "CREATE VIEW",
            sql=f"select * from ({sql}) as checked limit 0",
            schema=schema,
            view=(schema, name, definition),
        ),
        checked,
    )


def _create_table_as(node: ast.CreateTableAsStmt, context: _Context) -> Written:
    if node.objtype != enums.ObjectType.OBJECT_TABLE:
        raise Refused(
            "CREATE MATERIALIZED VIEW is not supported: use CREATE TABLE ... AS (a copy) or"
            " CREATE VIEW (always current)",
            sqlstate="0A000",
        )
    into = node.into
    assert into is not None and into.rel is not None
    schema, name, own = _new(into.rel, context, kind=TABLE)
    if own is not None:
        if node.if_not_exists:
            return Written(WorkspaceWrite("CREATE TABLE AS"))
        raise _already(own)
    if not isinstance(node.query, ast.SelectStmt):
        raise Refused("CREATE TABLE ... AS takes a SELECT here", sqlstate="0A000")
    checked = context.check(node.query)
    sql = f"select * from ({context.translate(node.query, checked)}) as rows_of"
    if into.colNames:
        sql += f" ({', '.join(quote(c.sval or '') for c in into.colNames)})"
    if into.skipData:
        sql += " limit 0"
    target = _duckdb_name(context, schema, name)
    return Written(
        WorkspaceWrite("SELECT {}", sql=f"create table {target} as {sql}", schema=schema,
                       counted=True),
        checked,
    )  # fmt: skip


_CONSTRAINTS_KEPT = (
    enums.ConstrType.CONSTR_NULL, enums.ConstrType.CONSTR_NOTNULL, enums.ConstrType.CONSTR_DEFAULT,
    enums.ConstrType.CONSTR_CHECK, enums.ConstrType.CONSTR_PRIMARY, enums.ConstrType.CONSTR_UNIQUE,
)  # fmt: skip
_SERIAL = ("serial", "serial4", "bigserial", "serial8", "smallserial", "serial2")


def _create_table(node: ast.CreateStmt, context: _Context) -> Written:
    assert node.relation is not None
    schema, name, own = _new(node.relation, context, kind=TABLE)
    if own is not None:
        if node.if_not_exists:
            return Written(WorkspaceWrite("CREATE TABLE"))
        raise _already(own)
    if node.inhRelations or node.partspec or node.partbound or node.ofTypename:
        raise Refused(
            "inheritance, partitions and typed tables are not supported in the workspace",
            sqlstate="0A000",
        )
    for element in node.tableElts or ():
        constraints = element.constraints if isinstance(element, ast.ColumnDef) else (element,)
        if isinstance(element, ast.ColumnDef):
            _column_type(element)
        elif not isinstance(element, ast.Constraint):
            raise Refused("CREATE TABLE ... LIKE is not supported here", sqlstate="0A000")
        for constraint in constraints or ():
            if constraint.contype not in _CONSTRAINTS_KEPT:
                raise Refused(
                    "only NOT NULL, DEFAULT, CHECK, PRIMARY KEY and UNIQUE constraints are"
                    " supported in the workspace (no foreign keys, identity or generated"
                    " columns)",
                    sqlstate="0A000",
                )
    node.options = node.tablespacename = node.accessMethod = None
    checked = context.check_fields(node, ("relation",))
    target = WorkspaceRelation(context.names.catalog, schema, name, TABLE)
    sql = context.translate(node, checked, relation=target)
    return Written(WorkspaceWrite("CREATE TABLE", sql=sql, schema=schema), checked)


def _column_type(column: ast.ColumnDef) -> None:
    type_name = column.typeName
    if type_name is None:
        return
    names = [n.sval or "" for n in type_name.names or ()]
    if names[-1:] and names[-1].lower() in _SERIAL:
        raise Refused(
            f"column {column.colname}: {names[-1]} is not supported in the workspace; use"
            " integer or bigint and give the values",
            sqlstate="0A000",
        )
    if names[-1:] == ["jsonb"]:
        type_name.names = (ast.String("json"),)


def _insert(node: ast.InsertStmt, context: _Context) -> Written:
    return _rows_changed(node, context, "insert into", "INSERT 0 {}")


def _update(node: ast.UpdateStmt, context: _Context) -> Written:
    return _rows_changed(node, context, "update", "UPDATE {}")


def _delete(node: ast.DeleteStmt, context: _Context) -> Written:
    return _rows_changed(node, context, "delete from", "DELETE {}")


def _rows_changed(
    node: ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt, context: _Context, verb: str, tag: str
) -> Written:
    """An INSERT, UPDATE or DELETE of a workspace table: its target checked, its reads checked
    as a query's, the statement translated; ``tag`` takes the rows changed."""
    assert node.relation is not None
    target = _existing(node.relation, context, TABLE, verb)
    _no_returning(node)
    checked = context.check_fields(node, ("relation",))
    sql = context.translate(node, checked, relation=target)
    return Written(WorkspaceWrite(tag, sql=sql, counted=True), checked)


def _truncate(node: ast.TruncateStmt, context: _Context) -> Written:
    targets = [_existing(r, context, TABLE, "truncate") for r in node.relations or ()]
    sql = "; ".join(f"delete from {t.duckdb_name}" for t in targets)
    return Written(WorkspaceWrite("TRUNCATE TABLE", sql=sql))


def _drop(node: ast.DropStmt, context: _Context) -> Written | None:
    kinds = {enums.ObjectType.OBJECT_TABLE: TABLE, enums.ObjectType.OBJECT_VIEW: VIEW}
    kind = kinds.get(node.removeType) if node.removeType is not None else None
    if kind is None:
        return None
    tables: list[str] = []
    views: list[tuple[str, str]] = []
    for names in node.objects or ():
        parts = [n.sval or "" for n in names]
        if len(parts) > 2:
            raise Refused(
                f"permission denied for relation {'.'.join(parts)}: name relations as"
                " schema.name; your workspace is the only database you write to here"
            )
        schema, name = (parts[0] if len(parts) == 2 else None), parts[-1]
        _schema_checked(schema, creating=False)
        own = context.names.find(schema, name)
        if own is None:
            served = context.served(schema, name)
            if served is not None:
                raise read_only(served)
            if node.missing_ok:
                continue
            raise Refused(f'{kind} "{".".join(parts)}" does not exist', sqlstate="42P01")
        if own.kind != kind:
            raise Refused(
                f'"{own.qualified}" is not a {kind}: use DROP {own.kind.upper()} to remove a'
                f" {own.kind}",
                sqlstate="42809",
            )
        if kind == TABLE:
            tables.append(f"drop table {own.duckdb_name}")
        else:
            views.append((own.schema, own.name))
    return Written(
        WorkspaceWrite(f"DROP {kind.upper()}", sql="; ".join(tables), drop_views=tuple(views))
    )


def _create_schema(node: ast.CreateSchemaStmt, context: _Context) -> Written:
    name = node.schemaname or ""
    if node.schemaElts:
        raise Refused("CREATE SCHEMA with elements is not supported here", sqlstate="0A000")
    _schema_checked(name, creating=True)
    served = context.relations is not None and any(
        catalog.fold(r.schema) == catalog.fold(name) for r in context.relations.all()
    )
    if (served or catalog.fold(name) in context.names.schemas) and not node.if_not_exists:
        raise Refused(f'schema "{name}" already exists', sqlstate="42P06")
    return Written(WorkspaceWrite("CREATE SCHEMA", schema=name))


def relation_to_read(
    text: str,
    *,
    names: WorkspaceNames,
    relations: ServedRelations | None,
    readable: Readable | None,
    viewer: str | None,
    cursor: duckdb.DuckDBPyConnection,
) -> tuple[RelationColumns, CheckedQuery] | None:
    """The workspace relation ``text`` (``schema.name`` as ``pgml.train`` takes it; a bare name
    in public, then pgml) names, as the caller may read it now (a view's query checked with its
    privileges of now), for a training or a snapshot; None if the workspace has none."""
    schema, _, name = text.rpartition(".")
    schema, name = _unquoted(schema), _unquoted(name)
    own = None
    for candidate in [schema] if schema else [DEFAULT_SCHEMA, "pgml"]:
        own = names.find(candidate, name)
        if own is not None:
            break
    if own is None:
        return None
    (raw,) = parse_sql(f"select * from {quote(own.schema)}.{quote(own.name)}")
    assert isinstance(raw.stmt, ast.SelectStmt)
    context = _Context(relations, readable, viewer, names)
    checked = context.check(raw.stmt)
    sql = context.translate(raw.stmt, checked)
    described = cursor.sql(f"select * from ({sql}) as relation limit 0")
    columns = [(c, str(t)) for c, t in zip(described.columns, described.types, strict=True)]
    key: list[str] = []
    if own.kind == TABLE:
        row = cursor.execute(
            "select constraint_column_names from duckdb_constraints() where database_name = ?"
            " and schema_name = ? and table_name = ? and constraint_type = 'PRIMARY KEY'",
            [own.catalog, own.schema, own.name],
        ).fetchone()
        key = list(row[0]) if row else []
    found = RelationColumns(own.schema, own.name, columns, key, source=f"({sql})")
    return found, checked


def _unquoted(identifier: str) -> str:
    if len(identifier) >= 2 and identifier[0] == identifier[-1] == '"':
        return identifier[1:-1].replace('""', '"')
    return identifier


def _duckdb_name(context: _Context, schema: str, name: str) -> str:
    return f"{quote(context.names.catalog)}.{quote(schema)}.{quote(name)}"


_HANDLERS: dict[type, Callable[[Any, _Context], Written | None]] = {
    ast.ViewStmt: _create_view,
    ast.CreateTableAsStmt: _create_table_as,
    ast.CreateStmt: _create_table,
    ast.InsertStmt: _insert,
    ast.UpdateStmt: _update,
    ast.DeleteStmt: _delete,
    ast.TruncateStmt: _truncate,
    ast.DropStmt: _drop,
    ast.CreateSchemaStmt: _create_schema,
}
