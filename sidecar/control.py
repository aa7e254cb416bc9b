"""Requests from the source: ``pgml.train()``, ``pgml.deploy()``, ``pgml.writeback()`` rows.

The source's control table ``pgml.training_requests`` is replicated like any other table. When
a commit touches it, the pending rows the mirror now holds are claimed in the source
(``status = 'running'``, only if still pending, so a request runs once), carried out, and
finished with ``done``, the model id and the training's ``notice`` (columns it left out of the
features and why, a model no better than the trivial one), or ``failed`` and the error. A
training takes every argument of PostgresML's ``pgml.train`` the request row holds (search,
test split, ``preprocess``, ``automatic_deploy``). The sidecar's own updates come back through
the stream as rows that are no longer pending, and are ignored.

Each request is carried out for the role that asked (``requested_by``, stamped by the source's
``pgml.*`` functions), whatever the source checked already: a training needs that role to
SELECT every mirrored column of the relation in the source now; a project belongs to the role
whose training created it, and only that role, its members or members of ``pgml_admin`` may
retrain, write back, schedule or stop it (:mod:`predictor.ownership`). A training on a view of
the source needs SELECT on the view, as in PostgreSQL; its tables are then mirrored and the view
made in the mirror (:mod:`sidecar.view_requests`). A refused request fails with the reason in
its row. Every minute the owners are copied to the source's
``pgml.projects`` and the score tables' grants follow the relations' again
(:mod:`predictor.score_grants`); within a second of any change, the registry is copied to the
source's ``pgml.models``, ``snapshots``, ``deployments`` and ``projects``
(:mod:`predictor.registry_copy`).

A project's requests run one at a time, in id order; two projects' run side by side
(:data:`LANES`). A training runs at most the time its request asked for (``time_limit``: the
session's ``pgml.training_time_limit``) or the sidecar's ``training_time_limit``, the lower;
past it, it fails with SQLSTATE 57014 and the next request runs: no request waits behind
another for longer than that one's limit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import duckdb
import psycopg

from mirror.change_log import Touched
from mirror.changes import Lsn
from mirror.errors import SidecarError
from mirror.registry import project_slug
from predictor import ownership, privileges, score_grants
from predictor.ownership import ProjectOwners
from predictor.registry_copy import RegistryCopy
from predictor.time_settings import TRAINING_TIME_LIMIT
from replicator import views
from sidecar import view_requests
from sidecar.view_requests import AddTables
from trainer import algorithms
from trainer.snapshots import find_relation
from trainer.train import Trainer

log = logging.getLogger("pgml_sidecar")

TABLE = ("pgml", "training_requests")
TRAININGS = ("train", "train_joint")
"""The kinds of request that train a model (pgml.train, pgml.train_joint)."""
MAINTENANCE_S = 60.0
"""How often owners are copied to the source and score tables granted again."""
LANES = 2
"""Projects whose requests are carried out at once (the fit worker's processes)."""


class ControlRequests:
    """Carries out the source's pending training and write-back requests: each project's in
    the order they came, one at a time, and :data:`LANES` projects at once, so a project's
    request never waits behind another project's long training for more than its time limit
    while a lane is free."""

    def __init__(
        self,
        source_dsn: str,
        con: duckdb.DuckDBPyConnection,
        trainer: Trainer,
        *,
        writeback: Callable[[str, bool], None],
        on_finished: Callable[[str, str, dict[str, float]], None] | None = None,
        add_tables: AddTables | None = None,
    ) -> None:
        self.source_dsn = source_dsn
        self.con = con
        self.trainer = trainer
        self.writeback = writeback
        self.on_finished = on_finished
        """Called with (project, status, metrics) after each training request."""
        self.add_tables = add_tables
        """Publishes and copies the base tables of a view a training names (None: the
        replicator cannot, as with the Debezium source)."""
        self.wake = threading.Event()
        self._claimed: set[int] = set()
        self.finished = threading.Condition()
        self.handled = 0
        self.owners = ProjectOwners(con)
        self.registry_copy = RegistryCopy(con, source_dsn)
        self._maintained_at = float("-inf")
        self._busy: set[str] = set()
        """Projects with a request being carried out (their next ones wait for it)."""
        self._lanes = ThreadPoolExecutor(LANES, thread_name_prefix="pgml-sidecar-request")

    def on_commit(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        if TABLE in touched:
            self.wake.set()

    def run(self, stop: threading.Event) -> None:
        """Carry out requests until ``stop`` is set."""
        self._fail_interrupted()
        self.wake.set()  # requests that arrived while the sidecar was down
        while not stop.is_set():
            if time.monotonic() - self._maintained_at >= MAINTENANCE_S:
                self.maintain()
            self.registry_copy.copy_if_changed()
            if not self.wake.wait(timeout=1.0):
                continue
            self.wake.clear()
            for request in self._pending():
                if stop.is_set():
                    break
                project = self._project_of(request)
                if project in self._busy:
                    continue  # after the one running: its end wakes this loop again
                self._busy.add(project)
                self._claimed.add(int(request["id"]))
                self._lanes.submit(self._lane, project, request)
        self._lanes.shutdown(wait=False, cancel_futures=True)  # the trainer's close ends the rest

    def _project_of(self, request: dict[str, Any]) -> str:
        """The project a request is for: a deploy of a model by id names none, its model's."""
        if request.get("project_name") is not None:
            return str(request["project_name"])
        model = self.trainer.registry.model(int(request.get("model_id") or 0))
        found = self.trainer.registry.project_by_id(model.project_id) if model else None
        return found.name if found is not None else ""

    def _lane(self, project: str, request: dict[str, Any]) -> None:
        try:
            self._carry_out(request)
        except Exception:  # a lane must never die silently: the request stays to be retried
            log.exception("request %s for %s failed unexpectedly", request["id"], project)
            self._claimed.discard(int(request["id"]))
        finally:
            self._busy.discard(project)
            self.wake.set()  # the project's next request, if any

    def _pending(self) -> list[dict[str, Any]]:
        cursor = self.con.cursor()
        try:
            rows = cursor.execute(
                "select * from pgml.training_requests where status = 'pending' order by id"
            )
            names = [d[0] for d in rows.description or ()]
            found = [dict(zip(names, r, strict=True)) for r in rows.fetchall()]
        except duckdb.CatalogException:
            return []  # the control table is not mirrored (yet)
        finally:
            cursor.close()
        return [r for r in found if r["id"] not in self._claimed]

    def _fail_interrupted(self) -> None:
        """Requests left running by a previous run that stopped: failed, to be asked again."""
        try:
            with psycopg.connect(self.source_dsn, autocommit=True) as conn:
                conn.execute(
                    "update pgml.training_requests set status = 'failed', finished_at = now(),"
                    " error = 'interrupted: the sidecar stopped while carrying it out; request"
                    " it again' where status = 'running'"
                )
        except psycopg.Error as exc:
            log.warning("cannot check the source's control table: %s", exc)

    def _claim(self, conn: psycopg.Connection, request_id: int) -> bool:
        row = conn.execute(
            "update pgml.training_requests set status = 'running'"
            " where id = %s and status = 'pending' returning id",
            (request_id,),
        ).fetchone()
        return row is not None

    def maintain(self) -> None:
        """Copy the owners to the source's ``pgml.projects``; grant the score tables again."""
        self._maintained_at = time.monotonic()
        try:
            with psycopg.connect(self.source_dsn, autocommit=True) as conn:
                ownership.publish_owners(conn, self.owners.all())
                score_grants.regrant_score_tables(conn, self.con, self._scored_relation)
        except psycopg.Error as exc:
            log.warning("cannot bring owners and score grants up to date in the source: %s", exc)

    def _carry_out(self, request: dict[str, Any]) -> None:
        request_id = int(request["id"])
        self._claimed.add(request_id)
        try:
            with psycopg.connect(self.source_dsn, autocommit=True) as conn:
                if not self._claim(conn, request_id):
                    return
                outcome = self._authorized_run(conn, request)
                self._finish(conn, request, outcome)
        except psycopg.Error as exc:
            log.warning("request %d: the source refused its status update: %s", request_id, exc)
            self._claimed.discard(request_id)  # try again at the next wake-up
            return
        if request.get("kind", "train") in TRAININGS and self.on_finished is not None:
            self.on_finished(str(request["project_name"]), outcome.status, outcome.metrics)
        with self.finished:
            self.handled += 1
            self.finished.notify_all()

    def _finish(self, conn: psycopg.Connection, request: dict[str, Any], outcome: Outcome) -> None:
        """Write the request's outcome, with its notice where the source has the column."""
        model_id = outcome.model_id
        if model_id is None and request.get("project_name") is None:
            model_id = request.get("model_id")  # pgml.deploy(model_id) failed: keep the id
        values = (outcome.status, outcome.error, model_id)
        finish = "finished_at = now() where id = %s"
        if "notice" in request:  # schema version 3 as released; not in its early installs
            try:
                conn.execute(
                    "update pgml.training_requests set status = %s, error = %s, model_id = %s,"
                    f" notice = %s, {finish}",
                    (*values, outcome.notice, request["id"]),
                )
                return
            except psycopg.errors.InsufficientPrivilege as exc:
                log.warning(
                    "request %s: cannot write its notice (%s): grant the sidecar's role UPDATE"
                    " (notice) on pgml.training_requests, as sidecar/sql/role.sql does",
                    request["id"], exc,
                )  # fmt: skip
        conn.execute(
            f"update pgml.training_requests set status = %s, error = %s, model_id = %s, {finish}",
            (*values, request["id"]),
        )

    def _authorized_run(self, conn: psycopg.Connection, request: dict[str, Any]) -> Outcome:
        """Run the request if the role that asked may; otherwise fail it with the reason."""
        project = self._project_of(request)
        try:
            claimed = self._authorize(conn, request)
        except SidecarError as exc:
            log.warning("request %s for %s refused: %s", request["id"], project, exc)
            return Outcome("failed", str(exc))
        outcome = self._run(request)
        if claimed is not None:
            if self.trainer.registry.project(project) is None:
                self.owners.release(project, claimed)  # the training created nothing
            else:
                self._publish_owner(conn, project, claimed)
        return outcome

    def _authorize(self, conn: psycopg.Connection, request: dict[str, Any]) -> str | None:
        """Raise unless the role that asked may make this request; return the role if the
        request creates the project and the role now owns it."""
        if "requested_by" not in request:
            raise SidecarError(
                "the source's pgml schema does not record who asks (version 2 or older): run"
                " pgml-sidecar init to upgrade it, then ask again",
                sqlstate="55000",
            )
        role = str(request.get("requested_by") or "")
        row = conn.execute("select 1 from pg_catalog.pg_roles where rolname = %s", [role])
        if not role or row.fetchone() is None:
            raise SidecarError(f'role "{role}" does not exist', sqlstate="42704")
        project = self._project_of(request)
        if not project:  # pgml.deploy(model_id) of a model the registry does not have
            raise SidecarError(f"model {request.get('model_id')} does not exist", sqlstate="42704")
        owner = self.owners.owner(project)
        exists = self.trainer.registry.project(project) is not None
        if owner is not None or exists:
            ownership.check_may_change(conn, role, project, owner)
        if request.get("kind", "train") not in TRAININGS:
            return None
        relation_name = request.get("relation_name")
        view = views.find_view(conn, relation_name) if relation_name else None
        if view is not None:
            self._prepare_view(conn, role, view)
        else:
            self._check_relation(conn, role, project, relation_name)
        if owner is not None or exists:
            return None
        now = self.owners.claim(project, role)
        if now != role:  # made meanwhile (on the endpoint): its owner decides
            ownership.check_may_change(conn, role, project, now)
            return None
        return role

    def _prepare_view(
        self, conn: psycopg.Connection, role: str, view: tuple[str, str, str]
    ) -> None:
        """A training on a source view: refused unless ``role`` may read it as PostgreSQL
        would let it; then its base tables are mirrored and the view made in the mirror."""
        schema, name, _ = view
        plan = self._view_plan(conn, role, view)
        mirrored = {(r.schema, r.name) for r in privileges.mirrored_relations(self.con)}
        view_requests.mirror_view(
            conn, self.con, plan, self.add_tables, lambda table: table in mirrored
        )
        log.info("view %s.%s mirrored over %s", schema, name,
                 ", ".join(".".join(t) for t in plan.tables) or "no tables")  # fmt: skip

    def _view_plan(
        self, conn: psycopg.Connection, role: str, view: tuple[str, str, str]
    ) -> views.ViewPlan:
        schema, name, kind = view
        if kind != "v":
            raise views.UntranslatableView(
                f"{schema}.{name} is {views.KINDS.get(kind, 'not a view')}", sqlstate="42809"
            )
        plan = views.plan_view(conn, schema, name)
        view_requests.check_view(conn, role, plan)
        return plan

    def _check_relation(
        self,
        conn: psycopg.Connection,
        role: str,
        project: str,
        relation_name: str | None,
        depth: int = 0,
    ) -> None:
        """Raise 42501 unless ``role`` may read what the training would read."""
        if relation_name is None:
            relation_name = self._last_relation(project)
            if relation_name is None:
                return  # nothing to read: the trainer says what is missing
        view = views.find_view(conn, relation_name)
        if view is not None:  # a view of the source, mirrored by an earlier training
            self._view_plan(conn, role, view)
            return
        try:
            relation = find_relation(self.con, relation_name)
        except SidecarError:
            return  # the trainer reports it
        key = (relation.schema, relation.name)
        mirrored = {(r.schema, r.name): r for r in privileges.mirrored_relations(self.con)}
        if key in mirrored:
            table = mirrored[key]
            readable = privileges.read_privileges(conn, [role], [table]).get(role, {})
            allowed = readable.get(key)
            needed = table.columns or tuple(c for c, _ in relation.columns)
            if allowed is None or not all(c in allowed for c in needed):
                raise SidecarError(
                    f"permission denied for table {relation.name} (training reads every"
                    f" column of {relation.schema}.{relation.name}, and role {role} may not"
                    " SELECT them all in the source)",
                    sqlstate="42501",
                )
        elif relation.schema == score_grants.SCORES:
            self._check_scores(conn, role, relation.name, depth)
        elif relation.schema != "pgml":  # the sidecar's own schemas, endpoint users' tables
            raise SidecarError(
                f"permission denied for table {relation.name} (a training asked for in the"
                " source reads a mirrored table, a pgml data set or a pgml_scores table, and"
                f" {relation.schema}.{relation.name} is none of them)",
                sqlstate="42501",
            )

    def _check_scores(self, conn: psycopg.Connection, role: str, slug: str, depth: int) -> None:
        """A score view is read by its project's owner and by the readers of its relation."""
        for found in self.trainer.registry.projects():
            if project_slug(found.name) != slug:
                continue
            if ownership.may_change(conn, role, self.owners.owner(found.name)):
                return
            scored = self._last_relation(found.name)
            if scored is not None and depth < 3:  # scores of scores of ...: a few at most
                self._check_relation(conn, role, found.name, scored, depth + 1)
                return
        raise SidecarError(
            f"permission denied for table {slug} (a score table is read by its project's"
            " owner and by those who may read the relation it scores)",
            sqlstate="42501",
        )

    def _scored_relation(self, project: str) -> tuple[str, str] | None:
        """The mirror relation the deployed model of ``project`` scores, if any."""
        try:
            record, _ = self.trainer.deployed_model(project)
            snapshot = self.trainer.registry.snapshot(record.snapshot_id)
            if snapshot is None:
                return None
            relation = find_relation(self.con, snapshot.relation_name)
        except SidecarError:
            return None
        return relation.schema, relation.name

    def _last_relation(self, project: str) -> str | None:
        found = self.trainer.registry.project(project)
        snapshot = self.trainer.registry.last_snapshot(found.id) if found else None
        return snapshot.relation_name if snapshot else None

    def _publish_owner(self, conn: psycopg.Connection, project: str, role: str) -> None:
        try:
            ownership.publish_owners(conn, {project: role})
        except psycopg.Error as exc:
            log.warning("cannot record the owner of %s in the source: %s", project, exc)

    def _run(self, request: dict[str, Any]) -> Outcome:
        project = self._project_of(request)
        try:
            kind = request.get("kind", "train")
            enabled = request.get("enabled")
            if kind == "writeback":
                self.writeback(project, True if enabled is None else bool(enabled))
                log.info("write-back of %s %s", project, "on" if enabled is not False else "off")
                return Outcome("done")
            if kind == "schedule":
                cron = request.get("cron")
                self.trainer.set_schedule(project, cron)
                log.info("schedule of %s: %s", project, cron or "none")
                return Outcome("done")
            if kind == "retrain_on_drift":
                self.trainer.set_retrain_on_drift(project, enabled is not False)
                return Outcome("done")
            if kind == "deploy":
                return self._deploy(project, request)
            limit = request.get("time_limit")  # the session's pgml.training_time_limit
            test_size = request.get("test_size")  # real: 0.2 arrives as 0.20000000298...
            result = self.trainer.train(
                project,
                task=request.get("task"),
                relation=request.get("relation_name"),
                y=_labels(request),
                algorithm=request.get("algorithm"),
                hyperparams=request.get("hyperparams") or {},
                search=request.get("search"),
                search_params=request.get("search_params") or {},
                search_args=request.get("search_args") or {},
                test_size=None if test_size is None else float(f"{test_size:.7g}"),
                test_sampling=request.get("test_sampling"),
                preprocess=request.get("preprocess") or {},
                automatic_deploy=request.get("automatic_deploy") is not False,
                time_limit=TRAINING_TIME_LIMIT.parse(limit) if limit else None,
            )
        except SidecarError as exc:
            log.warning("request %s for %s failed: %s", request["id"], project, exc)
            return Outcome("failed", str(exc))
        except Exception as exc:  # a bug must not stop the other projects
            log.exception("request %s for %s failed", request["id"], project)
            return Outcome("failed", f"internal error: {type(exc).__name__}: {exc}")
        log.info(
            "trained %s: model %d (%s)%s", project, result.model_id, result.algorithm,
            ", deployed" if result.deployed else "",
        )  # fmt: skip
        notices = algorithms.runtime_notices(request.get("runtime")) + list(result.notices)
        notice = "\n".join(notices) or None
        return Outcome("done", None, result.model_id, result.metrics, notice)

    def _deploy(self, project: str, request: dict[str, Any]) -> Outcome:
        """``pgml.deploy``: by strategy (and algorithm), or the model asked for by id."""
        by_id = request.get("project_name") is None
        result = self.trainer.deploy(
            None if by_id else project,
            strategy=None if by_id else request.get("strategy"),
            algorithm=None if by_id else request.get("algorithm"),
            model_id=int(request["model_id"]) if by_id else None,
        )
        log.info(
            "deployed %s: model %d (%s, %s)%s", result.project, result.model_id, result.algorithm,
            result.strategy, "" if result.changed else ", deployed already",
        )  # fmt: skip
        notice = None if result.changed else f"model {result.model_id} was deployed already"
        return Outcome("done", None, result.model_id, notice=notice)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended: its status, error, model and metrics, and the training's notice."""

    status: str
    error: str | None = None
    model_id: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notice: str | None = None


def _labels(request: dict[str, Any]) -> str | list[str] | None:
    """The label column of a train request, or the labels of a train_joint request (a JSON
    array of their names, as pgml.train_joint stores them)."""
    labels = request.get("y_column_name")
    if request.get("kind") != "train_joint" or labels is None:
        return labels
    try:
        names = json.loads(labels)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SidecarError(
            f"train_joint request: y_column_name {labels!r} is not a JSON array of column names",
            sqlstate="22023",
        )
    return names
