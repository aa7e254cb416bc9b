"""Authentication on the endpoint: SCRAM-SHA-256 with a password, trust on loopback only."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mirror.errors import ConfigError
from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint, read_password
from tests.predictor.endpoint_client import dsn
from trainer.train import Trainer

PASSWORD = "correct horse battery staple"


@pytest.fixture
def guarded(mirror: Mirror, trainer: Trainer) -> Iterator[SqlEndpoint]:
    served = SqlEndpoint(EndpointSettings(port=0, password=PASSWORD), mirror.con, trainer)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def test_scram_with_the_right_password(guarded: SqlEndpoint, pg_bin: Path) -> None:
    with psycopg.connect(dsn(guarded, password=f"'{PASSWORD}'"), autocommit=True) as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)
    done = subprocess.run(
        [str(pg_bin / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(guarded.port),
         "-U", "someone", "-d", "pgml", "-c", "select pgml.version() like 'pgml-sidecar%'"],
        env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "t"), done.stderr


def test_wrong_or_missing_password_is_refused(guarded: SqlEndpoint) -> None:
    with pytest.raises(psycopg.OperationalError) as wrong:
        psycopg.connect(dsn(guarded, password="nope"))
    assert 'password authentication failed for user "pgml"' in str(wrong.value)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(guarded))  # libpq has no password to answer with
    with psycopg.connect(dsn(guarded, password=f"'{PASSWORD}'"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)  # the server is still up


def test_trust_only_on_loopback(mirror: Mirror, trainer: Trainer) -> None:
    with pytest.raises(ConfigError, match="needs a password"):
        SqlEndpoint(EndpointSettings(host="0.0.0.0", port=0), mirror.con, trainer)


def test_password_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    monkeypatch.setenv("PGML_SIDECAR_ENDPOINT_PASSWORD", "from-env")
    assert read_password(secret) == "from-file"
    assert read_password(None) == "from-env"
    with pytest.raises(ConfigError, match="cannot read the password file"):
        read_password(tmp_path / "missing")


def test_tls_when_a_certificate_is_configured(
    mirror: Mirror, trainer: Trainer, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    settings = EndpointSettings(port=0, password=PASSWORD, tls_cert=cert, tls_key=key)
    served = SqlEndpoint(settings, mirror.con, trainer)
    served.start()
    try:
        options = {"password": f"'{PASSWORD}'", "sslmode": "require"}
        with psycopg.connect(dsn(served, **options), autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select 'over tls'").fetchone() == ("over tls",)
    finally:
        served.stop()
