"""One client of the SQL endpoint: startup, authentication, simple and extended query.

A session turns the messages a client sends into the bytes it answers with; the server's
connection loop owns the socket. Each session has its own DuckDB cursor, prepared statements,
portals and cursors, so one client's errors or dropped connection never touch another's. The
statements themselves are run by :class:`predictor.execution.StatementRunner`, which a session is.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import duckdb
import pglast.ast
import pglast.parser
import pyarrow as pa

from mirror.errors import SidecarError
from predictor import procedures, results, wire
from predictor.allow_list import Readable
from predictor.binary_parameters import parse_binary_param
from predictor.execution import Endpoint, StatementRunner, checked_setting
from predictor.results import FETCH_BATCH, Outcome, Portal, Prepared
from predictor.scram import AuthenticationFailed, ScramExchange
from predictor.statements import Statement, StatementError, classify, parse
from predictor.text_parameters import parse_text_param
from predictor.translation import ARRAY_RESULTS

_SHALLOW = 4096
"""SQL shorter than this cannot nest deeper than libpg_query allows (one level takes a byte)."""

log = logging.getLogger("pgml_sidecar")

_REPORTED = ("server_version", "server_encoding", "client_encoding", "datestyle", "timezone",
             "intervalstyle", "integer_datetimes", "standard_conforming_strings",
             "application_name", "is_superuser", "default_transaction_read_only")  # fmt: skip
_REPORTED_NAMES = {
    "datestyle": "DateStyle",
    "timezone": "TimeZone",
    "intervalstyle": "IntervalStyle",
}
_STARTUP_SETTINGS = ("application_name", "statement_timeout")
"""Settings a client may give in its startup packet, or in ``options`` as ``-c name=value``."""


class Session(StatementRunner):
    """The protocol state of one client connection."""

    def __init__(self, endpoint: Endpoint, *, pid: int, key: int) -> None:
        self.endpoint = endpoint
        self.pid, self.key = pid, key
        self.state = "startup"
        self.user = ""
        self.role = ""
        """The source role this session acts for (set once authenticated)."""
        self.status = "I"  # ReadyForQuery: I idle, T in a transaction, E failed transaction
        self.settings = dict(endpoint.session_defaults)
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.prepared: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.cursors: dict[str, Outcome] = {}
        self._scram: ScramExchange | None = None
        self._skip_to_sync = False
        self._interrupt_lock = threading.Lock()
        self.closed = False

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, message: Any) -> Iterator[bytes]:
        """The bytes that answer ``message``, in pieces (rows come as they are read)."""
        # No lock: a cancel racing these lines is one that came while idle, which PostgreSQL
        # ignores too; a reason left from the message before is cleared before handling is on.
        self.interrupted = None
        self.handling = True
        try:
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
        finally:
            self.handling = False

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
        self.interrupt("cancel")

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
        try:
            self.settings.update(_startup_settings(message.params))
        except SidecarError as exc:
            self.closed = True
            return wire.error_response(sqlstate=exc.sqlstate, message=str(exc), severity="FATAL")
        users = self.endpoint.users
        verifier = users.verifier(self.user) if users is not None else self.endpoint.verifier
        if verifier is None:
            self.state = "authenticated"
            return b""
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
        self.state = "authenticated"
        return wire.authentication_sasl_final(final)

    _scram_started = False

    def begin(self) -> bytes:
        """Set the authenticated session up; AuthenticationOk and what follows it.

        Startup and authentication run on the endpoint's one admission thread, and must never
        wait (no query to the source, no lock held by a query); what may wait belongs here,
        on the session's own thread.
        """
        assert self.state == "authenticated"
        self.state = "ready"
        users = self.endpoint.users
        known = users.lookup(self.user) if users is not None else None
        self.role = known.role if known is not None else self.user
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
            check_depth(sql)
            parsed = parse(sql)
        except SidecarError as exc:
            yield self._error(exc)
            parsed = []
        else:
            if not parsed:
                yield wire.empty_query_response()
        implicit = self._implicit_transaction(parsed)
        for node, text in parsed:
            self.deadline = self.statement_deadline()  # each statement of a query has its own
            try:
                # checked just before it runs: the statement before may have made a name
                statement = self._classify(node, text)
                outcome = self._run(statement, [])
                yield from outcome.take_notices()
                if outcome.fields is not None:
                    yield wire.row_description(outcome.fields)
                if outcome.rows is not None:
                    yield from self._send_rows(outcome, None)
                else:
                    yield wire.command_complete(outcome.tag)
            except SidecarError as exc:
                yield self._error(placed(exc, sql))
                break
            finally:
                self.deadline = None
        if implicit:
            try:
                self._end_implicit_transaction()
            except SidecarError as exc:
                yield self._error(placed(exc, sql))
        yield wire.ready_for_query(self.status)

    def _implicit_transaction(self, parsed: list[tuple[Any, str]]) -> bool:
        """Open the implicit transaction of a query string of several statements outside a
        transaction block, as PostgreSQL runs them (all or nothing); whether it was opened. A
        string that begins or ends a transaction itself is run one statement at a time."""
        if self.status != "I" or len(parsed) < 2:
            return False
        if any(isinstance(node, pglast.ast.TransactionStmt) for node, _ in parsed):
            return False
        self._run(Statement("begin", "", tag="BEGIN"), [])
        return True

    def _end_implicit_transaction(self) -> None:
        """Commit the implicit transaction, or roll it back after an error."""
        ending = "rollback" if self.status == "E" else "commit"
        self._run(Statement(ending, "", tag=ending.upper()), [])

    def _split(self, sql: str) -> list[Statement]:
        """The statements of ``sql``, checked against the allow-list."""
        check_depth(sql)
        try:
            return [self._classify(node, text) for node, text in parse(sql)]
        except SidecarError as exc:
            raise placed(exc, sql) from None
        except RecursionError:  # a tree deep enough for pglast, too deep for Python's walks
            raise _too_deep() from None

    def _classify(self, node: Any, text: str) -> Statement:
        """One parsed statement checked against the allow-list, this session's role and
        workspace."""
        if self.status == "E" and not isinstance(node, pglast.ast.TransactionStmt):
            raise SidecarError(
                "current transaction is aborted, commands ignored until end of transaction block",
                sqlstate="25P02",
            )
        viewer = None if self.endpoint.access is None else self.role
        try:
            return classify(
                node,
                text,
                relations=self.endpoint.relations,
                readable=self._readable(),
                viewer=viewer,
                workspace=self.workspace_names(),
                scope=self.catalog_scope,
            )
        except RecursionError:
            raise _too_deep() from None

    def _readable(self) -> Readable | None:
        """What this session's source role may read (None: everything served, no source)."""
        access = self.endpoint.access
        return None if access is None else access.readable(self.role)

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
            table, more = self.take(rows, chunk)
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
            self.deadline = None
            yield wire.ready_for_query(self.status)
            return
        if self._skip_to_sync or isinstance(message, wire.Flush):
            return
        if self.deadline is None:  # PostgreSQL's rule: from Parse, Bind, Describe or Execute
            self.deadline = self.statement_deadline()  # to the end of Execute, or Sync
        try:
            if isinstance(message, wire.Execute):
                try:
                    yield from self._execute(self._portal(message.portal), message.max_rows)
                finally:
                    self.deadline = None
            else:
                yield self._extended_step(message)
        except SidecarError as exc:
            self._skip_to_sync = True
            yield self._error(exc)

    def _extended_step(self, message: Any) -> bytes:
        if isinstance(message, wire.Parse):
            statements = self._split(message.sql)
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
            fields = results.fields(procedures.columns_of(statement.procedure))
            return out + wire.row_description(fields)
        if statement.kind == "predict":
            assert statement.procedure is not None
            call = statement.procedure
            kind = pa.list_(pa.float64()) if call.name in ARRAY_RESULTS else pa.float64()
            schema = pa.schema([(call.kwargs["column"], kind)])
            return out + wire.row_description(results.arrow_fields(schema))
        if statement.kind == "select":
            cursor = self.endpoint.con.cursor()
            try:
                sql = f"select * from ({statement.sql}) limit 0"
                with self.executing(cursor):
                    query = cursor.sql(sql, params=[None] * statement.params)
                    schema = query.to_arrow_reader(1).schema
            finally:
                cursor.close()
            return out + wire.row_description(results.arrow_fields(schema))
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
        yield from outcome.take_notices()
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

    def _error(self, exc: SidecarError) -> bytes:
        if self.status == "T":
            self.status = "E"
        hint = getattr(exc, "hint", None)
        position = getattr(exc, "position", None)
        return wire.error_response(
            sqlstate=exc.sqlstate, message=str(exc), hint=hint, position=position
        )


