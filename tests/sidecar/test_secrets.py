"""Secrets never printed: every password form, through every output of the CLI and the daemon.

Each run uses some of the forms a password reaches the sidecar in: a keyword DSN, a URI's user
info or query, ``PGPASSWORD``, a ``.pgpass`` file, the endpoint password (environment or
file), Kafka's client properties. Everything ``init``, ``run`` (verbose), ``status``, ``status
--json``, ``/metrics`` and ``/healthz`` print is collected and searched for each password, as
is and percent-encoded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from sidecar import masking
from sidecar.local_postgres import free_port
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, finished, one

SECRETS = {
    "keyword": "kw-Secret'1 x",
    "uri": "uri@Secret/2:",
    "query": "query&Secret=3",
    "pgpassword": "env-Secret-4",
    "pgpass": "pgpass-Secret-5",
    "endpoint": "endpoint-Secret-6",
    "endpoint_file": "file-Secret-7",
    "sasl": "sasl-Secret-8",
    "jaas": "jaas-Secret-9",
    "broken": "broken%zzSecret-10",
}


def forms(secret: str) -> list[str]:
    return [secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)]


def assert_no_secret(text: str, where: str) -> None:
    for name, secret in SECRETS.items():
        for form in forms(secret):
            assert form not in text, f"the {name} password is printed by {where}"


@pytest.fixture
def source(source_dsn: str) -> str:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=500))
    return source_dsn


def keyword_dsn(dsn: str, password: str) -> str:
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    return f"{dsn} password='{quoted}'"


def uri(dsn: str, *, password: str | None = None, query: str | None = None) -> str:
    parts = conninfo_to_dict(dsn)
    user = str(parts["user"])
    if password is not None:
        user += ":" + urllib.parse.quote(password, safe="")
    url = f"postgresql://{user}@{parts['host']}:{parts['port']}/{parts['dbname']}"
    if query is not None:
        url += "?password=" + urllib.parse.quote(query, safe="")
    return url


class Outputs:
    """Everything the commands printed, to search at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.texts: list[tuple[str, str]] = []

    def cli(self, *args: str, env: dict[str, str], ok: bool = True) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", *args], env=env,
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        text = done.stdout + done.stderr
        self.texts.append((" ".join(args[:2]), text))
        assert (done.returncode == 0) == ok, text
        assert "Traceback" not in text, text
        return text

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))


@pytest.fixture
def outputs(tmp_path: Path) -> Iterator[Outputs]:
    collected = Outputs(tmp_path)
    yield collected
    for where, text in collected.texts:
        assert_no_secret(text, where)


def environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGML_SIDECAR_"))}
    env.update(values)
    return env


def get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return str(reply.read().decode())
    except urllib.error.HTTPError as exc:  # 503 while degraded: the body is what matters
        return str(exc.read().decode())


def run_daemon(
    outputs: Outputs, env: dict[str, str], source_dsn: str, mirror: Path, *extra: str,
    train: bool = True,
) -> None:  # fmt: skip
    """``init``, then ``run -v`` with ``env``; a training request, ``status`` twice, /metrics
    and /healthz while it runs, then SIGTERM."""
    outputs.cli("init", "--tables", "public.accounts", env=env)
    port, metrics = free_port(), free_port()
    log = outputs.tmp_path / f"run-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "-v", "run", "--mirror", str(mirror),
             "--tables", "public.accounts", "--port", str(port), "--metrics-port",
             str(metrics), *extra],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: _reachable(metrics), timeout=120, what="/healthz")
        if train:
            request = one(
                source_dsn,
                "select pgml.train('Churn', 'classification', 'public.accounts', 'churned')",
            )
            assert finished(source_dsn, request)[0] == "done"
        outputs.add("/metrics", get(metrics, "/metrics"))
        health = get(metrics, "/healthz")
        assert json.loads(health)["parts"]
        outputs.add("/healthz", health)
        outputs.cli("status", "--metrics-port", str(metrics), env=env)
        outputs.cli("status", "--json", "--metrics-port", str(metrics), env=env)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    outputs.add("run", log.read_text())


def _reachable(port: int) -> bool:
    try:
        get(port, "/healthz")
    except OSError:
        return False
    return True


def test_keyword_dsn_pgpassword_and_endpoint_password(
    source: str, mirror_path: Path, outputs: Outputs
) -> None:
    env = environment(
        PGML_SIDECAR_SOURCE=keyword_dsn(source, SECRETS["keyword"]),
        PGPASSWORD=SECRETS["pgpassword"],
        PGML_SIDECAR_ENDPOINT_PASSWORD=SECRETS["endpoint"],
    )
    run_daemon(outputs, env, source, mirror_path)
    printed = outputs.texts[0][1]
    assert "password=********" in printed  # init says where it installed, password masked


def test_uri_pgpass_and_password_file(
    source: str, mirror_path: Path, outputs: Outputs, tmp_path: Path
) -> None:
    parts = conninfo_to_dict(source)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{parts['host']}:*:*:{parts['user']}:{SECRETS['pgpass']}\n")
    passfile.chmod(0o600)
    password_file = tmp_path / "endpoint-password"
    password_file.write_text(SECRETS["endpoint_file"] + "\n")
    env = environment(
        PGML_SIDECAR_SOURCE=uri(source, password=SECRETS["uri"]),
        PGPASSFILE=str(passfile),
        PGML_SIDECAR_PASSWORD_FILE=str(password_file),
    )
    run_daemon(outputs, env, source, mirror_path)
    assert "postgresql://postgres:********@" in outputs.texts[0][1]


