"""Chroma collections kept equal to mirrored tables, off the replication path.

Each ``[[chroma]]`` collection is a derived copy of one mirrored table: a record per row (see
``predictor.chroma_records``). Its table's changed keys are logged with each mirror commit
(``mirror.change_log``); this thread reads the log from the position the collection has
applied, looks the keys up in the mirror as committed, upserts the rows that exist and
deletes the ids of those that do not, then stores the new position in the collection's own
metadata (``pgml_sidecar_position``) and in the mirror (``chroma_collections``, which keeps
the log from being forgotten before the collection took it). Writes are idempotent (by id,
from the mirror's current rows), so a crash between a write and its position only replays
them: across ``kill -9`` nothing is lost, duplicated or left stale.

A collection without a stored position, or one older than the log reaches back (the log of
its table had a gap), is loaded whole: every row upserted from one mirror snapshot, ids
without a row deleted, the snapshot's position stored. So is one after a truncate or a new
copy of the table.

Chroma that does not answer only makes its collection fall behind: the replicator never
waits (the mirror only logs keys), the collection retries with backoff and catches up from
the log, and its lag is reported. Drift (a record added, deleted or edited by hand) is found
by :meth:`ChromaSync.verify`: every record of the collection read in pages (ids,
embeddings, documents, metadata) and compared with the mirror's rows, ids and embeddings
exactly (within 4 units in the last place: the cosine space's normalising), so a row changed
since the collection's position is not counted; counts are compared after each catch-up.
:meth:`ChromaSync.rebuild` fixes what a verify found: differing records deleted and added
again from the mirror, extra ones deleted, missing ones added.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import numpy as np
import pyarrow as pa

from mirror import change_log
from mirror.change_log import Touched
from mirror.changes import Lsn, format_lsn
from mirror.duckdb_sql import META, quote
from mirror.errors import ConfigError, SidecarError
from mirror.store import Mirror
from predictor.chroma_records import Records, RecordShape, same_embedding, same_metadata

log = logging.getLogger("pgml_sidecar")

SPACES = ("cosine", "l2", "ip")
POSITION = "pgml_sidecar_position"
TABLE = "pgml_sidecar_table"
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
READ_KEYS = 20_000
"""Logged keys applied in one step at most (positions are stored after each)."""
PAGE = 1000
"""Records read or written in one Chroma call."""


@dataclass(frozen=True, slots=True)
class ChromaTarget:
    """One ``[[chroma]]`` section: a table, the collection kept equal to it, and where."""

    table: str
    collection: str
    embedding: str
    document: str | None = None
    metadata: tuple[str, ...] = ()
    space: str = "cosine"
    url: str | None = None
    path: Path | None = None
    token: str | None = field(default=None, repr=False)
    verify_seconds: float = 600.0
    """A full drift check this often (0: only when asked)."""

    @property
    def schema_table(self) -> tuple[str, str]:
        schema, _, name = self.table.rpartition(".")
        return schema or "public", name

    @property
    def where(self) -> str:
        """Where the collection lives, fit for logs (never the token)."""
        return self.url if self.url else f"directory {self.path}"


def client(target: ChromaTarget) -> Any:
    """A Chroma client for ``target``: HTTP to a server, or an embedded persistent one."""
    import chromadb
    from chromadb.config import Settings

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise

    if target.path is not None:
        return chromadb.PersistentClient(
            path=str(target.path), settings=Settings(anonymized_telemetry=False)
        )
    assert target.url is not None
    url = urlsplit(target.url)
    ssl = url.scheme == "https"
    extra: dict[str, Any] = {}
    if target.token:
        extra = {
            "chroma_client_auth_provider": "chromadb.auth.token_authn.TokenAuthClientProvider",
            "chroma_client_auth_credentials": target.token,
        }
    return chromadb.HttpClient(
        host=url.hostname or "127.0.0.1",
        port=url.port or (443 if ssl else 8000),
        ssl=ssl,
        settings=Settings(anonymized_telemetry=False, **extra),
    )


@dataclass
class Drift:
    """What a verify found: records Chroma lacks, has extra, or holds otherwise."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    checked_at: float = field(default_factory=time.time)
    rows: int = 0

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.changed)

    def report(self) -> dict[str, Any]:
        return {
            "rows": self.count,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "changed": len(self.changed),
            "examples": (self.missing + self.extra + self.changed)[:5],
            "checked_at": self.checked_at,
            "records_checked": self.rows,
        }


