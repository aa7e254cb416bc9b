"""The training engine: PostgresML's train, deploy and snapshot over the mirror.

Callers (the CLI, the SQL endpoint, the daemon) hold a :class:`Trainer` on the mirror's DuckDB
connection. ``train`` checks the whole request before doing any work, materialises a snapshot,
fits in a worker process and then registers project, snapshot, model and deployment in one
transaction, so a request that fails leaves no registry row and no file behind. Every training
has a time limit (the trainer's, one hour unless set, which a request may lower): past it the
fit's process is killed and the training fails with SQLSTATE 57014. The trainer
also keeps each project's retraining settings (``pgml.schedule``, ``pgml.retrain_on_drift``)
and serves the online models that keep learning in this process (``live``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from mirror.errors import SidecarError, TrainingError
from mirror.registry import ModelRecord, Project, Registry, Snapshot, name_collision
from trainer import algorithms, column_roles
from trainer.challenge import RECENT_STRATEGY, RecentRows, compare
from trainer.deploy import beats, choose, deployment_stack
from trainer.fit import SEARCHES, FitJob, FitResult
from trainer.model import Model, load_model
from trainer.preprocess_options import parse_preprocess
from trainer.snapshots import (
    RelationColumns,
    check_columns,
    find_relation,
    is_numeric,
    remove_orphans,
)
from trainer.snapshots import take_snapshot as materialise
from trainer.split import SAMPLINGS
from trainer.worker import FitTimeLimit, FitWorker

log = logging.getLogger("pgml_sidecar")

DEFAULT_TEST_SIZE = 0.25
DEFAULT_TEST_SAMPLING = "stratified"
DEFAULT_SEED = 0
DEFAULT_TIME_LIMIT_S = 3600.0
"""A training that runs longer is stopped: the default of the sidecar's training_time_limit."""
_UNSUPERVISED = ("clustering", "decomposition")
_NO_ROWS = pa.table({})


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What ``pgml.train`` returns (project, task, algorithm, deployed), and more."""

    project: str
    task: str
    algorithm: str
    deployed: bool
    model_id: int
    snapshot_id: int
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    """What the user should know: columns left out of the features and why, a model that
    scores no better than the trivial one (also in the registry: ``pgml.models.notes``)."""


@dataclass(frozen=True, slots=True)
class DeployResult:
    """What ``pgml.deploy`` returns (project, strategy, algorithm), and the model deployed."""

    project: str
    strategy: str
    algorithm: str
    model_id: int
    changed: bool


def artifact_home(mirror_path: str | Path) -> Path:
    """The directory beside a mirror file that holds its snapshots and model files."""
    return Path(mirror_path).with_suffix(".pgml")


def json_object(name: str, value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """A JSON object argument given as a mapping or as JSON text."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise TrainingError(f"{name} must be a JSON object such as {{}}, not {value!r}")
    return dict(value)


