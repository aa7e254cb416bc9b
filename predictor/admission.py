"""Connections until they authenticate: one selector thread, PostgreSQL's limits, no thread each.

A client's startup packet, TLS handshake and SASL exchange are read here on non-blocking
sockets, under the limits PostgreSQL sets before authentication: a startup packet of at most
10,000 bytes and SASL messages of at most 1,024 (both refused from their length field, before
they are read), and ``authentication_timeout`` to get through it all. On top of PostgreSQL,
connections waiting to authenticate are capped (``max_pending_connections``) apart from
``max_connections``: when every place is taken, the rest wait in the listen backlog, and a
waiting connection silent for ``STALLED_AFTER`` seconds gives its place to the next one.
A silent or slow socket costs a file descriptor and a few kilobytes, never a thread; a session
that authenticates is handed over (:meth:`Gate.admit`) and gets a thread of its own.

The replies before authentication are a few hundred bytes; a client that does not read them
(its socket buffer full) is dropped rather than waited for.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from predictor import wire
from predictor.session import Session

log = logging.getLogger("pgml_sidecar")

STALLED_AFTER = 0.5
"""Seconds a waiting connection may stay silent before it gives its place to a newcomer (only
when every place is taken and someone waits). A client answers within a round trip: libpq sends
its startup packet as soon as it connects, and its SCRAM proof a few milliseconds after the
challenge arrives."""
_READ_CHUNK = 16_384
_ACCEPT_BATCH = 64
_FD_PAUSE = 0.5
"""Seconds to stop accepting after the process ran out of file descriptors."""


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """How long and how many clients may take to authenticate."""

    authentication_timeout: float = 10.0
    max_pending_connections: int = 64


class Gate(Protocol):
    """What admission needs from the server behind it."""

    tls: ssl.SSLContext | None

    def open_session(self) -> Session:
        """A new session (with its pid and cancel key), not yet counted as connected."""

    def has_room(self) -> bool:
        """Whether ``max_connections`` leaves room for one more session."""

    def cancel(self, pid: int, key: int) -> None:
        """Carry out a CancelRequest."""

    def admit(
        self, sock: socket.socket, parser: wire.FrontendParser, session: Session, greeting: bytes
    ) -> bool:
        """Serve an authenticated session from now on; False if there is no room for it.

        ``greeting`` is the last answer of its authentication, still to send; the session's
        own thread sends it with what :meth:`Session.begin` gives.
        """


@dataclass(eq=False, slots=True)
class Login:
    """One connection on its way in."""

    sock: socket.socket
    accepted: float
    heard: float
    """When it last sent something (or was accepted)."""
    parser: wire.FrontendParser = field(
        default_factory=lambda: wire.FrontendParser(max_message=wire.MAX_SASL_MESSAGE)
    )
    session: Session | None = None
    handshaking: bool = False
    """In a TLS handshake (the socket is wrapped; application data comes after)."""
    negotiated: set[str] = field(default_factory=set)
    """'ssl', 'gssenc': encryption requests already answered (each may come once)."""


class Admission:
    """The selector loop over the listening socket and every connection not yet authenticated."""

    def __init__(self, listener: socket.socket, gate: Gate, limits: AdmissionLimits) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.gate = gate
        self.limits = limits
        self.pending: OrderedDict[int, Login] = OrderedDict()  # by id, oldest first
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._listening = False
        self._paused_until = 0.0
        self._stopping = False

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop`; every pending connection is closed on the way out."""
        try:
            while not self._stopping:
                try:
                    self._turn()
                except Exception:  # the loop must outlive any one connection's trouble
                    log.exception("SQL endpoint: unexpected error admitting clients")
                    time.sleep(0.1)
        finally:
            for login in list(self.pending.values()):
                self._close(login)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _turn(self) -> None:
        now = time.monotonic()
        full = self._full()
        # Full: listen only if a place can be freed, else the backlog would wake us in a loop.
        self._listen(now >= self._paused_until and (not full or self._stalled(now) is not None))
        for key, _mask in self._selector.select(self._pause(now, full)):
            if key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
            elif key.fileobj is self.listener:
                self._accept()
            else:
                login: Login = key.data
                if id(login) in self.pending:
                    self._step(login)
        self._expire(time.monotonic())

    def _full(self) -> bool:
        return len(self.pending) >= self.limits.max_pending_connections

    def _stalled(self, now: float) -> Login | None:
        """The login silent longest, if for STALLED_AFTER seconds or more."""
        if not self.pending:
            return None
        login = min(self.pending.values(), key=lambda login: login.heard)
        return login if now - login.heard >= STALLED_AFTER else None

    def _pause(self, now: float, full: bool) -> float:
        """Seconds until something is due: a deadline, a place stalling, accepting again."""
        due = [now + 3600.0]
        if self.pending:
            oldest = next(iter(self.pending.values()))
            due.append(oldest.accepted + self.limits.authentication_timeout)
        if full and self.pending:
            due.append(min(login.heard for login in self.pending.values()) + STALLED_AFTER)
        if self._paused_until > now:
            due.append(self._paused_until)
        return max(min(due) - now, 0.0)

    def _listen(self, listening: bool) -> None:
        if listening == self._listening:
            return
        if listening:
            self._selector.register(self.listener, selectors.EVENT_READ, None)
        else:
            self._selector.unregister(self.listener)
        self._listening = listening

    # -- arrivals and departures ---------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if self._full() and self._stalled(time.monotonic()) is None:
                return
            try:
                sock, _address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("SQL endpoint: cannot accept a connection: %s", exc.strerror)
                    self._paused_until = time.monotonic() + _FD_PAUSE
                return  # ECONNABORTED and the like: that client is gone
            if self._full():
                self._make_room()  # only now: someone did come for the place
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            now = time.monotonic()
            login = Login(sock, accepted=now, heard=now)
            self.pending[id(login)] = login
            self._selector.register(sock, selectors.EVENT_READ, login)

    def _expire(self, now: float) -> None:
        """Drop the connections that did not authenticate within authentication_timeout."""
        timeout = self.limits.authentication_timeout
        while self.pending:
            login = next(iter(self.pending.values()))
            if now < login.accepted + timeout:
                return
            if login.session is None:  # still in its startup packet: PostgreSQL just closes
                self._close(login)
            else:
                self._refuse(login, "57014", "canceling authentication due to timeout")

    def _make_room(self) -> None:
        """All places taken and someone came: drop the login silent longest (if stalled)."""
        now = time.monotonic()
        stalled = self._stalled(now)
        if stalled is not None:
            self._refuse(
                stalled, "53300", "sorry, too many clients already",
                detail=f"{len(self.pending)} connections were authenticating; this one had been"
                f" silent for {now - stalled.heard:.1f} s",
            )  # fmt: skip

    def _close(self, login: Login) -> None:
        self.pending.pop(id(login), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(login.sock)
        if login.session is not None:
            login.session.close()
        with contextlib.suppress(OSError):
            login.sock.close()

    def _refuse(self, login: Login, sqlstate: str, message: str, detail: str | None = None) -> None:
        """Send a FATAL error if the socket takes it now, then close."""
        if not login.handshaking:
            error = wire.error_response(
                sqlstate=sqlstate, message=message, severity="FATAL", detail=detail
            )
            self._send(login, error)
        self._close(login)

    # -- one connection ------------------------------------------------------------------------

    def _step(self, login: Login) -> None:
        """The connection is readable (or writable, in a TLS handshake): move it along."""
        try:
            if login.handshaking:
                self._handshake(login)
                return
            data = self._receive(login)
            if data is None:
                return
            if not data:
                self._close(login)  # the client went away
                return
            login.heard = time.monotonic()
            login.parser.push(data)
            while id(login) in self.pending:
                message = login.parser.next_message()
                if message is None:
                    return
                self._answer(login, message)
        except wire.ProtocolViolation as exc:
            self._refuse(login, exc.sqlstate, str(exc))
        except (OSError, ssl.SSLError):
            self._close(login)
        except Exception:
            log.exception("SQL endpoint: unexpected error while a client authenticated")
            self._refuse(login, "XX000", "internal error in pgml-sidecar; see its log")

    def _receive(self, login: Login) -> bytes | None:
        """What the client sent; b'' when it closed, None when nothing is there after all."""
        sock = login.sock
        chunks = []
        try:
            chunks.append(sock.recv(_READ_CHUNK))
            while isinstance(sock, ssl.SSLSocket) and sock.pending() and chunks[-1]:
                chunks.append(sock.recv(_READ_CHUNK))  # decrypted already: no event will come
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if not chunks:
                return None
        return b"".join(chunks)

    def _answer(self, login: Login, message: wire.FrontendMessage) -> None:
        if isinstance(message, wire.SSLRequest | wire.GSSENCRequest):
            self._negotiate(login, "ssl" if isinstance(message, wire.SSLRequest) else "gssenc")
            return
        if isinstance(message, wire.CancelRequest):
            self.gate.cancel(message.pid, message.key)
            self._close(login)
            return
        if login.session is None:
            if not self.gate.has_room():
                self._refuse(login, "53300", "sorry, too many clients already")
                return
            login.session = self.gate.open_session()
        session = login.session
        reply = b"".join(session.handle(message))
        if session.closed:
            self._send(login, reply)
            self._close(login)
        elif session.state == "authenticated":
            self._hand_over(login, session, reply)
        elif not self._send(login, reply):
            self._close(login)

    def _negotiate(self, login: Login, kind: str) -> None:
        """Answer SSLRequest or GSSENCRequest: 'N', or 'S' and a TLS handshake."""
        if kind in login.negotiated:
            raise wire.ProtocolViolation(f"{kind.upper()} negotiation requested twice")
        login.negotiated.add(kind)
        if login.parser.buffered:  # what follows must wait for the answer (CVE-2021-23214)
            raise wire.ProtocolViolation(f"received unencrypted data after {kind.upper()} request")
        tls = self.gate.tls if kind == "ssl" else None
        if not self._send(login, b"S" if tls is not None else b"N"):
            self._close(login)
            return
        if tls is None:
            return
        self._selector.unregister(login.sock)
        login.sock = tls.wrap_socket(login.sock, server_side=True, do_handshake_on_connect=False)
        login.handshaking = True
        self._selector.register(login.sock, selectors.EVENT_READ, login)
        self._handshake(login)

    def _handshake(self, login: Login) -> None:
        sock = login.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, login)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, login)
            return
        except (ssl.SSLError, OSError):
            self._close(login)
            return
        login.handshaking = False
        login.heard = time.monotonic()
        self._selector.modify(sock, selectors.EVENT_READ, login)
        self._step(login)  # the startup packet may have come with the handshake's last flight

    def _hand_over(self, login: Login, session: Session, greeting: bytes) -> None:
        self.pending.pop(id(login), None)
        self._selector.unregister(login.sock)
        login.parser.max_message = wire.MAX_MESSAGE
        login.sock.setblocking(True)
        if not self.gate.admit(login.sock, login.parser, session, greeting):
            login.sock.setblocking(False)
            error = wire.error_response(
                sqlstate="53300", message="sorry, too many clients already", severity="FATAL"
            )
            self._send(login, error)
            session.close()
            with contextlib.suppress(OSError):
                login.sock.close()

    @staticmethod
    def _send(login: Login, data: bytes) -> bool:
        """Send ``data`` without waiting; False if the client's buffers are full."""
        view = memoryview(data)
        try:
            while view:
                sent = login.sock.send(view)
                if not sent:
                    return False
                view = view[sent:]
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, OSError):
            return False
        return True
