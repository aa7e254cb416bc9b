"""Views ``pgml_scores.<project>``: each project's deployed model over its relation's current rows.

For every project whose deployed model was trained on a relation with a primary key, the view
has the key columns, ``prediction`` and ``model_id``. Rows are scored when the view is read, a
vector at a time, and a filter on the key is applied before scoring: a postgres_fdw scan with
``WHERE id = 42`` scores one row. Views follow deployments: they are rebuilt when one changes.
"""

from __future__ import annotations

import logging

import duckdb

from mirror.duckdb_sql import quote, transaction
from mirror.errors import SidecarError
from mirror.registry import project_slug
from trainer.snapshots import find_relation
from trainer.train import Trainer

SCHEMA = "pgml_scores"
log = logging.getLogger("pgml_sidecar")


def refresh(con: duckdb.DuckDBPyConnection, trainer: Trainer) -> list[str]:
    """Rebuild the views for the deployments now in the registry; return their names."""
    made: list[str] = []
    with transaction(con) as cursor:
        cursor.execute(f"create schema if not exists {SCHEMA}")
        old = cursor.execute(
            "select view_name from duckdb_views() where schema_name = ?", [SCHEMA]
        ).fetchall()
        for (name,) in old:
            cursor.execute(f"drop view {SCHEMA}.{quote(name)}")
        for name, model_id in cursor.execute(
            "select name, model_id from pgml.deployed_models order by name"
        ).fetchall():
            sql = _view(cursor, trainer, name, int(model_id))
            if sql is not None:
                cursor.execute(sql)
                made.append(f"{SCHEMA}.{project_slug(name)}")
    return made


def _view(
    cursor: duckdb.DuckDBPyConnection, trainer: Trainer, project: str, model_id: int
) -> str | None:
    record = trainer.registry.model(model_id)
    snapshot = trainer.registry.snapshot(record.snapshot_id) if record else None
    if record is None or snapshot is None:
        return None
    try:
        relation = find_relation(cursor, snapshot.relation_name)
        _, model = trainer.model(model_id)
    except SidecarError as exc:
        log.warning("no pgml_scores view for %s: %s", project, exc)
        return None
    if not relation.key:
        return None
    columns = model.preprocessor.columns
    if any(c.kind == "text" for c in columns):
        function = "pgml_predict_text"
        features = ", ".join(f"cast({quote(c.name)} as varchar)" for c in columns)
        array = f"[{features}]::varchar[]"
    else:
        function = "pgml_predict"
        parts = [
            f"cast({quote(c.name)} as double[])" if c.kind == "array"
            else f"[cast({quote(c.name)} as double)]"
            for c in columns
        ]  # fmt: skip
        array = parts[0]
        for part in parts[1:]:
            array = f"list_concat({array}, {part})"
    keys = ", ".join(quote(k) for k in relation.key)
    return (
        f"create view {SCHEMA}.{quote(project_slug(project))} as select {keys},"
        f" {function}('{model_id}', {array}) as prediction, {model_id}::bigint as model_id"
        f" from {relation.qualified}"
    )
