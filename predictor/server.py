"""The SQL endpoint: a PostgreSQL wire-protocol server over the mirror, one thread per client.

psql, psycopg, dblink and postgres_fdw connect to it as to PostgreSQL. Clients authenticate
with SCRAM-SHA-256 when a password is set; without one (``trust``) the endpoint listens on
loopback only. TLS is offered when a certificate is configured.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from mirror.errors import ConfigError
from predictor import catalog, score_views, wire
from predictor.scoring import Scorer
from predictor.scram import ScramVerifier
from predictor.session import Session
from trainer.train import Trainer

log = logging.getLogger("pgml_sidecar")

PASSWORD_ENV = "PGML_SIDECAR_ENDPOINT_PASSWORD"
_SEND_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """Where the endpoint listens and how clients prove who they are."""

    host: str = "127.0.0.1"
    port: int = 6433
    password: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_connections: int = 100


def read_password(password_file: Path | None) -> str | None:
    """The endpoint password: from ``password_file`` if given, else the environment."""
    if password_file is not None:
        try:
            return password_file.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {password_file}: {exc}") from None
    return os.environ.get(PASSWORD_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SqlEndpoint:
    """Serves PostgresML's SQL over the wire protocol on the mirror's DuckDB connection."""

    def __init__(
        self, settings: EndpointSettings, con: duckdb.DuckDBPyConnection, trainer: Trainer
    ) -> None:
        if settings.password is None and not is_loopback(settings.host):
            raise ConfigError(
                f"listening on {settings.host} needs a password: set {PASSWORD_ENV} or pass"
                " --password-file (without one, the endpoint only listens on 127.0.0.1)"
            )
        self.settings = settings
        self.con = con
        self.trainer = trainer
        self.verifier = (
            ScramVerifier.from_password(settings.password) if settings.password else None
        )
        self.scorer = Scorer(trainer)
        self.scorer.register(con)
        catalog.install(con)
        self._views_generation = -1
        self._views_lock = threading.Lock()
        self.refresh_score_views()
        self._tls = _tls_context(settings)
        self._sessions: dict[tuple[int, int], Session] = {}
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._pids = itertools.count(os.getpid() * 1000 % (1 << 30) + 1)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = settings.port

    def refresh_score_views(self) -> None:
        """Rebuild the ``pgml_scores`` views if a deployment changed since the last time."""
        if self._views_generation == self.trainer.generation:
            return
        with self._views_lock:
            generation = self.trainer.generation
            if self._views_generation != generation:
                score_views.refresh(self.con, self.trainer)
                self._views_generation = generation

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> int:
        """Listen and serve in the background; return the port (useful with port 0)."""
        try:
            listener = socket.create_server(
                (self.settings.host, self.settings.port), reuse_port=False, backlog=128
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror};"
                " choose another --port"
            ) from None
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="pgml-endpoint", daemon=True)
        self._thread.start()
        log.info("SQL endpoint listening on %s:%d", self.settings.host, self.port)
        return self.port

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            sessions = list(self._sessions.values())
            clients = list(self._clients)
        for session in sessions:
            session.cancel()
        for client in clients:  # a client waiting to send its next query hears the end now
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, address = self._listener.accept()
            except OSError:
                return
            with self._lock:
                busy = len(self._sessions) >= self.settings.max_connections
            if busy:
                _refuse(client, "53300", "sorry, too many clients already")
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._serve, args=(client,), name=f"pgml-client-{address}", daemon=True
            ).start()

    # -- one client ----------------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        parser = wire.FrontendParser()
        session: Session | None = None
        key: tuple[int, int] | None = None
        raw = sock  # TLS wraps it; stop() shuts the underlying socket
        with self._lock:
            self._clients.add(raw)
        try:
            while not self._stopping.is_set():
                data = sock.recv(_SEND_CHUNK)
                if not data:
                    return
                for message in parser.feed(data):
                    if isinstance(message, wire.SSLRequest):
                        sock = self._start_tls(sock)
                        continue
                    if isinstance(message, wire.GSSENCRequest):
                        sock.sendall(wire.GSSENC_REFUSED)
                        continue
                    if isinstance(message, wire.CancelRequest):
                        self._cancel(message.pid, message.key)
                        return
                    if session is None:
                        key = (next(self._pids), secrets.randbits(31))
                        session = Session(self, pid=key[0], key=key[1])
                        with self._lock:
                            self._sessions[key] = session
                    _send(sock, session.handle(message))
                    if isinstance(message, wire.Startup):
                        parser.startup_done()
                    if session.closed:
                        return
        except wire.ProtocolViolation as exc:
            _refuse(sock, exc.sqlstate, str(exc))
        except (OSError, ssl.SSLError):
            pass  # the client went away
        except Exception:
            log.exception("SQL endpoint: unexpected error serving a client")
            _refuse(sock, "XX000", "internal error in pgml-sidecar; see its log")
        finally:
            if session is not None:
                session.close()
            with self._lock:
                self._clients.discard(raw)
                if key is not None:
                    self._sessions.pop(key, None)
            with contextlib.suppress(OSError):
                sock.close()

    def _start_tls(self, sock: socket.socket) -> socket.socket:
        if self._tls is None:
            sock.sendall(wire.SSL_REFUSED)
            return sock
        sock.sendall(b"S")
        return self._tls.wrap_socket(sock, server_side=True)

    def _cancel(self, pid: int, key: int) -> None:
        with self._lock:
            session = self._sessions.get((pid, key))
        if session is not None:
            session.cancel()


def _send(sock: socket.socket, pieces: Iterable[bytes]) -> None:
    """Send ``pieces`` in chunks of about 64 KB (many small messages, one system call)."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        if len(buffer) >= _SEND_CHUNK:
            sock.sendall(buffer)
            buffer.clear()
    if buffer:
        sock.sendall(buffer)


def _refuse(sock: socket.socket, sqlstate: str, message: str) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(wire.error_response(sqlstate=sqlstate, message=message, severity="FATAL"))
        sock.close()


def _tls_context(settings: EndpointSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {settings.tls_cert}: {exc}") from None
    return context
