"""One client of the SQL endpoint: startup, authentication, simple and extended query.

A session turns the messages a client sends into the bytes it answers with; the server's
connection loop owns the socket. Each session has its own DuckDB cursor, prepared statements,
portals and cursors, so one client's errors or dropped connection never touch another's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa

from mirror.errors import SidecarError
from predictor import procedures, scoring, wire
from predictor.pg_types import (
    FLOAT8,
    PgType,
    parse_binary_param,
    parse_text_param,
    pg_type_for_arrow,
    text_value,
)
from predictor.procedures import ProcedureResult
from predictor.scoring import Scorer, scoring_error
from predictor.scram import AuthenticationFailed, ScramExchange, ScramVerifier
from predictor.statements import Parameter, ProcedureCall, Statement, StatementError, split
from trainer.train import Trainer

log = logging.getLogger("pgml_sidecar")

SERVER_VERSION = "16.0"
_FLOAT8_ARRAY = 1022
FETCH_BATCH = 65_536
_TYPES = {
    "text": PgType(25, -1, "text"),
    "bool": PgType(16, 1, "bool"),
    "int8": PgType(20, 8, "int8"),
    "float4": PgType(700, 4, "float4"),
    "text[]": PgType(1009, -1, "_text"),
    "record": PgType(2249, -1, "record"),
}
_DEFAULT_SETTINGS = {
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
}
_REPORTED = ("server_version", "server_encoding", "client_encoding", "datestyle", "timezone",
             "intervalstyle", "integer_datetimes", "standard_conforming_strings",
             "application_name", "is_superuser", "default_transaction_read_only")  # fmt: skip
_REPORTED_NAMES = {
    "datestyle": "DateStyle",
    "timezone": "TimeZone",
    "intervalstyle": "IntervalStyle",
}


class Endpoint(Protocol):
    """What a session needs from the server that holds it."""

    con: duckdb.DuckDBPyConnection
    trainer: Trainer
    verifier: ScramVerifier | None
    scorer: Scorer

    def refresh_score_views(self) -> None: ...


@dataclass(slots=True)
class Outcome:
    """What one statement produced: a command tag, and rows if it returns any."""

    tag: str
    fields: list[wire.Field] | None = None
    rows: Rows | None = None


@dataclass(slots=True)
class Rows:
    """Rows read lazily from a DuckDB result (or given at once), for FETCH and Execute limits."""

    reader: pa.RecordBatchReader | None
    buffer: list[pa.RecordBatch] = field(default_factory=list)
    buffered: int = 0
    sent: int = 0
    cursor: duckdb.DuckDBPyConnection | None = None  # a cursor of its own, closed with it
    encoded: bytes = b""
    """One DataRow ready to send (the one-row prediction path: no Arrow on the way)."""

    def drain(self) -> None:
        """Read the rest of the result now, so its DuckDB connection can run other queries."""
        self._read(None)

    def _read(self, limit: int | None) -> None:
        """Buffer batches until ``limit`` rows are buffered (all if None) or the result ends."""
        while self.reader is not None and (limit is None or self.buffered < limit):
            try:
                batch = self.reader.read_next_batch()
            except StopIteration:
                self.reader = None
                break
            self.buffer.append(batch)
            self.buffered += batch.num_rows

    def take(self, limit: int | None) -> tuple[pa.Table | None, bool]:
        """Up to ``limit`` rows (all if None), and whether rows remain after them."""
        self._read(limit)
        if not self.buffer:
            return None, False
        table = pa.Table.from_batches(self.buffer)
        if limit is not None and table.num_rows > limit:
            rest = table.slice(limit)
            table = table.slice(0, limit)
            self.buffer = rest.to_batches()
            self.buffered = rest.num_rows
        else:
            self.buffer, self.buffered = [], 0
        self.sent += table.num_rows
        return table, bool(self.buffer) or self.reader is not None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.buffer = []
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None


@dataclass(slots=True)
class Prepared:
    statement: Statement | None  # None: the empty query
    param_types: tuple[int, ...]


@dataclass(slots=True)
class Portal:
    prepared: Prepared
    params: list[Any]
    outcome: Outcome | None = None
    done: bool = False


class Session:
    """The protocol state of one client connection."""

    def __init__(self, endpoint: Endpoint, *, pid: int, key: int) -> None:
        self.endpoint = endpoint
        self.pid, self.key = pid, key
        self.state = "startup"
        self.user = ""
        self.status = "I"  # ReadyForQuery: I idle, T in a transaction, E failed transaction
        self.settings = dict(_DEFAULT_SETTINGS)
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.prepared: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.cursors: dict[str, Outcome] = {}
        self._scram: ScramExchange | None = None
        self._skip_to_sync = False
        self._running: duckdb.DuckDBPyConnection | None = None
        self.closed = False

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, message: Any) -> Iterator[bytes]:
        """The bytes that answer ``message``, in pieces (rows come as they are read)."""
        if self.state == "startup":
            yield self._startup(message)
        elif self.state == "auth":
            yield self._authenticate(message)
        elif isinstance(message, wire.Terminate):
            self.close()
        elif isinstance(message, wire.Query):
            yield from self._simple(message.sql)
        else:
            yield from self._extended(message)

    def close(self) -> None:
        self.closed = True
        for portal in self.portals.values():
            if portal.outcome is not None and portal.outcome.rows is not None:
                portal.outcome.rows.close()
        for cursor in self.cursors.values():
            if cursor.rows is not None:
                cursor.rows.close()
        if self.cursor is not None:
            with contextlib.suppress(duckdb.Error):
                self.cursor.close()
            self.cursor = None

    def cancel(self) -> None:
        """Interrupt the statement running now, if any (a CancelRequest for this session)."""
        for cursor in (self._running, self.cursor):
            if cursor is not None:
                with contextlib.suppress(duckdb.Error):
                    cursor.interrupt()

    # -- startup and authentication ------------------------------------------------------------

    def _startup(self, message: Any) -> bytes:
        if not isinstance(message, wire.Startup):
            raise wire.ProtocolViolation("expected a startup message")
        self.user = message.params.get("user", "")
        if not self.user:
            self.closed = True
            return wire.error_response(
                sqlstate="28000", message="no PostgreSQL user name specified in startup packet",
                severity="FATAL",
            )  # fmt: skip
        if "application_name" in message.params:
            self.settings["application_name"] = message.params["application_name"]
        verifier = self.endpoint.verifier
        if verifier is None:
            return self._ready_after_auth()
        self.state = "auth"
        self._scram = ScramExchange(verifier)
        return wire.authentication_sasl([ScramExchange.MECHANISM])

    def _authenticate(self, message: Any) -> bytes:
        assert self._scram is not None
        if not isinstance(message, wire.Password):
            raise wire.ProtocolViolation("expected a SASL response")
        try:
            if not self._scram_started:
                mechanism, data = wire.parse_sasl_initial(message.data)
                if mechanism != ScramExchange.MECHANISM:
                    raise AuthenticationFailed(f"unsupported SASL mechanism {mechanism}")
                self._scram_started = True
                return wire.authentication_sasl_continue(self._scram.server_first(data))
            final = self._scram.server_final(message.data)
        except (AuthenticationFailed, wire.ProtocolViolation):
            self.closed = True
            return wire.error_response(
                sqlstate="28P01",
                message=f'password authentication failed for user "{self.user}"',
                severity="FATAL",
            )
        return wire.authentication_sasl_final(final) + self._ready_after_auth()

    _scram_started = False

    def _ready_after_auth(self) -> bytes:
        self.state = "ready"
        self.cursor = self.endpoint.con.cursor()
        out = [wire.authentication_ok()]
        for name in _REPORTED:
            out.append(wire.parameter_status(_REPORTED_NAMES.get(name, name), self.settings[name]))
        out.append(wire.backend_key_data(self.pid, self.key))
        out.append(wire.ready_for_query(self.status))
        return b"".join(out)

    # -- simple query --------------------------------------------------------------------------

    def _simple(self, sql: str) -> Iterator[bytes]:
        try:
            statements = split(sql)
        except SidecarError as exc:
            yield self._error(exc)
            statements = []
        else:
            if not statements:
                yield wire.empty_query_response()
        for statement in statements:
            try:
                outcome = self._run(statement, [])
                if outcome.fields is not None:
                    yield wire.row_description(outcome.fields)
                if outcome.rows is not None:
                    yield from self._send_rows(outcome, None)
                else:
                    yield wire.command_complete(outcome.tag)
            except SidecarError as exc:
                yield self._error(exc)
                break
        yield wire.ready_for_query(self.status)

    def _send_rows(self, outcome: Outcome, limit: int | None) -> Iterator[bytes]:
        """DataRows of up to ``limit`` rows, then CommandComplete or PortalSuspended."""
        assert outcome.rows is not None
        rows = outcome.rows
        if rows.encoded:
            yield rows.encoded
            rows.sent, rows.encoded = 1, b""
            yield wire.command_complete(f"{outcome.tag} 1")
            return
        remaining = limit
        while True:
            chunk = FETCH_BATCH if remaining is None else min(remaining, FETCH_BATCH)
            try:
                table, more = rows.take(chunk)
            except duckdb.Error as exc:
                raise _duckdb_error(exc) from None
            if table is not None and table.num_rows:
                yield wire.encode_rows(table)
                if remaining is not None:
                    remaining -= table.num_rows
            if not more:
                rows.close()
                tag = outcome.tag
                yield wire.command_complete(
                    f"{tag} {rows.sent}" if tag in ("SELECT", "FETCH", "MOVE") else tag
                )
                return
            if remaining is not None and remaining <= 0:
                yield wire.portal_suspended()
                return

    # -- extended query ------------------------------------------------------------------------

    def _extended(self, message: Any) -> Iterator[bytes]:
        if isinstance(message, wire.Sync):
            self._skip_to_sync = False
            yield wire.ready_for_query(self.status)
            return
        if self._skip_to_sync or isinstance(message, wire.Flush):
            return
        try:
            if isinstance(message, wire.Execute):
                yield from self._execute(self._portal(message.portal), message.max_rows)
            else:
                yield self._extended_step(message)
        except SidecarError as exc:
            self._skip_to_sync = True
            yield self._error(exc)

    def _extended_step(self, message: Any) -> bytes:
        if isinstance(message, wire.Parse):
            statements = split(message.sql)
            if len(statements) > 1:
                raise StatementError("cannot insert multiple commands into a prepared statement")
            statement = statements[0] if statements else None
            self.prepared[message.statement] = Prepared(statement, message.param_types)
            return wire.parse_complete()
        if isinstance(message, wire.Bind):
            prepared = self._prepared(message.statement)
            if any(f != 0 for f in message.result_formats):
                raise SidecarError(
                    "binary result format is not supported; ask for text results",
                    sqlstate="0A000",
                )
            params = _bind_params(prepared, message)
            old = self.portals.pop(message.portal, None)
            if old is not None and old.outcome is not None and old.outcome.rows is not None:
                old.outcome.rows.close()
            self.portals[message.portal] = Portal(prepared, params)
            return wire.bind_complete()
        if isinstance(message, wire.Describe):
            if message.kind == "S":
                return self._describe_statement(self._prepared(message.name))
            if message.name not in self.portals and message.name in self.cursors:
                fields = self.cursors[message.name].fields  # a cursor made by DECLARE
                return wire.row_description(fields) if fields else wire.no_data()
            portal = self._portal(message.name)
            if portal.prepared.statement is None:
                return wire.no_data()
            outcome = self._portal_outcome(portal)
            if outcome.fields is None:
                return wire.no_data()
            return wire.row_description(outcome.fields)
        if isinstance(message, wire.Close):
            table: dict[str, Any] = self.prepared if message.kind == "S" else self.portals
            closed = table.pop(message.name, None)
            if isinstance(closed, Portal) and closed.outcome and closed.outcome.rows:
                closed.outcome.rows.close()
            return wire.close_complete()
        if isinstance(message, wire.Unsupported):
            raise SidecarError(
                f"protocol message {message.type!r} is not supported", sqlstate="0A000"
            )
        raise wire.ProtocolViolation(f"unexpected message {type(message).__name__}")

    def _prepared(self, name: str) -> Prepared:
        if name not in self.prepared:
            raise SidecarError(f'prepared statement "{name}" does not exist', sqlstate="26000")
        return self.prepared[name]

    def _portal(self, name: str) -> Portal:
        if name not in self.portals:
            raise SidecarError(f'portal "{name}" does not exist', sqlstate="34000")
        return self.portals[name]

    def _describe_statement(self, prepared: Prepared) -> bytes:
        statement = prepared.statement
        count = statement.params if statement is not None else 0
        types = list(prepared.param_types[:count])
        types += [25] * (count - len(types))
        out = wire.parameter_description([t or 25 for t in types])
        if statement is None:
            return out + wire.no_data()
        if statement.kind == "procedure":
            assert statement.procedure is not None
            fields = _fields(procedures.columns_of(statement.procedure))
            return out + wire.row_description(fields)
        if statement.kind == "predict":
            assert statement.procedure is not None
            call = statement.procedure
            kind = pa.list_(pa.float64()) if call.name == "predict_proba" else pa.float64()
            schema = pa.schema([(call.kwargs["column"], kind)])
            return out + wire.row_description(_arrow_fields(schema))
        if statement.kind == "select":
            cursor = self.endpoint.con.cursor()
            try:
                sql = f"select * from ({statement.sql}) limit 0"
                schema = cursor.sql(sql, params=[None] * statement.params).to_arrow_reader(1).schema
            except duckdb.Error as exc:
                raise _duckdb_error(exc) from None
            finally:
                cursor.close()
            return out + wire.row_description(_arrow_fields(schema))
        if statement.kind in ("fetch", "show"):
            outcome = self._run(statement, [])  # the fields are those of what it reads
            if outcome.rows is not None:
                outcome.rows.close()
            return out + (wire.row_description(outcome.fields) if outcome.fields else b"")
        return out + wire.no_data()

    def _portal_outcome(self, portal: Portal) -> Outcome:
        if portal.outcome is None:
            assert portal.prepared.statement is not None
            portal.outcome = self._run(portal.prepared.statement, portal.params)
        return portal.outcome

    def _execute(self, portal: Portal, max_rows: int) -> Iterator[bytes]:
        if portal.prepared.statement is None:
            yield wire.empty_query_response()
            return
        if portal.done:
            raise SidecarError("portal has been run to completion already", sqlstate="55000")
        outcome = self._portal_outcome(portal)
        if outcome.rows is None:
            portal.done = True
            yield wire.command_complete(outcome.tag)
            return
        suspended = wire.portal_suspended()
        last = b""
        for last in self._send_rows(outcome, max_rows or None):
            yield last
        if last != suspended:
            portal.done = True

    # -- statements ----------------------------------------------------------------------------

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        assert self.cursor is not None
        return self.cursor

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
        if kind in ("select", "declare"):
            self.endpoint.refresh_score_views()
        if kind == "select":
            return self._query(statement.sql, params, statement.tag)
        if kind == "predict":
            assert statement.procedure is not None
            return self._predict(statement.procedure, params)
        if kind == "procedure":
            assert statement.procedure is not None
            result = procedures.call(self.endpoint.trainer, statement.procedure, params)
            return _procedure_outcome(result)
        if kind in ("begin", "commit", "rollback", "savepoint", "release", "rollback_to"):
            return self._transaction(statement)
        if kind == "set":
            assert statement.name is not None
            self.settings[statement.name.lower()] = statement.value or ""
            return Outcome("SET")
        if kind == "reset":
            name = (statement.name or "").lower()
            self.settings[name] = _DEFAULT_SETTINGS.get(name, "")
            return Outcome("RESET")
        if kind == "reset_all":
            self.settings = dict(_DEFAULT_SETTINGS)
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
            self.settings = dict(_DEFAULT_SETTINGS)
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
            for rows in self._open_rows():
                if rows.cursor is None:
                    rows.drain()
            cursor, owned = self._cursor(), None
        self._running = cursor
        try:
            reader = cursor.sql(sql, params=list(params) or None).to_arrow_reader(FETCH_BATCH)
        except duckdb.Error as exc:
            if owned is not None:
                owned.close()
            raise _duckdb_error(exc) from None
        finally:
            self._running = None
        return Outcome(tag, _arrow_fields(reader.schema), Rows(reader, cursor=owned))

    def _open_rows(self) -> Iterator[Rows]:
        for portal in self.portals.values():
            if portal.outcome is not None and portal.outcome.rows is not None:
                yield portal.outcome.rows
        for outcome in self.cursors.values():
            if outcome.rows is not None:
                yield outcome.rows

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
            else:
                values = float(scoring.as_numbers(model, model.predict_matrix(matrix))[0])
            scorer.observe(str(key), 1, time.perf_counter() - started)
        field = (
            wire.Field(column, _FLOAT8_ARRAY, -1)
            if call.name == "predict_proba" else wire.Field(column, FLOAT8.oid, FLOAT8.size)
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
            if self.status != "I":
                cursor.execute("rollback")  # nothing was written: a read-only transaction
            tag = "ROLLBACK" if self.status == "E" or kind == "rollback" else "COMMIT"
            self.status = "I"
            self._close_cursor(None)
            return Outcome(tag)
        if self.status == "I":
            raise SidecarError(
                f"{statement.tag} can only be used in transaction blocks", sqlstate="25P01"
            )
        if kind == "rollback_to" and self.status == "E":
            self.status = "T"
        return Outcome(statement.tag)

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
        return Outcome("SHOW", _arrow_fields(table.schema), _given(table))

    def _fetch(self, statement: Statement) -> Outcome:
        name = statement.name or ""
        cursor = self.cursors.get(name)
        if cursor is None or cursor.rows is None:
            raise SidecarError(f'cursor "{name}" does not exist', sqlstate="34000")
        count = statement.count if statement.count is not None else 1
        table, _ = cursor.rows.take(count)
        if table is None:
            table = pa.Table.from_batches([], schema=_schema_of(cursor))
        if statement.kind == "move":
            return Outcome(f"MOVE {table.num_rows}")
        return Outcome("FETCH", cursor.fields, _given(table))

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

    def _error(self, exc: SidecarError) -> bytes:
        if self.status == "T":
            self.status = "E"
        return wire.error_response(sqlstate=exc.sqlstate, message=str(exc))


# -- helpers ---------------------------------------------------------------------------------------


def _resolve(value: Any, params: Sequence[Any]) -> Any:
    """A constant argument with its ``$n`` parameters filled in."""
    if isinstance(value, Parameter):
        if not 1 <= value.number <= len(params):
            raise SidecarError(f"there is no parameter ${value.number}", sqlstate="42P02")
        return params[value.number - 1]
    if isinstance(value, list):
        return [_resolve(v, params) for v in value]
    return value


def _given(table: pa.Table) -> Rows:
    return Rows(None, table.to_batches(), table.num_rows)


def _schema_of(outcome: Outcome) -> pa.Schema:
    rows = outcome.rows
    if rows is not None and rows.reader is not None:
        return rows.reader.schema
    if rows is not None and rows.buffer:
        return rows.buffer[0].schema
    return pa.schema([(f.name, pa.string()) for f in outcome.fields or []])


def _arrow_fields(schema: pa.Schema) -> list[wire.Field]:
    fields = []
    for item in schema:
        kind = pg_type_for_arrow(item.type)
        fields.append(wire.Field(item.name, kind.oid, kind.size))
    return fields


def _fields(columns: list[tuple[str, str]]) -> list[wire.Field]:
    return [wire.Field(name, _TYPES[kind].oid, _TYPES[kind].size) for name, kind in columns]


def _procedure_outcome(result: ProcedureResult) -> Outcome:
    fields = _fields(result.columns)
    names = [name for name, _ in result.columns]
    table = pa.table({name: [row[i] for row in result.rows] for i, name in enumerate(names)})
    return Outcome("SELECT", fields, _given(table))


def _bind_params(prepared: Prepared, message: wire.Bind) -> list[Any]:
    formats = message.param_formats
    params = []
    for i, data in enumerate(message.params):
        fmt = formats[0] if len(formats) == 1 else (formats[i] if formats else 0)
        oid = prepared.param_types[i] if i < len(prepared.param_types) else 0
        params.append(parse_binary_param(data, oid) if fmt == 1 else parse_text_param(data, oid))
    return params


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


def _duckdb_error(exc: duckdb.Error) -> SidecarError:
    """A DuckDB error as the endpoint reports it: the SQLSTATE closest to its kind."""
    found = scoring_error(exc)
    if found is not None:
        return found
    if isinstance(exc, duckdb.InterruptException):
        return SidecarError("canceling statement due to user request", sqlstate="57014")
    message = str(exc).strip()
    for prefix in ("Catalog Error: ", "Binder Error: ", "Parser Error: ", "Conversion Error: ",
                   "Invalid Input Error: ", "Out of Range Error: "):  # fmt: skip
        message = message.removeprefix(prefix)
    for kind, sqlstate in _DUCKDB_STATES:
        if isinstance(exc, kind):
            return SidecarError(message, sqlstate=sqlstate)
    return SidecarError(message, sqlstate="XX000")
