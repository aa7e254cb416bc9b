"""What one endpoint user's catalog shows: the relations its source role may read, and its own.

PostgreSQL shows everyone every relation's name in ``pg_class``; the endpoint shows a user only
what it may read (names of tables it may not read are the source's business): the mirrored
tables and score views its source role may SELECT (of a table it may read only some columns
of, only those columns and none of its indexes), the registry in schema ``pgml``, and the
tables and views of its own workspace. :class:`CatalogScope` is that list, for one statement;
:mod:`predictor.catalog_views` answers ``pg_class``, ``pg_attribute``, ``information_schema``
and the rest from it, and :mod:`predictor.translation` hands it to them as a JSON text
argument (a constant of the statement, never something a client can name or change).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from predictor.allow_list import Readable, may_read
from predictor.catalog import REGISTRY, ServedRelations
from predictor.workspace import VIEW, WorkspaceNames, WorkspaceRelation

USER_OID = 16384
"""The oid ``pg_roles`` gives the session's own user (the owner of its workspace)."""
SIDECAR_OID = 10
"""The oid of ``pgml_sidecar``, which owns the mirror, as the bootstrap superuser owns
PostgreSQL's catalog."""
SIDECAR_ROLE = "pgml_sidecar"

ViewColumns = Callable[[WorkspaceRelation], list[tuple[str, str]]]
"""The columns of a workspace view as the user may read it now: (name, DuckDB type) each."""


@dataclass(frozen=True, slots=True)
class CatalogScope:
    """The relations one user's catalog shows, for one statement."""

    user: str
    workspace: str = ""
    """The DuckDB catalog of the user's workspace ('' : none)."""
    relations: tuple[tuple[str, str], ...] = ()
    """The mirror's relations the user may read, (schema, name) as the mirror holds them."""
    partial: tuple[tuple[str, str], ...] = ()
    """Those of them it may read only some columns of ..."""
    columns: tuple[tuple[str, str, str], ...] = ()
    """... and those columns, (schema, name, column)."""
    views: tuple[tuple[str, str, str], ...] = ()
    """The workspace's views, (schema, name, definition): DuckDB does not know them."""
    view_columns: tuple[tuple[str, str, str, str, str], ...] = ()
    """Their columns, (schema, name, column, DuckDB type, position from 1)."""

    def text(self) -> str:
        """The scope as the catalog's table macros and functions read it (JSON)."""
        return json.dumps(
            {
                "user": self.user,
                "workspace": self.workspace,
                "relations": [list(r) for r in self.relations],
                "partial": [list(r) for r in self.partial],
                "columns": [list(c) for c in self.columns],
                "views": [list(v) for v in self.views],
                "view_columns": [list(c) for c in self.view_columns],
            },
            separators=(",", ":"),
        )


NOTHING = CatalogScope(user="")
"""The scope of a statement checked without a session (a view's definition checked when it is
made): nothing to show."""


def scope_of(
    user: str,
    *,
    relations: ServedRelations | None,
    readable: Readable | None,
    workspace: WorkspaceNames | None,
    view_columns: ViewColumns | None = None,
) -> CatalogScope:
    """The catalog ``user`` sees: what ``readable`` lets it read of ``relations``, and
    ``workspace`` (its views' columns from ``view_columns``; without it, none)."""
    whole: list[tuple[str, str]] = []
    partial: list[tuple[str, str]] = []
    columns: list[tuple[str, str, str]] = []
    for relation in relations.all(fresh=True) if relations is not None else ():
        allowed = True if relation.kind == REGISTRY else may_read(readable, relation)
        if allowed is False:
            continue
        key = (relation.schema, relation.name)
        whole.append(key)
        if isinstance(allowed, tuple):
            partial.append(key)
            columns.extend((*key, c) for c in allowed)
    views = [r for r in (workspace.relations.values() if workspace else ()) if r.kind == VIEW]
    return CatalogScope(
        user=user,
        workspace=workspace.catalog if workspace is not None else "",
        relations=tuple(sorted(whole)),
        partial=tuple(partial),
        columns=tuple(columns),
        views=tuple((v.schema, v.name, v.definition or "") for v in views),
        view_columns=tuple(_view_columns(views, view_columns)),
    )


def _view_columns(
    views: Iterable[WorkspaceRelation], view_columns: ViewColumns | None
) -> list[tuple[str, str, str, str, str]]:
    found = []
    for view in views if view_columns is not None else ():
        assert view_columns is not None
        for position, (name, duckdb_type) in enumerate(view_columns(view), start=1):
            found.append((view.schema, view.name, name, duckdb_type, str(position)))
    return found