def placed(exc: SidecarError, sql: str) -> SidecarError:
    """``exc`` with the 1-based character position PostgreSQL reports, from the byte offset
    into ``sql`` the allow-list found the thing it refused at (if it did)."""
    location = getattr(exc, "location", None)
    if location is not None and getattr(exc, "position", None) is None:
        exc.position = len(sql.encode()[:location].decode(errors="ignore")) + 1  # type: ignore[attr-defined]
    return exc


def check_depth(sql: str) -> None:
    """Refuse SQL nested too deeply for pglast, as PostgreSQL's max_stack_depth does.

    pglast builds its tree recursively without a depth check: ``1+1+...+1`` with some 25,000
    terms (50 KB) overflows the thread's stack and kills the process. libpg_query checks its
    stack depth when it serialises a tree, and refuses at a fifth of that depth; long SQL is
    asked there first.
    """
    if len(sql) < _SHALLOW:
        return
    try:
        pglast.parser.parse_sql_protobuf(sql)
    except pglast.parser.ParseError as exc:
        if "stack depth" in str(exc) or "nested too deeply" in str(exc):
            raise _too_deep() from None
        # other syntax errors are split()'s to report, with their position


def _too_deep() -> SidecarError:
    return SidecarError(
        "stack depth limit exceeded: the statement nests expressions too deeply", sqlstate="54001"
    )


def _startup_settings(params: Mapping[str, str]) -> dict[str, str]:
    """The settings a startup packet gives: as parameters, or in ``options`` (``-c name=value``)."""
    given = {name: params[name] for name in _STARTUP_SETTINGS if name in params}
    try:
        words = shlex.split(params.get("options", ""))
    except ValueError:
        words = []
    for i, word in enumerate(words):
        if word == "-c" and i + 1 < len(words):
            word = "--" + words[i + 1]
        elif word.startswith("-c"):
            word = "--" + word[2:]
        name, sep, value = word.removeprefix("--").partition("=")
        name = name.replace("-", "_").lower()
        if word.startswith("--") and sep and name in _STARTUP_SETTINGS:
            given[name] = value
    return {name: checked_setting(name, value) for name, value in given.items()}


def _bind_params(prepared: Prepared, message: wire.Bind) -> list[Any]:
    formats = message.param_formats
    params = []
    for i, data in enumerate(message.params):
        fmt = formats[0] if len(formats) == 1 else (formats[i] if formats else 0)
        oid = prepared.param_types[i] if i < len(prepared.param_types) else 0
        params.append(parse_binary_param(data, oid) if fmt == 1 else parse_text_param(data, oid))
    return params
