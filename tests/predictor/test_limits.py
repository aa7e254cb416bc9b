"""The endpoint's limits, as PostgreSQL's: before authentication, statement_timeout, hang-ups.

Each limit is tested against a real endpoint with raw sockets or real clients, with a real
client beside it that must keep working.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from mirror.errors import ConfigError
from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from predictor.session import Session
from tests.predictor.endpoint_client import connect, dsn
from tests.predictor.raw_client import (
    SYNC,
    RawClient,
    backend_key,
    bind,
    cancel_request,
    error_code,
    error_field,
    execute,
    kinds,
    parse,
    query,
    ssl_request,
    startup,
)
from tests.trainer.test_time_limit import leftovers
from trainer.train import Trainer

PASSWORD = "limits are freedom"
HEAVY = "select count(*) from range(100000) a, range(100000) b where a.range + b.range = 7"
"""A query DuckDB works on for minutes: a cross join of 10^10 pairs under an aggregate."""


@contextlib.contextmanager
def serve(mirror: Mirror, trainer: Trainer, settings: EndpointSettings) -> Iterator[SqlEndpoint]:
    served = SqlEndpoint(settings, mirror.con, trainer)
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def guarded(mirror: Mirror, trainer: Trainer) -> Iterator[SqlEndpoint]:
    """An endpoint with a password: clients stay in authentication until they prove it."""
    with serve(mirror, trainer, EndpointSettings(port=0, password=PASSWORD)) as served:
        yield served


@pytest.fixture
def impatient(mirror: Mirror, trainer: Trainer) -> Iterator[SqlEndpoint]:
    """A password and one second to authenticate."""
    settings = EndpointSettings(port=0, password=PASSWORD, authentication_timeout="1s")
    with serve(mirror, trainer, settings) as served:
        yield served


def login(endpoint: SqlEndpoint, **options: str) -> psycopg.Connection:
    if endpoint.settings.password is not None:
        options.setdefault("password", f"'{PASSWORD}'")
    options.setdefault("connect_timeout", "10")  # a test fails, never hangs, if nobody answers
    return connect(endpoint, **options)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``condition`` held; fail after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"still not true after {timeout} s: {condition}")
        time.sleep(0.01)
    return time.monotonic() - started


def rss() -> int:
    """This process's resident memory in bytes (the endpoint runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def query_works(endpoint: SqlEndpoint) -> float:
    """Seconds a new client takes to log in and run a query."""
    started = time.monotonic()
    with login(endpoint) as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)
    return time.monotonic() - started


