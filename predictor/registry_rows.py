"""Which rows of the ``pgml`` registry an endpoint role sees: those of the projects it may see.

The registry holds what trainings learned of the data: each snapshot's per-column statistics,
each model's metrics and preprocessing (scaler means, target encodings), drift statistics. A
role sees the rows of a project only if it may use the project's scores (its owner, and the
readers of the relation it was trained on: :meth:`predictor.access.EndpointAccess.may_see`),
and a snapshot only if it may see a project trained on it or read its relation.

:func:`filtered` rewrites a query's reference to a registry relation into a subquery of the
visible rows, under the relation's name or alias. The test is a DuckDB function the endpoint
registers (:func:`register`) that asks for the role at every execution, so a prepared statement
follows GRANT and REVOKE as a new one does. The loaded data sets (``pgml.iris``...) are
everyone's and stay as they are; any other relation of the schema shows no row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import duckdb
import pyarrow as pa
from duckdb import func
from pglast import ast, parse_sql

from trainer.datasets import DATASETS

PROJECT_VISIBLE = "pgml_project_visible"
SNAPSHOT_VISIBLE = "pgml_snapshot_visible"

_BY_PROJECT = "select * from pgml.{name} where " + PROJECT_VISIBLE + "({role}, {column})"
_BY_NAME = (
    "select * from pgml.{name} where name in (select p.name from pgml.projects p where "
    + PROJECT_VISIBLE
    + "({role}, p.id))"
)
FILTERS = {
    "projects": _BY_PROJECT.replace("{column}", "id"),
    "models": _BY_PROJECT.replace("{column}", "project_id"),
    "deployments": _BY_PROJECT.replace("{column}", "project_id"),
    "project_settings": _BY_PROJECT.replace("{column}", "project_id"),
    "drift_events": _BY_PROJECT.replace("{column}", "project_id"),
    "challenges": _BY_PROJECT.replace("{column}", "project_id"),
    "pending_challenges": _BY_PROJECT.replace("{column}", "project_id"),
    "deployed_models": _BY_PROJECT.replace("{column}", "id"),
    "trained_models": _BY_NAME,
    "overview": _BY_NAME,
    "progress": (
        "select * from pgml.{name} where model_id in (select m.id from pgml.models m where "
        + PROJECT_VISIBLE
        + "({role}, m.project_id))"
    ),
    "snapshots": "select * from pgml.{name} where " + SNAPSHOT_VISIBLE + "({role}, id)",
}
"""The rows of each registry relation a role sees, as a query (``{role}``: the role, quoted)."""


def filtered(node: ast.RangeVar, relation: str, role: str) -> ast.RangeSubselect | None:
    """``(SELECT * FROM pgml.relation WHERE <visible to role>) AS alias``, or None for a
    relation every role sees whole (a loaded data set). A relation of the registry not named
    in :data:`FILTERS` shows no row: nothing new is shown to everyone by default."""
    if relation.lower() in DATASETS:
        return None
    template = FILTERS.get(relation.lower(), "select * from pgml.{name} where false")
    literal = "'" + role.replace("'", "''") + "'"
    name = '"' + relation.replace('"', '""') + '"'
    query = parse_sql(template.format(name=name, role=literal))[0].stmt
    alias = node.alias or ast.Alias(aliasname=node.relname)
    return ast.RangeSubselect(lateral=False, subquery=query, alias=alias)


def register(
    con: duckdb.DuckDBPyConnection,
    visible_projects: Callable[[str], frozenset[int]],
    visible_snapshots: Callable[[str], frozenset[int]],
) -> None:
    """Create the two tests :data:`FILTERS` call on the mirror's connection."""
    types = duckdb.sqltypes
    tests = ((PROJECT_VISIBLE, visible_projects), (SNAPSHOT_VISIBLE, visible_snapshots))
    for name, visible in tests:
        with contextlib.suppress(duckdb.InvalidInputException):
            con.remove_function(name)
        con.create_function(
            name, _test(visible), [types.VARCHAR, types.BIGINT], types.BOOLEAN, type=func.ARROW,
            null_handling=func.SPECIAL, side_effects=True,
        )  # fmt: skip


def _test(visible: Callable[[str], frozenset[int]]) -> Callable[[pa.Array, pa.Array], pa.Array]:
    def test(roles: pa.Array, ids: pa.Array) -> pa.Array:
        answers: dict[str, frozenset[int]] = {}
        out = []
        for role, key in zip(roles.to_pylist(), ids.to_pylist(), strict=True):
            if role is None or key is None:
                out.append(False)
                continue
            if role not in answers:
                answers[role] = visible(role)
            out.append(key in answers[role])
        return pa.array(out, pa.bool_())

    return test