@dataclass
class CollectionState:
    """A collection as the sync thread knows it."""

    target: ChromaTarget
    collection: Any = None
    shape: RecordShape | None = None
    applied: Lsn | None = None
    """The position applied (stored in the collection); None until it is opened."""
    held: Lsn = 0
    """The position stored in the mirror: the change log is kept after it."""
    connected: bool = False
    last_error: str | None = None
    failures: int = 0
    retry_at: float = 0.0
    behind_since: float | None = None
    reload_lsn: Lsn = 0
    """A truncate or a new copy of the table committed here: load it whole if not applied."""
    rows: int | None = None
    """Records in the collection, as last counted."""
    count_mismatch: bool = False
    drift: Drift | None = None
    verified_at: float = field(default_factory=time.monotonic)
    dimensions: int | None = None

    def report(self, mirror_lsn: Lsn) -> dict[str, Any]:
        applied = self.applied if self.applied is not None else self.held
        return {
            "table": self.target.table,
            "where": self.target.where,
            "space": self.target.space,
            "connected": self.connected,
            "applied_lsn": format_lsn(applied),
            "lag_bytes": max(mirror_lsn - applied, 0) if self.behind_since is not None else 0,
            "lag_seconds": self.lag_seconds(),
            "rows": self.rows,
            "drift": None if self.drift is None else self.drift.report(),
            "count_mismatch": self.count_mismatch,
            "last_error": self.last_error,
        }

    def lag_seconds(self) -> float:
        if self.behind_since is None:
            return 0.0
        return round(max(time.monotonic() - self.behind_since, 0.0), 3)


