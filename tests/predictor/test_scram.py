"""SCRAM-SHA-256 server side against an independent client (scramp) and Postgres' own verifiers."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.scram import AuthenticationFailed, ScramExchange, ScramVerifier, saslprep

PASSWORD = "correct horse"
CHANNEL_DATA = b"\x01" * 32

# Verifiers Postgres 15 stored in pg_authid for these passwords (ALTER ROLE ... PASSWORD).
POSTGRES_VERIFIERS = [
    ("secret", "SCRAM-SHA-256$4096:PTFczjE2ubZgF+oEjtA+jA==$/KfRONvn96IGzLe6/trrgWYlx/ukOI0nvIomBNj8Xrw=:pIvGjHOQrQKPgaRRwgg4+pq57GE9U1ZyIpPubfuoo8k="),  # noqa: E501
    ("I\xadX", "SCRAM-SHA-256$4096:s9Brn3bFQ4n4OnU5X7hlIA==$O5YMyct8zZx8dwZT1abtRpUIJe+kxWn+9H82qAslQsY=:09RVNuQsjQUMeHqlst+fyU+RltVhy2IrIkvgkfvALx0="),  # noqa: E501
    ("Ⅸ", "SCRAM-SHA-256$4096:B3ufJ0O5m66/MzEW2Snyfg==$PjIPx47F55UygldBIma7OTcyw/D4VYqBgVekYnxccrA=:MXVgKe71hyzFNxiCR48v4th1rpe0hrs585evrdv5YaA="),  # noqa: E501
    ("a\x07b", "SCRAM-SHA-256$4096:570eE9UJub4TU5+in1xsPg==$3bCEC2/CNWgBmIQ+uH7DqadCcu5BC1FCgXY29WoAfm4=:WPSLFq7Hj7IT5gd26N3Hv1ZOeO2xh27NWQjHweVYGNA="),  # noqa: E501
    ("päss wörd", "SCRAM-SHA-256$4096:bFdEKFWUR0otckoBJ+2ifQ==$iJZs8X8Z27/wxC8Fr6fm7VwBODLRLtxULM1QLxTfbJs=:ltH56nOoTyXBXWOhovRYIIIvHyI6+gzqU7oa4hioDMA="),  # noqa: E501
    ("ا1", "SCRAM-SHA-256$4096:Z0w9FoKKWXHiAAosuMYs3g==$PUFjpa0/b0jlDKpPjYhNoFTnituECoNF4Z8xOAgUVK8=:xIiHAS3WCK3zB3HhC/6wtLqRe8GSkW9FzwaZlnIrCoo="),  # noqa: E501
]  # fmt: skip


SASLPREP_PROHIBITS = {"a\x07b", "ا1"}


@pytest.fixture(scope="module")
def verifier() -> ScramVerifier:
    return ScramVerifier.from_password(PASSWORD, iterations=4096)


def exchange(
    verifier: ScramVerifier,
    password: str,
    *,
    channel_binding: tuple[str, bytes] | None = None,
    mechanism: str = "SCRAM-SHA-256",
) -> None:
    """Run a whole exchange between scramp's client and ScramExchange."""
    client = scramp.ScramClient([mechanism], "ignored", password, channel_binding=channel_binding)
    server = ScramExchange(verifier)
    client.set_server_first(server.server_first(client.get_client_first().encode()).decode())
    final = server.server_final(client.get_client_final().encode())
    client.set_server_final(final.decode())  # raises unless the server signature is right


def test_full_exchange_with_scramp(verifier: ScramVerifier) -> None:
    exchange(verifier, PASSWORD)


def test_client_supporting_channel_binding_without_plus_offered(verifier: ScramVerifier) -> None:
    exchange(verifier, PASSWORD, channel_binding=("tls-server-end-point", CHANNEL_DATA))


def test_wrong_password_fails(verifier: ScramVerifier) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        exchange(verifier, "wrong horse")
    assert info.value.sqlstate == "28P01"


def test_channel_binding_p_is_refused(verifier: ScramVerifier) -> None:
    with pytest.raises(AuthenticationFailed, match="SCRAM-SHA-256-PLUS"):
        exchange(
            verifier,
            PASSWORD,
            channel_binding=("tls-server-end-point", CHANNEL_DATA),
            mechanism="SCRAM-SHA-256-PLUS",
        )


def test_fixed_nonce_and_server_first_layout(verifier: ScramVerifier) -> None:
    server = ScramExchange(verifier, nonce=b"\x00" * 18)
    first = server.server_first(b"n,,n=,r=abc").decode()
    salt = base64.b64encode(verifier.salt).decode()
    assert first == f"r=abc{'A' * 24},s={salt},i=4096"


def test_verifier_matches_scramp_derivation() -> None:
    salt = b"0123456789abcdef"
    ours = ScramVerifier.from_password("pencil", salt=salt, iterations=4096)
    _, stored_key, server_key, _ = scramp.ScramMechanism().make_auth_info(
        "pencil", iteration_count=4096, salt=salt
    )
    assert (ours.stored_key, ours.server_key, ours.iterations) == (stored_key, server_key, 4096)


@pytest.mark.parametrize(("password", "stored"), POSTGRES_VERIFIERS)
def test_verifier_matches_postgres(password: str, stored: str) -> None:
    theirs = ScramVerifier.parse(stored)
    assert ScramVerifier.from_password(password, salt=theirs.salt) == theirs
    assert theirs.text() == stored
    if password not in SASLPREP_PROHIBITS:  # scramp refuses these; Postgres uses them unchanged
        exchange(theirs, password)


