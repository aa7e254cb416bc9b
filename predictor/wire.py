"""PostgreSQL frontend/backend protocol 3.0 messages as pure functions over bytes.

The server loop owns the socket: it feeds what it reads to a :class:`FrontendParser`, acts on the
messages that come out, and writes what the encoders below return. Nothing here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.errors import SidecarError
from predictor.column_text import text_column

PROTOCOL_3_0 = 196608
"""The protocol version of a StartupMessage for protocol 3.0 (3 << 16)."""
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
MAX_STARTUP_MESSAGE = 10000
"""Postgres refuses startup packets longer than this (MAX_STARTUP_PACKET_LENGTH)."""
MAX_SASL_MESSAGE = 1024
"""Postgres refuses SASL messages longer than this (PG_MAX_SASL_MESSAGE_LENGTH): the limit of
every message before authentication completes."""
MAX_MESSAGE = 64 << 20
"""The longest message an authenticated client may send."""

SSL_REFUSED = b"N"
GSSENC_REFUSED = b"N"


class ProtocolViolation(SidecarError):
    """The client sent bytes that are not a valid protocol message; the connection must close."""

    sqlstate = "08P01"


# -- frontend messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Startup:
    """StartupMessage: the protocol version and the connection parameters (user, database...)."""

    version: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS before its StartupMessage."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption before its StartupMessage."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """On a new connection: cancel the query running in the backend with this pid and key."""

    pid: int
    key: int


@dataclass(frozen=True, slots=True)
class Query:
    """A simple-protocol query string (may hold several statements)."""

    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    """Prepare ``sql`` as ``statement`` ('' is the unnamed one); parameter type OIDs, 0 unknown."""

    statement: str
    sql: str
    param_types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind parameter values to a prepared statement, making portal ``portal``."""

    portal: str
    statement: str
    param_formats: tuple[int, ...]
    """Empty: all text; one: for all parameters; else one per parameter. 0 text, 1 binary."""
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]
    """Same convention as ``param_formats``, for the result columns."""

    def param_format(self, index: int) -> int:
        """Return the format code (0 text, 1 binary) of parameter ``index``."""
        return _format_of(self.param_formats, index)

    def result_format(self, index: int) -> int:
        """Return the format code (0 text, 1 binary) of result column ``index``."""
        return _format_of(self.result_formats, index)


def _format_of(formats: tuple[int, ...], index: int) -> int:
    if not formats:
        return 0
    return formats[0] if len(formats) == 1 else formats[index]


