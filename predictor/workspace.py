"""Each endpoint user's workspace: a DuckDB file of its own, attached beside the read-only mirror.

PostgresML's scripts make views and tables over their data and train on them (``CREATE VIEW
pgml.iris_view AS SELECT ...``). The mirror never changes but by the replicator, so each source
role an endpoint user acts for gets a database of its own where those statements work:
``<mirror>.pgml/workspaces/<role>-<hash>.duckdb``, made at its first write and attached to the
mirror's DuckDB under a catalog name of its own (never named by clients: the allow-list
refuses every catalog-qualified name, and :mod:`predictor.workspace_statements` qualifies what
it writes).

- **Tables** are DuckDB tables in that file: rows copied in by ``CREATE TABLE ... AS`` or
  ``INSERT`` stay the role's, as a table it made in PostgreSQL would.
- **Views** are kept as their PostgreSQL text in ``_pgml_sidecar.views`` of the file, never as
  DuckDB views: a query that names one reads its definition through the allow-list again, with
  the role's privileges of that moment (a view over a table whose SELECT was revoked since is
  refused), and a training on it snapshots what the role may read.
- **Names** resolve as PostgreSQL's search_path would with the workspace first: ``pgml.x`` is
  the workspace's ``pgml.x`` if it has one, else the mirror's; an unqualified name is the
  workspace's ``public`` one first.
- **Sequences** of ``serial`` and identity columns are DuckDB sequences beside their table,
  named as PostgreSQL names them (``<table>_<column>_seq``) and listed with their table in
  ``_pgml_sidecar.sequences``: ``DROP TABLE`` drops them.
- **Size**: a workspace holds at most its limit (``DEFAULT_SIZE_LIMIT``); a write that would
  pass it is stopped while it runs and undone (SQLSTATE 53100).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from mirror.duckdb_sql import META, quote
from mirror.errors import SidecarError

DIRECTORY = "workspaces"
"""The workspaces' directory, in the sidecar's own directory beside the mirror."""
DEFAULT_SIZE_LIMIT = 1 << 30
"""The most a workspace file may hold, in bytes."""
SIZE_WATCH_S = 0.05
"""How often the size of a workspace is looked at while a write runs."""
TABLE, VIEW = "table", "view"
DEFAULT_SCHEMA = "public"
"""Where an unqualified name is created, and looked for first."""

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(identifier: str) -> str:
    """A name as DuckDB compares them (A-Z folded, nothing else; see predictor.catalog.fold)."""
    return identifier.translate(_ASCII_LOWER)


class WorkspaceFull(SidecarError):
    """A write that would make a workspace larger than its limit."""

    sqlstate = "53100"


@dataclass(frozen=True, slots=True)
class WorkspaceRelation:
    """A table or view of a workspace."""

    catalog: str
    schema: str
    name: str
    kind: str
    definition: str | None = None
    """A view's query, as PostgreSQL SQL (it is checked and translated each time it is read)."""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def duckdb_name(self) -> str:
        return f"{quote(self.catalog)}.{quote(self.schema)}.{quote(self.name)}"


@dataclass(frozen=True, slots=True)
class WorkspaceNames:
    """What one workspace holds, as read at one moment (for one statement's checks)."""

    catalog: str
    relations: dict[tuple[str, str], WorkspaceRelation] = field(default_factory=dict)
    schemas: frozenset[str] = frozenset()
    """The workspace's schemas (folded)."""
    sequences: dict[tuple[str, str], tuple[str, str, str, str]] = field(default_factory=dict)
    """The sequences of serial and identity columns: (schema, name, table, column) by folded
    (schema, name)."""

    references: dict[tuple[str, str], tuple[tuple[str, str], ...]] = field(default_factory=dict)
    """The tables whose foreign keys reference a table, by the folded (schema, name) of the
    table referenced."""

    def referencing(self, relation: WorkspaceRelation) -> tuple[tuple[str, str], ...]:
        """The (schema, name) of each other table with a foreign key to ``relation``."""
        key = (_fold(relation.schema), _fold(relation.name))
        return tuple(t for t in self.references.get(key, ()) if (_fold(t[0]), _fold(t[1])) != key)

    def find_sequence(self, schema: str | None, name: str) -> tuple[str, str, str, str] | None:
        """The sequence ``schema.name`` names (an unqualified name: in ``public``), or None."""
        return self.sequences.get((_fold(schema or DEFAULT_SCHEMA), _fold(name)))

    def owned_sequences(self, relation: WorkspaceRelation) -> list[tuple[str, str, str, str]]:
        """(schema, sequence, table, column) of ``relation``'s serial and identity columns."""
        key = (_fold(relation.schema), _fold(relation.name))
        return [s for s in self.sequences.values() if (_fold(s[0]), _fold(s[2])) == key]

    def sequences_of(self, relation: WorkspaceRelation) -> list[str]:
        """The sequences of ``relation``'s serial and identity columns."""
        return [sequence for _, sequence, _, _ in self.owned_sequences(relation)]

    def find(self, schema: str | None, name: str) -> WorkspaceRelation | None:
        """The relation ``schema.name`` names (an unqualified name: in ``public``), or None."""
        return self.relations.get((_fold(schema or DEFAULT_SCHEMA), _fold(name)))

    def with_view(self, schema: str, name: str, definition: str) -> WorkspaceNames:
        """These names with the view ``schema.name`` (re)defined: for the check of a new view."""
        view = WorkspaceRelation(self.catalog, schema, name, VIEW, definition)
        relations = dict(self.relations)
        relations[(_fold(schema), _fold(name))] = view
        return replace(self, relations=relations)


