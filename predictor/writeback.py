"""Write-back: the deployed model's score of every row, kept in the source's ``pgml_scores``.

For each written-back project, ``pgml_scores.<project slug>`` in the source holds the relation's
key columns, ``prediction``, ``model_id`` and ``scored_at`` (the source's clock). After each
mirror commit the keys it touched are looked up in the mirror: rows that exist are scored and
upserted, keys whose row is gone lose their score. A new deployment, and every start, rescore
the whole relation in bounded batches, then drop scores of rows that no longer exist.

Writes are batched (CSV through COPY into a temporary table, then one upsert), idempotent, and
retried after a lost connection, so a crash or a reconnect never loses or duplicates a score.
This runs in a thread of its own, off the replication path: the replicator only hands over the
touched keys. ``pgml.writeback()`` requests are handed to that thread too, and answered once
they are carried out: a request is never lost to a rescore in flight.

A score table belongs to one project and one relation, written in its comment when the sidecar
creates it. A table there already is used only if the sidecar's role owns it and its comment
(or, for a table from an older version, its columns) says it is this project's scores of this
relation; anything else is refused, never overwritten. A project whose table name another
project has (a registry from an older version) is not written back.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from mirror.change_log import Touched, rows_for_keys, touched_keys
from mirror.changes import Lsn
from mirror.duckdb_sql import META, quote
from mirror.errors import SidecarError
from mirror.registry import project_slug
from predictor.score_grants import grant_score_table
from trainer.model import Model
from trainer.snapshots import find_relation
from trainer.train import Trainer

log = logging.getLogger("pgml_sidecar")

SCORES = "pgml_scores"
APPLICATION_NAME = "pgml-sidecar write-back"
BATCH_ROWS = 50_000
RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one project's scores come from and go to."""

    project: str
    model_id: int
    schema: str
    table: str
    keys: tuple[str, ...]
    features: tuple[str, ...]

    @property
    def slug(self) -> str:
        return project_slug(self.project)

    @property
    def relation_name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(eq=False)
class _Request:
    """A ``pgml.writeback()`` request waiting for the write-back thread."""

    project: str
    enabled: bool
    done: threading.Event = field(default_factory=threading.Event)
    error: SidecarError | None = None


