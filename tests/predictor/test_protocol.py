"""The endpoint's protocol handling, message by message, and its resistance to garbage."""

from __future__ import annotations

import random
import socket
import struct

import psycopg
import pytest

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import connect
from tests.predictor.raw_client import (
    SYNC,
    RawClient,
    bind,
    describe,
    error_code,
    execute,
    kinds,
    message,
    parse,
    query,
)


@pytest.fixture
def raw(endpoint: SqlEndpoint) -> RawClient:
    client = RawClient(endpoint.port)
    assert kinds(client.login())[0] == "R"
    return client


def test_startup_reports_parameters(endpoint: SqlEndpoint) -> None:
    client = RawClient(endpoint.port)
    replies = client.login()
    assert kinds(replies)[0] == "R" and kinds(replies)[-2:] == "KZ"
    status = dict(body[:-1].split(b"\0", 1) for kind, body in replies if kind == b"S")
    assert status[b"server_version"] == b"16.0"
    assert status[b"client_encoding"] == b"UTF8"
    assert status[b"integer_datetimes"] == b"on"


def test_several_statements_in_one_query(raw: RawClient) -> None:
    raw.send(query("select 1 as a; select 'x' as b, null as c; set timezone = 'UTC'"))
    replies = raw.until_ready()
    assert kinds(replies) == "TDCTDCCZ"
    assert replies[-1][1] == b"I"
    empty = RawClient.until_ready
    raw.send(query(""))
    assert kinds(empty(raw)) == "IZ"


def test_execute_with_a_row_limit(raw: RawClient) -> None:
    raw.send(
        parse("select i from range(5) t(i) where i >= $1", types=[20]),
        bind([b"1"]),
        describe("P"),
        execute(2),
        execute(2),
        execute(2),
        SYNC,
    )
    replies = raw.until_ready()
    assert kinds(replies) == "12T" + "DDs" + "DDs" + "C" + "Z"
    assert replies[-2][1] == b"SELECT 4\0"


def test_error_in_the_extended_protocol_skips_to_sync(raw: RawClient) -> None:
    raw.send(parse("select nope from (values (1)) t(x)"), bind(), execute(), parse("select 1"),
             SYNC)  # fmt: skip
    replies = raw.until_ready()
    assert kinds(replies) == "12EZ"  # columns are checked when the query runs: Execute fails
    assert error_code(replies[2][1]) == "42703"
    raw.send(parse("select 1"), bind(), execute(), SYNC)
    assert kinds(raw.until_ready()) == "12DCZ"


def test_ssl_and_gssenc_requests_are_refused_cleanly(endpoint: SqlEndpoint) -> None:
    for code in (80877103, 80877104):
        sock = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
        sock.sendall(struct.pack("!ii", 8, code))
        assert sock.recv(1) == b"N"
        sock.close()
    with psycopg.connect(
        f"host=127.0.0.1 port={endpoint.port} user=pgml dbname=pgml sslmode=prefer"
    ) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use is False


def test_fuzzed_messages_and_statements_never_bring_the_server_down(endpoint: SqlEndpoint) -> None:
    rng = random.Random(20261123)
    statements = [
        "select 1", "select", "select pgml.predict(", "begin", "commit", "fetch 5 from nope",
        "select * from pgml.train()", "select pgml.predict('x', ARRAY['a'])", "close all",
        "declare c cursor for select 1", "fetch all from c", "set x to", "show nothing",
        "savepoint a", "rollback to a", "select $1", "values (1), (2)", "select 1/0",
        "select repeat('x', 100000)", "select ''::jsonb", "copy t to stdout", "\\x",
    ]  # fmt: skip
    kinds_ = [b"Q", b"P", b"B", b"E", b"D", b"C", b"S", b"H", b"F", b"d", b"c", b"f", b"?"]
    for round_ in range(200):
        client = RawClient(endpoint.port)
        try:
            client.login()
            _fuzz_round(client, rng, statements, kinds_)
        except OSError:
            pass  # the server may close a connection that broke the protocol
        finally:
            client.close()
        if round_ % 50 == 0:
            with connect(endpoint) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
    with connect(endpoint) as conn:
        assert conn.execute("select 42").fetchone() == (42,)


def _fuzz_round(
    client: RawClient, rng: random.Random, statements: list[str], kinds_: list[bytes]
) -> None:
    """Send a few random, mutated or valid messages, then read replies for a moment."""
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.4:
            client.send(query(rng.choice(statements)))
        elif choice < 0.7:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
            client.send(message(rng.choice(kinds_), body))
        elif choice < 0.85:
            mutated = bytearray(rng.choice(statements).encode())
            if mutated:
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
            client.send(message(b"Q", bytes(mutated) + b"\0"))
        else:
            client.send(parse(rng.choice(statements)), bind(), execute(), SYNC)
    client.sock.settimeout(0.3)
    while True:
        kind, _ = client.read()
        if kind == b"Z" and rng.random() < 0.5:
            return