@dataclass(frozen=True, slots=True)
class Describe:
    """Describe a prepared statement (kind 'S') or a portal (kind 'P')."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a portal, returning at most ``max_rows`` rows (0: all)."""

    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close a prepared statement (kind 'S') or a portal (kind 'P')."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    """End of an extended-protocol batch: commit or roll back, then ReadyForQuery."""


@dataclass(frozen=True, slots=True)
class Flush:
    """Send whatever output is pending."""


@dataclass(frozen=True, slots=True)
class Terminate:
    """The client is closing the connection."""


@dataclass(frozen=True, slots=True)
class Password:
    """A 'p' message: PasswordMessage, SASLInitialResponse or SASLResponse, by context.

    Read it with :func:`parse_password` or :func:`parse_sasl_initial`, or use ``data`` as the
    SASLResponse payload.
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A valid message this server does not implement: CopyData/Done/Fail or FunctionCall."""

    type: str


FrontendMessage = (
    Startup | SSLRequest | GSSENCRequest | CancelRequest | Query | Parse | Bind | Describe
    | Execute | Close | Sync | Flush | Terminate | Password | Unsupported
)  # fmt: skip


class _Reader:
    """Read the fields of one message body, raising ProtocolViolation on anything malformed."""

    __slots__ = ("data", "name", "pos")

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name
        self.pos = 0

    def violation(self, what: str) -> ProtocolViolation:
        return ProtocolViolation(f"invalid {self.name} message: {what}")

    def take(self, size: int, what: str) -> bytes:
        if self.pos + size > len(self.data):
            raise self.violation(f"{what} runs past the end of the message")
        view = self.data[self.pos : self.pos + size]
        self.pos += size
        return view

    def int16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big", signed=True)

    def int32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big", signed=True)

    def uint32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big", signed=False)

    def count(self, what: str) -> int:
        n = self.int16(what)
        if n < 0:
            raise self.violation(f"negative {what} ({n})")
        return n

    def string(self, what: str) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise self.violation(f"{what} is not NUL-terminated")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return decode_text(raw, what=f"{what} of the {self.name} message")

    def byte(self, what: str) -> str:
        return chr(self.take(1, what)[0])

    def end(self) -> None:
        if self.pos != len(self.data):
            extra = len(self.data) - self.pos
            raise self.violation(f"{extra} unexpected byte(s) after the last field")


def decode_text(raw: bytes, *, what: str) -> str:
    """Decode UTF-8 from the client; invalid bytes are a ProtocolViolation with SQLSTATE 22021."""
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise ProtocolViolation(
            f"invalid byte sequence for encoding UTF8 in {what} at byte {e.start}",
            sqlstate="22021",
        ) from None


def _parse_query(r: _Reader) -> Query:
    return Query(r.string("query string"))


def _parse_parse(r: _Reader) -> Parse:
    statement = r.string("statement name")
    sql = r.string("query string")
    n = r.count("parameter type count")
    types = tuple(r.uint32("parameter type") for _ in range(n))
    return Parse(statement, sql, types)


def _parse_bind(r: _Reader) -> Bind:
    portal = r.string("portal name")
    statement = r.string("statement name")
    param_formats = _formats(r, "parameter format")
    n = r.count("parameter count")
    if len(param_formats) > 1 and len(param_formats) != n:
        raise r.violation(f"{len(param_formats)} parameter formats but {n} parameters")
    params: list[bytes | None] = []
    for _ in range(n):
        size = r.int32("parameter length")
        if size < -1:
            raise r.violation(f"negative parameter length ({size})")
        params.append(None if size == -1 else r.take(size, "parameter value"))
    result_formats = _formats(r, "result format")
    return Bind(portal, statement, param_formats, tuple(params), result_formats)


def _formats(r: _Reader, what: str) -> tuple[int, ...]:
    n = r.count(f"{what} count")
    codes = tuple(r.int16(f"{what} code") for _ in range(n))
    for code in codes:
        if code not in (0, 1):
            raise r.violation(f"unsupported {what} code {code}")
    return codes


def _parse_describe(r: _Reader) -> Describe:
    return Describe(_target_kind(r), r.string("name"))


def _parse_close(r: _Reader) -> Close:
    return Close(_target_kind(r), r.string("name"))


def _target_kind(r: _Reader) -> str:
    kind = r.byte("target kind")
    if kind not in ("S", "P"):
        raise r.violation(f"target kind {kind!r} is neither 'S' nor 'P'")
    return kind


def _parse_execute(r: _Reader) -> Execute:
    portal = r.string("portal name")
    max_rows = r.int32("row limit")
    return Execute(portal, max(max_rows, 0))


def _parse_password(r: _Reader) -> Password:
    return Password(r.take(len(r.data), "data"))


def _parse_sync(r: _Reader) -> Sync:
    return Sync()


def _parse_flush(r: _Reader) -> Flush:
    return Flush()


def _parse_terminate(r: _Reader) -> Terminate:
    return Terminate()


def _unsupported(kind: str) -> Callable[[_Reader], FrontendMessage]:
    def parse(r: _Reader) -> FrontendMessage:
        r.pos = len(r.data)
        return Unsupported(kind)

    return parse


def _unknown_type(kind: bytes) -> NoReturn:
    raise ProtocolViolation(f"invalid frontend message type {kind[0]} ({kind!r})")


_Parser = tuple[str, Callable[[_Reader], FrontendMessage]]
_TYPED: dict[bytes, _Parser] = {
    b"Q": ("Query", _parse_query),
    b"P": ("Parse", _parse_parse),
    b"B": ("Bind", _parse_bind),
    b"D": ("Describe", _parse_describe),
    b"E": ("Execute", _parse_execute),
    b"C": ("Close", _parse_close),
    b"S": ("Sync", _parse_sync),
    b"H": ("Flush", _parse_flush),
    b"X": ("Terminate", _parse_terminate),
    b"p": ("password", _parse_password),
}
_UNSUPPORTED: dict[bytes, _Parser] = {
    b"d": ("CopyData", _unsupported("d")),
    b"c": ("CopyDone", _unsupported("c")),
    b"f": ("CopyFail", _unsupported("f")),
    b"F": ("FunctionCall", _unsupported("F")),
}


def parse_password(data: bytes) -> str:
    """Return the password of a PasswordMessage (cleartext authentication)."""
    r = _Reader(bytes(data), "password")
    password = r.string("password")
    r.end()
    return password


def parse_sasl_initial(data: bytes) -> tuple[str, bytes]:
    """Return the mechanism and initial response of a SASLInitialResponse ('p') message."""
    r = _Reader(bytes(data), "SASLInitialResponse")
    mechanism = r.string("mechanism name")
    size = r.int32("initial response length")
    if size < -1:
        raise r.violation(f"negative initial response length ({size})")
    response = b"" if size == -1 else r.take(size, "initial response")
    r.end()
    return mechanism, response


def _parse_untyped(body: bytes) -> FrontendMessage:
    r = _Reader(body, "startup packet")
    code = r.int32("protocol version")
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        r.name = "CancelRequest"
        pid, key = r.int32("process id"), r.uint32("secret key")
        r.end()
        return CancelRequest(pid, key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0",
            sqlstate="0A000",
        )
    r.name = "StartupMessage"
    params: dict[str, str] = {}
    while True:
        name = r.string("parameter name")
        if name == "":
            break
        params[name] = r.string(f"value of parameter {name!r}")
    r.end()
    return Startup(code, params)


class FrontendParser:
    """Split bytes from a client into messages; the first message(s) have no type byte.

    Before the StartupMessage, the client may send SSLRequest or GSSENCRequest (each refused
    with one byte, then the client goes on) or a CancelRequest (then closes). Everything after
    a StartupMessage is a typed message, so the parser switches by itself once it returns one;
    :meth:`startup_done` says the same explicitly.

    A message longer than ``max_message`` (a startup packet longer than 10,000 bytes) is refused
    from its length field, before its body is read. The limit may change between messages: the
    server keeps it small until the client has authenticated.
    """

    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        self._typed = False

    def startup_done(self) -> None:
        """Read every message from now on as a typed one."""
        self._typed = True

    @property
    def buffered(self) -> int:
        """How many bytes are waiting for the rest of their message."""
        return len(self._buffer)

    def push(self, data: bytes) -> None:
        """Take bytes from the client without parsing them yet (see :meth:`next_message`)."""
        self._buffer += data

    def next_message(self) -> FrontendMessage | None:
        """The next complete message, or None until more bytes come."""
        message, end = self._next(self._buffer, 0)
        if message is not None:
            del self._buffer[:end]
            if isinstance(message, Startup):
                self._typed = True
        return message

    def feed(self, data: bytes) -> list[FrontendMessage]:
        """Take bytes from the client; return the messages now complete, keep the rest."""
        self._buffer += data
        messages: list[FrontendMessage] = []
        pos = 0
        buffer = self._buffer
        try:
            while True:
                message, pos = self._next(buffer, pos)
                if message is None:
                    break
                messages.append(message)
                if isinstance(message, Startup):
                    self._typed = True
        finally:
            del buffer[:pos]
        return messages

    def _next(self, buffer: bytearray, pos: int) -> tuple[FrontendMessage | None, int]:
        if self._typed:
            if len(buffer) - pos < 5:
                return None, pos
            kind = bytes(buffer[pos : pos + 1])
            size = int.from_bytes(buffer[pos + 1 : pos + 5], "big", signed=True)
            name, parse = _TYPED.get(kind) or _UNSUPPORTED.get(kind) or _unknown_type(kind)
            self._check_size(size, self.max_message, f"{name} message")
            end = pos + 1 + size
            if len(buffer) < end:
                return None, pos
            r = _Reader(bytes(buffer[pos + 5 : end]), name)
            message = parse(r)
            r.end()
            return message, end
        if len(buffer) - pos < 4:
            return None, pos
        size = int.from_bytes(buffer[pos : pos + 4], "big", signed=True)
        if size < 4:
            raise ProtocolViolation(f"invalid startup packet length {size}: less than 4")
        if size < 8 or size > MAX_STARTUP_MESSAGE:
            raise ProtocolViolation("invalid length of startup packet")
        end = pos + size
        if len(buffer) < end:
            return None, pos
        return _parse_untyped(bytes(buffer[pos + 4 : end])), end

    @staticmethod
    def _check_size(size: int, limit: int, what: str) -> None:
        if size < 4:
            raise ProtocolViolation(f"invalid {what} length {size}: less than 4")
        if size > limit:
            raise ProtocolViolation(f"{what} too large: {size} bytes, limit {limit}")


# -- backend messages -----------------------------------------------------------------------------


def _cstring(text: str) -> bytes:
    """Encode a NUL-terminated string (a NUL inside, never valid Postgres text, becomes U+FFFD)."""
    return text.replace("\x00", "\ufffd").encode() + b"\x00"


def _message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack(">i", len(body) + 4) + body


def authentication_ok() -> bytes:
    """AuthenticationOk."""
    return _message(b"R", struct.pack(">i", 0))


def authentication_cleartext() -> bytes:
    """AuthenticationCleartextPassword: ask for the password in the clear."""
    return _message(b"R", struct.pack(">i", 3))


def authentication_sasl(mechanisms: Sequence[str]) -> bytes:
    """AuthenticationSASL: offer these SASL mechanisms."""
    names = b"".join(_cstring(m) for m in mechanisms)
    return _message(b"R", struct.pack(">i", 10) + names + b"\x00")


def authentication_sasl_continue(data: bytes) -> bytes:
    """AuthenticationSASLContinue carrying a server challenge (SCRAM server-first-message)."""
    return _message(b"R", struct.pack(">i", 11) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    """AuthenticationSASLFinal carrying the outcome (SCRAM server-final-message)."""
    return _message(b"R", struct.pack(">i", 12) + data)


def parameter_status(name: str, value: str) -> bytes:
    """ParameterStatus: report a run-time parameter (server_version, client_encoding...)."""
    return _message(b"S", _cstring(name) + _cstring(value))


def backend_key_data(pid: int, key: int) -> bytes:
    """BackendKeyData: the pid and secret key the client needs to cancel queries."""
    return _message(b"K", struct.pack(">iI", pid, key & 0xFFFFFFFF))


def ready_for_query(status: str) -> bytes:
    """ReadyForQuery; ``status`` is 'I' idle, 'T' in a transaction, 'E' in a failed one."""
    if status not in ("I", "T", "E"):
        raise ValueError(f"transaction status must be 'I', 'T' or 'E', not {status!r}")
    return _message(b"Z", status.encode())


def negotiate_protocol_version(newest_minor: int, unrecognized: Iterable[str] = ()) -> bytes:
    """NegotiateProtocolVersion: the newest minor version served, and options not recognised."""
    names = list(unrecognized)
    body = struct.pack(">ii", newest_minor, len(names)) + b"".join(_cstring(n) for n in names)
    return _message(b"v", body)


@dataclass(frozen=True, slots=True)
class Field:
    """One column of a RowDescription."""

    name: str
    type_oid: int
    type_size: int
    type_modifier: int = -1
    format: int = 0
    table_oid: int = 0
    column: int = 0


_FIELD = struct.Struct(">IhIhih")


def row_description(fields: Sequence[Field]) -> bytes:
    """RowDescription: the columns of the rows that follow."""
    parts = [struct.pack(">h", len(fields))]
    for f in fields:
        parts.append(_cstring(f.name))
        parts.append(
            _FIELD.pack(f.table_oid, f.column, f.type_oid, f.type_size, f.type_modifier, f.format)
        )
    return _message(b"T", b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    """DataRow: one row of values already in their wire format; None is NULL."""
    parts = [struct.pack(">h", len(values))]
    for v in values:
        parts.append(b"\xff\xff\xff\xff" if v is None else struct.pack(">i", len(v)) + v)
    return _message(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    """CommandComplete with a tag such as 'SELECT 3' or 'SET'."""
    return _message(b"C", _cstring(tag))


def empty_query_response() -> bytes:
    """EmptyQueryResponse: the query string held no statement."""
    return _message(b"I")


def _notice_fields(
    sqlstate: str,
    message: str,
    severity: str,
    detail: str | None,
    hint: str | None,
    position: int | None,
) -> bytes:
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        raise ValueError(f"SQLSTATE must be 5 letters or digits, not {sqlstate!r}")
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
    if detail is not None:
        fields.append((b"D", detail))
    if hint is not None:
        fields.append((b"H", hint))
    if position is not None:
        fields.append((b"P", str(position)))
    return b"".join(code + _cstring(text) for code, text in fields) + b"\x00"


def error_response(
    *,
    sqlstate: str,
    message: str,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
) -> bytes:
    """ErrorResponse; ``position`` is a 1-based character index into the query string."""
    return _message(b"E", _notice_fields(sqlstate, message, severity, detail, hint, position))


def notice_response(
    *,
    sqlstate: str,
    message: str,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
) -> bytes:
    """NoticeResponse: a warning or notice, same fields as an error."""
    return _message(b"N", _notice_fields(sqlstate, message, severity, detail, hint, position))


def parse_complete() -> bytes:
    """ParseComplete."""
    return _message(b"1")


def bind_complete() -> bytes:
    """BindComplete."""
    return _message(b"2")


def close_complete() -> bytes:
    """CloseComplete."""
    return _message(b"3")


def no_data() -> bytes:
    """NoData: the statement or portal returns no rows."""
    return _message(b"n")


def parameter_description(oids: Sequence[int]) -> bytes:
    """ParameterDescription: the type OIDs of a prepared statement's parameters."""
    return _message(b"t", struct.pack(f">h{len(oids)}I", len(oids), *oids))