@dataclass(frozen=True, slots=True)
class WorkspaceWrite:
    """What a statement writing to the workspace does (made by predictor.workspace_statements).

    ``sql`` runs first (its ``$n`` from the client's parameters); then a view's definition is
    stored or removed. ``tag`` is the command tag; ``{}`` in it is the rows written.
    """

    tag: str
    sql: str = ""
    schema: str | None = None
    """A schema of the workspace the statement needs (made first if missing)."""
    view: tuple[str, str, str] | None = None
    """CREATE VIEW: (schema, name, definition) to store once ``sql`` (its check) ran."""
    drop_views: tuple[tuple[str, str], ...] = ()
    counted: bool = False
    """Whether ``sql`` answers the rows it wrote (INSERT, UPDATE, DELETE, CREATE TABLE AS)."""
    returning: bool = False
    """Whether ``sql`` answers the rows of its RETURNING list (the tag counts them)."""


def file_name(role: str) -> str:
    """The file of ``role``'s workspace: its name in safe characters, and a hash that tells
    apart roles whose names differ only in case or in characters left out."""
    readable = re.sub(r"[^a-z0-9_]+", "_", role.lower()).strip("_")[:40] or "role"
    digest = hashlib.sha256(role.encode()).hexdigest()[:16]
    return f"{readable}-{digest}.duckdb"


class Workspaces:
    """The workspaces of one endpoint, one per source role, in ``directory``."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        directory: Path,
        *,
        size_limit: int = DEFAULT_SIZE_LIMIT,
    ) -> None:
        self.con = con
        self.directory = Path(directory)
        self.size_limit = size_limit
        self._lock = threading.Lock()
        self._by_role: dict[str, Workspace] = {}

    def of(self, role: str) -> Workspace:
        """``role``'s workspace (its file is made at its first write)."""
        with self._lock:
            found = self._by_role.get(role)
            if found is None:
                found = self._by_role[role] = Workspace(self, role)
            return found


