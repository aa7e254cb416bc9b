"""What one endpoint user may read and change: its source role's privileges and its projects.

Every endpoint session acts for one source role: the role its line in the users file names, or,
without a users file, the role of its user name (as PostgreSQL's own trust and password
methods do). The source decides what that role reaches through the endpoint:

- a mirrored table, only if the role may SELECT it in the source (:mod:`predictor.privileges`,
  refreshed at least every minute: GRANT and REVOKE are followed within one). A table the role
  may read only some columns of is read through a subquery of those columns (``*`` is those,
  another column is not found); a training or a snapshot, which read every column, refuse it;
- a ``pgml_scores`` view, only for the project's owner and for roles that may read the
  relation it scores (as the score tables in the source, :mod:`predictor.score_grants`);
- a table made in the mirror file by other hands, never (those exist only in ``serve``);
- the registry in schema ``pgml``: the loaded data sets always, and the rows of the projects
  whose scores it may use (:mod:`predictor.registry_rows`).

A project belongs to the role whose training made it (:mod:`predictor.ownership`): only it,
its members and members of ``pgml_admin`` may train it again, deploy, schedule it or change
its retraining on drift, from the source or from the endpoint. A role that is no source role
reads no mirrored table and changes nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import psycopg

from mirror.errors import SidecarError
from mirror.registry import project_slug
from predictor import catalog, ownership, registry_rows
from predictor.allow_list import Columns
from predictor.catalog import ServedRelations
from predictor.ownership import ProjectOwners
from predictor.privileges import AllColumns, Readable, SourcePrivileges
from trainer.snapshots import find_relation
from trainer.train import Trainer

CHANGING = ("train", "train_joint", "deploy", "deploy_model", "schedule", "retrain_on_drift")
WHOLE_REGISTRY = ("dump_all", "load_all")
"""Procedures over every project (export and import): for members of pgml_admin."""
"""The pgml procedures that change a project: only its owner may call them."""
CONNECT_TIMEOUT_S = 5
ANSWER_KEPT_S = 5.0
"""How long :meth:`EndpointAccess.may_score` and :meth:`~EndpointAccess.may_see` keep an
answer at most."""
MAX_KEPT_ANSWERS = 10_000
_Kept = tuple[int, Readable, float, Any]
"""An answer kept: the deployment generation and the source's answer it was made with, until
when it is kept, the answer."""


@dataclass(frozen=True, slots=True)
class _ProjectFacts:
    id: int
    name: str
    relation: tuple[str, str] | None
    """The mirrored relation its deployed model was trained on (None: none found)."""


class EndpointAccess:
    """The source's word on what each endpoint role may read and which projects it may change."""

    def __init__(
        self,
        source_dsn: str,
        con: duckdb.DuckDBPyConnection,
        relations: ServedRelations,
        trainer: Trainer,
        *,
        privileges: SourcePrivileges | None = None,
    ) -> None:
        self.source_dsn = source_dsn
        self.con = con
        self.relations = relations
        self.trainer = trainer
        self.privileges = privileges or SourcePrivileges(source_dsn, con)
        self.owners = ProjectOwners(con)
        self._scored_generation = -1
        self._score_answers: dict[Any, _Kept] = {}
        self._visible: dict[Any, _Kept] = {}
        self._facts: list[_ProjectFacts] = []
        registry_rows.register(
            con, lambda role: self.may_see(role)[0], lambda role: self.may_see(role)[1]
        )
        self._lock = threading.Lock()

    def readable(self, role: str) -> Callable[[str, str], Columns]:
        """What ``role`` may read of a served relation (by its schema and name as served): all
        of it (True), only some columns of a mirrored table (their names), or nothing."""
        self.privileges.readable(role)  # asked once up front: the source's answer, cached

        def may_read(schema: str, name: str) -> Columns:
            found = self.relations.find(schema, name)
            if found is None:
                return False
            if found.kind == catalog.MIRRORED:
                table = (found.schema, found.name)
                return self._columns(self.privileges.readable(role, table), *table)
            if found.kind == catalog.SCORES:
                return self._may_read_scores(role, found.name)
            return found.kind == catalog.REGISTRY

        return may_read

    def may_score(self, role: str, model: object) -> bool:
        """Whether ``role`` may score with a project's deployed model (by name) or a model (by
        id): the same rule as its score view. An unknown one is left to the scorer to report.

        Answers are kept until a deployment, a new answer from the source for the role, or
        :data:`ANSWER_KEPT_S` (a one-row ``pgml.predict`` asks this at every execution).
        """
        return bool(
            self._kept(
                self._score_answers, (role, str(model)), role, lambda: self._may_score(role, model)
            )
        )

    def may_see(self, role: str) -> tuple[frozenset[int], frozenset[int]]:
        """The projects (by id) whose registry rows ``role`` sees: those whose scores it may
        use; and the snapshots: those of its visible projects and of relations it may read
        (see :mod:`predictor.registry_rows`). Kept as :meth:`may_score`'s answers are."""
        return self._kept(self._visible, role, role, lambda: self._may_see(role))

    def _may_see(self, role: str) -> tuple[frozenset[int], frozenset[int]]:
        projects = frozenset(
            f.id for f in self._project_facts() if self._may_use(role, f.name, f.relation)
        )
        cursor = self.con.cursor()
        try:
            rows = cursor.execute(
                "select s.id, s.relation_name, list(m.project_id) from pgml.snapshots s"
                " left join pgml.models m on m.snapshot_id = s.id group by all"
            ).fetchall()
        finally:
            cursor.close()
        relations: dict[str, bool] = {}
        snapshots = set()
        for snapshot_id, relation_name, project_ids in rows:
            if any(p in projects for p in project_ids or ()):
                snapshots.add(int(snapshot_id))
                continue
            if relation_name not in relations:
                relations[relation_name] = self._may_read_relation(role, relation_name)
            if relations[relation_name]:
                snapshots.add(int(snapshot_id))
        return projects, frozenset(snapshots)

    def _may_read_relation(self, role: str, relation_name: str) -> bool:
        """Whether ``role`` may read all of the relation a snapshot was taken of."""
        relation = self._relation(relation_name)
        if relation is None:
            return False
        if relation[0] == "pgml":
            return True
        return self._whole(self.privileges.readable(role, relation), *relation)

    def _kept(
        self, cache: dict[Any, _Kept], key: Any, role: str, compute: Callable[[], Any]
    ) -> Any:
        """``compute()``, kept in ``cache`` under ``key`` until a deployment, a new answer
        from the source for ``role``, or :data:`ANSWER_KEPT_S`."""
        readable = self.privileges.readable(role)
        now = time.monotonic()
        generation = self.trainer.generation
        kept = cache.get(key)
        if kept is not None and kept[0] == generation and kept[1] is readable and now < kept[2]:
            return kept[3]
        value = compute()
        if len(cache) >= MAX_KEPT_ANSWERS:
            cache.clear()
        cache[key] = (generation, readable, now + ANSWER_KEPT_S, value)
        return value

    def _may_score(self, role: str, model: object) -> bool:
        registry = self.trainer.registry
        record = None
        if isinstance(model, int) or (isinstance(model, str) and model.strip().isdigit()):
            record = registry.model(int(model))
            project = registry.project_by_id(record.project_id).name if record else None
        else:
            found = registry.project(str(model))
            project = found.name if found else None
            record = registry.deployed(found.id) if found else None
        if project is None:
            return True
        snapshot = registry.snapshot(record.snapshot_id) if record else None
        relation = self._relation(snapshot.relation_name) if snapshot else None
        return self._may_use(role, project, relation)

    def _may_use(self, role: str, project: str, relation: tuple[str, str] | None) -> bool:
        """A project's scores: for its owner and for those who may read the relation it scores
        (a pgml data set's are everyone's; a relation no longer found, the owner's only)."""
        if relation is not None and relation[0] == "pgml":
            return True
        readable = self.privileges.readable(role, relation) if relation else {}
        if relation is not None and self._whole(readable, *relation):
            return True
        owner = self.owners.owner(project)
        return owner is not None and owner == role

    def _may_read_scores(self, role: str, view: str) -> bool:
        scored = self._scored_relations().get(catalog.fold(view))
        if scored is None:
            return False
        project, relation = scored
        return self._may_use(role, project, relation)

    def _scored_relations(self) -> dict[str, tuple[str, tuple[str, str] | None]]:
        """Each score view's project and the mirrored relation it scores (by view name)."""
        facts = self._project_facts()
        scored: dict[str, tuple[str, tuple[str, str] | None]] = {}
        for f in facts:
            scored.setdefault(catalog.fold(project_slug(f.name)), (f.name, f.relation))
        return scored

    def _project_facts(self) -> list[_ProjectFacts]:
        """Each project with the relation its deployed model was trained on."""
        with self._lock:
            if self._scored_generation == self.trainer.generation:
                return self._facts
            generation = self.trainer.generation
            registry = self.trainer.registry
            facts = []
            for project in registry.projects():
                deployed = registry.deployed(project.id)
                snapshot = registry.snapshot(deployed.snapshot_id) if deployed else None
                relation = self._relation(snapshot.relation_name) if snapshot else None
                facts.append(_ProjectFacts(project.id, project.name, relation))
            self._facts, self._scored_generation = facts, generation
            return facts

    def _relation(self, relation_name: str) -> tuple[str, str] | None:
        """The served relation a snapshot's relation name resolves to, if any."""
        try:
            found = find_relation(self.con, relation_name)
        except SidecarError:
            return None
        return (found.schema, found.name)

    def _whole(self, readable: Readable, schema: str, name: str) -> bool:
        """Whether ``readable`` holds every column of the mirrored table ``schema.name``."""
        return self._columns(readable, schema, name) is True

    def _columns(self, readable: Readable, schema: str, name: str) -> Columns:
        """What ``readable`` holds of the mirrored table ``schema.name``: every column (True),
        some of them (in the table's order), or none (False)."""
        allowed = readable.get((schema, name))
        if allowed is None or isinstance(allowed, AllColumns):
            return allowed is not None
        cursor = self.con.cursor()  # column grants: do they cover every mirrored column?
        try:
            columns = cursor.execute(
                "select column_name from duckdb_columns() where database_name ="
                " current_database() and schema_name = ? and table_name = ?"
                " order by column_index",
                [schema, name],
            ).fetchall()
        finally:
            cursor.close()
        if not columns:
            return False
        some = tuple(column for (column,) in columns if column in allowed)
        return True if len(some) == len(columns) else some or False

    @contextlib.contextmanager
    def changing(self, role: str, procedure: str, project: str) -> Iterator[None]:
        """Around a pgml procedure that may change ``project``: refuse a role that may not
        change it; a training that makes the project records ``role`` as its owner."""
        if procedure in WHOLE_REGISTRY:
            with self._source() as conn:
                if not ownership.may_change(conn, role, None):
                    raise SidecarError(
                        f"permission denied for function pgml.{procedure}: it reads or writes"
                        f" every project; only members of {ownership.ADMIN_ROLE} may call it",
                        sqlstate="42501",
                    )
            yield
            return
        if procedure not in CHANGING or not project:
            yield
            return
        owner = self.owners.owner(project)
        exists = self.trainer.registry.project(project) is not None
        claimed = None
        if owner is not None or exists or procedure not in ("train", "train_joint"):
            with self._source() as conn:
                ownership.check_may_change(conn, role, project, owner)
        else:
            with self._source() as conn:  # a name that is no source role makes no project
                known = conn.execute("select 1 from pg_catalog.pg_roles where rolname = %s", [role])
                if known.fetchone() is None:
                    raise SidecarError(f'role "{role}" does not exist', sqlstate="42704")
            claimed = self.owners.claim(project, role)
            if claimed != role:  # made meanwhile by another role: its owner decides
                with self._source() as conn:
                    ownership.check_may_change(conn, role, project, claimed)
                claimed = None
        try:
            yield
        finally:
            if claimed is not None and self.trainer.registry.project(project) is None:
                self.owners.release(project, claimed)  # the training made nothing

    @contextlib.contextmanager
    def _source(self) -> Iterator[psycopg.Connection]:
        try:
            conn = psycopg.connect(
                self.source_dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="pgml-sidecar ownership",
            )
        except psycopg.Error as exc:
            raise SidecarError(
                "cannot ask the source database who may change this project; try again when"
                f" it is reachable ({str(exc).strip().splitlines()[0] if str(exc) else exc})",
                sqlstate="08006",
            ) from None
        with conn:
            yield conn