class Writeback:
    """Keeps the source's score tables equal to the deployed models' scores of the mirror."""

    def __init__(
        self,
        source_dsn: str,
        con: duckdb.DuckDBPyConnection,
        trainer: Trainer,
        *,
        batch_rows: int = BATCH_ROWS,
        on_written: Callable[[str, int, float | None], None] | None = None,
    ) -> None:
        self.source_dsn = source_dsn
        self.con = con
        self.trainer = trainer
        self.batch_rows = batch_rows
        self.on_written = on_written
        """Called with (project, rows, seconds since the oldest commit they carry) after
        changed rows are written, and with (project, rows, None) after every row was scored
        again (a backfill, a new deployment, a start)."""
        self.changes: queue.Queue[tuple[Lsn, dict[tuple[str, str], Touched], float]] = queue.Queue()
        self.watched: set[tuple[str, str]] = set()
        """The relations written back: the mirror reports their changed keys."""
        self._targets: dict[str, Target] = {}
        self._generation = -1
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._stop: threading.Event | None = None
        self._source: psycopg.Connection | None = None
        self.rescored = threading.Event()
        """Set after each full rescore (tests wait for it)."""
        self._create_state()

    # -- what is written back ------------------------------------------------------------------

    def _create_state(self) -> None:
        cursor = self.con.cursor()
        try:
            cursor.execute(
                f"create table if not exists {META}.writebacks"
                " (project varchar primary key, enabled boolean not null)"
            )
        finally:
            cursor.close()

    def projects(self) -> list[str]:
        cursor = self.con.cursor()
        try:
            rows = cursor.execute(
                f"select project from {META}.writebacks where enabled order by project"
            ).fetchall()
        finally:
            cursor.close()
        return [r[0] for r in rows]

    def _set_enabled(self, project: str, enabled: bool) -> None:
        cursor = self.con.cursor()
        try:
            cursor.execute(
                f"insert or replace into {META}.writebacks values (?, ?)", [project, enabled]
            )
        finally:
            cursor.close()

    def enable(self, project: str, enabled: bool = True) -> None:
        """Turn write-back of ``project`` on or off; return once the write-back thread did it.

        On: the score table exists in the source and its backfill has begun. Off: no score is
        written any more. Raises SidecarError if there is nothing to score with, the table name
        is another project's, or the table there holds other scores.
        """
        if enabled:
            self.trainer.deployed_model(project)  # a clear error at once if there is no model
        request = _Request(project, enabled)
        self._requests.put(request)
        while not request.done.wait(0.2):
            if self._stop is not None and self._stop.is_set():
                raise SidecarError(
                    f"the sidecar stopped before the write-back of {project} was set;"
                    " request it again",
                    sqlstate="57P01",
                )
        if request.error is not None:
            raise request.error

    def on_commit(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        """Called by the mirror after a commit, in the replicator's thread: queue, return."""
        self.changes.put((lsn, touched, time.time()))

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Write scores until ``stop`` is set: a full rescore first, then changes as they come,
        and ``pgml.writeback()`` requests in between."""
        self._stop = stop
        self._targets, self._generation = {}, -1  # every (re)start rescores everything
        try:
            while not stop.is_set():
                self._carry_out_requests()
                if self._generation != self.trainer.generation:
                    self._refresh_targets()
                try:
                    _, touched, since = self.changes.get(timeout=0.2)
                except queue.Empty:
                    continue
                merged = dict(touched)
                oldest = since
                while True:  # take every batch already waiting
                    try:
                        _, more, at = self.changes.get_nowait()
                    except queue.Empty:
                        break
                    oldest = min(oldest, at)
                    for key, value in more.items():
                        entry = merged.setdefault(key, Touched())
                        entry.keys.extend(value.keys)
                        entry.everything = entry.everything or value.everything
                self._apply(merged, oldest)
        finally:
            if self._source is not None:
                self._source.close()
                self._source = None

    def _carry_out_requests(self) -> None:
        """Turn on or off the projects of the waiting requests, answering each; a project
        turned on is backfilled right after its request is answered."""
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            target = None
            try:
                target = self._switch(request.project, request.enabled)
            except SidecarError as exc:
                request.error = exc
            except Exception as exc:  # the request must hear of it, not wait forever
                log.exception("write-back request for %s failed", request.project)
                request.error = SidecarError(f"write-back of {request.project} failed: {exc}")
            finally:
                request.done.set()
            if request.error is None and target is not None:
                self._backfill(target)

    def _switch(self, project: str, enabled: bool) -> Target | None:
        if not enabled:
            self._set_enabled(project, False)
            self._targets.pop(project, None)
            self._watch()
            return None
        target = self._target(project)
        self._retrying(self._ensure_table, target)
        self._set_enabled(project, True)
        self._targets[project] = target
        self._watch()
        return target

    def _watch(self) -> None:
        """Have the mirror report the changed keys of exactly the targets' relations (added
        before the others are removed: a commit in between is never missed)."""
        wanted = {(t.schema, t.table) for t in self._targets.values()}
        self.watched |= wanted
        self.watched -= self.watched - wanted

    def _refresh_targets(self) -> None:
        generation = self.trainer.generation
        targets: dict[str, Target] = {}
        for project in self.projects():
            try:
                target = self._target(project)
                if self._targets.get(project) != target:
                    self._retrying(self._ensure_table, target)
                targets[project] = target
            except SidecarError as exc:
                log.warning("write-back of %s paused: %s", project, exc)
        changed = [t for p, t in targets.items() if self._targets.get(p) != t]
        self._targets = targets
        self._watch()
        self._generation = generation
        for target in changed:
            self._carry_out_requests()  # a request never waits for every rescore
            if self._targets.get(target.project) == target:
                self._backfill(target)
        self.rescored.set()

    def _target(self, project: str) -> Target:
        owner = self.trainer.registry.slug_owner(project)
        if owner is not None and owner.name != project:
            raise SidecarError(
                f"project {project!r} cannot be written back: its table name"
                f" {SCORES}.{project_slug(project)} belongs to project {owner.name!r}",
                sqlstate="42710",
            )
        record, model = self.trainer.deployed_model(project)
        if model.joint:
            raise SidecarError(
                f"project {project!r} cannot be written back: its model predicts several labels"
                f" ({', '.join(model.labels)}) and {SCORES} tables hold one prediction per row;"
                " use pgml.predict_joint on the endpoint",
                sqlstate="0A000",
            )
        snapshot = self.trainer.registry.snapshot(record.snapshot_id)
        assert snapshot is not None
        relation = find_relation(self.con, snapshot.relation_name)
        if not relation.key:
            raise SidecarError(
                f"{snapshot.relation_name} has no primary key: scores are written back by key",
                sqlstate="55000",
            )
        features = tuple(c.name for c in model.preprocessor.columns)
        return Target(
            project, record.id, relation.schema, relation.name, tuple(relation.key), features
        )

    def _apply(self, touched: dict[tuple[str, str], Touched], since: float) -> None:
        for target in list(self._targets.values()):
            entry = touched.get((target.schema, target.table))
            if entry is None:
                continue
            if entry.everything:
                self._backfill(target)
            elif entry.keys:
                keys = touched_keys(entry).select(list(target.keys))
                rows = self._retrying(self._score_keys, target, keys)
                if self.on_written is not None:
                    self.on_written(target.project, rows, time.time() - since)

    # -- scoring -------------------------------------------------------------------------------

    def _backfill(self, target: Target) -> None:
        """Score every row of the target's relation again (:meth:`_rescore`), and say so."""
        rows = self._retrying(self._rescore, target)
        if self.on_written is not None:
            self.on_written(target.project, rows, None)

    def _model(self, target: Target) -> Model:
        return self.trainer.model(target.model_id)[1]

    def _score_keys(self, target: Target, keys: pa.Table) -> int:
        """Score the rows with these keys; delete the scores of keys whose row is gone."""
        found = rows_for_keys(self.con, target.schema, target.table, keys, _columns(target))
        self._write(target, found)
        present = found.select(list(target.keys)).cast(keys.select(list(target.keys)).schema)
        gone = _anti_join(keys.select(list(target.keys)), present, list(target.keys))
        if gone.num_rows:
            self._delete(target, gone)
        return found.num_rows

    def _rescore(self, target: Target) -> int:
        """Score every row of the relation in one source transaction: batches are copied to a
        staging table (memory stays bounded here), then one update, one insert of new keys and
        one delete of vanished ones; readers see the old scores until it commits."""
        source = self._connection()
        self._ensure_table(target)
        staging = _staging("rescore", target)
        match = _key_match(target)
        scores_table = _scores(target)
        cursor = self.con.cursor()
        total = 0
        try:
            with source.transaction():
                source.execute(
                    sql.SQL(
                        "create temp table {} (like {} including defaults) on commit drop"
                    ).format(staging, scores_table)
                )
                columns = ", ".join(quote(c) for c in _columns(target))
                reader = cursor.sql(
                    f"select {columns} from {quote(target.schema)}.{quote(target.table)}"
                ).to_arrow_reader(self.batch_rows)
                for batch in reader:
                    scores = self._scores(target, pa.Table.from_batches([batch]))
                    self._copy(source, staging, scores)
                    total += batch.num_rows
                listed = sql.SQL(", ").join(
                    sql.Identifier(c) for c in [*target.keys, "prediction", "model_id"]
                )
                source.execute(
                    sql.SQL(
                        "update {} s set prediction = t.prediction, model_id = t.model_id,"
                        " scored_at = now() from {} t where {}"
                    ).format(scores_table, staging, match)
                )
                source.execute(
                    sql.SQL(
                        "insert into {} ({}, scored_at) select {}, now() from {} t"
                        " where not exists (select from {} s where {})"
                    ).format(scores_table, listed, listed, staging, scores_table, match)
                )
                source.execute(
                    sql.SQL("delete from {} s where not exists (select from {} t where {})").format(
                        scores_table, staging, match
                    )
                )
        finally:
            cursor.close()
        log.info("write-back of %s: %d rows scored with model %d", target.project, total,
                 target.model_id)  # fmt: skip
        return total

    def _scores(self, target: Target, rows: pa.Table) -> pa.Table:
        """Key columns, ``prediction`` and ``model_id`` for ``rows`` (keys and features)."""
        model = self._model(target)
        predictions = model.predict(rows.select(list(target.features)))
        if model.classes is not None and predictions.dtype.kind not in "biuf":
            predictions = pc.index_in(pa.array(predictions), pa.array(model.classes))
        scores = rows.select(list(target.keys)).append_column(
            "prediction", pa.array(predictions).cast(pa.float64())
        )
        return scores.append_column("model_id", pa.repeat(target.model_id, rows.num_rows))

    def _write(self, target: Target, rows: pa.Table) -> None:
        """Upsert the scores of ``rows`` (key and feature columns) into the source."""
        if rows.num_rows:
            self._copy_upsert(target, self._scores(target, rows))

    # -- the source ----------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._source is None or self._source.closed:
            self._source = psycopg.connect(
                self.source_dsn, autocommit=True, application_name=APPLICATION_NAME
            )
        return self._source

    def _retrying(self, work: Callable[..., int | None], *args: Any) -> int:
        """Run ``work(*args)``, reconnecting and running it again after a lost connection."""
        for delay in (*RETRY_DELAYS, None):
            try:
                return work(*args) or 0
            except psycopg.OperationalError as exc:
                if self._source is not None:
                    self._source.close()
                    self._source = None
                if delay is None:
                    raise SidecarError(
                        f"write-back cannot reach the source: {exc}", sqlstate="08006"
                    ) from None
                log.warning("write-back lost the source (%s); retrying in %s s", exc, delay)
                time.sleep(delay)
        return 0

    def _ensure_table(self, target: Target) -> None:
        """Create the target's score table in the source, or make sure the one there is ours
        for this project and relation: a score table is never pointed at other rows."""
        source = self._connection()
        try:
            with source.transaction():
                types = _key_types(source, target)
                found = source.execute(
                    "select c.relkind, pg_get_userbyid(c.relowner),"
                    " c.relowner = (select oid from pg_roles where rolname = current_user),"
                    " obj_description(c.oid, 'pg_class'), c.oid from pg_class c"
                    " join pg_namespace n on n.oid = c.relnamespace"
                    " where n.nspname = %s and c.relname = %s",
                    (SCORES, target.slug),
                ).fetchone()
                if found is None:
                    self._create_table(source, target, types)
                else:
                    _check_table(source, target, types, *found)
                grant_score_table(source, self.con, project=target.project, table=target.slug,
                                  relation=(target.schema, target.table))  # fmt: skip
        except psycopg.OperationalError:
            raise  # retried by the caller
        except psycopg.Error as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SidecarError(
                f"write-back of {target.project}: the source refused to prepare"
                f" {SCORES}.{target.slug}: {message}",
                sqlstate=exc.sqlstate or "58000",
            ) from None

    def _create_table(
        self, source: psycopg.Connection, target: Target, types: dict[str, str]
    ) -> None:
        keys = [
            sql.SQL("{} {} not null").format(sql.Identifier(k), sql.SQL(types[k]))
            for k in target.keys
        ]
        source.execute(
            sql.SQL(
                "create table {} ({}, prediction double precision,"
                " model_id bigint not null, scored_at timestamptz not null default now(),"
                " primary key ({})) with (fillfactor = 70)"
            ).format(
                _scores(target),
                sql.SQL(", ").join(keys),
                sql.SQL(", ").join(sql.Identifier(k) for k in target.keys),
            )
        )
        _mark(source, target)

    def _copy_upsert(self, target: Target, scores: pa.Table) -> None:
        source = self._connection()
        staging = _staging("scores", target)
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in target.keys)
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in scores.column_names)
        with source.transaction():
            source.execute(
                sql.SQL(
                    "create temp table if not exists {} (like {} including defaults)"
                    " on commit delete rows"
                ).format(staging, _scores(target))
            )
            self._copy(source, staging, scores)
            source.execute(
                sql.SQL(
                    "insert into {} ({}, scored_at) select {}, now() from {}"
                    " on conflict ({}) do update set prediction = excluded.prediction,"
                    " model_id = excluded.model_id, scored_at = excluded.scored_at"
                ).format(_scores(target), columns, columns, staging, keys)
            )

    def _copy(self, source: psycopg.Connection, table: sql.Identifier, rows: pa.Table) -> None:
        """COPY ``rows`` (as CSV) into the columns of the same names of ``table``."""
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in rows.column_names)
        with source.cursor().copy(
            sql.SQL("copy {} ({}) from stdin (format csv)").format(table, columns)
        ) as copy:
            copy.write(_csv(rows))

    def _delete(self, target: Target, keys: pa.Table) -> None:
        source = self._connection()
        staging = _staging("gone", target)
        names = [sql.Identifier(k) for k in target.keys]
        match = _key_match(target)
        with source.transaction():
            source.execute(
                sql.SQL(
                    "create temp table if not exists {} as select {} from {} with no data"
                ).format(staging, sql.SQL(", ").join(names), _scores(target))
            )
            self._copy(source, staging, keys)
            source.execute(
                sql.SQL("delete from {} s using {} t where {}").format(
                    _scores(target), staging, match
                )
            )
            source.execute(sql.SQL("truncate {}").format(staging))


