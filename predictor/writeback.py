"""Write-back: the deployed model's score of every row, kept in the source's ``pgml_scores``.

For each written-back project, ``pgml_scores.<project slug>`` in the source holds the relation's
key columns, ``prediction``, ``model_id`` and ``scored_at`` (the source's clock). After each
mirror commit the keys it touched are looked up in the mirror: rows that exist are scored and
upserted, keys whose row is gone lose their score. A new deployment, and every start, rescore
the whole relation in bounded batches, then drop scores of rows that no longer exist.

Writes are batched (CSV through COPY into a temporary table, then one upsert), idempotent, and
retried after a lost connection, so a crash or a reconnect never loses or duplicates a score.
This runs in a thread of its own, off the replication path: the replicator only hands over the
touched keys.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


class Writeback:
    """Keeps the source's score tables equal to the deployed models' scores of the mirror."""

    def __init__(
        self,
        source_dsn: str,
        con: duckdb.DuckDBPyConnection,
        trainer: Trainer,
        *,
        batch_rows: int = BATCH_ROWS,
        on_written: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.source_dsn = source_dsn
        self.con = con
        self.trainer = trainer
        self.batch_rows = batch_rows
        self.on_written = on_written
        """Called with (project, rows, seconds since the oldest commit they carry)."""
        self.changes: queue.Queue[tuple[Lsn, dict[tuple[str, str], Touched], float]] = queue.Queue()
        self.watched: set[tuple[str, str]] = set()
        """The relations written back: the mirror reports their changed keys."""
        self._targets: dict[str, Target] = {}
        self._generation = -1
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

    def enable(self, project: str, enabled: bool = True) -> None:
        """Turn write-back of ``project`` on (its scores are backfilled) or off."""
        self.trainer.deployed_model(project)  # a clear error if there is nothing to score with
        cursor = self.con.cursor()
        try:
            cursor.execute(
                f"insert or replace into {META}.writebacks values (?, ?)", [project, enabled]
            )
        finally:
            cursor.close()
        self._generation = -1  # re-read targets, backfill the new one

    def on_commit(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        """Called by the mirror after a commit, in the replicator's thread: queue, return."""
        self.changes.put((lsn, touched, time.time()))

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Write scores until ``stop`` is set: a full rescore first, then changes as they come."""
        try:
            while not stop.is_set():
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

    def _refresh_targets(self) -> None:
        generation = self.trainer.generation
        targets: dict[str, Target] = {}
        for project in self.projects():
            try:
                targets[project] = self._target(project)
            except SidecarError as exc:
                log.warning("write-back of %s paused: %s", project, exc)
        changed = [t for p, t in targets.items() if self._targets.get(p) != t]
        self._targets = targets
        self.watched.clear()
        self.watched.update((t.schema, t.table) for t in targets.values())
        self._generation = generation
        for target in changed:
            self._retrying(self._rescore, target)
        self.rescored.set()

    def _target(self, project: str) -> Target:
        record, model = self.trainer.deployed_model(project)
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
                self._retrying(self._rescore, target)
            elif entry.keys:
                keys = touched_keys(entry).select(list(target.keys))
                rows = self._retrying(self._score_keys, target, keys)
                if self.on_written is not None:
                    self.on_written(target.project, rows, time.time() - since)

    # -- scoring -------------------------------------------------------------------------------

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
        staging = sql.Identifier(f"_pgml_rescore_{target.slug}")
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
        source = self._connection()
        types: dict[str, str] = dict(
            source.execute(
                "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a"
                " join pg_class c on c.oid = a.attrelid"
                " join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname = %s and c.relname = %s and a.attnum > 0",
                (target.schema, target.table),
            ).fetchall()
        )
        keys = [
            sql.SQL("{} {} not null").format(sql.Identifier(k), sql.SQL(types.get(k, "text")))
            for k in target.keys
        ]
        source.execute(
            sql.SQL(
                "create table if not exists {} ({}, prediction double precision,"
                " model_id bigint not null, scored_at timestamptz not null default now(),"
                " primary key ({})) with (fillfactor = 70)"
            ).format(
                _scores(target),
                sql.SQL(", ").join(keys),
                sql.SQL(", ").join(sql.Identifier(k) for k in target.keys),
            )
        )

    def _copy_upsert(self, target: Target, scores: pa.Table) -> None:
        source = self._connection()
        staging = sql.Identifier(f"_pgml_scores_{target.slug}")
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
        staging = sql.Identifier(f"_pgml_gone_{target.slug}")
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