class Workspace:
    """One role's workspace."""

    def __init__(self, owner: Workspaces, role: str) -> None:
        self.role = role
        self.con = owner.con
        self.path = owner.directory / file_name(role)
        self.size_limit = owner.size_limit
        self.catalog = "pgml_workspace_" + hashlib.sha256(role.encode()).hexdigest()[:16]
        self._attached = False
        self._lock = threading.Lock()

    @property
    def exists(self) -> bool:
        return self._attached or self.path.exists()

    def attach(self) -> None:
        """Attach the workspace's file to the mirror's DuckDB (made if missing)."""
        if self._attached:
            return
        with self._lock:
            if self._attached:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cursor = self.con.cursor()
            try:
                literal = str(self.path.absolute()).replace("'", "''")
                cursor.execute(f"attach if not exists '{literal}' as {quote(self.catalog)}")
                cursor.execute(f"create schema if not exists {quote(self.catalog)}.{META}")
                cursor.execute(
                    f"create table if not exists {quote(self.catalog)}.{META}.views ("
                    " schema_name varchar, view_name varchar, definition varchar not null,"
                    " primary key (schema_name, view_name))"
                )
                cursor.execute(
                    f"create table if not exists {quote(self.catalog)}.{META}.sequences ("
                    " schema_name varchar, sequence_name varchar, table_name varchar not null,"
                    " column_name varchar not null, primary key (schema_name, sequence_name))"
                )
            except duckdb.Error as exc:
                raise SidecarError(
                    f"cannot open the workspace of role {self.role} ({self.path}):"
                    f" {str(exc).strip().splitlines()[0]}",
                    sqlstate="58030",
                ) from None
            finally:
                cursor.close()
            self._attached = True

    def names(self, cursor: duckdb.DuckDBPyConnection | None = None) -> WorkspaceNames:
        """The workspace's tables, views and schemas, as ``cursor`` (in its transaction) sees
        them; an empty workspace if it was never written to."""
        if not self.exists:
            return WorkspaceNames(self.catalog)
        self.attach()
        own = cursor is None
        cursor = self.con.cursor() if cursor is None else cursor
        try:
            tables = cursor.execute(
                "select schema_name, table_name from duckdb_tables()"
                " where database_name = ? and schema_name <> ?",
                [self.catalog, META],
            ).fetchall()
            views = cursor.execute(
                f"select schema_name, view_name, definition from {quote(self.catalog)}.{META}.views"
            ).fetchall()
            schemas = cursor.execute(
                "select schema_name from duckdb_schemas() where database_name = ?", [self.catalog]
            ).fetchall()
            foreign = cursor.execute(
                "select schema_name, table_name, referenced_table from duckdb_constraints()"
                " where database_name = ? and constraint_type = 'FOREIGN KEY'",
                [self.catalog],
            ).fetchall()
            sequences = cursor.execute(
                "select schema_name, sequence_name, table_name, column_name"
                f" from {quote(self.catalog)}.{META}.sequences"
            ).fetchall()
        finally:
            if own:
                cursor.close()
        relations: dict[tuple[str, str], WorkspaceRelation] = {}
        for schema, name in tables:
            relations[(_fold(schema), _fold(name))] = WorkspaceRelation(
                self.catalog, schema, name, TABLE
            )
        for schema, name, definition in views:
            relations[(_fold(schema), _fold(name))] = WorkspaceRelation(
                self.catalog, schema, name, VIEW, definition
            )
        folded = frozenset(_fold(s) for (s,) in schemas if s != META)
        owned = {(_fold(s), _fold(n)): (s, n, t, c) for s, n, t, c in sequences}
        references: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        for schema, name, referenced in foreign:  # DuckDB: within one schema only
            key = (_fold(schema), _fold(referenced))
            references[key] = (*references.get(key, ()), (schema, name))
        return WorkspaceNames(self.catalog, relations, folded, owned, references)

    def apply(
        self, write: WorkspaceWrite, cursor: duckdb.DuckDBPyConnection, params: Sequence[Any]
    ) -> tuple[str, pa.Table | None]:
        """Run ``write`` on ``cursor`` (in its transaction, which the caller ends); its tag,
        and the rows of its RETURNING list."""
        self.attach()
        catalog = quote(self.catalog)
        if write.schema is not None:
            cursor.execute(f"create schema if not exists {catalog}.{quote(write.schema)}")
        count = 0
        returned = None
        if write.sql:
            with self.watched(cursor):
                result = cursor.execute(write.sql, list(params) or None)
                if write.returning:  # the rows of a statement that ran: read once, here
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # "an extra copy": small
                        returned = result.to_arrow_table()
                row = result.fetchone() if write.counted and not write.returning else None
            count = int(row[0]) if row else 0 if returned is None else returned.num_rows
        if write.view is not None:
            cursor.execute(
                f"insert or replace into {catalog}.{META}.views values (?, ?, ?)", list(write.view)
            )
        for schema, name in write.drop_views:
            cursor.execute(
                f"delete from {catalog}.{META}.views where schema_name = ? and view_name = ?",
                [schema, name],
            )
        self.check_size(cursor)
        return write.tag.replace("{}", str(count)), returned

    def size(self, cursor: duckdb.DuckDBPyConnection) -> int:
        """The bytes the workspace's file holds, rows written but not yet committed included."""
        row = cursor.execute(
            "select used_blocks * block_size from pragma_database_size() where database_name = ?",
            [self.catalog],
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def check_size(self, cursor: duckdb.DuckDBPyConnection) -> None:
        size = self.size(cursor)
        if size > self.size_limit:
            raise self._full(size)

    def _full(self, size: int) -> WorkspaceFull:
        return WorkspaceFull(
            f"the workspace of role {self.role} would hold {_shown(size)}, over its limit of"
            f" {_shown(self.size_limit)}: nothing was written; write less, or drop or empty"
            " tables you no longer need"
        )

    @contextlib.contextmanager
    def watched(self, cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """Interrupt ``cursor`` if the workspace grows past the limit meanwhile (a large write
        takes blocks of the file before it commits), and report that as
        :class:`WorkspaceFull`."""
        done = threading.Event()
        over: list[int] = []
        watcher = self.con.cursor()

        def watch() -> None:
            try:
                while not done.wait(SIZE_WATCH_S):
                    size = self.size(watcher)
                    if size > self.size_limit:
                        over.append(size)
                        with contextlib.suppress(duckdb.Error):
                            cursor.interrupt()
                        return
            except duckdb.Error:
                return  # the database is closing: nothing to watch
            finally:
                watcher.close()

        thread = threading.Thread(target=watch, name="pgml-workspace-size", daemon=True)
        thread.start()
        try:
            yield
        except duckdb.Error:
            if over:
                raise self._full(over[0]) from None
            raise
        finally:
            done.set()
            thread.join()


def _shown(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
