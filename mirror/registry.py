"""The model registry: projects, snapshots, models and deployments, in the mirror's schema ``pgml``.

The tables and views are shaped like PostgresML's, so its queries work unchanged
(``select * from pgml.deployed_models``, ``metrics->>'f1'``). Ids come from sequences and only
grow; the latest deployment of a project (highest id) is the deployed model.

- ``projects``: one row per project name, with its task; no two names give one table name
  (:func:`project_slug`), so each project's ``pgml_scores`` table and view are its own.
- ``snapshots``: the rows a training used, as a Parquet file in the artifact directory
  (``path`` relative to it, ``sha256``), with the relation, label, split (``test_size``,
  ``test_sampling``, ``seed``), row count, per-column statistics and the mirror's source
  positions when it was taken.
- ``models``: one row per trained model: algorithm, hyperparameters, metrics, search settings
  and results, and its artifact file with ``sha256``; ``notes`` (the sidecar's own) says how
  each column was used, which were left out of the features and why, the trivial model's
  score, and the notices the training gave.
- ``deployments``: one row per deployment (strategy ``new_score``, ``most_recent``,
  ``best_score``, ``rollback`` or ``specific``).
- ``drift_events``: each drift a monitor detected (detector, feature, statistic, threshold),
  once, at the row that set it off: ``lsn``, the mirror commit that brought the row, and
  ``rows_since_deployment``, the rows the detector had seen since the model was deployed.
- ``project_settings``: a project's retraining schedule (cron) and whether drift retrains it.
- ``progress``: an online model's progressive metrics as it learns, with the source position:
  a row per checkpoint (``checkpoint``), and one row kept current in between.
- ``challenges``: each retrain on drift (or deployment by ``best_recent_score``): champion and
  challenger scored on the same recent rows, both scores, and whether the challenger won.
- ``pending_challenges``: a challenger retrained on drift and not judged yet, so that a restart
  goes on waiting for its recent rows instead of forgetting it.

A deployed model that fails as it is watched (it cannot be loaded, learn, predict or be
checkpointed) gets ``status`` failed and the reason in ``failure``.

Rows are written only for trainings that succeeded, in one transaction, so a failed request
leaves nothing behind.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

import duckdb

from mirror.changes import parse_lsn
from mirror.errors import TrainingError

SCHEMA = "pgml"
T = TypeVar("T")

_DDL = """
create schema if not exists pgml;
create sequence if not exists pgml.projects_id_seq;
create sequence if not exists pgml.snapshots_id_seq;
create sequence if not exists pgml.models_id_seq;
create sequence if not exists pgml.deployments_id_seq;
create table if not exists pgml.projects (
    id bigint primary key default nextval('pgml.projects_id_seq'),
    name varchar not null unique,
    task varchar not null,
    created_at timestamptz not null default current_timestamp,
    updated_at timestamptz not null default current_timestamp
);
create table if not exists pgml.snapshots (
    id bigint primary key default nextval('pgml.snapshots_id_seq'),
    relation_name varchar not null,
    y_column_name varchar[],
    test_size double not null,
    test_sampling varchar not null,
    seed bigint not null,
    status varchar not null default 'successful',
    num_rows bigint not null,
    columns json,
    analysis json,
    source_position json,
    path varchar not null,
    sha256 varchar not null,
    materialized boolean not null default true,
    created_at timestamptz not null default current_timestamp,
    updated_at timestamptz not null default current_timestamp
);
create table if not exists pgml.models (
    id bigint primary key default nextval('pgml.models_id_seq'),
    project_id bigint not null,
    snapshot_id bigint not null,
    num_features integer,
    algorithm varchar not null,
    runtime varchar not null default 'python',
    hyperparams json,
    status varchar not null default 'successful',
    failure varchar,
    metrics json,
    search varchar,
    search_params json,
    search_args json,
    search_results json,
    preprocess json,
    notes json,
    path varchar not null,
    sha256 varchar not null,
    created_at timestamptz not null default current_timestamp,
    updated_at timestamptz not null default current_timestamp
);
alter table pgml.models add column if not exists notes json;
create table if not exists pgml.deployments (
    id bigint primary key default nextval('pgml.deployments_id_seq'),
    project_id bigint not null,
    model_id bigint not null,
    strategy varchar not null,
    created_at timestamptz not null default current_timestamp
);
create sequence if not exists pgml.drift_events_id_seq;
create table if not exists pgml.drift_events (
    id bigint primary key default nextval('pgml.drift_events_id_seq'),
    project_id bigint not null,
    project varchar,
    model_id bigint not null,
    detector varchar not null,
    feature varchar,
    statistic double not null,
    threshold double not null,
    detected_at timestamptz not null default current_timestamp,
    lsn varchar,
    rows_since_deployment bigint
);
create table if not exists pgml.project_settings (
    project_id bigint primary key,
    schedule varchar,
    schedule_set_at timestamptz,
    last_scheduled_run timestamptz,
    retrain_on_drift boolean not null default false
);
create sequence if not exists pgml.progress_id_seq;
create table if not exists pgml.progress (
    id bigint primary key default nextval('pgml.progress_id_seq'),
    model_id bigint not null,
    rows_learned bigint not null,
    metrics json,
    source_position json,
    recorded_at timestamptz not null default current_timestamp,
    checkpoint boolean default true
);
create sequence if not exists pgml.challenges_id_seq;
create table if not exists pgml.challenges (
    id bigint primary key default nextval('pgml.challenges_id_seq'),
    project_id bigint not null,
    champion_id bigint,
    challenger_id bigint not null,
    reason varchar not null,
    after_lsn varchar,
    num_rows bigint not null,
    metric varchar not null,
    champion_score double,
    challenger_score double,
    champion_metrics json,
    challenger_metrics json,
    deployed boolean not null,
    decided_at timestamptz not null default current_timestamp
);
create table if not exists pgml.pending_challenges (
    project_id bigint primary key,
    challenger_id bigint not null,
    reason varchar not null,
    after_lsn varchar,
    trained_at timestamptz not null default current_timestamp
);
create or replace view pgml.deployed_models as
select p.id, p.name, p.task, m.algorithm, m.runtime, d.created_at as deployed_at, m.id as model_id
from pgml.projects p
join (
    select distinct on (project_id) project_id, model_id, created_at
    from pgml.deployments order by project_id, id desc
) d on d.project_id = p.id
join pgml.models m on m.id = d.model_id
order by p.name;
create or replace view pgml.trained_models as
select m.id, p.name, p.task, m.algorithm, m.runtime, s.relation_name, s.y_column_name,
    s.test_sampling, s.test_size, m.metrics, m.created_at, d.model_id is not null as deployed
