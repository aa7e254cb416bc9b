"""Statements that write to the caller's workspace: checked, resolved, spelled for DuckDB.

``CREATE [OR REPLACE] VIEW``, ``CREATE TABLE [AS]``, ``ALTER TABLE``, ``INSERT``, ``UPDATE``,
``DELETE`` (with ``RETURNING``), ``TRUNCATE``, ``DROP VIEW|TABLE [IF EXISTS]`` and ``CREATE
SCHEMA`` write only to the
workspace of the caller's role (:mod:`predictor.workspace`), whose catalog name the client
never writes: a name with a catalog (``mirror.public.x``) is refused. Every query inside them
(a view's, ``AS SELECT``, ``INSERT ... SELECT``, a WHERE's subquery) passes the same
allow-list and privilege checks as a query. A mirrored table, the registry and the score views
stay read-only, with a message that says where they change.

``serial`` columns and identity columns take their values from a sequence of the workspace
(``nextval('<table>_<column>_seq')``, which ``DROP TABLE`` drops). A foreign key references a
table of the same workspace only: DuckDB enforces it within one database, and a mirrored
table's rows change in the source without regard to the workspace, so a reference to one is
refused in words; DuckDB enforces a foreign key as ``NO ACTION`` only, so ``ON DELETE
CASCADE`` and the other actions are refused, and so is ``DROP TABLE ... CASCADE`` of a table
another one still references (DuckDB cannot drop the constraint alone).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
from pglast import ast, enums, parse_sql
from pglast.stream import RawStream
from pglast.visitors import Visitor

from mirror.duckdb_sql import META, quote
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
    enums.ConstrType.CONSTR_FOREIGN, enums.ConstrType.CONSTR_IDENTITY,
)  # fmt: skip
_SERIAL = {
    "serial": "int4", "serial4": "int4", "bigserial": "int8", "serial8": "int8",
    "smallserial": "int2", "serial2": "int2",
}  # fmt: skip
_SEQUENCE_FUNCTIONS = ("nextval", "currval", "setval")
_FK_ACTIONS = {"c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass
class _Sequences:
    """The sequences a statement makes (serial and identity columns) and the calls of
    ``nextval``/``currval`` it makes, each as a marker constant checked like any other and
    replaced by the DuckDB call once translated."""

    context: _Context
    made: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(schema, sequence, table, column) of each sequence made."""
    calls: dict[str, str] = field(default_factory=dict)

    def column(
        self, schema: str, table: str, column: ast.ColumnDef, *, not_null: bool = True
    ) -> None:
        """Give ``column`` (serial, or with an identity constraint) a sequence of its own and
        ``nextval`` of it as its default (and NOT NULL, unless ``not_null`` is false: DuckDB
        cannot add a column NOT NULL with a sequence's default in a transaction)."""
        names = [n.sval or "" for n in column.typeName.names or ()] if column.typeName else []
        serial = _SERIAL.get(names[-1].lower()) if len(names) == 1 else None
        constraints = list(column.constraints or ())
        identity = [c for c in constraints if c.contype == enums.ConstrType.CONSTR_IDENTITY]
        if serial is None and not identity:
            return
        if serial is not None:
            assert column.typeName is not None
            column.typeName.names = (ast.String("pg_catalog"), ast.String(serial))
        taken = {(catalog.fold(s), catalog.fold(n)) for s, n, _, _ in self.made}
        base = f"{table}_{column.colname}_seq"
        sequence, n = base, 0
        while self.context.names.find_sequence(schema, sequence) or (
            (catalog.fold(schema), catalog.fold(sequence)) in taken
        ):
            n += 1
            sequence = f"{base}{n}"
        self.made.append((schema, sequence, table, column.colname or ""))
        kept = [c for c in constraints if c.contype != enums.ConstrType.CONSTR_IDENTITY]
        if not_null:
            kept.append(ast.Constraint(contype=enums.ConstrType.CONSTR_NOTNULL))
        kept.append(
            ast.Constraint(
                contype=enums.ConstrType.CONSTR_DEFAULT,
                raw_expr=self._marker(f"nextval({_literal(self._qualified(schema, sequence))})"),
            )
        )
        column.constraints = tuple(kept)

    def calls_in(self, node: ast.Node) -> None:
        """Every ``nextval('name')`` and ``currval('name')`` in ``node`` as a marker (the name
        a sequence of the workspace, ``::regclass`` or not); ``setval`` is refused."""
        sequences = self

        class Calls(Visitor):
            def visit_FuncCall(self, ancestors: Any, call: ast.FuncCall) -> Any:
                names = [(n.sval or "").lower() for n in call.funcname or ()]
                if names[-1] not in _SEQUENCE_FUNCTIONS or names[:-1] not in ([], ["pg_catalog"]):
                    return None
                return sequences._call(names[-1], call)

        Calls()(node)

    def _call(self, name: str, call: ast.FuncCall) -> ast.A_Const:
        args = list(call.args or ())
        if name == "setval":
            raise Refused("setval is not supported in the workspace", sqlstate="0A000")
        argument = args[0] if len(args) == 1 else None
        if isinstance(argument, ast.TypeCast):
            argument = argument.arg
        if not (isinstance(argument, ast.A_Const) and isinstance(argument.val, ast.String)):
            raise Refused(
                f"{name} takes the name of a sequence of your workspace, as a constant:"
                f" {name}('table_column_seq')",
                sqlstate="0A000",
            )
        text = argument.val.sval or ""
        schema, _, bare = text.rpartition(".")
        made = {(catalog.fold(s), catalog.fold(n)): (s, n) for s, n, _, _ in self.made}
        key = (catalog.fold(_unquoted(schema) or DEFAULT_SCHEMA), catalog.fold(_unquoted(bare)))
        found = self.context.names.find_sequence(_unquoted(schema) or None, _unquoted(bare))
        resolved = (found[0], found[1]) if found else made.get(key)
        if resolved is None or "." in schema:
            raise Refused(f'relation "{text}" does not exist', sqlstate="42P01")
        return self._marker(f"{name}({_literal(self._qualified(*resolved))})")

    def _qualified(self, schema: str, sequence: str) -> str:
        return f"{quote(self.context.names.catalog)}.{quote(schema)}.{quote(sequence)}"

    def _marker(self, call: str) -> ast.A_Const:
        marker = f"pgml_sequence_{uuid.uuid4().hex}"
        self.calls[marker] = call
        return ast.A_Const(val=ast.String(marker))

    def spelled(self, sql: str) -> str:
        """``sql`` with each marker replaced by its call."""
        for marker, call in self.calls.items():
            sql = sql.replace(_literal(marker), call)
        return sql

    def creates(self) -> list[str]:
        """The DuckDB statements making the sequences (before the table)."""
        return [f"create sequence {self._qualified(s, n)}" for s, n, _, _ in self.made]

    def owned(self) -> list[str]:
        """The DuckDB statements listing them with their table (after it)."""
        meta = f"{quote(self.context.names.catalog)}.{META}.sequences"
        return [
            f"insert into {meta} values ({', '.join(_literal(v) for v in row)})"
            for row in self.made
        ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
    sequences = _Sequences(context)
    references: list[ast.Constraint] = []
    for element in node.tableElts or ():
        constraints = element.constraints if isinstance(element, ast.ColumnDef) else (element,)
        if isinstance(element, ast.ColumnDef):
            _column_type(element)
        elif not isinstance(element, ast.Constraint):
            raise Refused("CREATE TABLE ... LIKE is not supported here", sqlstate="0A000")
        for constraint in constraints or ():
            if constraint.contype not in _CONSTRAINTS_KEPT:
                raise Refused(
                    "only NOT NULL, DEFAULT, CHECK, PRIMARY KEY, UNIQUE, REFERENCES and identity"
                    " constraints are supported in the workspace (no generated columns nor"
                    " exclusion constraints)",
                    sqlstate="0A000",
                )
            if constraint.contype == enums.ConstrType.CONSTR_FOREIGN:
                references.append(constraint)
        if isinstance(element, ast.ColumnDef):
            sequences.column(schema, name, element)
    node.options = node.tablespacename = node.accessMethod = None
    sequences.calls_in(node)
    referenced = [(c, c.pktable) for c in references]
    for constraint in references:
        constraint.pktable = None  # checked below: a table of this workspace
    checked = context.check_fields(node, ("relation",))
    for constraint, table in referenced:
        constraint.pktable = _referenced(constraint, table, context, schema, name)
    target = WorkspaceRelation(context.names.catalog, schema, name, TABLE)
    sql = sequences.spelled(context.translate(node, checked, relation=target))
    statements = [*sequences.creates(), sql, *sequences.owned()]
    return Written(
        WorkspaceWrite("CREATE TABLE", sql="; ".join(statements), schema=schema), checked
    )


def _referenced(
    constraint: ast.Constraint,
    table: ast.RangeVar | None,
    context: _Context,
    schema: str,
    name: str,
) -> ast.RangeVar:
    """The table a foreign key references, named by its DuckDB catalog: a table of the
    workspace (this one included), never a mirrored one."""
    assert table is not None
    actions = ((constraint.fk_del_action, "DELETE"), (constraint.fk_upd_action, "UPDATE"))
    for action, when in actions:
        if action in _FK_ACTIONS:
            raise Refused(
                f"ON {when} {_FK_ACTIONS[action]} is not supported in the workspace: its foreign"
                f" keys are enforced as NO ACTION only; {when.lower()} the referencing rows first",
                sqlstate="0A000",
            )
    _no_catalog(table)
    own = context.names.find(table.schemaname, table.relname or "")
    itself = catalog.fold(table.schemaname or DEFAULT_SCHEMA) == catalog.fold(schema) and (
        catalog.fold(table.relname or "") == catalog.fold(name)
    )
    if own is None and not itself:
        served = context.served(table.schemaname, table.relname or "")
        shown = f"{table.schemaname}.{table.relname}" if table.schemaname else table.relname
        if served is not None:
            raise Refused(
                f"a foreign key cannot reference {served.qualified}: it is served from the"
                " mirror, whose rows change in the source database without regard to your"
                " workspace; reference a table of your workspace (CREATE TABLE ... AS SELECT a"
                " copy)",
                sqlstate="0A000",
            )
        raise Refused(f'relation "{shown}" does not exist', sqlstate="42P01")
    if own is not None and own.kind != TABLE:
        raise Refused(f'referenced relation "{own.qualified}" is not a table', sqlstate="42809")
    if own is not None and catalog.fold(own.schema) != catalog.fold(schema):
        raise Refused(
            f"a foreign key of {schema}.{name} cannot reference {own.qualified}: in the workspace"
            " a foreign key references a table of the same schema",
            sqlstate="0A000",
        )
    found_schema, found_name = (own.schema, own.name) if own is not None else (schema, name)
    return ast.RangeVar(
        catalogname=context.names.catalog, schemaname=found_schema, relname=found_name,
        inh=True, relpersistence="p",
    )  # fmt: skip


def _column_type(column: ast.ColumnDef) -> None:
    type_name = column.typeName
    if type_name is None:
        return
    names = [n.sval or "" for n in type_name.names or ()]
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
    as a query's, the statement translated; ``tag`` takes the rows changed (or returned)."""
    assert node.relation is not None
    target = _existing(node.relation, context, TABLE, verb)
    sequences = _Sequences(context)
    sequences.calls_in(node)
    checked = context.check_fields(node, ("relation",))
    sql = sequences.spelled(context.translate(node, checked, relation=target))
    returning = node.returningClause is not None
    return Written(
        WorkspaceWrite(tag, sql=sql, counted=not returning, returning=returning), checked
    )


def _truncate(node: ast.TruncateStmt, context: _Context) -> Written:
    targets = [_existing(r, context, TABLE, "truncate") for r in node.relations or ()]
    sql = "; ".join(f"delete from {t.duckdb_name}" for t in targets)
    return Written(WorkspaceWrite("TRUNCATE TABLE", sql=sql))


def _drop(node: ast.DropStmt, context: _Context) -> Written | None:
    kinds = {enums.ObjectType.OBJECT_TABLE: TABLE, enums.ObjectType.OBJECT_VIEW: VIEW}
    kind = kinds.get(node.removeType) if node.removeType is not None else None
    if kind is None:
        return None
    tables: list[WorkspaceRelation] = []
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
            tables.append(own)
        else:
            views.append((own.schema, own.name))
    return Written(
        WorkspaceWrite(
            f"DROP {kind.upper()}", sql="; ".join(_dropped(tables, node, context)),
            drop_views=tuple(views),
        )
    )  # fmt: skip


def _dropped(tables: list[WorkspaceRelation], node: ast.DropStmt, context: _Context) -> list[str]:
    """The DuckDB statements dropping ``tables`` and their sequences: the tables that reference
    others first; a table referenced by one not dropped with it is refused."""
    dropping = {(catalog.fold(t.schema), catalog.fold(t.name)) for t in tables}
    for table in tables:
        for schema, name in context.names.referencing(table):
            if (catalog.fold(schema), catalog.fold(name)) in dropping:
                continue
            if node.behavior == enums.DropBehavior.DROP_CASCADE:
                raise Refused(
                    f"cannot drop table {table.qualified} with CASCADE: table {schema}.{name}"
                    " references it, and the workspace cannot drop a foreign key alone; drop"
                    f" {schema}.{name} first, or both in one DROP TABLE",
                    sqlstate="0A000",
                )
            raise Refused(
                f"cannot drop table {table.qualified} because other objects depend on it:"
                f" a foreign key of table {schema}.{name} references it; drop {schema}.{name}"
                " first, or both in one DROP TABLE",
                sqlstate="2BP01",
            )
    meta = f"{quote(context.names.catalog)}.{META}.sequences"
    statements: list[str] = []
    left = list(tables)
    while left:  # a table once no table left references it
        names = {(catalog.fold(t.schema), catalog.fold(t.name)) for t in left}
        free = [
            t
            for t in left
            if not any((catalog.fold(s), catalog.fold(n)) in names
                       for s, n in context.names.referencing(t))
        ] or left  # fmt: skip
        statements.extend(f"drop table {t.duckdb_name}" for t in free)
        left = [t for t in left if t not in free]
    for table in tables:
        for sequence in context.names.sequences_of(table):
            statements.append(
                f"drop sequence {quote(context.names.catalog)}.{quote(table.schema)}"
                f".{quote(sequence)}"
            )
            statements.append(
                f"delete from {meta} where schema_name = {_literal(table.schema)}"
                f" and sequence_name = {_literal(sequence)}"
            )
    return statements


_ALTERED = {
    enums.AlterTableType.AT_AddColumn: "ADD COLUMN",
    enums.AlterTableType.AT_DropColumn: "DROP COLUMN",
    enums.AlterTableType.AT_ColumnDefault: "SET/DROP DEFAULT",
    enums.AlterTableType.AT_AlterColumnType: "ALTER COLUMN TYPE",
    enums.AlterTableType.AT_SetNotNull: "SET NOT NULL",
    enums.AlterTableType.AT_DropNotNull: "DROP NOT NULL",
}


def _alter_table(node: ast.AlterTableStmt, context: _Context) -> Written | None:
    """ALTER TABLE of a workspace table: one DuckDB ALTER TABLE per action."""
    if node.objtype != enums.ObjectType.OBJECT_TABLE or node.relation is None:
        return None
    table = _altered(node.relation, context, missing_ok=bool(node.missing_ok))
    if table is None:
        return Written(WorkspaceWrite("ALTER TABLE"))
    sequences = _Sequences(context)
    dropped: list[str] = []
    for command in node.cmds or ():
        if command.subtype not in _ALTERED:
            raise Refused(
                "ALTER TABLE in the workspace takes ADD COLUMN, DROP COLUMN, ALTER COLUMN TYPE,"
                " SET DEFAULT, DROP DEFAULT, SET NOT NULL, DROP NOT NULL and RENAME",
                sqlstate="0A000",
            )
        column = command.def_
        if command.subtype == enums.AlterTableType.AT_AddColumn:
            assert isinstance(column, ast.ColumnDef)
            _column_type(column)
            for constraint in column.constraints or ():
                if constraint.contype not in _CONSTRAINTS_KEPT or constraint.contype in (
                    enums.ConstrType.CONSTR_FOREIGN, enums.ConstrType.CONSTR_PRIMARY,
                    enums.ConstrType.CONSTR_UNIQUE,
                ):  # fmt: skip
                    raise Refused(
                        "a column added in the workspace takes NOT NULL, DEFAULT and CHECK"
                        " constraints only",
                        sqlstate="0A000",
                    )
            sequences.column(table.schema, table.name, column, not_null=False)
        elif isinstance(column, ast.ColumnDef) and column.typeName is not None:
            _column_type(column)
        if command.subtype == enums.AlterTableType.AT_DropColumn:
            dropped.append(command.name or "")
    sequences.calls_in(node)
    checked = context.check_fields(node, ("relation",))
    statements = [*sequences.creates(), *_each_action(node, table, checked, context)]
    statements += [*sequences.owned(), *_dropped_sequences(table, dropped, context)]
    return Written(
        WorkspaceWrite("ALTER TABLE", sql=sequences.spelled("; ".join(statements))), checked
    )


def _each_action(
    node: ast.AlterTableStmt, table: WorkspaceRelation, checked: CheckedQuery, context: _Context
) -> list[str]:
    """The ALTER TABLE as one DuckDB statement per action (DuckDB takes one at a time), each
    naming ``table`` by its catalog (pglast prints ALTER TABLE's name without one)."""
    marker = f"pgml_altered_{uuid.uuid4().hex}"
    each = []
    for command in node.cmds or ():
        single = ast.AlterTableStmt(
            relation=ast.RangeVar(relname=marker, inh=True, relpersistence="p"),
            cmds=(command,), objtype=node.objtype, missing_ok=False,
        )  # fmt: skip
        sql = context.translate(single, checked)
        each.append(sql.replace(marker, table.duckdb_name, 1))
    return each


def _dropped_sequences(
    table: WorkspaceRelation, columns: list[str], context: _Context
) -> list[str]:
    """The statements dropping the sequences of the serial columns ``columns`` of ``table``."""
    meta = f"{quote(context.names.catalog)}.{META}.sequences"
    statements = []
    folded = {catalog.fold(c) for c in columns}
    for schema, sequence, _, column in context.names.owned_sequences(table):
        if catalog.fold(column) in folded:
            statements.append(
                f"drop sequence {quote(context.names.catalog)}.{quote(schema)}.{quote(sequence)}"
            )
            statements.append(
                f"delete from {meta} where schema_name = {_literal(schema)}"
                f" and sequence_name = {_literal(sequence)}"
            )
    return statements


def _altered(
    node: ast.RangeVar, context: _Context, *, missing_ok: bool
) -> WorkspaceRelation | None:
    """The workspace table an ALTER TABLE changes (None: IF EXISTS, and there is none)."""
    _no_catalog(node)
    _schema_checked(node.schemaname, creating=False)
    name = node.relname or ""
    missing = context.names.find(node.schemaname, name) is None
    if missing_ok and missing and context.served(node.schemaname, name) is None:
        return None
    return _existing(node, context, TABLE, "alter")


def _rename(node: ast.RenameStmt, context: _Context) -> Written | None:
    """ALTER TABLE ... RENAME TO and RENAME COLUMN of a workspace table."""
    kinds = (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_COLUMN)
    if node.renameType not in kinds or node.relation is None:
        return None
    if node.renameType == enums.ObjectType.OBJECT_COLUMN and (
        node.relationType != enums.ObjectType.OBJECT_TABLE
    ):
        return None  # a view's column
    table = _altered(node.relation, context, missing_ok=bool(node.missing_ok))
    if table is None:
        return Written(WorkspaceWrite("ALTER TABLE"))
    meta = f"{quote(context.names.catalog)}.{META}.sequences"
    where = f"schema_name = {_literal(table.schema)} and table_name = {_literal(table.name)}"
    new = node.newname or ""
    if node.renameType == enums.ObjectType.OBJECT_COLUMN:
        sql = (
            f"alter table {table.duckdb_name} rename column {quote(node.subname or '')}"
            f" to {quote(new)}"
        )
        update = (
            f"update {meta} set column_name = {_literal(new)} where {where}"
            f" and column_name = {_literal(node.subname or '')}"
        )
        return Written(WorkspaceWrite("ALTER TABLE", sql=f"{sql}; {update}"))
    own = context.names.find(table.schema, new)
    if own is not None:
        raise _already(own)
    served = context.served(table.schema, new)
    if served is not None:
        raise Refused(f'relation "{served.qualified}" already exists', sqlstate="42P07")
    sql = f"alter table {table.duckdb_name} rename to {quote(new)}"
    update = f"update {meta} set table_name = {_literal(new)} where {where}"
    return Written(WorkspaceWrite("ALTER TABLE", sql=f"{sql}; {update}"))


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
    ast.AlterTableStmt: _alter_table,
    ast.RenameStmt: _rename,
}
