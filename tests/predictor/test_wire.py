"""The protocol codec without a socket: client messages built by hand, server messages by hand."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import struct
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor import wire
from predictor.value_text import float_text, text_value
from predictor.wire import (
    Bind,
    CancelRequest,
    Close,
    Describe,
    Execute,
    Field,
    Flush,
    FrontendMessage,
    FrontendParser,
    GSSENCRequest,
    Parse,
    Password,
    ProtocolViolation,
    Query,
    SSLRequest,
    Startup,
    Sync,
    Terminate,
    Unsupported,
)


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def typed(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack(">i", len(body) + 4) + body


def untyped(body: bytes) -> bytes:
    return struct.pack(">i", len(body) + 4) + body


def startup(params: dict[str, str], version: int = 196608) -> bytes:
    pairs = b"".join(cstr(k) + cstr(v) for k, v in params.items())
    return untyped(struct.pack(">i", version) + pairs + b"\x00")


PARAMS = {"user": "alice", "database": "mirror", "application_name": "psql ü"}

BIND_BODY = (
    cstr("portal")
    + cstr("stmt")
    + struct.pack(">hhh", 2, 0, 1)  # two parameter formats: text, binary
    + struct.pack(">h", 2)
    + struct.pack(">i", 3)
    + b"abc"
    + struct.pack(">i", -1)  # NULL
    + struct.pack(">hh", 1, 0)  # one result format: text
)

CLIENT_MESSAGES: list[tuple[bytes, FrontendMessage]] = [
    (typed(b"Q", cstr("select 'ü'; select 2")), Query("select 'ü'; select 2")),
    (typed(b"Q", cstr("")), Query("")),
    (
        typed(b"P", cstr("s1") + cstr("select $1, $2") + struct.pack(">hII", 2, 23, 4000000000)),
        Parse("s1", "select $1, $2", (23, 4000000000)),
    ),
    (typed(b"P", cstr("") + cstr("select 1") + struct.pack(">h", 0)), Parse("", "select 1", ())),
    (typed(b"B", BIND_BODY), Bind("portal", "stmt", (0, 1), (b"abc", None), (0,))),
    (
        typed(b"B", cstr("") + cstr("") + struct.pack(">hhih", 0, 1, 0, 0)),
        Bind("", "", (), (b"",), ()),
    ),
    (typed(b"D", b"S" + cstr("s1")), Describe("S", "s1")),
    (typed(b"D", b"P" + cstr("")), Describe("P", "")),
    (typed(b"E", cstr("portal") + struct.pack(">i", 100)), Execute("portal", 100)),
    (typed(b"E", cstr("") + struct.pack(">i", 0)), Execute("", 0)),
    (typed(b"C", b"S" + cstr("s1")), Close("S", "s1")),
    (typed(b"C", b"P" + cstr("c1")), Close("P", "c1")),
    (typed(b"S"), Sync()),
    (typed(b"H"), Flush()),
    (typed(b"X"), Terminate()),
    (typed(b"p", cstr("secret")), Password(b"secret\x00")),
    (typed(b"d", b"1\t2\n"), Unsupported("d")),
    (typed(b"c"), Unsupported("c")),
    (typed(b"f", cstr("stop")), Unsupported("f")),
    (typed(b"F", struct.pack(">ihhh", 1598, 0, 0, 0)), Unsupported("F")),
]


def typed_parser() -> FrontendParser:
    parser = FrontendParser()
    parser.startup_done()
    return parser


@pytest.mark.parametrize(("raw", "message"), CLIENT_MESSAGES)
def test_each_frontend_message(raw: bytes, message: FrontendMessage) -> None:
    assert typed_parser().feed(raw) == [message]


def session_bytes() -> tuple[bytes, list[FrontendMessage]]:
    raw = startup(PARAMS) + b"".join(r for r, _ in CLIENT_MESSAGES)
    return raw, [Startup(196608, PARAMS), *(m for _, m in CLIENT_MESSAGES)]


def test_a_session_in_one_piece() -> None:
    raw, expected = session_bytes()
    assert FrontendParser().feed(raw) == expected


def test_a_session_byte_by_byte() -> None:
    raw, expected = session_bytes()
    parser = FrontendParser()
    got: list[FrontendMessage] = []
    for i in range(len(raw)):
        got += parser.feed(raw[i : i + 1])
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_a_session_cut_anywhere(cuts: list[int]) -> None:
    raw, expected = session_bytes()
    points = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    parser = FrontendParser()
    got: list[FrontendMessage] = []
    for a, b in itertools.pairwise(points):
        got += parser.feed(raw[a:b])
    assert got == expected


def test_an_incomplete_message_waits() -> None:
    parser = typed_parser()
    raw = typed(b"Q", cstr("select 1"))
    assert parser.feed(raw[:-1]) == []
    assert parser.feed(b"") == []
    assert parser.feed(raw[-1:] + raw[:3]) == [Query("select 1")]
    assert parser.feed(raw[3:]) == [Query("select 1")]


def test_ssl_and_gssenc_requests_come_before_startup() -> None:
    parser = FrontendParser()
    ssl = untyped(struct.pack(">i", 80877103))
    gss = untyped(struct.pack(">i", 80877104))
    assert parser.feed(ssl) == [SSLRequest()]
    assert parser.feed(gss + startup({"user": "u"})) == [
        GSSENCRequest(),
        Startup(196608, {"user": "u"}),
    ]
    assert parser.feed(typed(b"S")) == [Sync()]


def test_cancel_request() -> None:
    raw = untyped(struct.pack(">iiI", 80877102, 4242, 0xDEADBEEF))
    assert FrontendParser().feed(raw) == [CancelRequest(4242, 0xDEADBEEF)]


def test_startup_with_a_newer_minor_version_and_protocol_options() -> None:
    raw = startup({"user": "u", "_pq_.compression": "on"}, version=(3 << 16) | 2)
    assert FrontendParser().feed(raw) == [Startup(196610, {"user": "u", "_pq_.compression": "on"})]


def test_startup_done_is_idempotent_and_typed_from_then_on() -> None:
    parser = FrontendParser()
    parser.startup_done()
    assert parser.feed(typed(b"X")) == [Terminate()]


@pytest.mark.parametrize("version", [2 << 16, (4 << 16) | 0, (1234 << 16) | 5681])
def test_other_protocol_versions_are_refused(version: int) -> None:
    with pytest.raises(ProtocolViolation, match="unsupported frontend protocol") as info:
        FrontendParser().feed(startup({"user": "u"}, version=version))
    assert info.value.sqlstate == "0A000"


def test_sasl_initial_response() -> None:
    data = cstr("SCRAM-SHA-256") + struct.pack(">i", 11) + b"n,,n=,r=abc"
    [message] = typed_parser().feed(typed(b"p", data))
    assert isinstance(message, Password)
    assert wire.parse_sasl_initial(message.data) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert wire.parse_sasl_initial(cstr("X") + struct.pack(">i", -1)) == ("X", b"")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SCRAM-SHA-256",
        cstr("SCRAM-SHA-256") + b"\x00\x00",
        cstr("SCRAM-SHA-256") + struct.pack(">i", 5) + b"abc",
        cstr("SCRAM-SHA-256") + struct.pack(">i", -2),
        cstr("SCRAM-SHA-256") + struct.pack(">i", 1) + b"ab",
    ],
)
def test_bad_sasl_initial_response(data: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="SASLInitialResponse"):
        wire.parse_sasl_initial(data)


def test_password_message() -> None:
    assert wire.parse_password(cstr("hunter2 ü")) == "hunter2 ü"
    with pytest.raises(ProtocolViolation):
        wire.parse_password(b"no terminator")
    with pytest.raises(ProtocolViolation):
        wire.parse_password(cstr("a") + b"b")


def test_bind_format_helpers() -> None:
    bind = Bind("", "", (1,), (b"a", b"b"), ())
    assert (bind.param_format(0), bind.param_format(1), bind.result_format(5)) == (1, 1, 0)
    bind = Bind("", "", (0, 1), (b"a", b"b"), (1, 0))
    assert (bind.param_format(1), bind.result_format(0), bind.result_format(1)) == (1, 1, 0)


# -- malformed input -------------------------------------------------------------------------------

MALFORMED_TYPED: list[tuple[bytes, str]] = [
    (b"Q" + struct.pack(">i", 3), "length 3: less than 4"),
    (b"Q" + struct.pack(">i", -1), "less than 4"),
    (typed(b"Q", b"select 1"), "not NUL-terminated"),
    (typed(b"Q", cstr("a") + b"b"), "unexpected byte"),
    (typed(b"Q", b"\xff\xfe\x00"), "invalid byte sequence for encoding UTF8"),
    (typed(b"P", cstr("s")), "not NUL-terminated"),
    (typed(b"P", cstr("s") + cstr("q")), "runs past the end"),
    (typed(b"P", cstr("s") + cstr("q") + struct.pack(">h", -1)), "negative parameter type count"),
    (typed(b"P", cstr("s") + cstr("q") + struct.pack(">hI", 2, 23)), "runs past the end"),
    (typed(b"B", cstr("") + cstr("") + struct.pack(">h", -3)), "negative parameter format count"),
    (typed(b"B", cstr("") + cstr("") + struct.pack(">hh", 1, 2)), "unsupported parameter format"),
    (typed(b"B", cstr("") + cstr("") + struct.pack(">hhhh", 2, 0, 0, 1)), "2 parameter formats"),
    (typed(b"B", cstr("") + cstr("") + struct.pack(">hhi", 0, 1, -2)), "negative parameter length"),
    (typed(b"B", cstr("") + cstr("") + struct.pack(">hhi", 0, 1, 10) + b"abc"), "runs past"),
    (typed(b"B", cstr("") + cstr("") + struct.pack(">hh", 0, 0)), "result format count runs past"),
    (typed(b"B", cstr("") + cstr("") + struct.pack(">hhhh", 0, 0, 1, 7)), "unsupported result"),
    (typed(b"B", cstr("") + cstr("") + struct.pack(">hhh", 0, 0, -1)), "negative result format"),
    (typed(b"D", b"X" + cstr("s")), "neither 'S' nor 'P'"),
    (typed(b"D", b""), "target kind runs past"),
    (typed(b"C", b"Z" + cstr("s")), "neither 'S' nor 'P'"),
    (typed(b"E", cstr("p")), "row limit runs past"),
    (typed(b"E", cstr("p") + struct.pack(">ih", 0, 0)), "unexpected byte"),
    (typed(b"S", b"x"), "1 unexpected byte"),
    (typed(b"X", b"xy"), "2 unexpected byte"),
    (typed(b"Z"), "invalid frontend message type"),
    (b"\x00\x00\x00\x00\x08", "invalid frontend message type 0"),
    (b"Q" + struct.pack(">i", (64 << 20) + 1), "too large"),
]


@pytest.mark.parametrize(("raw", "match"), MALFORMED_TYPED)
def test_malformed_typed_message(raw: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match) as info:
        typed_parser().feed(raw)
    assert info.value.sqlstate in ("08P01", "22021")


def test_invalid_utf8_has_its_own_sqlstate() -> None:
    with pytest.raises(ProtocolViolation) as info:
        typed_parser().feed(typed(b"Q", b"select '\xc3'\x00"))
    assert info.value.sqlstate == "22021"


def test_max_message_is_configurable() -> None:
    parser = FrontendParser(max_message=100)
    parser.startup_done()
    assert parser.feed(typed(b"Q", cstr("x" * 95))) == [Query("x" * 95)]  # length field 100
    with pytest.raises(ProtocolViolation, match="too large: 101 bytes, limit 100"):
        parser.feed(typed(b"Q", cstr("x" * 96))[:5])  # refused before the body arrives


MALFORMED_UNTYPED: list[tuple[bytes, str]] = [
    (struct.pack(">i", 3), "less than 4"),
    (struct.pack(">i", 7) + b"\x00\x03\x00", "invalid length of startup packet"),
    (struct.pack(">i", 10001), "invalid length of startup packet"),
    (untyped(struct.pack(">i", 80877103) + b"x"), "unexpected byte"),
    (untyped(struct.pack(">ii", 80877102, 1)), "secret key runs past"),
    (untyped(struct.pack(">iiii", 80877102, 1, 2, 3)), "unexpected byte"),
    (untyped(struct.pack(">i", 196608) + cstr("user")), "value of parameter 'user'"),
    (untyped(struct.pack(">i", 196608) + cstr("user") + cstr("u")), "not NUL-terminated"),
    (untyped(struct.pack(">i", 196608) + cstr("user") + cstr("u") + b"\x00x"), "unexpected"),
    (untyped(struct.pack(">i", 196608) + b"us\xffer\x00u\x00\x00"), "UTF8"),
]


@pytest.mark.parametrize(("raw", "match"), MALFORMED_UNTYPED)
def test_malformed_startup_packet(raw: bytes, match: str) -> None:
    with pytest.raises(ProtocolViolation, match=match):
        FrontendParser().feed(raw)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), typed_mode=st.booleans(), max_message=st.integers(4, 300))
def test_random_bytes_give_messages_or_a_protocol_violation(
    data: bytes, typed_mode: bool, max_message: int
) -> None:
    parser = FrontendParser(max_message=max_message)
    if typed_mode:
        parser.startup_done()
    try:
        messages = parser.feed(data)
    except ProtocolViolation:
        return
    assert all(isinstance(m, FrontendMessage) for m in messages)


VALID_STREAM = startup(PARAMS) + b"".join(raw for raw, _ in CLIENT_MESSAGES)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID_STREAM) - 1), st.integers(0, 255), st.booleans()),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(1, 64),
)
def test_mutated_valid_messages_give_messages_or_a_protocol_violation(
    edits: list[tuple[int, int, bool]], cut: int
) -> None:
    data = bytearray(VALID_STREAM)
    for position, value, insert in edits:
        if insert:
            data.insert(position, value)
        else:
            data[position] = value
    parser = FrontendParser(max_message=1 << 16)
    try:
        for i in range(0, len(data), cut):
            messages = parser.feed(bytes(data[i : i + cut]))
            assert all(isinstance(m, FrontendMessage) for m in messages)
    except ProtocolViolation:
        pass


# -- backend messages ------------------------------------------------------------------------------


def test_authentication_messages() -> None:
    assert wire.authentication_ok() == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert wire.authentication_cleartext() == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    assert wire.authentication_sasl(["SCRAM-SHA-256"]) == (
        b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"
    )
    assert wire.authentication_sasl_continue(b"r=x") == b"R\x00\x00\x00\x0b\x00\x00\x00\x0br=x"
    assert wire.authentication_sasl_final(b"v=y") == b"R\x00\x00\x00\x0b\x00\x00\x00\x0cv=y"


def test_session_messages() -> None:
    assert wire.parameter_status("server_version", "16.0") == (
        b"S\x00\x00\x00\x18server_version\x0016.0\x00"
    )
    assert wire.backend_key_data(1234, 0xDEADBEEF) == (
        b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\xde\xad\xbe\xef"
    )
    assert wire.ready_for_query("I") == b"Z\x00\x00\x00\x05I"
    assert wire.ready_for_query("T") == b"Z\x00\x00\x00\x05T"
    assert wire.ready_for_query("E") == b"Z\x00\x00\x00\x05E"
    with pytest.raises(ValueError):
        wire.ready_for_query("X")
    assert wire.negotiate_protocol_version(0, ["_pq_.x"]) == (
        b"v\x00\x00\x00\x13\x00\x00\x00\x00\x00\x00\x00\x01_pq_.x\x00"
    )
    assert wire.SSL_REFUSED == b"N" and wire.GSSENC_REFUSED == b"N"


def test_row_description() -> None:
    fields = [Field("id", 23, 4), Field("ü", 25, -1, table_oid=16384, column=2)]
    expected = (
        b"T\x00\x00\x00\x30\x00\x02"
        + b"id\x00"
        + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
        + "ü".encode()
        + b"\x00"
        + b"\x00\x00\x40\x00\x00\x02\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
    )
    assert wire.row_description(fields) == expected


def test_data_row_and_command_messages() -> None:
    assert wire.data_row([b"1", None, b""]) == (
        b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00"
    )
    assert wire.command_complete("SELECT 3") == b"C\x00\x00\x00\x0dSELECT 3\x00"
    assert wire.empty_query_response() == b"I\x00\x00\x00\x04"
    assert wire.parse_complete() == b"1\x00\x00\x00\x04"
    assert wire.bind_complete() == b"2\x00\x00\x00\x04"
    assert wire.close_complete() == b"3\x00\x00\x00\x04"
    assert wire.no_data() == b"n\x00\x00\x00\x04"
    assert wire.portal_suspended() == b"s\x00\x00\x00\x04"
    assert wire.parameter_description([23, 25]) == (
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"
    )
    assert wire.parameter_description([]) == b"t\x00\x00\x00\x06\x00\x00"


def test_error_and_notice_responses() -> None:
    error = wire.error_response(sqlstate="42P01", message='relation "t" does not exist')
    assert error == (
        b'E\x00\x00\x00\x37SERROR\x00VERROR\x00C42P01\x00Mrelation "t" does not exist\x00\x00'
    )
    full = wire.error_response(
        sqlstate="22023",
        message="m",
        severity="FATAL",
        detail="d",
        hint="h",
        position=7,
    )
    assert full == b"E\x00\x00\x00\x26SFATAL\x00VFATAL\x00C22023\x00Mm\x00Dd\x00Hh\x00P7\x00\x00"
    notice = wire.notice_response(sqlstate="01000", message="careful")
    assert notice == b"N\x00\x00\x00\x25SNOTICE\x00VNOTICE\x00C01000\x00Mcareful\x00\x00"
    assert b"a\xef\xbf\xbdb" in wire.error_response(sqlstate="XX000", message="a\x00b")
    with pytest.raises(ValueError):
        wire.error_response(sqlstate="bad", message="m")


# -- many rows -------------------------------------------------------------------------------------


def reference_rows(table: pa.Table) -> bytes:
    """DataRow messages built row by row with the value-by-value text conversion."""
    columns = []
    for column in table.columns:
        if pa.types.is_float32(column.type):
            columns.append(
                [None if v is None else float_text(v, bits=32).encode() for v in column.to_pylist()]
            )
        else:
            columns.append([text_value(v) for v in column.to_pylist()])
    return b"".join(wire.data_row(list(row)) for row in zip(*columns, strict=True))


def sample_table(n: int = 50) -> pa.Table:
    rng = np.random.default_rng(7)
    floats = rng.normal(0, 1, n) * 10.0 ** rng.integers(-12, 20, n)
    floats[:6] = [math.nan, math.inf, -math.inf, 0.0, -0.0, 2.0**60]
    nulls = rng.random(n) < 0.2
    ints = rng.integers(-(2**40), 2**40, n)
    words = ["", "ü", "a b", "NULL", 'q"\\', "日本語", "x,y", "{}"]
    return pa.table(
        {
            "i64": pa.array(ints, mask=nulls),
            "i32": pa.array(ints.astype(np.int32)),
            "u8": pa.array(ints.astype(np.uint8), mask=~nulls),
            "f64": pa.array(floats, mask=nulls),
            "f32": pa.array(floats.astype(np.float32)),
            "bool": pa.array(rng.random(n) < 0.5, mask=nulls),
            "text": pa.array([words[i % len(words)] for i in range(n)], mask=nulls),
            "bytes": pa.array([bytes([i % 256]) * (i % 3) for i in range(n)]),
            "dec": pa.array([Decimal(int(i)).scaleb(-2) for i in ints], pa.decimal128(20, 2)),
            "ts": pa.array(ints * 1000, pa.timestamp("us"), mask=nulls),
            "tstz": pa.array(ints * 997, pa.timestamp("us", tz="UTC")),
            "date": pa.array(ints % 100000, pa.int32()).cast(pa.date32()),
            "list": pa.array(
                [None if i % 5 == 0 else [float(i), None, math.nan][: i % 4] for i in range(n)],
                pa.list_(pa.float64()),
            ),
            "words": pa.array([[words[i % 8], None, words[(i + 3) % 8]] for i in range(n)]),
            "struct": pa.array([{"k": i, "s": words[i % 8]} for i in range(n)]),
        }
    )


def test_encode_rows_equals_row_by_row_reference() -> None:
    table = sample_table()
    assert wire.encode_rows(table) == reference_rows(table)


def test_encode_rows_of_chunked_sliced_and_batches() -> None:
    table = sample_table(120)
    chunked = pa.concat_tables([table.slice(0, 7), table.slice(7, 50), table.slice(57)])
    assert chunked.column(0).num_chunks == 3
    assert wire.encode_rows(chunked) == reference_rows(table)
    assert wire.encode_rows(table.slice(33, 20)) == reference_rows(table.slice(33, 20))
    batch = table.to_batches()[0].slice(5, 9)
    assert wire.encode_rows(batch) == reference_rows(pa.Table.from_batches([batch]))
    assert wire.encode_rows(table.slice(0, 0)) == b""


def test_encode_rows_parses_back_as_data_rows() -> None:
    table = pa.table({"a": [1, None], "b": ["x", "ü"]})
    raw = wire.encode_rows(table)
    assert raw == (
        b"D\x00\x00\x00\x10\x00\x02\x00\x00\x00\x011\x00\x00\x00\x01x"
        b"D\x00\x00\x00\x10\x00\x02\xff\xff\xff\xff\x00\x00\x00\x02\xc3\xbc"
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats()),
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            st.one_of(st.none(), st.text(max_size=5)),
            st.one_of(st.none(), st.booleans()),
            st.one_of(st.none(), st.datetimes(timezones=st.just(dt.UTC))),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_encode_rows_property(rows: list[tuple[Any, ...]]) -> None:
    columns = list(zip(*rows, strict=True))
    table = pa.table(
        {
            "f": pa.array(columns[0], pa.float64()),
            "i": pa.array(columns[1], pa.int64()),
            "t": pa.array(columns[2], pa.string()),
            "b": pa.array(columns[3], pa.bool_()),
            "ts": pa.array(columns[4], pa.timestamp("us", tz="UTC")),
        }
    )
    assert wire.encode_rows(table) == reference_rows(table)


def test_data_rows_takes_any_string_or_binary_array() -> None:
    expected = wire.data_row([b"a", None]) + wire.data_row([b"", b"bc"])
    columns = [pa.array(["a", ""]), pa.array([None, b"bc"], pa.binary())]
    assert wire.data_rows(columns) == expected
    columns = [pa.array([b"a", b""], pa.large_binary()), pa.array([None, "bc"], pa.large_string())]
    assert wire.data_rows(columns) == expected
    with pytest.raises(TypeError, match="string or binary"):
        wire.data_rows([pa.array([1, 2])])
    with pytest.raises(ValueError, match="differ in length"):
        wire.data_rows([pa.array(["a"]), pa.array(["a", "b"])])
    with pytest.raises(ValueError, match="at least one column"):
        wire.data_rows([])
