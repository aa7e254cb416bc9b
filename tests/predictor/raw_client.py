"""A bare-bones protocol v3 client for tests: exact messages, and the server's replies by type."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def startup(user: str = "pgml", database: str = "pgml", **params: str) -> bytes:
    body = struct.pack("!i", 196608) + cstring("user") + cstring(user)
    body += cstring("database") + cstring(database)
    body += b"".join(cstring(name) + cstring(value) for name, value in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, 80877103)


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiiI", 16, 80877102, pid, key)


def query(sql: str) -> bytes:
    return message(b"Q", cstring(sql))


def parse(sql: str, name: str = "", types: Sequence[int] = ()) -> bytes:
    body = cstring(name) + cstring(sql) + struct.pack("!h", len(types))
    body += b"".join(struct.pack("!i", t) for t in types)
    return message(b"P", body)


def bind(params: Sequence[bytes | None] = (), portal: str = "", name: str = "") -> bytes:
    body = cstring(portal) + cstring(name) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return message(b"B", body + struct.pack("!h", 0))


def execute(max_rows: int = 0, portal: str = "") -> bytes:
    return message(b"E", cstring(portal) + struct.pack("!i", max_rows))


def describe(kind: str, name: str = "") -> bytes:
    return message(b"D", kind.encode() + cstring(name))


SYNC = message(b"S", b"")
TERMINATE = message(b"X", b"")


class RawClient:
    """A socket to the endpoint that reads replies as (type, body) pairs."""

    def __init__(self, port: int, *, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.pending = b""

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def read(self) -> tuple[bytes, bytes]:
        while len(self.pending) < 5 or len(self.pending) < 1 + _length(self.pending):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.pending += data
        size = 1 + _length(self.pending)
        kind, body = self.pending[:1], self.pending[5:size]
        self.pending = self.pending[size:]
        return kind, body

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        """Every reply up to and including ReadyForQuery."""
        replies = []
        while True:
            reply = self.read()
            replies.append(reply)
            if reply[0] == b"Z":
                return replies

    def login(self) -> list[tuple[bytes, bytes]]:
        self.send(startup())
        return self.until_ready()

    def until_closed(self, timeout: float) -> tuple[list[tuple[bytes, bytes]], float]:
        """Every reply until the server closes the connection, and the seconds that took."""
        started = time.monotonic()
        self.sock.settimeout(timeout)
        replies = []
        while True:
            try:
                replies.append(self.read())
            except (ConnectionError, OSError) as exc:
                if isinstance(exc, TimeoutError):
                    raise
                return replies, time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def _length(data: bytes) -> int:
    return int(struct.unpack("!i", data[1:5])[0])


def kinds(replies: list[tuple[bytes, bytes]]) -> str:
    return "".join(kind.decode() for kind, _ in replies)


def error_code(body: bytes) -> str:
    return error_field(body, "C")


def error_field(body: bytes, code: str) -> str:
    """One field of an ErrorResponse body: C the SQLSTATE, M the message, S the severity..."""
    for field in body.split(b"\0"):
        if field[:1] == code.encode():
            return field[1:].decode()
    return ""


def backend_key(replies: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """The pid and secret key of the BackendKeyData among ``replies``."""
    body = next(body for kind, body in replies if kind == b"K")
    pid, key = struct.unpack("!iI", body)
    return pid, key