@dataclass(eq=False)
class _Request:
    kind: str
    collection: str | None
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class ChromaSync:
    """Keeps each configured Chroma collection equal to its mirrored table."""

    def __init__(
        self, mirror: Mirror, targets: list[ChromaTarget], *, connect: Callable = client
    ) -> None:
        names = [t.collection for t in targets]
        if len(set(names)) < len(names):
            raise ConfigError("two [[chroma]] sections name the same collection")
        self.mirror = mirror
        self.con = mirror.con
        self.connect = connect
        self.states = {t.collection: CollectionState(t) for t in targets}
        self.watched: set[tuple[str, str]] = {t.schema_table for t in targets}
        """The tables kept in Chroma: the mirror reports and logs their changed keys."""
        self.wake = threading.Event()
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._stop: threading.Event | None = None
        self._create_state()

    # -- bookkeeping in the mirror -------------------------------------------------------------

    def _create_state(self) -> None:
        cursor = self.con.cursor()
        try:
            cursor.execute(
                f"create table if not exists {META}.chroma_collections (collection varchar"
                " primary key, table_name varchar not null, applied ubigint not null,"
                " updated_at timestamptz)"
            )
            rows = cursor.execute(
                f"select collection, table_name, applied from {META}.chroma_collections"
            ).fetchall()
        finally:
            cursor.close()
        for name, table, applied in rows:
            state = self.states.get(name)
            if state is not None and table == state.target.table:
                state.held = int(applied)

    def prepare(self) -> None:
        """Before the replicator starts: restart the log of a table whose log has a gap
        (the mirror moved on while nothing logged it), so that no collection replays it."""
        now = _mirror_position(self.con)
        for schema, name in sorted(self.watched):
            covered = change_log.coverage(self.con, schema, name)
            if covered is None or covered[1] < now:
                change_log.restart_coverage(self.con, schema, name, now)

    def held(self, schema: str, name: str) -> Lsn | None:
        """The oldest position a collection of ``schema.name`` still replays from."""
        found = [s.held for s in self.states.values() if s.target.schema_table == (schema, name)]
        return min(found) if found else None

    def _store(self, state: CollectionState, lsn: Lsn) -> None:
        """The collection has applied everything up to ``lsn``: say so in it, then in the
        mirror, and forget the log every consumer has taken."""
        target = state.target
        state.collection.modify(metadata={TABLE: target.table, POSITION: str(lsn)})
        state.applied = lsn
        cursor = self.con.cursor()
        try:
            cursor.execute(
                f"insert or replace into {META}.chroma_collections values (?, ?, ?, now())",
                [target.collection, target.table, lsn],
            )
        finally:
            cursor.close()
        state.held = lsn
        schema, name = target.schema_table
        oldest = self.held(schema, name)
        if oldest:
            self.mirror.forget_changes(schema, name, oldest, consumer="chroma")

    # -- what the daemon calls -----------------------------------------------------------------

    def on_commit(self, lsn: Lsn, touched: dict[tuple[str, str], Touched]) -> None:
        """Called by the mirror after a commit, in the replicator's thread: note, return."""
        now = time.monotonic()
        for state in self.states.values():
            entry = touched.get(state.target.schema_table)
            if entry is None:
                continue
            if entry.everything:
                state.reload_lsn = max(state.reload_lsn, lsn)
            if state.behind_since is None:
                state.behind_since = now
        self.wake.set()

    def report(self) -> dict[str, dict[str, Any]]:
        """Each collection's position, lag, count and drift (for /healthz and /metrics)."""
        try:
            now = _mirror_position(self.con)
        except duckdb.Error:
            now = 0
        return {name: state.report(now) for name, state in self.states.items()}

    def ask(self, kind: str, collection: str | None = None, *, timeout: float = 600) -> dict:
        """Have the sync thread ``verify`` or ``rebuild`` a collection (None: each); return
        what it found and did, once done."""
        if collection is not None and collection not in self.states:
            raise SidecarError(
                f"no [[chroma]] collection {collection!r}; the collections: "
                + ", ".join(sorted(self.states))
            )
        request = _Request(kind, collection)
        self._requests.put(request)
        self.wake.set()
        if not request.done.wait(timeout):
            raise SidecarError(f"the {kind} did not finish within {timeout:.0f} s")
        if request.error is not None:
            raise SidecarError(request.error)
        return request.result

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Follow the change log into every collection until ``stop`` is set."""
        self._stop = stop
        while not stop.is_set():
            self.wake.clear()
            self._carry_out_requests()
            for state in self.states.values():
                if stop.is_set():
                    break
                if time.monotonic() >= state.retry_at:
                    self._attempt(state, self._step)
            self.wake.wait(0.2)
        while True:  # answer what is left, so nobody waits for a stopped thread
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            request.error = "the sidecar is stopping; ask again"
            request.done.set()

    def _attempt(self, state: CollectionState, action: Callable[[CollectionState], Any]) -> Any:
        """Run ``action``; a failure (Chroma down, a refusal) makes the collection retry
        later, with backoff, and is reported; it never reaches the other collections."""
        try:
            result = action(state)
        except _NotYet as exc:
            state.last_error = str(exc)
            state.retry_at = time.monotonic() + 0.5
            return None
        except ConfigError as exc:
            self._failed(state, str(exc), quiet=state.last_error == str(exc))
            return None
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            self._failed(state, reason, quiet=False)
            state.collection = None  # open it again: the server may have lost it
            state.connected = False
            return None
        state.failures = 0
        state.last_error = None
        return result

    def _failed(self, state: CollectionState, reason: str, *, quiet: bool) -> None:
        delay = BACKOFF[min(state.failures, len(BACKOFF) - 1)]
        state.failures += 1
        state.retry_at = time.monotonic() + delay
        state.last_error = reason
        if state.behind_since is None:
            state.behind_since = time.monotonic()
        (log.debug if quiet else log.warning)(
            "chroma collection %s (%s): %s; retrying in %.1f s",
            state.target.collection, state.target.where, reason, delay,
        )  # fmt: skip

    def _step(self, state: CollectionState) -> None:
        if state.collection is None:
            self._open(state)
        if state.applied is not None and state.reload_lsn > state.applied:
            self._load(state)
        caught_up = self._follow(state)
        if caught_up and state.behind_since is not None:
            state.behind_since = None
            self._count(state)
        due = state.target.verify_seconds
        if caught_up and due and time.monotonic() - state.verified_at >= due:
            self._verify(state)

    def _carry_out_requests(self) -> None:
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            names = [request.collection] if request.collection else sorted(self.states)
            for name in names:
                state = self.states[name]
                action = self._rebuild if request.kind == "rebuild" else self._verify_now
                found = self._attempt(state, action)
                if state.last_error is not None:
                    request.error = f"{name}: {state.last_error}"
                    state.retry_at = 0.0  # the loop tries again at once
                    break
                request.result[name] = found
            request.done.set()

    # -- opening and loading -------------------------------------------------------------------

    def _open(self, state: CollectionState) -> None:
        """Connect, find or create the collection, and learn the position it has applied;
        load it whole if it has none the log can be replayed from."""
        target = state.target
        schema, name = target.schema_table
        table = self.mirror.tables.get((schema, name))
        if table is None or table.state not in ("ready", "catchup"):
            raise _NotYet(f"{target.table} is not mirrored (yet): waiting for its copy")
        state.shape = RecordShape.of(
            table, embedding=target.embedding, document=target.document,
            metadata=target.metadata,
        )  # fmt: skip
        chroma = self.connect(target)
        collection = chroma.get_or_create_collection(
            target.collection,
            configuration={"hnsw": {"space": target.space}},
            metadata={TABLE: target.table},
            embedding_function=None,
        )
        space = ((collection.configuration or {}).get("hnsw") or {}).get("space")
        if space is not None and space != target.space:
            raise ConfigError(
                f"collection {target.collection} measures {space} distance, not the"
                f" {target.space} asked for: pgml-sidecar chroma rebuild --collection"
                f" {target.collection} makes it again"
            )
        state.collection = collection
        state.connected = True
        metadata = collection.metadata or {}
        stored = metadata.get(POSITION)
        position = int(stored) if stored is not None else None
        covered = change_log.coverage(self.con, schema, name)
        now = _mirror_position(self.con)
        log.info(
            "chroma collection %s (%s): %s",
            target.collection, target.where,
            "loading it whole" if position is None else f"applied up to {format_lsn(position)}",
        )  # fmt: skip
        if (
            position is None
            or metadata.get(TABLE, target.table) != target.table
            or covered is None
            or position < covered[0]
            or position > now
        ):
            self._load(state)
        else:
            state.applied = position
        state.behind_since = time.monotonic()  # counted once caught up (a truncate missed)

    def _load(self, state: CollectionState) -> None:
        """Make the collection the table as of one mirror snapshot: every row upserted, ids
        without a row deleted; store that snapshot's position."""
        started = time.monotonic()
        if state.behind_since is None:
            state.behind_since = started
        shape = state.shape
        assert shape is not None
        present = set(self._chroma_ids(state))
        cursor = self.con.cursor()
        try:
            cursor.execute("begin")
            position = _position_in(cursor)
            written = 0
            reader = cursor.sql(
                f"select {shape.select_sql()} from {shape.table.qualified} r"
                f" where {shape.has_record_sql()}"
            ).to_arrow_reader(PAGE)
            for batch in reader:
                records = shape.records(pa.Table.from_batches([batch]), dimensions=state.dimensions)
                self._write(state, records, present=present)
                present.difference_update(records.ids)
                written += len(records)
            cursor.execute("commit")
        finally:
            cursor.close()
        for chunk in _chunks(sorted(present), PAGE):
            state.collection.delete(ids=chunk)
        self._store(state, position)
        state.rows = written
        state.count_mismatch = False
        log.info(
            "chroma collection %s loaded: %d records in %.1f s, %d deleted, at %s",
            state.target.collection, written, time.monotonic() - started, len(present),
            format_lsn(position),
        )  # fmt: skip

    def _chroma_ids(self, state: CollectionState) -> Iterator[str]:
        offset = 0
        while True:
            got = state.collection.get(include=[], limit=PAGE * 10, offset=offset)
            yield from got["ids"]
            if len(got["ids"]) < PAGE * 10:
                return
            offset += len(got["ids"])

    def _write(self, state: CollectionState, records: Records, *, present: set[str]) -> None:
        """Upsert ``records``. Chroma's upsert keeps a record's document when given None,
        so a record in ``present`` whose document is now NULL is deleted and added again."""
        if not len(records):
            return
        if state.dimensions is None:
            state.dimensions = int(records.embeddings.shape[1])
        if records.documents is not None:
            cleared = [r.id for r in _rows(records) if r.document is None and r.id in present]
            if cleared:
                state.collection.delete(ids=cleared)
        for rows in _chunks(list(range(len(records))), PAGE):
            part = records.take(rows)
            state.collection.upsert(
                ids=part.ids,
                embeddings=part.embeddings,
                documents=part.documents,
                metadatas=part.metadatas,
            )

    # -- following the change log --------------------------------------------------------------

    def _follow(self, state: CollectionState) -> bool:
        """Apply the logged changes after the collection's position, a step at a time;
        whether it is caught up."""
        schema, name = state.target.schema_table
        assert state.applied is not None
        logged = self.mirror.logged_changes(schema, name, state.applied)
        if not logged:
            return True
        step: list[tuple[Lsn, pa.Table]] = []
        count = 0
        for lsn, keys in logged:
            step.append((lsn, keys))
            count += keys.num_rows
            if count >= READ_KEYS:
                self._apply(state, step)
                step, count = [], 0
        if step:
            self._apply(state, step)
        return False  # more may have come meanwhile: the next pass says

    def _apply(self, state: CollectionState, step: list[tuple[Lsn, pa.Table]]) -> None:
        """Bring the records of the keys ``step`` logged to what the mirror holds now."""
        shape = state.shape
        assert shape is not None
        keys = pa.concat_tables([k for _, k in step], promote_options="permissive")
        names = [c.name for c in shape.table.keys]
        keys = keys.select(names)
        keys = keys.cast(pa.schema([(n, pa.string()) for n in names]))
        cursor = self.con.cursor()
        try:
            types = _column_types(cursor, shape.table.schema, shape.table.name)
            cursor.register("_pgml_touched", keys)
            ids = [
                r[0]
                for r in cursor.execute(
                    f"select distinct {shape.id_sql('t', cast=types)} from _pgml_touched t"
                ).fetchall()
                if r[0] is not None
            ]
            match = " and ".join(
                f"r.{quote(k)} = try_cast(t.{quote(k)} as {types.get(k, 'varchar')})" for k in names
            )
            rows = cursor.sql(
                f"select {shape.select_sql()} from {shape.table.qualified} r"
                f" semi join _pgml_touched t on {match} where {shape.has_record_sql()}"
            ).to_arrow_table()
        finally:
            cursor.close()
        records = shape.records(rows, dimensions=state.dimensions)
        gone = sorted(set(ids) - set(records.ids))
        for chunk in _chunks(gone, PAGE):
            state.collection.delete(ids=chunk)
        self._write(state, records, present=set(records.ids))
        self._store(state, step[-1][0])

    def _count(self, state: CollectionState) -> None:
        """Compare the collection's count with the table's (the cheap check, when caught
        up); a difference is drift, shown until a verify or rebuild."""
        shape = state.shape
        assert shape is not None
        state.rows = int(state.collection.count())
        cursor = self.con.cursor()
        try:
            rows = cursor.execute(
                f"select count(*) from {shape.table.qualified} r where {shape.has_record_sql()}"
            ).fetchall()
        finally:
            cursor.close()
        wanted = int(rows[0][0])
        state.count_mismatch = wanted != state.rows
        if state.count_mismatch:
            log.warning(
                "chroma collection %s holds %d records, its table %d rows: it drifted;"
                " pgml-sidecar chroma rebuild fixes it",
                state.target.collection, state.rows, wanted,
            )  # fmt: skip

    # -- drift ---------------------------------------------------------------------------------

    def _verify_now(self, state: CollectionState) -> dict[str, Any]:
        if state.collection is None:
            self._open(state)
        self._follow(state)
        return self._verify(state).report()

    def _verify(self, state: CollectionState) -> Drift:
        """Compare every record with its row: ids, embeddings, documents and metadata.

        The mirror is read in one snapshot; rows changed there after the collection's
        position (logged, not yet applied) are left out of the comparison.
        """
        shape = state.shape
        assert shape is not None and state.applied is not None
        drift = Drift()
        schema, name = state.target.schema_table
        cursor = self.con.cursor()
        try:
            cursor.execute("begin")
            pending = self._pending_ids(cursor, shape, schema, name, state.applied)
            wanted = {
                r[0]
                for r in cursor.execute(
                    f"select {shape.id_sql('r')} from {shape.table.qualified} r"
                    f" where {shape.has_record_sql()}"
                ).fetchall()
            }
            seen: set[str] = set()
            offset = 0
            while True:
                got = state.collection.get(
                    include=["embeddings", "documents", "metadatas"], limit=PAGE, offset=offset
                )
                if not got["ids"]:
                    break
                offset += len(got["ids"])
                self._compare_page(cursor, shape, got, wanted, pending, drift, state)
                seen.update(got["ids"])
                drift.rows += len(got["ids"])
            cursor.execute("commit")
        finally:
            cursor.close()
        drift.missing = sorted(wanted - seen - pending)
        state.drift = drift
        state.rows = drift.rows
        state.count_mismatch = False
        state.verified_at = time.monotonic()
        if drift.count:
            log.warning(
                "chroma collection %s drifted from %s: %d missing, %d extra, %d changed;"
                " pgml-sidecar chroma rebuild fixes it",
                state.target.collection, state.target.table, len(drift.missing),
                len(drift.extra), len(drift.changed),
            )  # fmt: skip
        return drift

    def _pending_ids(
        self, cursor: duckdb.DuckDBPyConnection, shape: RecordShape, schema: str, name: str,
        after: Lsn,
    ) -> set[str]:  # fmt: skip
        """Ids of rows logged as changed after ``after`` (as of the cursor's snapshot)."""
        rows = cursor.execute(
            f"select keys from {META}.changes where schema_name = ? and table_name = ? and lsn > ?",
            [schema, name, after],
        ).fetchall()
        if not rows:
            return set()
        names = [c.name for c in shape.table.keys]
        keys = pa.concat_tables(
            [pa.ipc.open_stream(r[0]).read_all().select(names) for r in rows],
            promote_options="permissive",
        ).cast(pa.schema([(n, pa.string()) for n in names]))
        types = _column_types(cursor, shape.table.schema, shape.table.name)
        cursor.register("_pgml_pending", keys)
        found = cursor.execute(
            f"select distinct {shape.id_sql('t', cast=types)} from _pgml_pending t"
        ).fetchall()
        cursor.unregister("_pgml_pending")
        return {r[0] for r in found if r[0] is not None}

    def _compare_page(
        self,
        cursor: duckdb.DuckDBPyConnection,
        shape: RecordShape,
        got: dict[str, Any],
        wanted: set[str],
        pending: set[str],
        drift: Drift,
        state: CollectionState,
    ) -> None:
        ids = got["ids"]
        drift.extra += [i for i in ids if i not in wanted and i not in pending]
        checked = [i for i in ids if i in wanted and i not in pending]
        if not checked:
            return
        cursor.register("_pgml_page", pa.table({"id": checked}))
        rows = cursor.sql(
            f"select {shape.select_sql()} from {shape.table.qualified} r"
            f" semi join _pgml_page p on p.id = {shape.id_sql('r')}"
        ).to_arrow_table()
        cursor.unregister("_pgml_page")
        records = shape.records(rows, dimensions=state.dimensions)
        at = {i: n for n, i in enumerate(ids)}
        order = [at[i] for i in records.ids]
        theirs = np.asarray(got["embeddings"], dtype=np.float32)[order]
        same = same_embedding(records.embeddings, theirs)
        for n, record_id in enumerate(records.ids):
            j = order[n]
            ok = bool(same[n])
            if ok and records.documents is not None:
                ok = records.documents[n] == got["documents"][j]
            elif ok and got["documents"] is not None:
                ok = got["documents"][j] is None
            if ok:
                mine = records.metadatas[n] if records.metadatas is not None else None
                ok = same_metadata(mine, got["metadatas"][j])
            if not ok:
                drift.changed.append(record_id)

    def _rebuild(self, state: CollectionState) -> dict[str, Any]:
        """Fix drift: a collection of another space is made again; otherwise what a verify
        finds different is deleted and added again, extra records deleted, missing added."""
        target = state.target
        if state.collection is None:
            try:
                self._open(state)
            except ConfigError as exc:
                if "distance" not in str(exc):
                    raise
                self.connect(target).delete_collection(target.collection)
                log.warning("chroma collection %s deleted, to be made again", target.collection)
                state.collection = None
                self._open(state)
                return {"recreated": True, "rows": state.rows}
        self._follow(state)
        drift = self._verify(state)
        shape = state.shape
        assert shape is not None
        fixed = sorted(set(drift.changed) | set(drift.missing))
        for chunk in _chunks(sorted(set(drift.extra) | set(drift.changed)), PAGE):
            state.collection.delete(ids=chunk)
        cursor = self.con.cursor()
        try:
            for chunk in _chunks(fixed, PAGE):
                cursor.register("_pgml_page", pa.table({"id": chunk}))
                rows = cursor.sql(
                    f"select {shape.select_sql()} from {shape.table.qualified} r"
                    f" semi join _pgml_page p on p.id = {shape.id_sql('r')}"
                    f" where {shape.has_record_sql()}"
                ).to_arrow_table()
                cursor.unregister("_pgml_page")
                self._write(state, shape.records(rows, dimensions=state.dimensions), present=set())
        finally:
            cursor.close()
        self._follow(state)  # rows changed meanwhile were read as they are now: replayed
        after = self._verify(state)
        done = {"fixed": drift.report(), "after": after.report()}
        log.info(
            "chroma collection %s rebuilt: %d deleted, %d added again, %d added",
            target.collection, len(drift.extra), len(drift.changed), len(drift.missing),
        )  # fmt: skip
        return done


class _NotYet(SidecarError):
    """The table is not in the mirror yet: the collection waits, without backoff."""


@dataclass(frozen=True, slots=True)
class _Row:
    id: str
    document: str | None


def _rows(records: Records) -> Iterator[_Row]:
    documents = records.documents or [None] * len(records)
    for record_id, document in zip(records.ids, documents, strict=True):
        yield _Row(record_id, document)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _mirror_position(con: duckdb.DuckDBPyConnection) -> Lsn:
    """The mirror's position now: the last source position committed."""
    cursor = con.cursor()
    try:
        return _position_in(cursor)
    finally:
        cursor.close()


def _position_in(cursor: duckdb.DuckDBPyConnection) -> Lsn:
    """The mirror's position as ``cursor`` (in its transaction) sees it."""
    rows = cursor.execute(f"select max(lsn) from {META}.positions").fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def _column_types(cursor: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
    return dict(
        cursor.execute(
            "select column_name, data_type from duckdb_columns()"
            " where database_name = current_database() and schema_name = ? and table_name = ?",
            [schema, table],
        ).fetchall()
    )
