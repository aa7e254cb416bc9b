"""The SQL endpoint: a PostgreSQL wire-protocol server over the mirror, a thread per session.

psql, psycopg, dblink and postgres_fdw connect to it as to PostgreSQL. Clients authenticate
with SCRAM-SHA-256 when a password is set; without one (``trust``) the endpoint listens on
loopback only. TLS is offered when a certificate is configured.

Connections that have not authenticated yet are served together by one thread
(:mod:`predictor.admission`, with PostgreSQL's limits before authentication); a session gets a
thread of its own once it has authenticated. The statements sessions run are watched by one more
thread (:mod:`predictor.statement_watch`) for ``statement_timeout`` and clients that hang up.
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

from mirror.errors import ConfigError, SidecarError
from predictor import (
    array_text,
    catalog,
    catalog_views,
    chunking,
    metric_functions,
    pgvector,
    python_environment,
    score_views,
    vectors,
    wire,
    workspace,
)
from predictor.access import EndpointAccess
from predictor.admission import Admission, AdmissionLimits
from predictor.execution import DEFAULT_SETTINGS
from predictor.scoring import Scorer
from predictor.scram import ScramVerifier
from predictor.session import Session
from predictor.statement_watch import StatementWatch
from predictor.time_settings import AUTHENTICATION_TIMEOUT, STATEMENT_TIMEOUT, TimeSetting
from predictor.users import UsersFile, read_users
from predictor.vector_index import VectorIndexes
from predictor.workspace import Workspaces
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
    """One password for every user name (each name acts as the source role of that name)."""
    users_file: Path | None = None
    """Named users with their own SCRAM verifiers and source roles (predictor.users); never
    trust when it is set."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_connections: int = 100
    """Sessions at once (authenticated clients), as PostgreSQL's max_connections."""
    max_pending_connections: int = 64
    """Connections authenticating at once, apart from max_connections. Past it the others wait
    in the listen backlog, and one silent for half a second makes room (see predictor.admission)."""
    authentication_timeout: str | int = "10s"
    """Time to authenticate, as PostgreSQL's setting ('10s', '1min'; a number is seconds)."""
    statement_timeout: str | int = "0"
    """Each session's default statement_timeout ('5s', '100ms'; a number is ms; 0 is off)."""
    workspace_size_limit: int = workspace.DEFAULT_SIZE_LIMIT
    """The most each user's workspace file may hold, in bytes (predictor.workspace)."""


