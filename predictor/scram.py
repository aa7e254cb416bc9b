"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as the server side of Postgres SASL authentication, pure.

The exchange, in the messages of the wire protocol::

    server: AuthenticationSASL ["SCRAM-SHA-256"]
    client: SASLInitialResponse  client-first-message   n,,n=,r=<client nonce>
    server: AuthenticationSASLContinue  server_first()   r=<client+server nonce>,s=<salt>,i=4096
    client: SASLResponse  client-final-message           c=biws,r=<nonce>,p=<proof>
    server: AuthenticationSASLFinal  server_final()      v=<server signature>
    server: AuthenticationOk

Like Postgres, the user name inside the SCRAM messages is ignored (the StartupMessage names the
user) and channel binding is not offered (no SCRAM-SHA-256-PLUS).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass

from mirror.errors import SidecarError

DEFAULT_ITERATIONS = 4096
SALT_BYTES = 16
NONCE_BYTES = 18
_KEY_BYTES = 32


class AuthenticationFailed(SidecarError):
    """The client did not prove it knows the password, or broke the SCRAM exchange.

    SQLSTATE 28P01 for a wrong password, 08P01 for a malformed or out-of-order message.
    """

    sqlstate = "28P01"


def _malformed(what: str) -> AuthenticationFailed:
    return AuthenticationFailed(f"malformed SCRAM message: {what}", sqlstate="08P01")


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """What the server keeps of a password: salt, iteration count, StoredKey and ServerKey."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(
        cls, password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
    ) -> ScramVerifier:
        """Derive a verifier from a password, normalised with SASLprep as Postgres does."""
        if iterations < 1:
            raise ValueError("SCRAM iteration count must be at least 1")
        salt = os.urandom(SALT_BYTES) if salt is None else salt
        salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(
            salt=salt,
            iterations=iterations,
            stored_key=hashlib.sha256(client_key).digest(),
            server_key=_hmac(salted, b"Server Key"),
        )

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Read a verifier as pg_authid.rolpassword stores it.

        The form is ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, base64 parts.
        """
        try:
            mechanism, params, keys = text.strip().split("$")
            iterations_text, salt_text = params.split(":")
            stored_text, server_text = keys.split(":")
            if mechanism != "SCRAM-SHA-256":
                raise ValueError(mechanism)
            verifier = cls(
                salt=_b64decode(salt_text),
                iterations=int(iterations_text),
                stored_key=_b64decode(stored_text),
                server_key=_b64decode(server_text),
            )
        except (ValueError, binascii.Error):
            raise ValueError(
                "not a SCRAM-SHA-256 verifier: expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
            ) from None
        if verifier.iterations < 1 or {len(verifier.stored_key), len(verifier.server_key)} != {
            _KEY_BYTES
        }:
            raise ValueError("not a SCRAM-SHA-256 verifier: bad iteration count or key length")
        return verifier

    def text(self) -> str:
        """Return the verifier in pg_authid.rolpassword form (see :meth:`parse`)."""
        b64 = _b64encode
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}"
            f"${b64(self.stored_key)}:{b64(self.server_key)}"
        )