def test_uri_query_and_kafka_properties(
    source: str, mirror_path: Path, outputs: Outputs, tmp_path: Path
) -> None:
    properties = tmp_path / "kafka.properties"
    properties.write_text(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanisms=PLAIN\nsasl.username=u\n"
        f"sasl.password={SECRETS['sasl']}\n"
    )
    jaas = tmp_path / "jaas.properties"
    jaas.write_text(
        "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required"
        f' username="u" password="{SECRETS["jaas"]}";\n'
    )
    env = environment(PGML_SIDECAR_SOURCE=uri(source, query=SECRETS["query"]))
    closed = f"127.0.0.1:{free_port()}"  # no broker: the consumer fails, and says so
    run_daemon(outputs, env, source, mirror_path, "--kafka", closed, "--topic-prefix", "shop",
               "--kafka-config", str(properties), train=False)  # fmt: skip
    # Settings librdkafka refuses (Java's JAAS): the error says so, without the password.
    text = outputs.cli("replicate", "--mirror", str(tmp_path / "kafka.duckdb"), "--kafka",
                       closed, "--topic-prefix", "shop", "--kafka-config", str(jaas),
                       "--tables", "public.accounts", env=env, ok=False)  # fmt: skip
    assert text.startswith("error: bad Kafka consumer settings"), text


def test_failing_init_and_refused_flags(source: str, outputs: Outputs) -> None:
    broken = uri(source).replace(
        "postgresql://postgres@", f"postgresql://postgres:{SECRETS['broken']}@"
    )
    text = outputs.cli("init", env=environment(PGML_SIDECAR_SOURCE=broken), ok=False)
    assert text.startswith("error: ") and "invalid percent-encoded token" in text
    closed = keyword_dsn(f"host=127.0.0.1 port={free_port()} dbname=x user=x", SECRETS["keyword"])
    text = outputs.cli("init", env=environment(PGML_SIDECAR_SOURCE=closed), ok=False)
    assert text.startswith("error: ") and "connection" in text
    for dsn in (keyword_dsn(source, SECRETS["keyword"]), uri(source, password=SECRETS["uri"]),
                uri(source, query=SECRETS["query"])):  # fmt: skip
        text = outputs.cli("init", "--source", dsn, env=environment(), ok=False)
        assert "holds a password: keep it out of flags and files" in text


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("host=h password=pw1234 user=u", "pw1234"),
        ("host=h password = 'p w\\'s' user=u", "p w\\'s"),
        ("postgresql://u:p%40ss@h:5432/db", "p%40ss"),
        ("postgres://u:pass@h/db?sslmode=require", "pass"),
        ("postgresql://u@h/db?sslmode=require&password=qq11&x=1", "qq11"),
        ("PGPASSWORD=abc123 psql", "abc123"),
        ("sasl.password=s3cr3t", "s3cr3t"),
        ('sasl.jaas.config=x required username="u" password="j p";', "j p"),
        ('{"password": "js0n"}', "js0n"),
        ("{'password': 'py0n'}", "py0n"),
        ("ssl.key.password: k3y", "k3y"),
    ],
)
def test_mask_hides_every_form(text: str, hidden: str) -> None:
    masked = masking.mask(text)
    assert hidden not in masked and masking.MASK in masked, masked


def test_mask_keeps_what_is_no_secret() -> None:
    for text in (
        'password authentication failed for user "pgml"',
        "http://127.0.0.1:9464/healthz",
        "--password-file /etc/pgml/password",
        "host=db dbname=shop user=sidecar",
        "the connection string holds a password: keep it out of flags",
    ):
        assert masking.mask(text) == text


def test_known_secrets_are_masked_wherever_they_show(caplog: pytest.LogCaptureFixture) -> None:
    masking.remember("Remembered-Secret/11")
    assert "Remembered-Secret" not in masking.mask("libpq said: Remembered-Secret/11 is odd")
    assert "Remembered" not in masking.mask("in a URL: Remembered-Secret%2F11")
    handler = logging.StreamHandler()
    handler.addFilter(masking.MaskingFilter())
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "got %s", ("Remembered-Secret/11",), None
    )
    assert handler.filter(record) and "Remembered" not in record.getMessage()


def test_tracebacks_logged_or_uncaught_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    masking.remember("Traceback-Secret-12")
    handler = logging.StreamHandler()
    handler.addFilter(masking.MaskingFilter())
    try:
        raise RuntimeError("connect failed: password=Traceback-Secret-12")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    assert handler.filter(record)
    assert "Traceback-Secret" not in handler.format(record)
    assert "RuntimeError: connect failed: password=********" in handler.format(record)

    def fail() -> None:
        raise RuntimeError("Traceback-Secret-12 in a thread")

    previous = threading.excepthook, sys.excepthook
    masking.install([])
    try:
        thread = threading.Thread(target=fail)
        thread.start()
        thread.join()
    finally:
        threading.excepthook, sys.excepthook = previous
        logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert "in a thread" in err and "Traceback-Secret" not in err


def test_a_short_secret_is_not_masked_everywhere() -> None:
    masking.remember("ab")  # masking every "ab" would garble everything; shapes still hide it
    assert masking.mask("table ab") == "table ab"
    assert "ab" not in masking.mask("password=ab")