_MARK = "pgml_sidecar_scores"
"""The key of a score table's comment: ``{"pgml_sidecar_scores": {"project": ..., "relation":
...}}``, written when the sidecar creates the table."""


def _key_types(source: psycopg.Connection, target: Target) -> dict[str, str]:
    """The source's types of the key columns (``text`` for a relation the source lacks)."""
    types: dict[str, str] = dict(
        source.execute(
            "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a"
            " join pg_class c on c.oid = a.attrelid"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped",
            (target.schema, target.table),
        ).fetchall()
    )
    return {k: types.get(k, "text") for k in target.keys}


def _mark(source: psycopg.Connection, target: Target) -> None:
    mark = json.dumps({_MARK: {"project": target.project, "relation": target.relation_name}})
    source.execute(sql.SQL("comment on table {} is {}").format(_scores(target), sql.Literal(mark)))


def _marked(comment: str | None) -> dict[str, str] | None:
    """The project and relation a score table's comment names, if it is the sidecar's mark."""
    try:
        mark = json.loads(comment or "")
    except ValueError:
        return None
    found = mark.get(_MARK) if isinstance(mark, dict) else None
    return found if isinstance(found, dict) else None


def _check_table(
    source: psycopg.Connection, target: Target, types: dict[str, str],
    kind: str, owner: str, ours: bool, comment: str | None, oid: int,
) -> None:  # fmt: skip
    """Refuse a score table that is not ours, not this project's, or not of this relation;
    mark an unmarked one (from an older version) whose columns fit."""
    name = f"{SCORES}.{target.slug}"
    if kind != "r" or not ours:
        raise SidecarError(
            f"{name} in the source is not a table the sidecar created (owner {owner}): it is"
            " never written to; drop or rename it, then request the write-back again",
            sqlstate="42P07",
        )
    mark = _marked(comment)
    if mark is not None and mark.get("project") != target.project:
        raise SidecarError(
            f"{name} holds the scores of project {mark.get('project')!r}, not of"
            f" {target.project!r}: it is never overwritten",
            sqlstate="42P07",
        )
    if mark is not None and mark.get("relation") != target.relation_name:
        raise SidecarError(
            f"{name} holds scores of {mark.get('relation')}, but the deployed model of"
            f" {target.project!r} scores {target.relation_name}: drop {name} in the source to"
            " write back the new relation, or train it as a new project",
            sqlstate="42P07",
        )
    columns = source.execute(
        "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a"
        " where a.attrelid = %s and a.attnum > 0 and not a.attisdropped order by a.attnum",
        (oid,),
    ).fetchall()
    key = source.execute(
        "select array_agg(a.attname order by k.n) from pg_index i"
        " cross join unnest(i.indkey) with ordinality k(attnum, n)"
        " join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum"
        " where i.indrelid = %s and i.indisprimary",
        (oid,),
    ).fetchone()
    expected = [
        *((k, types[k]) for k in target.keys),
        ("prediction", "double precision"),
        ("model_id", "bigint"),
        ("scored_at", "timestamp with time zone"),
    ]
    if [tuple(c) for c in columns] != expected or list((key or [None])[0] or []) != list(
        target.keys
    ):
        shown = ", ".join(f"{c} {t}" for c, t in columns)
        raise SidecarError(
            f"{name} in the source has the columns ({shown}), not the scores of"
            f" {target.relation_name} by ({', '.join(target.keys)}): it is never overwritten;"
            " drop it to let the sidecar create it again",
            sqlstate="42P07",
        )
    if mark is None:
        _mark(source, target)