from pgml.projects p
join pgml.models m on m.project_id = p.id
join pgml.snapshots s on s.id = m.snapshot_id
left join (
    select distinct on (project_id) project_id, model_id
    from pgml.deployments order by project_id, id desc
) d on d.model_id = m.id
order by m.id desc;
create or replace view pgml.overview as
select p.name, d.created_at as deployed_at, p.task, m.algorithm, m.runtime, s.relation_name,
    s.y_column_name, s.test_sampling, s.test_size
from pgml.projects p
join (
    select distinct on (project_id) project_id, model_id, created_at
    from pgml.deployments order by project_id, id desc
) d on d.project_id = p.id
join pgml.models m on m.id = d.model_id
join pgml.snapshots s on s.id = m.snapshot_id
order by d.created_at desc;
"""

_MIGRATIONS = """
alter table pgml.drift_events add column if not exists lsn varchar;
alter table pgml.drift_events add column if not exists rows_since_deployment bigint;
alter table pgml.models add column if not exists failure varchar;
alter table pgml.progress add column if not exists checkpoint boolean default true;
"""
"""Columns added since the tables were first made: a mirror file from an earlier version gets
them when it is opened (its progress rows were all checkpoints)."""


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    name: str
    task: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: int
    relation_name: str
    y_column_name: list[str]
    test_size: float
    test_sampling: str
    seed: int
    num_rows: int
    columns: list[dict[str, Any]]
    source_position: dict[str, str]
    path: str
    sha256: str
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ModelRecord:
    id: int
    project_id: int
    snapshot_id: int
    algorithm: str
    hyperparams: dict[str, Any]
    metrics: dict[str, float]
    num_features: int
    path: str
    sha256: str
    search: str | None = None
    search_params: dict[str, Any] = field(default_factory=dict)
    search_args: dict[str, Any] = field(default_factory=dict)
    search_results: list[dict[str, Any]] = field(default_factory=list)
    preprocess: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    status: str = "successful"
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PendingChallenge:
    """A model retrained on drift, waiting for recent rows (changed after ``after_lsn``) to be
    judged on against the deployed one; kept across restarts."""

    project_id: int
    challenger_id: int
    reason: str
    after_lsn: str | None
    trained_at: datetime


@dataclass(frozen=True, slots=True)
class Challenge:
    """A champion and a challenger scored on the same ``num_rows`` recent rows (changed after
    ``after_lsn``); ``deployed`` when the challenger won on ``metric``."""

    project_id: int
    champion_id: int | None
    challenger_id: int
    reason: str
    after_lsn: str | None
    num_rows: int
    metric: str
    champion_metrics: dict[str, float]
    challenger_metrics: dict[str, float]
    deployed: bool


@dataclass(frozen=True, slots=True)
class Deployment:
    id: int
    project_id: int
    model_id: int
    strategy: str
    created_at: datetime


_MODEL_COLUMNS = (
    "id, project_id, snapshot_id, algorithm, hyperparams, metrics, num_features, path, sha256,"
    " search, search_params, search_args, search_results, preprocess, status, created_at, notes"
)
_SNAPSHOT_COLUMNS = (
    "id, relation_name, y_column_name, test_size, test_sampling, seed, num_rows, columns,"
    " source_position, path, sha256, created_at"
)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _model(row: tuple[Any, ...]) -> ModelRecord:
    (id_, project_id, snapshot_id, algorithm, hyperparams, metrics, num_features, path, sha) = row[
        :9
    ]
    search, search_params, search_args, search_results, preprocess, status, created_at = row[9:16]
    notes = row[16]
    return ModelRecord(
        id=id_,
        project_id=project_id,
        snapshot_id=snapshot_id,
        algorithm=algorithm,
        hyperparams=_json(hyperparams) or {},
        metrics=_json(metrics) or {},
        num_features=num_features or 0,
        path=path,
        sha256=sha,
        search=search,
        search_params=_json(search_params) or {},
        search_args=_json(search_args) or {},
        search_results=_json(search_results) or [],
        preprocess=_json(preprocess) or {},
        notes=_json(notes) or {},
        status=status,
        created_at=created_at,
    )


def _snapshot(row: tuple[Any, ...]) -> Snapshot:
    id_, relation, y, test_size, sampling, seed, rows, columns, position, path, sha, created = row
    return Snapshot(
        id=id_,
        relation_name=relation,
        y_column_name=list(y or []),
        test_size=test_size,
        test_sampling=sampling,
        seed=seed,
        num_rows=rows,
        columns=_json(columns) or [],
        source_position=_json(position) or {},
        path=path,
        sha256=sha,
        created_at=created,
    )


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    """Run a registry method alone: the registry's cursor serves every thread of the process."""

    @functools.wraps(method)
    def run(self: Registry, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class Registry:
    """Reads and writes the registry tables through a cursor of its own, one thread at a time."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con.cursor()
        self._depth = 0
        self._lock = threading.RLock()
        self.con.execute(_DDL)
        self.con.execute(_MIGRATIONS)

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit everything written inside at once, or nothing if it raises."""
        with self._lock:
            yield from self._transaction()

    def _transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.con.execute("begin")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.con.execute("rollback")
            raise
        else:
            self.con.execute("commit")
        finally:
            self._depth = 0

    # -- projects ------------------------------------------------------------------------------

    @_locked
    def project(self, name: str) -> Project | None:
        row = self.con.execute(
            "select id, name, task, created_at from pgml.projects where name = ?", [name]
        ).fetchone()
        return None if row is None else Project(*row)

    @_locked
    def project_by_id(self, project_id: int) -> Project:
        row = self.con.execute(
            "select id, name, task, created_at from pgml.projects where id = ?", [project_id]
        ).fetchone()
        assert row is not None, f"project {project_id} is referenced but missing"
        return Project(*row)

    @_locked
    def slug_owners(self) -> dict[str, Project]:
        """Each table name in use (:func:`project_slug`) and the project it belongs to: the
        oldest whose name gives it (a registry from an older version may hold several)."""
        owners: dict[str, Project] = {}
        for row in self.con.execute(
            "select id, name, task, created_at from pgml.projects order by id"
        ).fetchall():
            owners.setdefault(project_slug(row[1]), Project(*row))
        return owners

    def slug_owner(self, name: str) -> Project | None:
        """The project the table name of ``name`` belongs to, if any (``name`` itself or not)."""
        return self.slug_owners().get(project_slug(name))

    @_locked
    def add_project(self, name: str, task: str) -> Project:
        """Register a new project; refused if its table name is another project's."""
        owner = self.slug_owner(name)
        if owner is not None:
            raise name_collision(name, owner.name)
        row = self.con.execute(
            "insert into pgml.projects (name, task) values (?, ?)"
            " returning id, name, task, created_at",
            [name, task],
        ).fetchone()
        assert row is not None
        return Project(*row)

    @_locked
    def touch_project(self, project_id: int) -> None:
        self.con.execute(
            "update pgml.projects set updated_at = current_timestamp where id = ?", [project_id]
        )

    @_locked
    def projects(self) -> list[Project]:
        rows = self.con.execute(
            "select id, name, task, created_at from pgml.projects order by name"
        ).fetchall()
        return [Project(*r) for r in rows]

    # -- snapshots -----------------------------------------------------------------------------

    @_locked
    def snapshot(self, snapshot_id: int) -> Snapshot | None:
        row = self.con.execute(
            f"select {_SNAPSHOT_COLUMNS} from pgml.snapshots where id = ?", [snapshot_id]
        ).fetchone()
        return None if row is None else _snapshot(row)

    @_locked
    def last_snapshot(self, project_id: int) -> Snapshot | None:
        """The snapshot of the project's most recent model."""
        row = self.con.execute(
            f"select {_SNAPSHOT_COLUMNS} from pgml.snapshots where id = ("
            " select snapshot_id from pgml.models where project_id = ? order by id desc limit 1)",
            [project_id],
        ).fetchone()
        return None if row is None else _snapshot(row)

    @_locked
    def add_snapshot(self, snapshot: Snapshot) -> Snapshot:
        """Insert ``snapshot`` (its id is ignored) and return it with the id it got."""
        row = self.con.execute(
            "insert into pgml.snapshots (relation_name, y_column_name, test_size, test_sampling,"
            " seed, num_rows, columns, analysis, source_position, path, sha256)"
            " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) returning id, created_at",
            [
                snapshot.relation_name,
                snapshot.y_column_name,
                snapshot.test_size,
                snapshot.test_sampling,
                snapshot.seed,
                snapshot.num_rows,
                json.dumps(snapshot.columns),
                json.dumps({"num_rows": snapshot.num_rows}),
                json.dumps(snapshot.source_position),
                snapshot.path,
                snapshot.sha256,
            ],
        ).fetchone()
        assert row is not None
        return replace(snapshot, id=row[0], created_at=row[1])

    @_locked
    def artifact_paths(self) -> set[str]:
        """Every snapshot and model file the registry names (relative to the artifact home)."""
        rows = self.con.execute(
            "select path from pgml.snapshots union all select path from pgml.models"
        ).fetchall()
        return {r[0] for r in rows}

    # -- models --------------------------------------------------------------------------------

    @_locked
    def model(self, model_id: int) -> ModelRecord | None:
        row = self.con.execute(
            f"select {_MODEL_COLUMNS} from pgml.models where id = ?", [model_id]
        ).fetchone()
        return None if row is None else _model(row)

    @_locked
    def models(self, project_id: int, *, algorithm: str | None = None) -> list[ModelRecord]:
        """The project's models, oldest first."""
        sql = f"select {_MODEL_COLUMNS} from pgml.models where project_id = ?"
        params: list[Any] = [project_id]
        if algorithm is not None:
            sql += " and algorithm = ?"
            params.append(algorithm)
        return [_model(r) for r in self.con.execute(sql + " order by id", params).fetchall()]

    @_locked
    def add_model(self, model: ModelRecord) -> ModelRecord:
        """Insert ``model`` (its id is ignored) and return it with the id it got."""
        row = self.con.execute(
            "insert into pgml.models (project_id, snapshot_id, num_features, algorithm,"
            " hyperparams, status, metrics, search, search_params, search_args, search_results,"
            " preprocess, notes, path, sha256)"
            " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " returning id, created_at",
            [
                model.project_id,
                model.snapshot_id,
                model.num_features,
                model.algorithm,
                json.dumps(model.hyperparams),
                model.status,
                json.dumps(model.metrics),
                model.search,
                json.dumps(model.search_params),
                json.dumps(model.search_args),
                json.dumps(model.search_results),
                json.dumps(model.preprocess),
                json.dumps(model.notes),
                model.path,
                model.sha256,
            ],
        ).fetchone()
        assert row is not None
        return replace(model, id=row[0], created_at=row[1])

    @_locked
    def update_model_file(self, model_id: int, path: str, sha256: str) -> None:
        """Point a model at a newer artifact (an online model's checkpoint)."""
        self.con.execute(
            "update pgml.models set path = ?, sha256 = ?, updated_at = current_timestamp"
            " where id = ?",
            [path, sha256, model_id],
        )

    # -- drift, schedules and progress ------------------------------------------------------------

    @_locked
    def add_drift_event(
        self, project_id: int, model_id: int, detector: str, feature: str | None,
        statistic: float, threshold: float, *, lsn: str | None = None,
        rows_since_deployment: int | None = None,
    ) -> int | None:  # fmt: skip
        """Record a detection; None (and nothing written) if the model's detector already
        reported one at that row (a replay detecting again what was recorded)."""
        if rows_since_deployment is not None:
            seen = self.con.execute(
                "select 1 from pgml.drift_events where model_id = ? and detector = ?"
                " and feature is not distinct from ? and rows_since_deployment = ?",
                [model_id, detector, feature, rows_since_deployment],
            ).fetchone()
            if seen is not None:
                return None
        row = self.con.execute(
            "insert into pgml.drift_events (project_id, project, model_id, detector, feature,"
            " statistic, threshold, lsn, rows_since_deployment) select ?, name, ?, ?, ?, ?, ?,"
            " ?, ? from pgml.projects where id = ? returning id",
            [project_id, model_id, detector, feature, statistic, threshold, lsn,
             rows_since_deployment, project_id],
        ).fetchone()  # fmt: skip
        assert row is not None
        return int(row[0])

    @_locked
    def settings(self, project_id: int) -> dict[str, Any]:
        row = self.con.execute(
            "select schedule, schedule_set_at, last_scheduled_run, retrain_on_drift"
            " from pgml.project_settings where project_id = ?",
            [project_id],
        ).fetchone()
        names = ("schedule", "schedule_set_at", "last_scheduled_run", "retrain_on_drift")
        return dict(zip(names, row or (None, None, None, False), strict=True))

    @_locked
    def update_settings(self, project_id: int, **values: Any) -> None:
        """Set some of a project's settings (schedule, retrain_on_drift, ...), keep the rest."""
        self.con.execute(
            "insert into pgml.project_settings (project_id) values (?) on conflict do nothing",
            [project_id],
        )
        for name, value in values.items():
            assert name in _SETTINGS, name
            self.con.execute(
                f"update pgml.project_settings set {name} = ? where project_id = ?",
                [value, project_id],
            )

    @_locked
    def add_progress(
        self, model_id: int, rows: int, metrics: dict[str, float], position: dict[str, str]
    ) -> None:
        """Record a checkpoint's progress (the row a restart resumes from)."""
        self.con.execute(
            "insert into pgml.progress (model_id, rows_learned, metrics, source_position,"
            " checkpoint) values (?, ?, ?, ?, true)",
            [model_id, rows, json.dumps(metrics), json.dumps(position)],
        )

    @_locked
    def set_current_progress(
        self, model_id: int, rows: int, metrics: dict[str, float], position: dict[str, str]
    ) -> None:
        """Keep the model's one row of current progress (between checkpoints) up to date."""
        values = [rows, json.dumps(metrics), json.dumps(position), model_id]
        updated = self.con.execute(
            "update pgml.progress set rows_learned = ?, metrics = ?, source_position = ?,"
            " recorded_at = current_timestamp where model_id = ? and not checkpoint"
            " returning id",
            values,
        ).fetchall()
        if not updated:
            self.con.execute(
                "insert into pgml.progress (rows_learned, metrics, source_position, model_id,"
                " checkpoint) values (?, ?, ?, ?, false)",
                values,
            )

    @_locked
    def learned_position(self, model_id: int) -> int | None:
        """The mirror position an online model's last checkpoint had learned up to."""
        row = self.con.execute(
            "select source_position->>'mirror' from pgml.progress where model_id = ?"
            " and checkpoint order by id desc limit 1",
            [model_id],
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return parse_lsn(str(row[0]))

    # -- failures and challenges ---------------------------------------------------------------

    @_locked
    def mark_failed(self, model_id: int, reason: str) -> None:
        """Set a model's status to failed, with the reason."""
        self.con.execute(
            "update pgml.models set status = 'failed', failure = ?,"
            " updated_at = current_timestamp where id = ?",
            [reason, model_id],
        )

    @_locked
    def failures(self) -> dict[int, str]:
        """Every failed model's reason, by model id."""
        rows = self.con.execute(
            "select id, coalesce(failure, 'failed') from pgml.models where status = 'failed'"
        ).fetchall()
        return {int(i): str(r) for i, r in rows}

    @_locked
    def add_challenge(self, challenge: Challenge) -> int:
        """Record champion and challenger scored on the same recent rows."""
        c = challenge
        row = self.con.execute(
            "insert into pgml.challenges (project_id, champion_id, challenger_id, reason,"
            " after_lsn, num_rows, metric, champion_score, challenger_score, champion_metrics,"
            " challenger_metrics, deployed) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " returning id",
            [c.project_id, c.champion_id, c.challenger_id, c.reason, c.after_lsn, c.num_rows,
             c.metric, c.champion_metrics.get(c.metric), c.challenger_metrics.get(c.metric),
             json.dumps(c.champion_metrics), json.dumps(c.challenger_metrics), c.deployed],
        ).fetchone()  # fmt: skip
        assert row is not None
        return int(row[0])

    @_locked
    def add_pending_challenge(
        self, project_id: int, challenger_id: int, reason: str, after_lsn: str | None
    ) -> None:
        """Record a challenger waiting for recent rows to be judged on (one per project)."""
        self.con.execute(
            "insert or replace into pgml.pending_challenges (project_id, challenger_id, reason,"
            " after_lsn) values (?, ?, ?, ?)",
            [project_id, challenger_id, reason, after_lsn],
        )

    @_locked
    def drop_pending_challenge(self, project_id: int) -> None:
        """The project's challenger was judged (or is no longer waiting)."""
        self.con.execute("delete from pgml.pending_challenges where project_id = ?", [project_id])

    @_locked
    def pending_challenges(self) -> list[PendingChallenge]:
        """Every challenger waiting to be judged, oldest first."""
        rows = self.con.execute(
            "select project_id, challenger_id, reason, after_lsn, trained_at"
            " from pgml.pending_challenges order by trained_at, project_id"
        ).fetchall()
        return [PendingChallenge(*row) for row in rows]

    @_locked
    def challenges(self, project_id: int) -> list[Challenge]:
        """The project's challenges, oldest first."""
        rows = self.con.execute(
            "select project_id, champion_id, challenger_id, reason, after_lsn, num_rows, metric,"
            " champion_metrics, challenger_metrics, deployed from pgml.challenges"
            " where project_id = ? order by id",
            [project_id],
        ).fetchall()
        return [
            Challenge(p, champion, challenger, reason, after, n, metric, _json(a) or {},
                      _json(b) or {}, deployed)
            for p, champion, challenger, reason, after, n, metric, a, b, deployed in rows
        ]  # fmt: skip

    # -- deployments ---------------------------------------------------------------------------

    @_locked
    def deployments(self, project_id: int) -> list[Deployment]:
        """The project's deployments, oldest first."""
        rows = self.con.execute(
            "select id, project_id, model_id, strategy, created_at from pgml.deployments"
            " where project_id = ? order by id",
            [project_id],
        ).fetchall()
        return [Deployment(*r) for r in rows]

    @_locked
    def deployed(self, project_id: int) -> ModelRecord | None:
        """The model deployed for the project now, if any."""
        row = self.con.execute(
            f"select {_MODEL_COLUMNS} from pgml.models where id = ("
            " select model_id from pgml.deployments where project_id = ? order by id desc limit 1)",
            [project_id],
        ).fetchone()
        return None if row is None else _model(row)

    @_locked
    def add_deployment(self, project_id: int, model_id: int, strategy: str) -> Deployment:
        row = self.con.execute(
            "insert into pgml.deployments (project_id, model_id, strategy) values (?, ?, ?)"
            " returning id, project_id, model_id, strategy, created_at",
            [project_id, model_id, strategy],
        ).fetchone()
        assert row is not None
        return Deployment(*row)


_SETTINGS = ("schedule", "schedule_set_at", "last_scheduled_run", "retrain_on_drift")


NAME_BYTES = 63
"""PostgreSQL's identifier limit (NAMEDATALEN - 1): longer table names are cut there."""


def project_slug(name: str) -> str:
    """A project name as a table name: lower case, runs of other characters become ``_``, cut
    where PostgreSQL cuts identifiers (so the name in the source is the name used here)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower())[:NAME_BYTES]


def name_collision(name: str, other: str) -> TrainingError:
    """The error for a new project ``name`` whose table name is ``other``'s already."""
    return TrainingError(
        f'project "{name}" would share its table name pgml_scores.{project_slug(name)} with'
        f' project "{other}": choose a name that differs in more than case and punctuation',
        sqlstate="42710",
    )