class Trainer:
    """Trains, registers and deploys models for one mirror."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        home: Path,
        *,
        worker: FitWorker | None = None,
        time_limit: float = DEFAULT_TIME_LIMIT_S,
    ) -> None:
        self.con = con
        self.home = Path(home)
        self.registry = Registry(con)
        self.worker = worker or FitWorker()
        self._owns_worker = worker is None
        self.time_limit = _checked_limit(time_limit)
        """The longest a training may run, in seconds (0: no limit); a request may ask for
        less, never for more."""
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self.on_trained: Callable[[str, str, dict[str, float]], None] | None = None
        """Called after every training with (project, "successful" or "failed", metrics)."""
        self.before_snapshot: Callable[[str, str], None] | None = None
        """Called with (schema, table) before an online model's snapshot: from then on its
        changes are kept for it to learn once it is deployed."""
        self.live: dict[int, Model] = {}
        """Models that keep learning in this process, by id: used instead of their files."""
        self.generation = 0
        """Bumped at every deployment, so a cache of deployed models knows to look again."""
        self.recent_rows: RecentRows | None = None
        """The monitor's recent labelled rows, for the ``best_recent_score`` strategy."""
        self.settings_generation = 0
        """Bumped when a schedule or the retrain-on-drift setting of a project changes."""
        remove_orphans(self.home, self.registry.artifact_paths())

    def close(self) -> None:
        if self._owns_worker:
            self.worker.close()
        self.registry.close()

    # -- training ------------------------------------------------------------------------------

    def train(
        self,
        project: str,
        *,
        task: str | None = None,
        relation: str | None = None,
        y: str | Sequence[str] | None = None,
        algorithm: str | None = None,
        hyperparams: Mapping[str, Any] | str | None = None,
        search: str | None = None,
        search_params: Mapping[str, Any] | str | None = None,
        search_args: Mapping[str, Any] | str | None = None,
        test_size: float | None = None,
        test_sampling: str | None = None,
        preprocess: Mapping[str, Any] | str | None = None,
        automatic_deploy: bool = True,
        seed: int | None = None,
        time_limit: float | None = None,
        found: RelationColumns | None = None,
    ) -> TrainResult:
        """Train a model for ``project``; deploy it if it beats the deployed one.

        The first training of a project needs ``task``, ``relation`` and (except for
        clustering and decomposition) ``y``; later ones without ``relation`` reuse the
        project's last snapshot and its split, and, unless given, its last model's
        ``preprocess``, as PostgresML keeps it with the snapshot (the algorithm,
        hyperparameters and search are the call's, as there). ``time_limit`` (seconds; None
        or 0: the trainer's) may lower the trainer's limit, never raise it. ``found``: what
        ``relation`` names when it is not the mirror's (an endpoint user's workspace).
        """
        if not project:
            raise TrainingError("project name is empty")
        limit = self.effective_time_limit(time_limit)
        with self._training(project):
            try:
                result = self._train(
                    project,
                    task=task,
                    relation=relation,
                    y=_labels(y),
                    algorithm=algorithm or None,
                    hyperparams=json_object("hyperparams", hyperparams),
                    search=search or None,
                    search_params=json_object("search_params", search_params),
                    search_args=json_object("search_args", search_args),
                    test_size=test_size,
                    test_sampling=test_sampling,
                    preprocess=json_object("preprocess", preprocess),
                    automatic_deploy=automatic_deploy,
                    seed=seed,
                    time_limit=limit,
                    found=found,
                )
            except SidecarError:
                if self.on_trained is not None:
                    self.on_trained(project, "failed", {})
                raise
            if self.on_trained is not None:
                self.on_trained(project, "successful", result.metrics)
            return result

    def effective_time_limit(self, requested: float | None) -> float:
        """The limit a training asking for ``requested`` seconds gets: the lower of it and the
        trainer's (0 and None ask for the trainer's; 0 back: no limit)."""
        requested = _checked_limit(requested or 0.0)
        if not requested:
            return self.time_limit
        return min(requested, self.time_limit) if self.time_limit else requested

    def _over_time(self, project: str, limit: float) -> TrainingError:
        if limit < self.time_limit or not self.time_limit:
            advice = "raise pgml.training_time_limit"
        else:  # the most this sidecar allows
            advice = "raise the sidecar's training_time_limit (the most a training may ask for)"
        return TrainingError(
            f"canceling training of project {project!r}: it ran past its time limit of"
            f" {shown_duration(limit)}; {advice} or train on fewer rows / a smaller search",
            sqlstate="57014",
        )

    @contextmanager
    def _training(self, project: str) -> Iterator[None]:
        with self._lock:
            if project in self._busy:
                raise TrainingError(
                    f"project {project!r} is training already; wait for it to finish",
                    sqlstate="55006",
                )
            self._busy.add(project)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(project)

    def _train(
        self,
        name: str,
        *,
        task: str | None,
        relation: str | None,
        y: list[str],
        algorithm: str | None,
        hyperparams: dict[str, Any],
        search: str | None,
        search_params: dict[str, Any],
        search_args: dict[str, Any],
        test_size: float | None,
        test_sampling: str | None,
        preprocess: dict[str, Any],
        automatic_deploy: bool,
        seed: int | None,
        time_limit: float,
        found: RelationColumns | None = None,
    ) -> TrainResult:
        started = time.monotonic()
        project = self.registry.project(name)
        if project is None and (owner := self.registry.slug_owner(name)) is not None:
            raise name_collision(name, owner.name)  # before any work; registering checks again
        task = _task(name, project, task)
        if algorithm is None or (algorithm == "linear" and task in _UNSUPERVISED):
            algorithm = algorithms.default_algorithm(task)  # the source's default is linear
        algorithms.make_estimator(algorithm, task, hyperparams)  # rejects bad names and keys
        if search is not None:
            if search not in SEARCHES:
                raise TrainingError(f"unknown search {search!r}; use one of: {', '.join(SEARCHES)}")
            if task in _UNSUPERVISED:
                raise TrainingError(f"search works for regression and classification, not {task}")
            algorithms.check_search_params(algorithm, task, search_params)
        if test_sampling is not None and test_sampling not in SAMPLINGS:
            raise TrainingError(
                f"unknown test_sampling {test_sampling!r}; use one of: {', '.join(SAMPLINGS)}"
            )

        if len(y) > 1:
            _check_joint(task, algorithm)
        if relation:
            found = found or find_relation(self.con, relation)
            _check_labels(found, task, y)
            parse_preprocess(preprocess, [c for c, _ in found.columns if c not in y])
            if self.before_snapshot is not None and algorithms.is_online(algorithm):
                self.before_snapshot(found.schema, found.name)
            snapshot = materialise(
                self.con,
                found,
                self.home / "snapshots",
                y_columns=y,
                test_size=DEFAULT_TEST_SIZE if test_size is None else test_size,
                test_sampling=test_sampling or DEFAULT_TEST_SAMPLING,
                seed=DEFAULT_SEED if seed is None else seed,
            )
        elif project is None:
            raise TrainingError(
                f"project {name!r} does not exist yet: its first training needs a relation"
                " and a label column (y)",
                sqlstate="42704",
            )
        else:
            last = self.registry.last_snapshot(project.id)
            assert last is not None, f"project {name} has no snapshot"
            snapshot = last
            y = list(snapshot.y_column_name)
            if len(y) > 1:
                _check_joint(task, algorithm)
            if not preprocess:  # PostgresML keeps preprocess with the snapshot it reuses
                preprocess = self._last_preprocess(project.id)
            columns = [c["name"] for c in snapshot.columns]
            parse_preprocess(preprocess, [c for c in columns if c not in y])
        new_snapshot = snapshot.id == 0

        model_path = self.home / "models" / f"{uuid.uuid4().hex}.pickle"
        try:
            if snapshot.num_rows == 0 and not algorithms.is_online(algorithm):
                raise TrainingError(
                    f"relation {snapshot.relation_name} has no rows to train on", sqlstate="22000"
                )
            left = time_limit - (time.monotonic() - started) if time_limit else None
            if left is not None and left <= 0:  # the snapshot took all of it
                raise self._over_time(name, time_limit)
            result = self._fit(
                name,
                time_limit,
                left,
                FitJob(
                    snapshot_path=str(self.home / snapshot.path),
                    model_path=str(model_path),
                    task=task,
                    algorithm=algorithm,
                    labels=y,
                    test_size=snapshot.test_size,
                    test_sampling=snapshot.test_sampling,
                    seed=snapshot.seed,
                    hyperparams=hyperparams,
                    preprocess=preprocess,
                    search=search,
                    search_params=search_params,
                    search_args=search_args,
                    key=self._key_columns(snapshot),
                ),
            )
            return self._register(
                name,
                project,
                task,
                snapshot,
                algorithm,
                result,
                model_path,
                search=search,
                search_params=search_params,
                search_args=search_args,
                preprocess=preprocess,
                automatic_deploy=automatic_deploy,
            )
        except BaseException:
            model_path.unlink(missing_ok=True)
            if new_snapshot:
                (self.home / snapshot.path).unlink(missing_ok=True)
            raise

    def _last_preprocess(self, project_id: int) -> dict[str, Any]:
        """The preprocessing of the project's most recent model (the one whose snapshot a
        training without a relation reuses)."""
        models = self.registry.models(project_id)
        return dict(models[-1].preprocess or {}) if models else {}

    def _key_columns(self, snapshot: Snapshot) -> list[str]:
        """The primary key of the snapshot's relation: recorded with the snapshot, or for a
        snapshot from before that, the mirrored table's if it still has those columns."""
        key = column_roles.key_columns(snapshot.columns)
        if key or any("primary_key" in c for c in snapshot.columns):
            return key
        try:
            relation = find_relation(self.con, snapshot.relation_name)
        except SidecarError:
            return []
        names = {c["name"] for c in snapshot.columns}
        return relation.key if all(k in names for k in relation.key) else []

    def _fit(self, project: str, limit: float, left: float | None, job: FitJob) -> FitResult:
        """Fit ``job`` within the ``left`` seconds of the training's ``limit``."""
        try:
            result = self.worker.run(job, time_limit=left)
            for warning in result.warnings:
                log.warning("%s: %s", job.algorithm, warning)
            for notice in result.notices:
                log.info("%s: %s", project, notice)
            return result
        except FitTimeLimit:
            raise self._over_time(project, limit) from None
        except SidecarError:
            raise
        except Exception as exc:
            raise TrainingError(
                f"training {job.algorithm} failed: {type(exc).__name__}: {exc}", sqlstate="XX000"
            ) from None

    def _register(
        self,
        name: str,
        project: Project | None,
        task: str,
        snapshot: Snapshot,
        algorithm: str,
        result: FitResult,
        model_path: Path,
        *,
        search: str | None,
        search_params: dict[str, Any],
        search_args: dict[str, Any],
        preprocess: dict[str, Any],
        automatic_deploy: bool,
    ) -> TrainResult:
        registry = self.registry
        with registry.transaction():
            if project is None:
                project = registry.add_project(name, task)
            else:
                registry.touch_project(project.id)
            if snapshot.id == 0:
                snapshot = registry.add_snapshot(snapshot)
            model = registry.add_model(
                ModelRecord(
                    id=0,
                    project_id=project.id,
                    snapshot_id=snapshot.id,
                    algorithm=algorithm,
                    hyperparams=result.hyperparams,
                    metrics=result.metrics,
                    num_features=result.num_features,
                    path=str(model_path.relative_to(self.home)),
                    sha256=result.sha256,
                    search=search,
                    search_params=search_params,
                    search_args=search_args,
                    search_results=result.search_results,
                    preprocess=preprocess,
                    notes=result.notes | {"notices": result.notices},
                )
            )
            deployed = automatic_deploy and beats(task, model, registry.deployed(project.id))
            if deployed:
                registry.add_deployment(project.id, model.id, "new_score")
        if deployed:
            self.generation += 1
        return TrainResult(
            project=name,
            task=task,
            algorithm=algorithm,
            deployed=deployed,
            model_id=model.id,
            snapshot_id=snapshot.id,
            metrics=result.metrics,
            timings=result.timings,
            notices=result.notices,
        )

    # -- deployment ----------------------------------------------------------------------------

    def deploy(
        self,
        project: str | None = None,
        *,
        strategy: str | None = None,
        algorithm: str | None = None,
        model_id: int | None = None,
    ) -> DeployResult:
        """Deploy a model of ``project`` chosen by ``strategy``, or the model ``model_id``."""
        if model_id is None and strategy == RECENT_STRATEGY:
            return self._deploy_on_recent_rows(project, algorithm)
        registry = self.registry
        with registry.transaction():
            if model_id is not None:
                model = registry.model(model_id)
                if model is None:
                    raise TrainingError(f"model {model_id} does not exist", sqlstate="42704")
                found = registry.project_by_id(model.project_id)
                strategy = "specific"
            else:
                if not project:
                    raise TrainingError("name a project to deploy, or a model id")
                strategy = strategy or "best_score"
                found = self._project(project)
                if algorithm is not None and not algorithms.supports(algorithm, found.task):
                    algorithms.make_estimator(algorithm, found.task)  # says what is wrong
                model = choose(
                    found.task,
                    strategy,
                    registry.models(found.id, algorithm=algorithm),
                    registry.deployments(found.id),
                    algorithm=algorithm,
                )
            current = registry.deployed(found.id)
            changed = current is None or current.id != model.id
            if changed:
                registry.add_deployment(found.id, model.id, strategy)
        if changed:
            self.generation += 1
        return DeployResult(found.name, strategy, model.algorithm, model.id, changed)

    def _deploy_on_recent_rows(self, project: str | None, algorithm: str | None) -> DeployResult:
        """Deploy the project's model (of ``algorithm``, if given) that scores highest on the
        recent labelled rows the monitor saw, unless the deployed one scores as high; record
        the scores in ``pgml.challenges``."""
        if not project:
            raise TrainingError("name a project to deploy, or a model id")
        found = self._project(project)
        if self.recent_rows is None:
            raise TrainingError(
                f"deployment strategy {RECENT_STRATEGY} scores models on the rows the running"
                " sidecar's monitor sees change: use it through pgml-sidecar run",
                sqlstate="55000",
            )
        rows = self.recent_rows(found.name, 0)
        registry = self.registry
        records = registry.models(found.id, algorithm=algorithm)
        deployed = registry.deployed(found.id)
        champion = self.model(deployed.id) if deployed is not None else None
        others = [self.model(r.id) for r in records if deployed is None or r.id != deployed.id]
        challenge = compare(
            found.task, found.id, champion, others, rows if rows is not None else _NO_ROWS,
            reason=f"pgml.deploy strategy {RECENT_STRATEGY}", after=0,
        )  # fmt: skip
        with registry.transaction():
            registry.add_challenge(challenge)
            if challenge.deployed:
                registry.add_deployment(found.id, challenge.challenger_id, RECENT_STRATEGY)
        if challenge.deployed:
            self.generation += 1
        chosen = challenge.challenger_id if challenge.deployed else challenge.champion_id
        record = registry.model(chosen) if chosen is not None else None
        assert record is not None
        return DeployResult(
            found.name, RECENT_STRATEGY, record.algorithm, record.id, challenge.deployed
        )

    def _project(self, name: str) -> Project:
        project = self.registry.project(name)
        if project is None:
            raise TrainingError(f"project {name!r} does not exist", sqlstate="42704")
        return project

    # -- retraining settings -------------------------------------------------------------------

    def set_schedule(self, project: str, expression: str | None) -> str | None:
        """Retrain ``project`` on a cron schedule (UTC), or never again with None."""
        from trainer.schedule import Schedule

        found = self._project(project)
        if expression is not None:
            Schedule(expression)  # refuses a malformed expression with an example
        now = datetime.now(UTC)
        self.registry.update_settings(
            found.id, schedule=expression, schedule_set_at=now, last_scheduled_run=None
        )
        self.settings_generation += 1
        return expression

    def set_retrain_on_drift(self, project: str, enabled: bool = True) -> bool:
        """Retrain ``project`` when its deployed model's inputs or errors drift."""
        found = self._project(project)
        self.registry.update_settings(found.id, retrain_on_drift=bool(enabled))
        self.settings_generation += 1
        return bool(enabled)

    def deployment_history(self, project: str) -> list[int]:
        """The project's deployed model ids, earliest first, as rollback walks them."""
        return deployment_stack(self.registry.deployments(self._project(project).id))

    # -- snapshots and models ------------------------------------------------------------------

    def snapshot(
        self,
        relation: str,
        y: str | None = None,
        *,
        test_size: float = DEFAULT_TEST_SIZE,
        test_sampling: str = DEFAULT_TEST_SAMPLING,
        seed: int = DEFAULT_SEED,
        found: RelationColumns | None = None,
    ) -> Snapshot:
        """Materialise and register a snapshot of ``relation`` (``pgml.snapshot``); ``found``:
        what it names when it is not the mirror's."""
        found = found or find_relation(self.con, relation)
        if y:
            check_columns(found, [y])
        snapshot = materialise(
            self.con,
            found,
            self.home / "snapshots",
            y_columns=[y] if y else [],
            test_size=test_size,
            test_sampling=test_sampling,
            seed=seed,
        )
        try:
            with self.registry.transaction():
                return self.registry.add_snapshot(snapshot)
        except BaseException:
            (self.home / snapshot.path).unlink(missing_ok=True)
            raise

    def model(self, model_id: int) -> tuple[ModelRecord, Model]:
        """A registered model and its loaded artifact (hash checked)."""
        record = self.registry.model(model_id)
        if record is None:
            raise TrainingError(f"model {model_id} does not exist", sqlstate="42704")
        if model_id in self.live:
            return record, self.live[model_id]
        return record, load_model(self.home / record.path, record.sha256)

    def deployed_model(self, project: str) -> tuple[ModelRecord, Model]:
        """The project's deployed model and its loaded artifact."""
        record = self.registry.deployed(self._project(project).id)
        if record is None:
            raise TrainingError(f"project {project!r} has no deployed model", sqlstate="42704")
        return self.model(record.id)