def portal_suspended() -> bytes:
    """PortalSuspended: Execute stopped at its row limit; the portal can go on."""
    return _message(b"s")


# -- many rows at once ----------------------------------------------------------------------------

_NULL_LENGTH = -1


def data_rows(columns: Sequence[pa.Array]) -> bytes:
    """Return the DataRow messages of columns of wire-format values (string or binary arrays).

    All columns have the same length; a null is sent as NULL. Built with numpy and one Arrow
    kernel: no Python code runs per value.
    """
    if not columns:
        raise ValueError("a DataRow needs at least one column")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError("columns differ in length")
    if n == 0:
        return b""
    lengths = np.full(n, 7 + 4 * len(columns), dtype=np.int64)
    pieces: list[pa.Array] = []
    for column in columns:
        values = _large_binary(column)
        offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset :][: n + 1]
        size = np.diff(offsets)
        if values.null_count:
            valid = np.unpackbits(np.frombuffer(values.buffers()[0], np.uint8), bitorder="little")
            size = np.where(valid[values.offset :][:n], size, _NULL_LENGTH)
            lengths += np.maximum(size, 0)
        else:
            lengths += size
        pieces.append(_fixed_width(size.astype(">i4").view(np.uint8), 4))
        pieces.append(values)
    if lengths.max() - 1 > 0x7FFFFFFF:
        raise ValueError("a row is larger than a protocol message can be")
    header = np.empty((n, 7), dtype=np.uint8)
    header[:, 0] = ord("D")
    header[:, 1:5] = (lengths - 1).astype(">i4").view(np.uint8).reshape(n, 4)
    header[:, 5:7] = np.frombuffer(struct.pack(">h", len(columns)), np.uint8)
    rows = pc.binary_join_element_wise(
        _fixed_width(header.reshape(-1), 7), *pieces, _EMPTY, null_handling="replace"
    )
    offsets = np.frombuffer(rows.buffers()[1], np.int64)
    start, stop = int(offsets[rows.offset]), int(offsets[rows.offset + n])
    return rows.buffers()[2][start:stop].to_pybytes()


_EMPTY = pa.scalar(b"", pa.large_binary())


def _large_binary(column: pa.Array) -> pa.Array:
    t = column.type
    if pa.types.is_large_binary(t):
        return column
    if pa.types.is_large_string(t):
        return column.view(pa.large_binary())
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return pc.cast(column.view(pa.binary()), pa.large_binary())
    raise TypeError(f"DataRow values must be string or binary, not {t}")


def _fixed_width(data: np.ndarray, width: int) -> pa.Array:
    """Return a large_binary array whose values are consecutive ``width``-byte slices of data."""
    n = len(data) // width
    offsets = np.arange(0, width * n + 1, width, dtype=np.int64)
    return pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def encode_rows(table: pa.Table | pa.RecordBatch) -> bytes:
    """Return all DataRow messages of a table's rows, every value in Postgres text format."""
    if table.num_rows == 0:
        return b""
    if isinstance(table, pa.RecordBatch):
        return data_rows([text_column(c) for c in table.columns])
    return b"".join(
        data_rows([text_column(c) for c in batch.columns]) for batch in table.to_batches()
    )
