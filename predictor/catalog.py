"""The endpoint's catalog: which relations it serves, and which catalog names it answers.

Clients read ``pg_class``, ``pg_attribute``, ``information_schema.tables`` ... and call
``format_type``, ``pg_get_indexdef`` ...; those named here are answered by
:mod:`predictor.catalog_views` from schema ``_pgml_catalog`` (the statement translator sends
catalog references there). The **scoped** ones show each user only its own catalog
(:mod:`predictor.catalog_scope`): the translator hands them the statement's scope.

:class:`ServedRelations` is the other half of the endpoint's catalog: the relations a client may
name at all (mirrored tables, the registry and data sets in schema ``pgml``, the ``pgml_scores``
views, and tables made in the file by hand before it was served), read from the mirror and
cached, for the allow-list check of every statement. The sidecar's bookkeeping
(``_pgml_sidecar``) and this catalog's implementation (``_pgml_catalog``) are never served.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from mirror.duckdb_sql import META

SCHEMA = "_pgml_catalog"


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


SCOPED_TABLES = _names(
    "pg_class pg_namespace pg_attribute pg_attrdef pg_index pg_constraint pg_roles"
)
"""Catalog tables that show each user its own catalog (table macros of the scope)."""
TABLES = SCOPED_TABLES | _names(
    "pg_type pg_proc pg_am pg_database pg_collation pg_policy pg_inherits pg_statistic_ext"
    " pg_publication pg_publication_namespace pg_publication_rel pg_rewrite pg_trigger"
    " pg_auth_members pg_description"
)
"""The catalog tables answered (``pg_catalog.x`` or bare ``x``)."""
SCOPED_FUNCTIONS = _names(
    "pg_get_userbyid pg_table_is_visible pg_get_indexdef pg_get_constraintdef pg_get_viewdef"
    " pg_relation_size pg_table_size pg_total_relation_size"
)
"""Catalog functions of a relation or role that take the statement's scope as last argument."""
FUNCTIONS = SCOPED_FUNCTIONS | _names(
    "format_type pg_get_expr pg_encoding_to_char pg_get_function_arguments"
    " pg_get_function_identity_arguments pg_get_function_result obj_description"
    " col_description shobj_description pg_get_ruledef pg_get_statisticsobjdef_columns"
    " pg_relation_is_publishable array_upper array_lower"
)
"""The catalog functions answered from ``_pgml_catalog`` (``pg_catalog.f`` or bare ``f``)."""
INFORMATION_SCHEMA = {
    name: f"information_schema_{name}" for name in ("tables", "columns", "schemata")
}
"""``information_schema`` views answered here (scoped, as the tables above)."""


log = logging.getLogger("pgml_sidecar")

MIRRORED, LOCAL, SCORES, REGISTRY = "mirrored", "local", "scores", "registry"
REFRESH_SECONDS = 1.0
"""How long a lookup trusts the cached relations; a name not found refreshes them at once."""


@dataclass(frozen=True, slots=True)
class ServedRelation:
    """A relation endpoint clients may name, with its kind.

    ``mirrored``: a source table the replicator keeps, or a source view made over them;
    ``local``: a table or view made in the
    mirror file by other hands before it was served (``serve`` on a DuckDB file built by hand,
    the benchmarks); ``scores``: a ``pgml_scores`` view. These three are read only by callers
    whose ``readable`` (see :mod:`predictor.allow_list`) names them. ``registry``: the
    sidecar's own tables and views and the loaded data sets in schema ``pgml``, readable by
    every endpoint user.
    """

    schema: str
    name: str
    kind: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(identifier: str) -> str:
    """An identifier as DuckDB compares names: A-Z folded to a-z, nothing else.

    Unicode case folding would make ``"ſalaries"`` (long s) or ``"K"`` (Kelvin sign) the same
    name as ``salaries`` or ``k`` here while DuckDB reads another table under it."""
    return identifier.translate(_ASCII_LOWER)


class ServedRelations:
    """The relations of one mirror that the endpoint serves, cached and looked up by name.

    DuckDB resolves names without regard to case, so lookups do too. The cache is read again
    when it is older than :data:`REFRESH_SECONDS` or misses a name (a table mirrored or a score
    view made a moment ago); ``before_refresh`` runs first (the endpoint rebuilds its score views
    there after a deployment).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        before_refresh: Callable[[], None] | None = None,
    ) -> None:
        self._con = con
        self._before_refresh = before_refresh
        self._lock = threading.Lock()
        self._by_name: dict[tuple[str, str], ServedRelation] = {}
        self._loaded_at = -REFRESH_SECONDS

    def find(self, schema: str, name: str) -> ServedRelation | None:
        """The served relation ``schema.name`` names, or None."""
        key = (fold(schema), fold(name))
        stale = time.monotonic() - self._loaded_at > REFRESH_SECONDS
        if stale:
            self.refresh()
        found = self._by_name.get(key)
        if found is None and not stale:
            self.refresh()
            found = self._by_name.get(key)
        return found

    def all(self, *, fresh: bool = False) -> list[ServedRelation]:
        """Every served relation (read again if the cache is older than
        :data:`REFRESH_SECONDS`, or now if ``fresh``: a catalog lists what a deployment made a
        moment ago)."""
        if fresh or time.monotonic() - self._loaded_at > REFRESH_SECONDS:
            self.refresh()
        return list(self._by_name.values())

    def refresh(self) -> None:
        """Read the served relations from the mirror again; on an error keep the last ones."""
        if self._before_refresh is not None:
            try:
                self._before_refresh()
            except Exception as exc:  # a view that cannot be made must not stop every query
                log.warning("served relations: refreshing before a lookup failed: %s", exc)
        with self._lock:
            cursor = self._con.cursor()
            try:
                rows = _served_rows(cursor)
            except duckdb.Error as exc:
                log.warning("served relations: cannot read them from the mirror: %s", exc)
                return
            finally:
                cursor.close()
            by_name: dict[tuple[str, str], ServedRelation] = {}
            for schema, name, kind in rows:
                key = (fold(schema), fold(name))
                if key not in by_name or kind == MIRRORED:
                    by_name[key] = ServedRelation(schema, name, kind)
            self._by_name = by_name
            self._loaded_at = time.monotonic()


def _served_rows(cursor: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    kind = (
        f"case schema_name when 'pgml' then '{REGISTRY}' when 'pgml_scores' then '{SCORES}'"
        f" else '{LOCAL}' end"
    )
    where = (
        "where database_name = current_database() and not internal"
        f" and schema_name not in ('{META}', '{SCHEMA}', 'information_schema', 'pg_catalog')"
    )
    own = (
        f"select schema_name, table_name, {kind} from duckdb_tables() {where}"
        f" union all select schema_name, view_name, {kind} from duckdb_views() {where}"
    )
    try:
        mirrored = cursor.execute(
            f"select schema_name, table_name, '{MIRRORED}' from {META}.tables"
        ).fetchall()
    except duckdb.CatalogException:
        mirrored = []  # a mirror the replicator never wrote to
    # a source view made in the mirror (replicator.views), read as the source lets; none: no
    # view was ever trained on
    with contextlib.suppress(duckdb.CatalogException):
        mirrored += cursor.execute(
            f"select schema_name, view_name, '{MIRRORED}' from {META}.source_views"
        ).fetchall()
    return mirrored + cursor.execute(own).fetchall()