def test_rfc4013_examples() -> None:
    assert saslprep("I\u00adX") == "IX"
    assert saslprep("user") == "user"
    assert saslprep("\u00aa") == "a"
    assert saslprep("\u2168") == "IX"
    assert saslprep("a\u2000b") == "a b"
    assert saslprep("\u0007") == "\u0007"  # prohibited: used unchanged, as Postgres does
    assert saslprep("\u0627\u0031") == "\u0627\u0031"  # bidi rule broken: unchanged


@pytest.mark.parametrize(
    "text", ["", "SCRAM-SHA-256$x:AA==$AA==:AA==", "md5abc", "SCRAM-SHA-1$1:a$b:c"]
)
def test_parse_rejects_other_verifiers(text: str) -> None:
    with pytest.raises(ValueError, match="not a SCRAM-SHA-256 verifier"):
        ScramVerifier.parse(text)


# -- tampering -------------------------------------------------------------------------------------


def started(verifier: ScramVerifier) -> tuple[scramp.ScramClient, ScramExchange]:
    client = scramp.ScramClient(["SCRAM-SHA-256"], "u", PASSWORD)
    server = ScramExchange(verifier)
    client.set_server_first(server.server_first(client.get_client_first().encode()).decode())
    return client, server


def with_attribute(message: str, name: str, value: str) -> str:
    return ",".join(
        f"{name}={value}" if a.startswith(f"{name}=") else a for a in message.split(",")
    )


def test_tampered_proof_fails(verifier: ScramVerifier) -> None:
    client, server = started(verifier)
    final = client.get_client_final()
    proof = bytearray(base64.b64decode(final.rsplit("p=", 1)[1]))
    proof[0] ^= 1
    with pytest.raises(AuthenticationFailed) as info:
        server.server_final(with_attribute(final, "p", base64.b64encode(proof).decode()).encode())
    assert info.value.sqlstate == "28P01"


def test_wrong_nonce_fails(verifier: ScramVerifier) -> None:
    client, server = started(verifier)
    final = client.get_client_final()
    nonce = final.split("r=", 1)[1].split(",", 1)[0]
    other = "y" if nonce.endswith("x") else "x"  # a nonce may end in x already (1 in 64)
    with pytest.raises(AuthenticationFailed, match="nonce"):
        server.server_final(with_attribute(final, "r", nonce[:-1] + other).encode())


def test_wrong_channel_binding_attribute_fails(verifier: ScramVerifier) -> None:
    client, server = started(verifier)
    final = client.get_client_final()
    with pytest.raises(AuthenticationFailed, match="channel binding"):
        server.server_final(with_attribute(final, "c", "eSws").encode())  # 'y,,' not 'n,,'


def test_messages_out_of_order_fail(verifier: ScramVerifier) -> None:
    server = ScramExchange(verifier)
    with pytest.raises(AuthenticationFailed, match="unexpected"):
        server.server_final(b"c=biws,r=x,p=AAAA")
    _, server = started(verifier)
    with pytest.raises(AuthenticationFailed, match="unexpected"):
        server.server_first(b"n,,n=,r=abc")


def test_no_second_try_after_a_failure(verifier: ScramVerifier) -> None:
    client, server = started(verifier)
    final = client.get_client_final()
    with pytest.raises(AuthenticationFailed):
        server.server_final(b"garbage")
    with pytest.raises(AuthenticationFailed, match="unexpected"):
        server.server_final(final.encode())


@pytest.mark.parametrize(
    "client_first",
    [
        b"",
        b"n",
        b"n,",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=a b",
        b"n,,n=,s=abc",
        b"n,,n=,r=abc,=x",
        b"n,,n=,r=abc,xyz",
        b"n,,n=\xff,r=abc",
        b"p=tls-server-end-point,,n=,r=abc",
    ],
)
def test_malformed_client_first_fails(verifier: ScramVerifier, client_first: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        ScramExchange(verifier).server_first(client_first)


@pytest.mark.parametrize(
    "make_final",
    [
        lambda f: b"",
        lambda f: f.split(",p=")[0].encode(),  # no proof
        lambda f: (f + ",x=1").encode(),  # proof not last
        lambda f: f.replace("p=", "p=!").encode(),  # not base64
        lambda f: with_attribute(f, "p", "AAAA").encode(),  # wrong length
        lambda f: f.replace("c=", "x=").encode(),
        lambda f: f.split(",", 1)[1].encode(),  # no channel binding
        lambda f: b"\xff" + f.encode(),
    ],
)
def test_malformed_client_final_fails(
    verifier: ScramVerifier, make_final: Callable[[str], bytes]
) -> None:
    client, server = started(verifier)
    with pytest.raises(AuthenticationFailed):
        server.server_final(make_final(client.get_client_final()))


@settings(max_examples=300, deadline=None)
@given(first=st.binary(max_size=80), final=st.binary(max_size=120))
def test_garbage_only_ever_raises_authentication_failed(first: bytes, final: bytes) -> None:
    verifier = ScramVerifier.from_password(PASSWORD, salt=b"s" * 16, iterations=1)
    server = ScramExchange(verifier)
    try:
        server.server_first(first)
    except AuthenticationFailed:
        return
    with pytest.raises(AuthenticationFailed):
        server.server_final(final)