def fatal(replies: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    """The SQLSTATE and message of the one FATAL error among ``replies``."""
    [body] = [body for kind, body in replies if kind == b"E"]
    assert error_field(body, "S") == "FATAL"
    return error_code(body), error_field(body, "M")


# -- 1. messages before authentication are small --------------------------------------------------


def test_a_startup_packet_over_10000_bytes_is_refused_unread(endpoint: SqlEndpoint) -> None:
    client = RawClient(endpoint.port)
    client.send(struct.pack("!i", 10_001))  # the length alone: nothing else is ever sent
    replies, _ = client.until_closed(5)
    assert fatal(replies) == ("08P01", "invalid length of startup packet")
    exact = startup(application_name="x" * (10_000 - len(startup()) - len("application_name\0\0")))
    assert len(exact) == 10_000
    client = RawClient(endpoint.port)
    client.send(exact)
    assert kinds(client.until_ready())[-1] == "Z"  # PostgreSQL's limit itself is allowed
    assert query_works(endpoint) < 5


def test_messages_before_authentication_are_refused_from_their_length(
    guarded: SqlEndpoint,
) -> None:
    client = RawClient(guarded.port)
    client.send(startup())
    assert client.read()[0] == b"R"  # AuthenticationSASL
    client.send(b"p" + struct.pack("!i", 64 << 20) + b"n,,n=,r=")
    replies, _ = client.until_closed(5)
    code, text = fatal(replies)
    assert (code, text) == ("08P01", "password message too large: 67108864 bytes, limit 1024")
    client = RawClient(guarded.port)
    client.send(startup(), query("select 1"))  # a query is no answer to a SASL challenge
    replies, _ = client.until_closed(5)
    assert fatal(replies)[0] == "08P01"
    assert query_works(guarded) < 5


def test_announcing_64_mb_before_authentication_costs_no_memory(guarded: SqlEndpoint) -> None:
    before = rss()
    clients = []
    for i in range(8):
        client = RawClient(guarded.port)
        if i % 2:
            client.send(startup())
            client.read()
            client.send(b"p" + struct.pack("!i", 64 << 20))
        else:
            client.send(struct.pack("!i", 64 << 20) + struct.pack("!i", 196608))
        clients.append(client)
    chunk = b"\0" * (1 << 20)
    for client in clients:  # what a client sends after its announcement is never kept
        try:
            for _ in range(8):
                client.sock.sendall(chunk)
        except OSError:
            pass  # refused and closed already
    for client in clients:
        replies, _ = client.until_closed(5)
        assert fatal(replies)[0] == "08P01"
    assert rss() - before < 40 << 20, "the endpoint kept what clients sent before authenticating"
    assert query_works(guarded) < 5


def test_a_query_sent_with_the_startup_packet_is_not_held_to_the_small_limit(
    endpoint: SqlEndpoint,
) -> None:
    client = RawClient(endpoint.port)
    long = "x" * 50_000
    client.send(startup() + query(f"select '{long}' as long"))  # one send, trust: no challenge
    replies = client.until_ready()
    replies += client.until_ready()
    assert kinds(replies)[-4:] == "TDCZ"
    assert long.encode() in replies[-3][1]


# -- 2. authentication_timeout --------------------------------------------------------------------


def test_a_client_that_does_not_authenticate_in_time_is_dropped(impatient: SqlEndpoint) -> None:
    silent = RawClient(impatient.port)
    challenged = RawClient(impatient.port)
    challenged.send(startup())
    assert challenged.read()[0] == b"R"
    replies, waited = challenged.until_closed(10)
    assert fatal(replies) == ("57014", "canceling authentication due to timeout")
    assert 0.8 < waited < 4
    replies, _ = silent.until_closed(10)  # no startup packet yet: closed without a word, as
    assert replies == []  # PostgreSQL does
    assert query_works(impatient) < 5


def test_the_timeout_counts_from_the_connection_not_the_last_byte(
    impatient: SqlEndpoint,
) -> None:
    client = RawClient(impatient.port)
    packet = startup()
    started = time.monotonic()
    try:
        for byte in packet:  # a slowloris: one byte every 0.2 s, never done within 1 s
            client.sock.sendall(bytes([byte]))
            time.sleep(0.2)
    except OSError:
        pass
    replies, _ = client.until_closed(10)
    assert replies == []
    assert time.monotonic() - started < 4


def test_authentication_timeout_is_checked(mirror: Mirror, trainer: Trainer) -> None:
    for value in ("0", "601", "ten seconds", "10 parsecs"):
        with pytest.raises(ConfigError, match="authentication_timeout"):
            SqlEndpoint(EndpointSettings(authentication_timeout=value), mirror.con, trainer)
    with pytest.raises(ConfigError, match=r'"statement_timeout": "5 sec"; give a time such as'):
        SqlEndpoint(EndpointSettings(statement_timeout="5 sec"), mirror.con, trainer)


# -- 3. a flood before authentication -------------------------------------------------------------


def flood(port: int, silent: int, startups: int) -> list[socket.socket]:
    sockets = []
    for i in range(silent + startups):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if i >= silent:
            sock.sendall(startup())
        sockets.append(sock)
    return sockets


class Slowloris(threading.Thread):
    """One byte of a startup packet a second, on a new connection each time one is dropped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.dropped = port, threading.Event(), 0

    def run(self) -> None:
        packet = startup(application_name="z" * 9000)
        while not self.stop.is_set():
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                try:
                    for byte in packet:
                        sock.sendall(bytes([byte]))
                        if self.stop.wait(1):
                            return
                except OSError:
                    self.dropped += 1


def test_a_flood_of_silent_and_slow_sockets_does_not_delay_a_login(guarded: SqlEndpoint) -> None:
    threads = threading.active_count()
    memory = rss()
    slow = Slowloris(guarded.port)
    slow.start()
    sockets = flood(guarded.port, silent=100, startups=40)
    try:
        wait_for(lambda: guarded.authenticating >= guarded.limits.max_pending_connections)
        for _ in range(3):  # again and again, not once by luck
            assert query_works(guarded) < 3
        # No thread per socket: the slowloris's own thread, and no more (once the last
        # client's session thread has ended).
        wait_for(lambda: threading.active_count() <= threads + 1, timeout=2)
        assert guarded.authenticating <= guarded.limits.max_pending_connections
        assert guarded.sessions == 0
        assert rss() - memory < 40 << 20
        for sock in sockets[:20]:  # the oldest made room, with PostgreSQL's error
            client = RawClient.__new__(RawClient)
            client.sock, client.pending = sock, b""
            replies, _ = client.until_closed(5)
            assert fatal(replies) == ("53300", "sorry, too many clients already")
    finally:
        slow.stop.set()
        for sock in sockets:
            sock.close()
        slow.join(timeout=5)


def test_a_place_is_given_up_only_for_someone_who_came(mirror: Mirror, trainer: Trainer) -> None:
    settings = EndpointSettings(port=0, password=PASSWORD, max_pending_connections=4)
    with serve(mirror, trainer, settings) as served:
        silent = [RawClient(served.port) for _ in range(4)]
        wait_for(lambda: served.authenticating == 4)
        time.sleep(0.6)  # all four are stalled now (silent for more than half a second)
        newcomer = RawClient(served.port)
        newcomer.send(startup())
        assert newcomer.read()[0] == b"R"  # let in at once
        replies, _ = silent[0].until_closed(5)  # the one silent longest made room
        assert fatal(replies)[0] == "53300"
        assert served.authenticating == 4  # the other three keep their places
        for client in silent[1:]:
            client.sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.sock.recv(1)  # nothing said to them, and not closed


def test_a_slow_session_setup_holds_up_no_other_login(
    guarded: SqlEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    begin = Session.begin
    slow_started = threading.Event()

    def slow_begin(session: Session) -> bytes:  # as a setup asking the source would be
        if session.user == "slow":
            slow_started.set()
            time.sleep(3)
        return begin(session)

    monkeypatch.setattr(Session, "begin", slow_begin)
    slow = threading.Thread(target=lambda: login(guarded, user="slow").close())
    slow.start()
    assert slow_started.wait(10)
    assert query_works(guarded) < 1.5  # the admission thread was not the one waiting
    slow.join(timeout=10)


def test_a_flood_of_silent_sockets_on_a_trusting_endpoint(endpoint: SqlEndpoint) -> None:
    threads = threading.active_count()
    sockets = flood(endpoint.port, silent=150, startups=0)
    try:
        wait_for(lambda: endpoint.authenticating >= endpoint.limits.max_pending_connections)
        assert query_works(endpoint) < 3
        wait_for(lambda: threading.active_count() <= threads, timeout=2)
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: endpoint.authenticating == 0)


def test_a_stalled_tls_handshake_holds_no_thread(
    mirror: Mirror, trainer: Trainer, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    settings = EndpointSettings(
        port=0, password=PASSWORD, tls_cert=cert, tls_key=key, authentication_timeout=1
    )
    with serve(mirror, trainer, settings) as served:
        threads = threading.active_count()
        stalled = []
        for _ in range(30):  # SSLRequest, 'S', then nothing: the handshake never starts
            client = RawClient(served.port)
            client.send(ssl_request())
            assert client.sock.recv(1) == b"S"
            stalled.append(client)
        half = RawClient(served.port)  # a ClientHello cut short
        half.send(ssl_request())
        assert half.sock.recv(1) == b"S"
        half.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert threading.active_count() <= threads
        with login(served, sslmode="require") as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select 1").fetchone() == (1,)
        for client in [*stalled, half]:
            replies, waited = client.until_closed(10)
            assert replies == [] and waited < 4
        client = RawClient(served.port)
        client.send(ssl_request() + startup())  # plaintext after the SSLRequest: refused
        replies, _ = client.until_closed(5)
        assert fatal(replies) == ("08P01", "received unencrypted data after SSL request")


def test_ssl_and_gssenc_requests_come_once_each(endpoint: SqlEndpoint) -> None:
    client = RawClient(endpoint.port)
    gssenc = struct.pack("!ii", 8, 80877104)
    client.send(gssenc)
    assert client.sock.recv(1) == b"N"
    client.send(ssl_request())  # libpq: GSSENC refused, then SSL
    assert client.sock.recv(1) == b"N"
    client.send(ssl_request())
    replies, _ = client.until_closed(5)
    assert fatal(replies) == ("08P01", "SSL negotiation requested twice")
    assert query_works(endpoint) < 5


def test_max_connections_refuses_sessions_but_not_cancel_requests(
    mirror: Mirror, trainer: Trainer
) -> None:
    with serve(mirror, trainer, EndpointSettings(port=0, max_connections=1)) as served:
        busy = RawClient(served.port)
        pid, key = backend_key(busy.login())
        refused = RawClient(served.port)
        refused.send(startup())
        replies, _ = refused.until_closed(5)
        assert fatal(replies) == ("53300", "sorry, too many clients already")
        busy.send(query(HEAVY))
        wait_for(lambda: served.watch.running == 1)
        canceller = socket.create_connection(("127.0.0.1", served.port))
        canceller.sendall(cancel_request(pid, key))
        assert canceller.recv(1) == b""  # answered by closing, as PostgreSQL
        replies = busy.until_ready()
        assert error_code(replies[0][1]) == "57014"
        busy.send(query("select 1"))
        assert kinds(busy.until_ready()) == "TDCZ"


# -- 4. statement_timeout -------------------------------------------------------------------------


def test_statement_timeout_cancels_the_query_and_the_session_goes_on(
    endpoint: SqlEndpoint,
) -> None:
    with connect(endpoint) as conn:
        conn.execute("set statement_timeout = '500ms'")
        assert conn.execute("show statement_timeout").fetchone() == ("500ms",)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="due to statement timeout"):
            conn.execute(HEAVY)
        assert 0.45 < time.monotonic() - started < 3
        assert conn.execute("select 1").fetchone() == (1,)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="due to statement timeout"):
            conn.execute(HEAVY + " and a.range > %s", [0])  # the extended protocol
        assert time.monotonic() - started < 3
        conn.execute("set statement_timeout = 2000")  # plain numbers are milliseconds
        assert conn.execute("show statement_timeout").fetchone() == ("2s",)
        conn.execute("set statement_timeout to 0")
        quick = "select count(*) from range(3000) a, range(3000) b where a.range = b.range"
        assert conn.execute(quick).fetchone() == (3000,)


def test_statement_timeout_in_a_transaction_and_a_cursor(endpoint: SqlEndpoint) -> None:
    with psycopg.connect(dsn(endpoint)) as conn:  # BEGIN ... COMMIT around everything
        conn.execute("set statement_timeout = '300ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(HEAVY)
        conn.rollback()
        with conn.cursor(name="big") as cur, pytest.raises(psycopg.errors.QueryCanceled):
            cur.execute(HEAVY)
            cur.fetchall()
        conn.rollback()
        assert conn.execute("select 2").fetchone() == (2,)


def test_statement_timeout_while_rows_stream(endpoint: SqlEndpoint) -> None:
    client = RawClient(endpoint.port)
    client.login()
    client.send(query("set statement_timeout = '400ms'"))
    client.until_ready()
    started = time.monotonic()
    client.send(query("select a.range * b.range from range(1000000) a, range(100000) b"))
    rows, replies = 0, list[tuple[bytes, bytes]]()
    while not replies or replies[-1][0] != b"Z":
        reply = client.read()
        if reply[0] == b"D":
            rows += 1  # rows came before the timeout: it stopped the stream, not its start
        else:
            replies.append(reply)
    assert rows > 0
    [error] = [body for kind, body in replies if kind == b"E"]
    assert error_field(error, "M") == "canceling statement due to statement timeout"
    assert time.monotonic() - started < 5
    client.send(query("select 7"))
    assert kinds(client.until_ready()) == "TDCZ"


def test_one_sessions_timeout_leaves_another_sessions_query_alone(endpoint: SqlEndpoint) -> None:
    medium = "select count(*) from range(25000) a, range(25000) b where a.range + b.range = 7"
    result: list[object] = []

    def other() -> None:
        with connect(endpoint) as conn:
            result.append(conn.execute(medium).fetchone())

    with connect(endpoint) as conn:
        conn.execute("set statement_timeout = '200ms'")
        worker = threading.Thread(target=other)
        worker.start()
        wait_for(lambda: endpoint.watch.running == 1)
        for _ in range(3):  # timed out again and again while the other query runs
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(HEAVY)
        worker.join(timeout=120)
    assert result == [(8,)]


def test_statement_timeout_settings(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as conn:
        for value, shown in (("'1min'", "1min"), ("'90s'", "90s"), ("1.5", "2ms"), ("0", "0")):
            conn.execute(f"set statement_timeout = {value}")
            assert conn.execute("show statement_timeout").fetchone() == (shown,)
        with pytest.raises(psycopg.errors.InvalidParameterValue) as bad:
            conn.execute("set statement_timeout = '5 parsecs'")
        assert bad.value.diag.message_hint is not None and '"ms"' in bad.value.diag.message_hint
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="outside the valid range"):
            conn.execute("set statement_timeout = -1")
        assert conn.execute("show statement_timeout").fetchone() == ("0",)


def test_statement_timeout_from_the_endpoint_and_the_startup_packet(
    mirror: Mirror, trainer: Trainer
) -> None:
    with serve(mirror, trainer, EndpointSettings(port=0, statement_timeout="300ms")) as served:
        with connect(served) as conn:
            assert conn.execute("show statement_timeout").fetchone() == ("300ms",)
            with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
                conn.execute(HEAVY)
            conn.execute("set statement_timeout = '1min'")
            conn.execute("reset statement_timeout")
            assert conn.execute("show statement_timeout").fetchone() == ("300ms",)
        with connect(served, options="'-c statement_timeout=2s'") as conn:
            assert conn.execute("show statement_timeout").fetchone() == ("2s",)
        with pytest.raises(psycopg.OperationalError, match='"statement_timeout": "soon"'):
            connect(served, options="'-c statement_timeout=soon'")


@pytest.fixture
def diabetes(endpoint: SqlEndpoint) -> SqlEndpoint:
    """The endpoint with a deployed regression model, project 'd' (10 features)."""
    with connect(endpoint) as conn:
        conn.execute("select * from pgml.load_dataset('diabetes')")
        conn.execute("select * from pgml.train('d', 'regression', 'pgml.diabetes', 'target')")
    return endpoint


def test_statement_timeout_stops_a_prediction_scan(diabetes: SqlEndpoint) -> None:
    features = ", ".join(f"(a.range % {n + 7})::float8" for n in range(10))
    scan = f"select sum(pgml.predict('d', array[{features}])) from range(100000) a, range(1000) b"
    with connect(diabetes) as conn:
        conn.execute("set statement_timeout = '500ms'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute(scan)
        assert time.monotonic() - started < 4
        value = conn.execute(f"select pgml.predict('d', array[{features}]) from range(1) a")
        assert isinstance(value.fetchone(), tuple)


# -- 5. a client that leaves cancels its query ----------------------------------------------------


def cpu_seconds(during: float) -> float:
    started = time.process_time()
    time.sleep(during)
    return time.process_time() - started


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_client_that_hangs_up_cancels_its_query(endpoint: SqlEndpoint, protocol: str) -> None:
    client = RawClient(endpoint.port)
    client.login()
    if protocol == "simple":
        client.send(query(HEAVY))
    else:
        client.send(parse(HEAVY), bind(), execute(), SYNC)
    wait_for(lambda: endpoint.watch.running == 1)
    assert cpu_seconds(1.0) > 0.15  # DuckDB is busy: the measure below could fail
    client.close()
    assert wait_for(lambda: endpoint.watch.running == 0, timeout=5) < 3
    wait_for(lambda: endpoint.sessions == 0, timeout=5)
    assert cpu_seconds(1.0) < 0.08, "the query went on after its client left"
    assert query_works(endpoint) < 5


def test_a_cancel_request_while_idle_keeps_a_suspended_portal(endpoint: SqlEndpoint) -> None:
    client = RawClient(endpoint.port)
    pid, key = backend_key(client.login())
    client.send(parse("select range from range(10)"), bind(), execute(3), SYNC)
    assert kinds(client.until_ready()) == "12DDDsZ"
    with socket.create_connection(("127.0.0.1", endpoint.port)) as canceller:
        canceller.sendall(cancel_request(pid, key))
        assert canceller.recv(1) == b""
    client.send(execute(3), SYNC)  # PostgreSQL's cancel only stops what runs
    assert kinds(client.until_ready()) == "DDDsZ"
    with socket.create_connection(("127.0.0.1", endpoint.port)) as canceller:
        canceller.sendall(cancel_request(pid, key ^ 1))  # a wrong key cancels nothing
    client.send(query(HEAVY))
    time.sleep(0.3)
    assert endpoint.watch.running == 1
    with socket.create_connection(("127.0.0.1", endpoint.port)) as canceller:
        canceller.sendall(cancel_request(pid, key))
    replies = client.until_ready()
    assert error_field(replies[0][1], "M") == "canceling statement due to user request"


def test_an_error_while_rows_stream_is_an_error_not_a_dropped_connection(
    endpoint: SqlEndpoint,
) -> None:
    client = RawClient(endpoint.port)
    client.login()
    bad = "select case when range > 200000 then 'x'::int else range end from range(300000)"
    client.send(query(bad))
    replies: list[tuple[bytes, bytes]] = []
    while not replies or replies[-1][0] != b"Z":
        replies.append(client.read())
    [error] = [body for kind, body in replies if kind == b"E"]
    assert error_code(error) == "22P02"
    assert error_field(error, "M") == 'invalid input syntax for type integer: "x"'  # PostgreSQL's
    client.send(query("select 1"))
    assert kinds(client.until_ready()) == "TDCZ"


# -- the settings reach run and serve -------------------------------------------------------------


def test_serve_takes_the_timeouts_from_flags_and_environment(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PGML_SIDECAR_STATEMENT_TIMEOUT": "250ms"}
    env.pop("PGML_SIDECAR_ENDPOINT_PASSWORD", None)
    command = [sys.executable, "-m", "sidecar.cli", "serve", "--mirror", str(tmp_path / "m.db"),
               "--port", str(port), "--authentication-timeout", "2s"]  # fmt: skip
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        assert "serving" in server.stdout.readline()
        conninfo = f"host=127.0.0.1 port={port} user=pgml dbname=pgml"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            assert conn.execute("show statement_timeout").fetchone() == ("250ms",)
            with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
                conn.execute(HEAVY)
        silent = socket.create_connection(("127.0.0.1", port))
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""
        assert 1.5 < time.monotonic() - started < 5
    finally:
        server.terminate()
        server.wait(timeout=30)
    bad = subprocess.run(
        [*command[:-2], "--statement-timeout", "soon"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and 'invalid value for parameter "statement_timeout"' in bad.stderr
    assert "Traceback" not in bad.stderr


def test_run_takes_the_timeouts_from_flags_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecar import config

    path = tmp_path / "sidecar.toml"
    path.write_text('statement_timeout = "5s"\nauthentication_timeout = 30\n')
    settings = config.load({}, str(path))
    assert (settings["statement_timeout"], settings["authentication_timeout"]) == ("5s", "30")
    monkeypatch.setenv("PGML_SIDECAR_STATEMENT_TIMEOUT", "100ms")
    settings = config.load({"authentication_timeout": "1min"}, str(path))
    assert (settings["statement_timeout"], settings["authentication_timeout"]) == ("100ms", "1min")


def test_running_out_of_file_descriptors_does_not_end_the_endpoint(
    endpoint: SqlEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sockets: list[socket.socket] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 40, hard))
    try:
        with contextlib.suppress(OSError):  # EMFILE: this process (and the endpoint) has no more
            while len(sockets) < 1000:
                sockets.append(socket.create_connection(("127.0.0.1", endpoint.port), timeout=5))
        assert len(sockets) < 1000
        wait_for(lambda: "cannot accept a connection: Too many open files" in caplog.text)
        for sock in sockets:
            sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert query_works(endpoint) < 5


@pytest.mark.parametrize("terms", [30_000, 4_900])
def test_sql_nested_too_deeply_is_refused_and_the_endpoint_lives(
    endpoint: SqlEndpoint, terms: int
) -> None:
    deep = "select " + "+".join(["1"] * terms)  # 30,000 terms overflowed pglast's stack
    with connect(endpoint) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(deep)
        assert refused.value.sqlstate == "54001", refused.value
        with pytest.raises(psycopg.Error):
            conn.execute(deep + " where %s", [True])  # the extended protocol: at Parse
        assert conn.execute("select 1").fetchone() == (1,)
    assert query_works(endpoint) < 5


GRID_SEARCH = (
    "select * from pgml.train('Grid', 'classification', 'pgml.iris', 'target', 'random_forest',"
    " search => 'grid', search_params => '{\"n_estimators\": [1000, 2000, 4000],"
    ' "max_depth": [null, 3, 6]}\')'
)
"""Minutes of fitting on two cores."""


def fitting(trainer: Trainer) -> bool:
    """Whether a training is under way: a snapshot or model file no registry row names."""
    return bool(leftovers(trainer))


def test_a_training_stops_at_the_timeout_a_cancel_and_a_hang_up(
    endpoint: SqlEndpoint, trainer: Trainer
) -> None:
    with connect(endpoint) as conn:
        conn.execute("select * from pgml.load_dataset('iris')")
        small = "select * from pgml.train('Small', 'classification', 'pgml.iris', 'target')"
        conn.execute(small)  # the worker's processes are up, as run and serve start them
        conn.execute("set statement_timeout = '1s'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="due to statement timeout"):
            conn.execute(GRID_SEARCH)
        assert time.monotonic() - started < 5
        conn.execute("set statement_timeout = 0")
        assert trainer.registry.project("Grid") is None

        def cancel_soon() -> None:
            wait_for(lambda: fitting(trainer), timeout=30)
            conn.cancel_safe()

        canceller = threading.Thread(target=cancel_soon)
        canceller.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="due to user request"):
            conn.execute(GRID_SEARCH)
        canceller.join()
        assert time.monotonic() - started < 30
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on

    client = RawClient(endpoint.port)
    client.login()
    client.send(query(GRID_SEARCH))
    wait_for(lambda: fitting(trainer), timeout=30)
    busy = trainer.worker.pids()
    client.close()
    wait_for(lambda: not fitting(trainer), timeout=10)  # the snapshot is gone: it stopped
    assert trainer.registry.project("Grid") is None
    assert busy - trainer.worker.pids(), "no fit process was killed"
    with connect(endpoint) as conn:  # and the next training works
        assert conn.execute(small).fetchall()[0][:2] == ("Small", "classification")
