"""Running one statement for a session, in its transaction state, on DuckDB or the models.

Queries read through DuckDB cursors; SET, SHOW, transactions, cursors (DECLARE, FETCH, MOVE,
CLOSE) and one-row predictions are answered here without a query plan. :class:`Session` in
:mod:`predictor.session` is a :class:`StatementRunner` that adds the protocol around it.

Every stretch of DuckDB work runs under :meth:`StatementRunner.executing`, which a
CancelRequest, the session's ``statement_timeout`` or the client hanging up interrupts (the
endpoint's :class:`~predictor.statement_watch.StatementWatch` watches the last two).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa

from mirror.duckdb_sql import quote
from mirror.errors import SidecarError
from predictor import (
    catalog,
    error_words,
    pgvector,
    procedures,
    results,
    scoring,
    vector_search,
    vectors,
    wire,
)
from predictor.catalog import ServedRelations
from predictor.catalog_scope import CatalogScope, scope_of
from predictor.pg_types import FLOAT8
from predictor.procedures import ProcedureResult
from predictor.results import FETCH_BATCH, Outcome, Portal, Prepared, Rows
from predictor.scoring import Scorer, scoring_error
from predictor.scram import ScramVerifier
from predictor.statement_watch import StatementWatch
from predictor.statements import Parameter, ProcedureCall, Statement
from predictor.time_settings import STATEMENT_TIMEOUT, TRAINING_TIME_LIMIT
from predictor.translation import ARRAY_RESULTS
from predictor.value_text import text_value
from predictor.vector_index import IndexName, VectorIndexes
from predictor.vector_search import VectorSearch
from predictor.workspace import WorkspaceNames, WorkspaceRelation
from predictor.workspace_statements import relation_to_read
from trainer.snapshots import RelationColumns
from trainer.train import Trainer
from trainer.worker import FitCancelled, cancelled_by

if TYPE_CHECKING:
    from predictor.access import EndpointAccess
    from predictor.users import UsersFile
    from predictor.workspace import Workspaces

SERVER_VERSION = "16.0"
_FLOAT8_ARRAY = 1022
MAX_SEARCH_ROWS = 1000
"""The largest LIMIT the vector index path answers; larger ones scan."""
DEFAULT_SETTINGS = {
    "server_version": SERVER_VERSION,
    "server_version_num": "160000",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "datestyle": "ISO, MDY",
    "timezone": "UTC",
    "intervalstyle": "postgres",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "transaction_isolation": "repeatable read",
    "default_transaction_read_only": "on",
    "transaction_read_only": "on",
    "search_path": "public",
    "extra_float_digits": "1",
    "application_name": "",
    "is_superuser": "off",
    "max_identifier_length": "63",
    "statement_timeout": "0",
    "pgml.exact_search": "off",
}
_CHECKED_SETTINGS = {
    "statement_timeout": STATEMENT_TIMEOUT,
    "pgml.training_time_limit": TRAINING_TIME_LIMIT,
}
"""Settings whose values mean something here: checked when set, kept as SHOW gives them."""
_INTERRUPTED = {
    "cancel": ("canceling statement due to user request", "57014"),
    "timeout": ("canceling statement due to statement timeout", "57014"),
    "disconnect": ("connection to client lost", "08006"),
}


class Endpoint(Protocol):
    """What a session needs from the server that holds it."""

    con: duckdb.DuckDBPyConnection
    trainer: Trainer
    verifier: ScramVerifier | None
    scorer: Scorer
    watch: StatementWatch
    session_defaults: dict[str, str]
    """The settings a session starts with (DEFAULT_SETTINGS and the endpoint's own)."""
    relations: ServedRelations
    """The relations clients may name (the allow-list checks each statement against them)."""
    users: UsersFile | None
    """Named users and their source roles; None: one password, or trust, for every name."""
    access: EndpointAccess | None
    """What each source role may read and change; None without a source."""
    workspaces: Workspaces | None
    """Each source role's workspace; None: nobody writes anywhere."""
    vector_indexes: VectorIndexes | None
    """The HNSW indexes of the mirror's vector columns; None: every search scans."""

    def refresh_score_views(self) -> None: ...


class StatementRunner:
    """Runs statements in a session's transaction state; :class:`Session` adds the protocol."""

    endpoint: Endpoint
    user: str
    role: str
    status: str
    settings: dict[str, str]
    cursor: duckdb.DuckDBPyConnection | None
    prepared: dict[str, Prepared]
    portals: dict[str, Portal]
    cursors: dict[str, Outcome]
    closed: bool
    deadline: float | None = None
    """When the statement running now times out (``time.monotonic()``); None: no timeout."""
    client_fd: int | None = None
    """The client's socket, watched while a statement runs to notice the client leave."""
    handling: bool = False
    """A message is being answered: a cancel now is for it (PostgreSQL ignores one when idle)."""
    interrupted: str | None = None
    """Why the message being answered is interrupted: 'cancel', 'timeout' or 'disconnect'."""
    wrote: bool = False
    """The transaction block open now wrote to the workspace (COMMIT commits it)."""
    _running: duckdb.DuckDBPyConnection | None = None
    _interrupt_lock: threading.Lock

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        assert self.cursor is not None
        return self.cursor

    # -- interrupting what runs ----------------------------------------------------------------

    def statement_deadline(self) -> float | None:
        """When a statement starting now times out, from this session's statement_timeout."""
        value = self.settings.get("statement_timeout")
        if not value or value == "0":
            return None
        ms = STATEMENT_TIMEOUT.parse(value)
        return time.monotonic() + ms / 1000 if ms else None

    @contextlib.contextmanager
    def executing(self, cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """Run DuckDB work on ``cursor`` that a cancel, the timeout or a hang-up interrupts.

        DuckDB errors inside come out as the endpoint reports them (:func:`duckdb_error`).
        """
        deadline = self.deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise self._interrupted_error("timeout")
        with self._interrupt_lock:
            reason = self.interrupted  # a cancel that came between two stretches of work
            if reason is None:
                self._running = cursor
        if reason is not None:
            raise self._interrupted_error(reason)
        try:
            with self.watched():
                yield
        except duckdb.Error as exc:
            reason = self.interrupted
            raise (self._interrupted_error(reason) if reason else duckdb_error(exc)) from None
        finally:
            with self._interrupt_lock:
                self._running = None

    @contextlib.contextmanager
    def watched(self) -> Iterator[None]:
        """Inside, the statement watch interrupts this session past its deadline or once its
        client hangs up (:meth:`interrupt` sets :attr:`interrupted`)."""
        watch = self.endpoint.watch
        watch.add(self)
        try:
            yield
        finally:
            watch.discard(self)

    def interrupt(self, reason: str) -> None:
        """Interrupt the message being answered ('cancel', 'timeout' or 'disconnect').

        The DuckDB work running now stops; work about to start is refused. Only work under
        :meth:`executing` is interrupted: a DuckDB connection interrupted while idle would fail
        the result it holds for a suspended portal or a cursor. DuckDB forgets an interrupt
        that comes before its query really starts, so the watch repeats it while the reason
        stands (:class:`~predictor.statement_watch.StatementWatch`).
        """
        with self._interrupt_lock:
            if not self.handling:
                return
            if self.interrupted is None:
                self.interrupted = reason
            if self._running is not None:
                with contextlib.suppress(duckdb.Error):
                    self._running.interrupt()

    def _interrupted_error(self, reason: str) -> SidecarError:
        if reason == "disconnect":
            self.closed = True
        message, sqlstate = _INTERRUPTED[reason]
        return SidecarError(message, sqlstate=sqlstate)

    def take(self, rows: Rows, limit: int | None) -> tuple[pa.Table | None, bool]:
        """Up to ``limit`` rows of ``rows`` (see :meth:`Rows.take`), interruptible."""
        if rows.reader is None:
            return rows.take(limit)
        with self.executing(rows.cursor or self._cursor()):
            return rows.take(limit)

    # -- statements ----------------------------------------------------------------------------

    def _run(self, statement: Statement, params: list[Any]) -> Outcome:
        """Run one statement in this session's transaction state."""
        if self.status == "E" and statement.kind not in ("rollback", "rollback_to", "commit"):
            raise SidecarError(
                "current transaction is aborted, commands ignored until end of transaction block",
                sqlstate="25P02",
            )
        try:
            return self._dispatch(statement, params)
        except SidecarError:
            if self.status == "T":
                self.status = "E"
            raise

    def _dispatch(self, statement: Statement, params: list[Any]) -> Outcome:
        kind = statement.kind
        if kind in ("select", "declare", "predict", "write"):
            self._check_access(statement, params)
        if kind in ("select", "declare", "write"):
            self.endpoint.refresh_score_views()
        if kind == "select":
            if statement.vector_search is not None:
                found = self._search(statement.vector_search, params, statement)
                if found is not None:
                    return found
            return self._query(statement.sql, params, statement.tag)
        if kind == "write":
            return self._write(statement, params)
        if kind == "predict":
            assert statement.procedure is not None
            return self._predict(statement.procedure, params)
        if kind == "procedure":
            assert statement.procedure is not None
            access = self.endpoint.access
            changing = None if access is None else partial(access.changing, self.role)
            try:
                with self.watched(), cancelled_by(lambda: self.interrupted):
                    result = procedures.call(
                        self.endpoint.trainer,
                        statement.procedure,
                        params,
                        changing=changing,
                        time_limit=self.settings.get("pgml.training_time_limit"),
                        workspace_relation=self._workspace_relation,
                    )
            except FitCancelled as exc:
                raise self._interrupted_error(exc.reason) from None
            return _procedure_outcome(result)
        if kind in ("begin", "commit", "rollback", "savepoint", "release", "rollback_to"):
            return self._transaction(statement)
        if kind == "set":
            assert statement.name is not None
            name = statement.name.lower()
            self.settings[name] = checked_setting(name, statement.value or "")
            return Outcome("SET")
        if kind == "reset":
            name = (statement.name or "").lower()
            self.settings[name] = self.endpoint.session_defaults.get(name, "")
            return Outcome("RESET")
        if kind == "reset_all":
            self.settings = dict(self.endpoint.session_defaults)
            return Outcome("RESET")
        if kind == "show":
            return self._show(statement.name or "")
        if kind == "declare":
            assert statement.name is not None
            if statement.name in self.cursors:
                raise SidecarError(f'cursor "{statement.name}" already exists', sqlstate="42P03")
            self.cursors[statement.name] = self._query(statement.sql, params, "FETCH")
            return Outcome("DECLARE CURSOR")
        if kind in ("fetch", "move"):
            return self._fetch(statement)
        if kind == "close":
            return self._close_cursor(statement.name)
        if kind == "discard":
            self._close_cursor(None)
            self.prepared.clear()
            self.settings = dict(self.endpoint.session_defaults)
            return Outcome("DISCARD ALL")
        if kind == "deallocate":
            if statement.name is None:
                self.prepared.clear()
            else:
                self.prepared.pop(statement.name, None)
            return Outcome("DEALLOCATE")
        raise SidecarError(f"cannot run {kind}", sqlstate="0A000")

    def _query(self, sql: str, params: Sequence[Any], tag: str) -> Outcome:
        """Start a query; its rows are read as the client takes them.

        Outside a transaction block each result reads through a DuckDB cursor of its own, so
        several can be open at once (cursors, portals). Inside one, every query shares the
        transaction's cursor and snapshot, and results still open are read to the end first.
        """
        if self.status == "I":
            cursor = self.endpoint.con.cursor()
            owned: duckdb.DuckDBPyConnection | None = cursor
        else:
            cursor, owned = self._cursor(), None
        try:
            with self.executing(cursor):
                if owned is None:
                    for rows in self._open_rows():
                        if rows.cursor is None:
                            rows.drain()
                query = cursor.sql(sql, params=list(params) or None)
                reader = query.to_arrow_reader(FETCH_BATCH)
        except SidecarError:
            if owned is not None:
                owned.close()
            raise
        return Outcome(tag, results.arrow_fields(reader.schema), Rows(reader, cursor=owned))

    def _search(
        self, search: VectorSearch, params: Sequence[Any], statement: Statement
    ) -> Outcome | None:
        """The query's rows, reading only the nearest rows an HNSW index gives; None when the
        exact scan must answer (no index yet, ``pgml.exact_search`` on, a filter that passes
        too few of the candidates, a vector or limit the index cannot take)."""
        indexes = self.endpoint.vector_indexes
        if indexes is None or _is_on(self.settings.get("pgml.exact_search", "off")):
            return None
        vector = vector_search.query_vector(vector_search.resolved(search.vector, params))
        limit = vector_search.resolved(search.limit, params)
        if vector is None or not isinstance(limit, int) or not 0 < limit <= MAX_SEARCH_ROWS:
            return None
        wanted = limit + search.offset
        count = max(vector_search.CANDIDATES, 10 * wanted)
        name = IndexName(search.schema, search.table, search.column, search.distance)
        while count <= vector_search.MAX_CANDIDATES:
            found = indexes.search(name, vector, count)
            if found is None:
                return None
            key, keys = found
            readable = statement.columns.get((search.schema, search.table))
            if readable is not None and key not in readable:
                return None
            sql = vector_search.with_candidates(search.sql, search.alias, key, keys)
            outcome = self._query(sql, params, statement.tag)
            assert outcome.rows is not None
            table, _ = self.take(outcome.rows, None)
            outcome.rows.close()
            rows = 0 if table is None else table.num_rows
            if rows >= limit:
                assert table is not None
                return Outcome(statement.tag, outcome.fields, results.given(table))
            if len(keys) < count:
                return None  # every row of the index was a candidate
            count *= 4
        return None

    def _write(self, statement: Statement, params: Sequence[Any]) -> Outcome:
        """Run a statement that writes to this session's workspace: in its own transaction,
        or in the transaction block open now (which COMMIT then commits)."""
        assert statement.write is not None and self.endpoint.workspaces is not None
        workspace = self.endpoint.workspaces.of(self.role)
        workspace.attach()
        cursor = self._cursor()
        alone = self.status == "I"
        with self.executing(cursor):
            for rows in self._open_rows():
                if rows.cursor is None:
                    rows.drain()  # they read through the transaction's cursor
            if alone:
                cursor.execute("begin")
            try:
                tag, returned = workspace.apply(statement.write, cursor, params)
                if alone:
                    cursor.execute("commit")
            except BaseException:
                if alone:
                    with contextlib.suppress(duckdb.Error):
                        cursor.execute("rollback")
                raise
        if not alone:
            self.wrote = True
        if returned is None:
            return Outcome(tag)
        reader = pa.RecordBatchReader.from_batches(returned.schema, returned.to_batches())
        return Outcome(tag, results.arrow_fields(returned.schema), Rows(reader))

    def workspace_names(self) -> WorkspaceNames | None:
        """This session's workspace as its next statement sees it (None: no workspaces)."""
        workspaces = self.endpoint.workspaces
        if workspaces is None:
            return None
        workspace = workspaces.of(self.role)
        if self.status != "T" or self.cursor is None:
            return workspace.names()
        for rows in self._open_rows():
            if rows.cursor is None:
                rows.drain()
        try:
            return workspace.names(self.cursor)  # what the transaction made is seen in it
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None

    def _workspace_relation(self, relation_name: str) -> RelationColumns | None:
        """The relation a ``pgml.train`` or ``pgml.snapshot`` names in this session's workspace,
        as its role may read it now; None: the workspace has none of that name."""
        names = self.workspace_names()
        if names is None or not names.relations:
            return None
        access = self.endpoint.access
        cursor = self.endpoint.con.cursor()
        try:
            found = relation_to_read(
                relation_name,
                names=names,
                relations=self.endpoint.relations,
                readable=None if access is None else access.readable(self.role),
                viewer=None if access is None else self.role,
                cursor=cursor,
            )
        except duckdb.Error as exc:
            raise duckdb_error(exc) from None
        finally:
            cursor.close()
        if found is None:
            return None
        relation, checked = found
        if checked.scored:
            raise SidecarError(
                f"{relation.relation_name} calls pgml.predict: train on a relation of plain values",
                sqlstate="0A000",
            )
        return relation

    def catalog_scope(self) -> CatalogScope:
        """The catalog this session's user sees now: what its role may read, its workspace."""
        names = self.workspace_names()
        access = self.endpoint.access
        readable = None if access is None else access.readable(self.role)
        cursor = self.endpoint.con.cursor()

        def view_columns(view: WorkspaceRelation) -> list[tuple[str, str]]:
            assert names is not None
            try:
                found = relation_to_read(
                    f"{quote(view.schema)}.{quote(view.name)}",
                    names=names,
                    relations=self.endpoint.relations,
                    readable=readable,
                    viewer=None if access is None else self.role,
                    cursor=cursor,
                )
            except (SidecarError, duckdb.Error):
                return []  # a view its role may no longer read: listed, without columns
            return list(found[0].columns) if found is not None else []

        try:
            return scope_of(
                self.user,
                relations=self.endpoint.relations,
                readable=readable,
                workspace=names,
                view_columns=view_columns,
            )
        finally:
            cursor.close()

    def _open_rows(self) -> Iterator[Rows]:
        for portal in self.portals.values():
            if portal.outcome is not None and portal.outcome.rows is not None:
                yield portal.outcome.rows
        for outcome in self.cursors.values():
            if outcome.rows is not None:
                yield outcome.rows

    def _check_access(self, statement: Statement, params: Sequence[Any]) -> None:
        """Refuse what the session's role may no longer read (a statement prepared before a
        REVOKE), and a model it may not score with: predictions tell what the rows they were
        trained on hold, so they are for the project's owner and the relation's readers."""
        access = self.endpoint.access
        if access is None:
            return
        readable = access.readable(self.role)
        registry = [r for r in statement.reads if r.kind == catalog.REGISTRY]
        if registry:  # decided here, not inside the query's own tests of each row
            access.may_see(self.role)
        for relation in statement.reads:
            if relation.kind == catalog.REGISTRY:
                continue
            allowed = readable(relation.schema, relation.name)
            if allowed is True:
                continue
            checked = statement.columns.get((relation.schema, relation.name))
            if allowed is False or checked is None or not set(checked) <= set(allowed):
                raise SidecarError(
                    f"permission denied for table {relation.qualified}", sqlstate="42501"
                )
        models: list[Any] = []
        if statement.kind == "predict" and statement.procedure is not None:
            models.append(_resolve(statement.procedure.args[0], params))
        for scored in statement.scored:
            if scored.computed:
                raise SidecarError(
                    "permission denied for pgml.predict: name its project (or model id) with a"
                    " constant or a parameter, so the endpoint can check you may use it",
                    sqlstate="42501",
                )
            value = scored.value
            models.append(value if value is not None else _resolve(Parameter(scored.param), params))
        for model in models:
            if model is not None and not access.may_score(self.role, model):
                raise SidecarError(
                    f"permission denied for project {model}: its model is for the project's"
                    " owner and those who may read the relation it was trained on",
                    sqlstate="42501",
                )

    def _predict(self, call: ProcedureCall, params: Sequence[Any]) -> Outcome:
        """One prediction from constant features, straight from the model (no query plan)."""
        key, features = (_resolve(a, params) for a in call.args)
        column = call.kwargs["column"]
        if key is None or features is None:
            values: Any = None
        else:
            if not isinstance(features, list):
                features = [features]
            try:
                matrix = np.array([[np.nan if v is None else v for v in features]], dtype=float)
            except (TypeError, ValueError):
                raise SidecarError(
                    f"pgml.{call.name} takes an array of numbers as features", sqlstate="22P02"
                ) from None
            scorer = self.endpoint.scorer
            model = scorer.model(str(key))
            started = time.perf_counter()
            if call.name == "predict_proba":
                values = model.predict_proba_matrix(matrix)[0].tolist()
            elif call.name == "predict_joint":
                values = model.predict_joint_matrix(matrix)[0].tolist()
            elif call.name == "decompose":
                values = model.decompose_matrix(matrix)[0].tolist()
            else:
                values = float(scoring.as_numbers(model, model.predict_matrix(matrix))[0])
            scorer.observe(str(key), 1, time.perf_counter() - started)
        field = (
            wire.Field(column, _FLOAT8_ARRAY, -1)
            if call.name in ARRAY_RESULTS else wire.Field(column, FLOAT8.oid, FLOAT8.size)
        )  # fmt: skip
        row = wire.data_row([text_value(values)])
        return Outcome("SELECT", [field], Rows(None, encoded=row))

    def _transaction(self, statement: Statement) -> Outcome:
        cursor = self._cursor()
        kind = statement.kind
        if kind == "begin":
            if self.status == "I":
                cursor.execute("begin")
                self.status = "T"
            return Outcome(statement.tag)
        if kind in ("commit", "rollback"):
            self._close_cursor(None)  # first: DuckDB refuses to end a transaction still read
            tag = "ROLLBACK" if self.status == "E" or kind == "rollback" else "COMMIT"
            wrote, self.wrote = self.wrote, False
            if self.status != "I":
                self.status = "I"
                self._end_transaction(cursor, commit=wrote and tag == "COMMIT")
            return Outcome(tag)
        if self.status == "I":
            raise SidecarError(
                f"{statement.tag} can only be used in transaction blocks", sqlstate="25P01"
            )
        if kind == "rollback_to" and self.wrote:
            raise SidecarError(
                "ROLLBACK TO SAVEPOINT cannot undo what this transaction wrote to your"
                " workspace: ROLLBACK the whole transaction",
                sqlstate="0A000",
            )
        if kind == "rollback_to" and self.status == "E":
            self.status = "T"
        return Outcome(statement.tag)

    def _end_transaction(self, cursor: duckdb.DuckDBPyConnection, *, commit: bool) -> None:
        """Commit what the transaction wrote to the workspace, or roll it back (a read-only
        transaction has nothing to commit)."""
        if not commit:
            cursor.execute("rollback")
            return
        try:
            cursor.execute("commit")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("rollback")
            raise duckdb_error(exc) from None

    def _show(self, name: str) -> Outcome:
        key = name.lower()
        if key == "all":
            rows = sorted(self.settings.items())
        elif key in self.settings:
            rows = [(key, self.settings[key])]
        else:
            raise SidecarError(f'unrecognized configuration parameter "{name}"', sqlstate="42704")
        if key == "all":
            table = pa.table({"name": [r[0] for r in rows], "setting": [r[1] for r in rows]})
        else:
            table = pa.table({key: [rows[0][1]]})
        return Outcome("SHOW", results.arrow_fields(table.schema), results.given(table))

    def _fetch(self, statement: Statement) -> Outcome:
        name = statement.name or ""
        cursor = self.cursors.get(name)
        if cursor is None or cursor.rows is None:
            raise SidecarError(f'cursor "{name}" does not exist', sqlstate="34000")
        count = statement.count if statement.count is not None else 1
        table, _ = self.take(cursor.rows, count)
        if table is None:
            table = pa.Table.from_batches([], schema=_schema_of(cursor))
        if statement.kind == "move":
            return Outcome(f"MOVE {table.num_rows}")
        return Outcome("FETCH", cursor.fields, results.given(table))

    def _close_cursor(self, name: str | None) -> Outcome:
        if name is None:
            for cursor in self.cursors.values():
                if cursor.rows is not None:
                    cursor.rows.close()
            self.cursors.clear()
        else:
            found = self.cursors.pop(name, None)
            if found is None:
                raise SidecarError(f'cursor "{name}" does not exist', sqlstate="34000")
            if found.rows is not None:
                found.rows.close()
        return Outcome("CLOSE CURSOR")


def checked_setting(name: str, value: str) -> str:
    """The value to keep for setting ``name``: checked and normalised if it means something here."""
    setting = _CHECKED_SETTINGS.get(name)
    return setting.normalized(value) if setting is not None else value


def _is_on(value: str) -> bool:
    return value.strip().lower() in ("on", "true", "yes", "1")


def _resolve(value: Any, params: Sequence[Any]) -> Any:
    """A constant argument with its ``$n`` parameters filled in."""
    if isinstance(value, Parameter):
        if not 1 <= value.number <= len(params):
            raise SidecarError(f"there is no parameter ${value.number}", sqlstate="42P02")
        return params[value.number - 1]
    if isinstance(value, list):
        return [_resolve(v, params) for v in value]
    return value


def _schema_of(outcome: Outcome) -> pa.Schema:
    rows = outcome.rows
    if rows is not None and rows.reader is not None:
        return rows.reader.schema
    if rows is not None and rows.buffer:
        return rows.buffer[0].schema
    return pa.schema([(f.name, pa.string()) for f in outcome.fields or []])


def _procedure_outcome(result: ProcedureResult) -> Outcome:
    fields = results.fields(result.columns)
    names = [name for name, _ in result.columns]
    table = pa.table({name: [row[i] for row in result.rows] for i, name in enumerate(names)})
    return Outcome("SELECT", fields, results.given(table), notices=list(result.notices))


_DUCKDB_STATES: list[tuple[type[duckdb.Error], str]] = [
    (duckdb.InterruptException, "57014"),
    (duckdb.ParserException, "42601"),
    (duckdb.CatalogException, "42P01"),
    (duckdb.BinderException, "42703"),
    (duckdb.ConversionException, "22P02"),
    (duckdb.OutOfRangeException, "22003"),
    (duckdb.OutOfMemoryException, "53200"),
    (duckdb.PermissionException, "42501"),
    (duckdb.InvalidInputException, "22023"),
    (duckdb.TransactionException, "40001"),
]


def duckdb_error(exc: duckdb.Error) -> SidecarError:
    """A DuckDB error as the endpoint reports it: PostgreSQL's words and SQLSTATE where
    :mod:`predictor.error_words` knows them, else its first line and the SQLSTATE closest to
    its kind; never DuckDB's catalog names, file paths or excerpts of the translated SQL."""
    found = (
        scoring_error(exc) or vectors.argument_error(str(exc)) or pgvector.argument_error(str(exc))
    )
    if found is not None:
        return found
    if isinstance(exc, duckdb.InterruptException):
        return SidecarError("canceling statement due to user request", sqlstate="57014")
    worded = error_words.pg_error(str(exc))
    if worded is not None:
        message, sqlstate, hint = worded
        error = SidecarError(message, sqlstate=sqlstate)
        error.hint = hint  # type: ignore[attr-defined]
        return error
    message = error_words.first_line(str(exc))
    if isinstance(exc, duckdb.ConstraintException):  # a write to the workspace
        lowered = message.lower()
        sqlstate = (
            "23503" if "foreign key" in lowered
            else "23505" if "primary key" in lowered or "unique" in lowered
            else "23502" if "not null" in lowered
            else "23514" if "check" in lowered
            else "23000"
        )  # fmt: skip
        return SidecarError(message, sqlstate=sqlstate)
    for kind, sqlstate in _DUCKDB_STATES:
        if isinstance(exc, kind):
            return SidecarError(message, sqlstate=sqlstate)
    return SidecarError(message, sqlstate="XX000")