def read_password(password_file: Path | None) -> str | None:
    """The endpoint password: from ``password_file`` if given, else the environment."""
    if password_file is not None:
        try:
            return password_file.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(
                f"cannot read the password file {password_file}: {exc.strerror or exc}; write"
                " the endpoint's password in it, or fix --password-file (password_file)"
            ) from None
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
        self,
        settings: EndpointSettings,
        con: duckdb.DuckDBPyConnection,
        trainer: Trainer,
        *,
        source_dsn: str | None = None,
        vector_indexes: VectorIndexes | None = None,
    ) -> None:
        check_settings(settings)
        self.vector_indexes = vector_indexes
        """The HNSW indexes nearest-neighbour queries read (None: they scan)."""
        self.users = UsersFile(settings.users_file) if settings.users_file else None
        self.settings = settings
        self.limits = AdmissionLimits(
            authentication_timeout=_setting(
                AUTHENTICATION_TIMEOUT, settings.authentication_timeout
            ),
            max_pending_connections=max(settings.max_pending_connections, 1),
        )
        timeout = _setting(STATEMENT_TIMEOUT, settings.statement_timeout)
        self.session_defaults = dict(
            DEFAULT_SETTINGS, statement_timeout=STATEMENT_TIMEOUT.show(timeout)
        )
        self.con = con
        self.trainer = trainer
        self.verifier = (
            ScramVerifier.from_password(settings.password) if settings.password else None
        )
        self.scorer = Scorer(trainer)
        self.scorer.register(con)
        catalog_views.install(con)
        vectors.install(con)
        pgvector.install(con)
        array_text.install(con)
        metric_functions.register(con)
        python_environment.register(con)
        chunking.register(con)
        self._views_generation = -1
        self._views_lock = threading.Lock()
        self.refresh_score_views()
        # the relations clients may name: the allow-list checks each statement against them
        self.relations = catalog.ServedRelations(con, before_refresh=self.refresh_score_views)
        self.access = (
            EndpointAccess(source_dsn, con, self.relations, trainer) if source_dsn else None
        )
        """What each session's source role may read and change; None without a source (serve
        on a mirror file alone: every served relation, for whoever may connect)."""
        self.workspaces: Workspaces | None = Workspaces(
            con,
            trainer.home / workspace.DIRECTORY,
            size_limit=settings.workspace_size_limit,
        )
        """Each source role's workspace, beside the mirror in the sidecar's own directory."""
        self.tls = tls_context(settings)
        self.watch = StatementWatch()
        self._sessions: dict[tuple[int, int], Session] = {}
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._pids = itertools.count(os.getpid() * 1000 % (1 << 30) + 1)
        self._listener: socket.socket | None = None
        self._admission: Admission | None = None
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
        self._admission = Admission(listener, self, self.limits)
        self._thread = threading.Thread(
            target=self._admission.run, name="pgml-endpoint", daemon=True
        )
        self._thread.start()
        self.watch.start()
        log.info("SQL endpoint listening on %s:%d", self.settings.host, self.port)
        return self.port

    def stop(self) -> None:
        self._stopping.set()
        if self._admission is not None:
            self._admission.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = list(self._sessions.values())
            clients = list(self._clients)
        for session in sessions:
            session.cancel()
        for client in clients:  # a client waiting to send its next query hears the end now
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        self.watch.stop()

    @property
    def sessions(self) -> int:
        """How many clients are connected and authenticated."""
        return len(self._sessions)

    @property
    def authenticating(self) -> int:
        """How many connections are waiting to authenticate."""
        return len(self._admission.pending) if self._admission is not None else 0

    # -- the gate admission asks ---------------------------------------------------------------

    def open_session(self) -> Session:
        return Session(self, pid=next(self._pids), key=secrets.randbits(31))

    def has_room(self) -> bool:
        return len(self._sessions) < self.settings.max_connections

    def cancel(self, pid: int, key: int) -> None:
        with self._lock:
            session = self._sessions.get((pid, key))
        if session is not None:
            session.cancel()

    def admit(
        self, sock: socket.socket, parser: wire.FrontendParser, session: Session, greeting: bytes
    ) -> bool:
        """Serve an authenticated session on a thread of its own; False if there is no room."""
        key = (session.pid, session.key)
        with self._lock:
            if self._stopping.is_set() or len(self._sessions) >= self.settings.max_connections:
                return False
            self._sessions[key] = session
            self._clients.add(sock)
        session.client_fd = sock.fileno()
        thread = threading.Thread(
            target=self._serve, args=(sock, parser, session, greeting),
            name=f"pgml-client-{session.pid}", daemon=True,
        )  # fmt: skip
        try:
            thread.start()
        except RuntimeError:  # no thread to be had
            log.warning("SQL endpoint: cannot start a thread for a new session")
            with self._lock:
                self._sessions.pop(key, None)
                self._clients.discard(sock)
            return False
        return True

    # -- one session ---------------------------------------------------------------------------

    def _serve(
        self, sock: socket.socket, parser: wire.FrontendParser, session: Session, greeting: bytes
    ) -> None:
        try:
            sock.sendall(greeting + session.begin())
            data = b""  # messages the client sent along with its last authentication message
            while not self._stopping.is_set():
                for message in parser.feed(data):
                    _send(sock, session.handle(message))
                    if session.closed:
                        return
                data = sock.recv(_SEND_CHUNK)
                if not data:
                    return
        except wire.ProtocolViolation as exc:
            _refuse(sock, exc.sqlstate, str(exc))
        except (OSError, ssl.SSLError):
            pass  # the client went away
        except SidecarError as exc:  # a session's own failure, reported as such
            _refuse(sock, exc.sqlstate, str(exc))
        except Exception:
            log.exception("SQL endpoint: unexpected error serving a client")
            _refuse(sock, "XX000", "internal error in pgml-sidecar; see its log")
        finally:
            session.close()
            with self._lock:
                self._clients.discard(sock)
                self._sessions.pop((session.pid, session.key), None)
            with contextlib.suppress(OSError):
                sock.close()


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


def check_settings(settings: EndpointSettings) -> None:
    """Refuse settings the endpoint cannot start with, each with a `ConfigError` saying why:
    trust off loopback, both a users file and a password, a time setting out of range, a users
    file or TLS certificate that cannot be read. Nothing is opened but those files."""
    trusting = settings.password is None and settings.users_file is None
    if trusting and not is_loopback(settings.host):
        raise ConfigError(
            f"listening on {settings.host} needs a password: a users file (--users-file,"
            f" made with pgml-sidecar adduser) or one password ({PASSWORD_ENV} or"
            " --password-file); without either, the endpoint only listens on 127.0.0.1"
        )
    if settings.password is not None and settings.users_file is not None:
        raise ConfigError(
            "both a users file and an endpoint password are set: keep the users file (each"
            f" user has its own password there) and unset {PASSWORD_ENV} / password_file"
        )
    _setting(AUTHENTICATION_TIMEOUT, settings.authentication_timeout)
    _setting(STATEMENT_TIMEOUT, settings.statement_timeout)
    if settings.users_file is not None:
        read_users(settings.users_file)
    tls_context(settings)


def _setting(setting: TimeSetting, value: str | int) -> int:
    examples = "'5s' or '100ms'" if setting.unit == "ms" else "'10s' or '1min'"
    return setting.parse_setting(value, examples)


def tls_context(settings: EndpointSettings) -> ssl.SSLContext | None:
    """The server's TLS context from ``tls_cert`` and ``tls_key``; None without a certificate."""
    if settings.tls_cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(
            f"cannot load the TLS certificate {settings.tls_cert}: {reason}; give --tls-cert"
            " and --tls-key PEM files this user can read"
        ) from None
    return context