class ScramExchange:
    """One SCRAM-SHA-256 authentication, from the client's first message to the server's last."""

    MECHANISM = "SCRAM-SHA-256"

    def __init__(self, verifier: ScramVerifier, *, nonce: bytes | None = None) -> None:
        """Start an exchange; ``nonce`` is the server's random part (base64-encoded on the wire)."""
        self.verifier = verifier
        self._server_nonce = _b64encode(os.urandom(NONCE_BYTES) if nonce is None else nonce)
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._state = "start"

    def server_first(self, client_first: bytes) -> bytes:
        """Read the client-first-message; return the server-first-message."""
        self._advance("start", "client-first-message")
        text = _decode(client_first)
        header, bare = _split_gs2_header(text)
        attributes = bare.split(",")
        if attributes[0].startswith("m="):
            raise AuthenticationFailed(
                "client requires an unsupported SCRAM extension", sqlstate="0A000"
            )
        if len(attributes) < 2 or not attributes[0].startswith("n="):
            raise _malformed("expected username attribute 'n'")
        client_nonce = _attribute(attributes[1], "r")
        if not client_nonce or not all(0x21 <= ord(c) <= 0x7E for c in client_nonce):
            raise _malformed("the client nonce must be printable characters")
        for extension in attributes[2:]:
            _attribute(extension, None)
        self._gs2_header = header
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        v = self.verifier
        self._server_first = f"r={self._nonce},s={_b64encode(v.salt)},i={v.iterations}"
        self._state = "first sent"
        return self._server_first.encode()

    def server_final(self, client_final: bytes) -> bytes:
        """Check the client-final-message's proof; return the server-final-message."""
        self._advance("first sent", "client-final-message")
        text = _decode(client_final)
        without_proof, separator, proof_text = text.rpartition(",p=")
        if not separator or "," in proof_text:
            raise _malformed("the client-final-message must end with the proof attribute 'p'")
        attributes = without_proof.split(",")
        if len(attributes) < 2:
            raise _malformed("expected attributes 'c' and 'r'")
        binding = _attribute(attributes[0], "c")
        if not hmac.compare_digest(
            binding.encode(), _b64encode(self._gs2_header.encode()).encode()
        ):
            raise _malformed("unexpected channel binding data")
        nonce = _attribute(attributes[1], "r")
        if not hmac.compare_digest(nonce.encode(), self._nonce.encode()):
            raise _malformed("the nonce does not match")
        for extension in attributes[2:]:
            _attribute(extension, None)
        try:
            proof = _b64decode(proof_text)
        except (ValueError, binascii.Error):
            raise _malformed("the proof is not base64") from None
        if len(proof) != _KEY_BYTES:
            raise _malformed("the proof has the wrong length")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        v = self.verifier
        client_signature = _hmac(v.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key):
            raise AuthenticationFailed("password authentication failed")
        self._state = "done"
        return f"v={_b64encode(_hmac(v.server_key, auth_message))}".encode()

    def _advance(self, expected: str, message: str) -> None:
        if self._state != expected:
            state, self._state = self._state, "failed"
            raise AuthenticationFailed(
                f"unexpected SCRAM {message} (exchange is {state})", sqlstate="08P01"
            )
        self._state = "failed"  # until the step succeeds


def _split_gs2_header(text: str) -> tuple[str, str]:
    """Return the gs2 header ('n,,' or 'y,,') and the client-first-message-bare."""
    flag, comma, rest = text.partition(",")
    if not comma:
        raise _malformed("expected a gs2 header")
    if flag.startswith("p="):
        raise AuthenticationFailed(
            "the client selected channel binding, which this server does not offer "
            "(it offers SCRAM-SHA-256, not SCRAM-SHA-256-PLUS)",
            sqlstate="08P01",
        )
    if flag not in ("n", "y"):
        raise _malformed(f"unexpected channel binding flag {flag[:10]!r}")
    authzid, comma, bare = rest.partition(",")
    if not comma:
        raise _malformed("expected a gs2 header")
    if authzid:
        raise AuthenticationFailed(
            "client uses authorization identity, but it is not supported", sqlstate="0A000"
        )
    return f"{flag},,", bare


def _attribute(item: str, name: str | None) -> str:
    """Return the value of ``name=value`` (any single-letter name when ``name`` is None)."""
    if len(item) < 2 or item[1] != "=" or not item[0].isascii() or not item[0].isalpha():
        raise _malformed(f"expected an attribute, got {item[:20]!r}")
    if name is not None and item[0] != name:
        raise _malformed(f"expected attribute {name!r}, got {item[0]!r}")
    return item[2:]


def _decode(message: bytes) -> str:
    try:
        return bytes(message).decode()
    except UnicodeDecodeError:
        raise _malformed("not valid UTF-8") from None


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# -- SASLprep (RFC 4013) --------------------------------------------------------------------------

_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,
)


def saslprep(password: str) -> str:
    """Return a password prepared with SASLprep, or unchanged if SASLprep refuses it.

    Postgres (server and libpq) falls back to the raw password the same way, so a password
    with prohibited characters still works between them.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    if any(check(c) for c in prepared for check in _PROHIBITED):
        return password
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            return password
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            return password
    return prepared
