"""Views ``pgml_scores.<project>``: each project's deployed model over its relation's current rows.

For every project whose deployed model was trained on a relation with a primary key, the view
has the key columns, ``prediction`` and ``model_id``. Rows are scored when the view is read, a
vector at a time, and a filter on the key is applied before scoring: a postgres_fdw scan with
``WHERE id = 42`` scores one row. Views follow deployments: they are rebuilt when one changes.

A view that cannot be built (its model file is gone, its relation changed) is logged and left
out, and never stops the others or the queries that do not read it. A view name belongs to the
oldest project whose name gives it (:func:`mirror.registry.project_slug`): a registry from an
older version may hold two such projects, and only the first gets a view.
"""

from __future__ import annotations

import logging

import duckdb

from mirror.duckdb_sql import quote
from mirror.errors import SidecarError
from mirror.registry import project_slug
from trainer.snapshots import find_relation
from trainer.train import Trainer

SCHEMA = "pgml_scores"
log = logging.getLogger("pgml_sidecar")


def refresh(con: duckdb.DuckDBPyConnection, trainer: Trainer) -> list[str]:
    """Rebuild the views for the deployments now in the registry; return their names.

    Each view is replaced on its own, so one that fails leaves the others (and the queries
    running meanwhile) alone; views of projects no longer deployed are dropped."""
    cursor = con.cursor()
    made: list[str] = []
    try:
        cursor.execute(f"create schema if not exists {SCHEMA}")
        old = {
            name
            for (name,) in cursor.execute(
                "select view_name from duckdb_views() where database_name = current_database()"
                " and schema_name = ?",
                [SCHEMA],
            ).fetchall()
        }
        for slug, project, model_id in _deployed(cursor, trainer):
            if _replace(cursor, trainer, slug, project, model_id):
                made.append(slug)
        for name in sorted(old - set(made)):
            _drop(cursor, name)
    except duckdb.Error as exc:
        log.warning("cannot refresh the pgml_scores views: %s", exc)
    finally:
        cursor.close()
    return [f"{SCHEMA}.{slug}" for slug in made]


def _deployed(cursor: duckdb.DuckDBPyConnection, trainer: Trainer) -> list[tuple[str, str, int]]:
    """(view name, project, deployed model id) of each deployed project that owns its name."""
    owners = trainer.registry.slug_owners()
    views = []
    for name, model_id in cursor.execute(
        "select name, model_id from pgml.deployed_models order by id"
    ).fetchall():
        slug = project_slug(name)
        owner = owners.get(slug)
        if owner is not None and owner.name != name:
            log.warning(
                "no pgml_scores view for project %r: the name %s belongs to project %r",
                name, slug, owner.name,
            )  # fmt: skip
            continue
        views.append((slug, name, int(model_id)))
    return views


def _replace(
    cursor: duckdb.DuckDBPyConnection, trainer: Trainer, slug: str, project: str, model_id: int
) -> bool:
    """Create or replace one project's view; False (logged) if it cannot be built."""
    try:
        sql = _view(cursor, trainer, project, model_id)
        if sql is not None:
            cursor.execute(sql)
            return True
    except SidecarError as exc:
        log.warning("no pgml_scores view for %s: %s", project, exc)
    except Exception as exc:  # a damaged model or relation must not stop the other views
        log.warning("no pgml_scores view for %s: %s: %s", project, type(exc).__name__, exc)
    return False


def _drop(cursor: duckdb.DuckDBPyConnection, name: str) -> None:
    try:
        cursor.execute(f"drop view if exists {SCHEMA}.{quote(name)}")
    except duckdb.Error as exc:
        log.warning("cannot drop the view %s.%s: %s", SCHEMA, name, exc)


def _view(
    cursor: duckdb.DuckDBPyConnection, trainer: Trainer, project: str, model_id: int
) -> str | None:
    record = trainer.registry.model(model_id)
    snapshot = trainer.registry.snapshot(record.snapshot_id) if record else None
    if record is None or snapshot is None:
        return None
    relation = find_relation(cursor, snapshot.relation_name)
    _, model = trainer.model(model_id)
    if not relation.key:
        return None
    if model.joint:
        raise SidecarError(
            "its model predicts several labels; the view holds one prediction per row",
            sqlstate="0A000",
        )
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
        f"create or replace view {SCHEMA}.{quote(project_slug(project))} as select {keys},"
        f" {function}('{model_id}', {array}) as prediction, {model_id}::bigint as model_id"
        f" from {relation.qualified}"
    )