def _staging(kind: str, target: Target) -> sql.Identifier:
    """A temporary table's name for the target: short (never cut by PostgreSQL's 63-byte
    limit onto another project's) and the same at every call."""
    digest = hashlib.sha256(target.project.encode()).hexdigest()[:24]
    return sql.Identifier(f"_pgml_{kind}_{digest}")


def _key_match(target: Target) -> sql.Composable:
    """``s.k = t.k and ...`` over the target's key columns (s: scores, t: staging)."""
    names = [sql.Identifier(k) for k in target.keys]
    return sql.SQL(" and ").join(sql.SQL("s.{} = t.{}").format(n, n) for n in names)


def _scores(target: Target) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.Identifier(SCORES), sql.Identifier(target.slug))


def _columns(target: Target) -> list[str]:
    return list(dict.fromkeys([*target.keys, *target.features]))


def _csv(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False))
    return out.getvalue()


def _anti_join(keys: pa.Table, present: pa.Table, names: list[str]) -> pa.Table:
    """Rows of ``keys`` not in ``present``."""
    if present.num_rows == 0:
        return keys
    marked = present.append_column("_present", pa.repeat(True, present.num_rows))
    joined = keys.join(marked, names, join_type="left outer")
    return joined.filter(pc.is_null(joined["_present"])).select(names)