def shown_duration(seconds: float) -> str:
    """Seconds as PostgreSQL shows a setting counted in seconds: ``10min``, ``2h``, ``90s``."""
    whole = round(seconds)
    if whole != seconds or whole <= 0:
        return f"{seconds:g}s"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _checked_limit(seconds: float) -> float:
    if not seconds >= 0:  # NaN too
        raise TrainingError(
            f"a training time limit is a number of seconds, 0 or more, not {seconds!r}",
            sqlstate="22023",
        )
    return float(seconds)


def _labels(y: str | Sequence[str] | None) -> list[str]:
    """The label columns: a name, or several (``pgml.train_joint``'s array)."""
    if y is None or isinstance(y, str):
        return [y] if y else []
    labels = [str(label) for label in y]
    if len(set(labels)) != len(labels):
        raise TrainingError(f"a label column is named twice: {', '.join(labels)}", sqlstate="42701")
    return labels


def _check_joint(task: str, algorithm: str) -> None:
    """Several labels: a joint regression, as PostgresML's train_joint trains."""
    if task != "regression":
        raise TrainingError(
            f"several label columns (a joint model) are for regression, not {task}",
            sqlstate="0A000",
        )
    algorithms.joint_estimator(algorithms.make_estimator(algorithm, task), algorithm)


TASK_ALIASES = {"cluster": "clustering"}
"""Task names PostgresML took in earlier versions."""


def _task(name: str, project: Project | None, task: str | None) -> str:
    task = TASK_ALIASES.get(task or "", task)
    if project is not None:
        if task and task != project.task:
            raise TrainingError(
                f"project {name!r} is a {project.task} project; train it as {project.task}"
                f" or name a new project for {task}"
            )
        return project.task
    if not task:
        raise TrainingError(
            f"project {name!r} does not exist yet: name its task"
            f" ({', '.join(algorithms.TASKS)}), relation and label column",
            sqlstate="42704",
        )
    if task not in algorithms.TASKS:
        raise TrainingError(f"unknown task {task!r}; use one of: {', '.join(algorithms.TASKS)}")
    return task


def _check_labels(relation: RelationColumns, task: str, labels: list[str]) -> None:
    if not labels:
        if task not in _UNSUPERVISED:
            raise TrainingError(
                f"{task} needs a label column (y); the columns of {relation.relation_name} are: "
                + ", ".join(c for c, _ in relation.columns)
            )
        return
    check_columns(relation, labels)
    for y in labels:
        kind = relation.column_type(y) or ""
        if task == "regression" and not is_numeric(kind):
            raise TrainingError(
                f"label column {y!r} is {kind}, not a number; regression needs a numeric label"
                " (for categories use task classification)"
            )
    if len(relation.columns) <= len(labels):
        raise TrainingError(
            f"{relation.relation_name} has no columns besides the label"
            f" {', '.join(repr(y) for y in labels)}"
        )
