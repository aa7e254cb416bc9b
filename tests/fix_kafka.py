"""Pytest plugin: a real Kafka broker + Kafka Connect per session, a Debezium connector per test.

Everything runs through ``deploy/kafka/up.sh`` (jars fetched once from Maven Central into
``$PGML_SIDECAR_CACHE``, default ``~/.cache/pgml-sidecar``), ``connector.sh`` and ``down.sh``.
Nothing is skipped: without java, mvn or curl the fixtures fail with the script's message.

    def test_x(source_dsn, debezium):
        stack = debezium(source_dsn, ["public.items"], schemas=False)
        with TopicReader(stack.bootstrap, stack.topic("public.items")) as reader:
            snapshot = reader.take(3)

``debezium`` depends on ``source_dsn``, so the connector (and its replication slot) is gone
before that database is dropped. confluent_kafka is imported only where it is used, so this
plugin loads even where it is not installed.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import pytest

KAFKA_DIR = Path(__file__).resolve().parents[1] / "deploy" / "kafka"
FETCH_TIMEOUT_S = 900.0
SCRIPT_TIMEOUT_S = 400.0
STEP_TIMEOUT_S = 120
SLOT_GONE_TIMEOUT_S = 15.0
MAX_PREFIX_STEM = 40


def run_kafka_script(script: str, *args: str, timeout: float = SCRIPT_TIMEOUT_S) -> str:
    """Run ``deploy/kafka/<script>``; return its stdout, or fail the test with its stderr."""
    command = ["bash", str(KAFKA_DIR / script), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(
            f"deploy/kafka/{script} did not finish within {timeout:.0f}s:\n{_tail(stderr)}",
            pytrace=False,
        )
    if done.returncode != 0:
        pytest.fail(
            f"deploy/kafka/{script} {' '.join(args)} failed (exit {done.returncode}):\n"
            f"{_tail(done.stderr)}",
            pytrace=False,
        )
    return done.stdout


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _last_line(stdout: str, script: str) -> str:
    lines = stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"deploy/kafka/{script} printed nothing on stdout", pytrace=False)
    return lines[-1]


@dataclass(frozen=True)
class KafkaStack:
    """A broker and Kafka Connect started by ``up.sh`` in ``workdir``."""

    workdir: Path
    bootstrap: str
    connect_url: str

    def connectors(self) -> list[str]:
        return [n for n in run_kafka_script("connector.sh", "list", *self._at()).split() if n]

    def pids(self) -> dict[str, int]:
        """The pids up.sh wrote (broker, connect), for the ones whose pid file exists."""
        found = {}
        for name in ("broker", "connect"):
            path = self.workdir / f"{name}.pid"
            if path.exists():
                found[name] = int(path.read_text().strip())
        return found

    def ports(self) -> dict[str, int]:
        """broker, controller and connect ports from ``workdir/ports``."""
        pairs = (line.split("=", 1) for line in (self.workdir / "ports").read_text().split())
        return {name: int(port) for name, port in pairs}

    def _at(self) -> tuple[str, str]:
        return ("--workdir", str(self.workdir))


def start_stack(workdir: Path, *extra: str) -> KafkaStack:
    """Start (or reuse) the stack in ``workdir`` with up.sh; down.sh is the caller's job."""
    stdout = run_kafka_script(
        "up.sh", "--workdir", str(workdir), "--timeout", str(STEP_TIMEOUT_S), *extra
    )
    return KafkaStack(
        workdir=workdir,
        bootstrap=_last_line(stdout, "up.sh"),
        connect_url=(workdir / "connect-url").read_text().strip(),
    )


def stop_stack(workdir: Path) -> str:
    """down.sh: what it reported stopping (its stderr)."""
    done = subprocess.run(
        ["bash", str(KAFKA_DIR / "down.sh"), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"deploy/kafka/down.sh failed:\n{_tail(done.stderr)}")
    return done.stderr


@dataclass
class Debezium:
    """One Debezium PostgreSQL connector in the session's Kafka Connect."""

    stack: KafkaStack
    name: str
    dsn: str
    tables: list[str]
    slot_name: str
    publication_name: str
    schemas: bool
    partitions: int
    removed: bool = field(default=False)

    @property
    def bootstrap(self) -> str:
        return self.stack.bootstrap

    @property
    def connect_url(self) -> str:
        return self.stack.connect_url

    @property
    def workdir(self) -> Path:
        return self.stack.workdir

    @property
    def topic_prefix(self) -> str:
        return self.name

    def topic(self, table: str) -> str:
        """The topic of ``table`` (``schema.table``; a bare name is taken as public's)."""
        return f"{self.name}.{qualified(table)}"

    def topics(self) -> list[str]:
        return [self.topic(t) for t in self.tables]

    def status(self) -> dict[str, Any]:
        """The connector's status JSON from Kafka Connect."""
        with urllib.request.urlopen(f"{self.connect_url}/connectors/{self.name}/status") as r:
            result: dict[str, Any] = json.load(r)
            return result

    def remove(self) -> None:
        """Delete the connector (its offsets too) and make sure its slot left the source."""
        if self.removed:
            return
        run_kafka_script("connector.sh", "remove", "--name", self.name, *self.stack._at())
        self.removed = True
        drop_slot(self.dsn, self.slot_name)
        delete_topics(self.bootstrap, self.name + ".")


def qualified(table: str) -> str:
    return table if "." in table else f"public.{table}"


def unique_prefix(stem: str) -> str:
    """A topic prefix no other test uses: ``stem`` made safe, plus a random suffix."""
    cleaned = re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "test"
    return f"{cleaned[:MAX_PREFIX_STEM]}_{secrets.token_hex(3)}"


def drop_slot(dsn: str, slot_name: str, timeout: float = SLOT_GONE_TIMEOUT_S) -> None:
    """Wait for ``slot_name`` to go (slot.drop.on.stop), else end its walsender and drop it."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "select active_pid from pg_replication_slots where slot_name = %s", (slot_name,)
            ).fetchone()
            if row is None:
                return
            if time.monotonic() > deadline - timeout / 2:
                if row[0] is not None:
                    conn.execute("select pg_terminate_backend(%s)", (row[0],))
                else:
                    with contextlib.suppress(
                        psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject
                    ):
                        conn.execute("select pg_drop_replication_slot(%s)", (slot_name,))
            if time.monotonic() > deadline:
                raise RuntimeError(f"replication slot {slot_name} stays after its connector went")
            time.sleep(0.1)


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (best effort, not waited for)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=10).values():
            with contextlib.suppress(Exception):  # best effort: the stack goes at session end
                future.result(timeout=15)


# -- raw Kafka access ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def key_json(self) -> Any:
        return None if self.key is None else json.loads(self.key)

    def value_json(self) -> Any:
        """The value decoded (None for a tombstone)."""
        return None if self.value is None else json.loads(self.value)


class TopicReader:
    """Reads every partition of one topic from its beginning, without a consumer group.

    The topic may not exist yet (Connect creates it with the first event): ``take`` waits.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"pgml-sidecar-test-{secrets.token_hex(4)}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
        self.assigned = False

    def _assign(self, deadline: float) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        while not self.assigned:
            meta = self.consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions:
                self.consumer.assign(
                    [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions]
                )
                self.assigned = True
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic} did not appear")
            time.sleep(0.2)

    def take(self, count: int, timeout: float = 60.0) -> list[Record]:
        """The next ``count`` records (across partitions, each partition in order)."""
        deadline = time.monotonic() + timeout
        self._assign(deadline)
        got: list[Record] = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.topic}: {len(got)} of {count} records within {timeout}s: {got}"
                )
            message = self.consumer.poll(min(remaining, 0.5))
            if message is None:
                continue
            error = message.error()
            if error is not None:
                raise RuntimeError(f"{self.topic}: {error}")
            got.append(
                Record(
                    topic=str(message.topic()),
                    partition=int(message.partition() or 0),
                    offset=int(message.offset() or 0),
                    key=message.key(),
                    value=message.value(),
                )
            )
        return got

    def take_idle(self, idle: float = 1.0) -> list[Record]:
        """Whatever arrives until nothing has come for ``idle`` seconds."""
        got: list[Record] = []
        while True:
            try:
                got.extend(self.take(1, timeout=idle))
            except TimeoutError:
                return got

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def produce_raw(
    bootstrap: str,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    partition: int | None = None,
    headers: Mapping[str, bytes] | None = None,
) -> tuple[int, int]:
    """Produce one message as given (malformed JSON welcome); return its (partition, offset)."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    delivered: list[Any] = []

    def on_delivery(error: Any, message: Any) -> None:
        delivered.append(error if error is not None else message)

    extra: dict[str, Any] = {} if partition is None else {"partition": partition}
    producer.produce(
        topic, value=value, key=key, headers=dict(headers or {}), on_delivery=on_delivery, **extra
    )
    producer.flush(30)
    if not delivered:
        raise TimeoutError(f"message to {topic} not delivered within 30s")
    outcome = delivered[0]
    if not hasattr(outcome, "offset"):
        raise KafkaException(outcome)
    return int(outcome.partition()), int(outcome.offset())


# -- fixtures -----------------------------------------------------------------------------------

TEST_FAILED = pytest.StashKey[bool]()
LOG_LINES_ON_FAILURE = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Note a failed test, so ``debezium`` shows its connectors' log lines after it."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed:
        item.stash[TEST_FAILED] = True


def connector_log(stack: KafkaStack, name: str, lines: int = LOG_LINES_ON_FAILURE) -> str:
    """The last lines Kafka Connect logged for connector ``name`` (tagged ``[name|...]``)."""
    log = stack.workdir / "connect" / "connect.log"
    if not log.exists():
        return ""
    tag = f"[{name}|"
    mine = [line for line in log.read_text(errors="replace").splitlines() if tag in line]
    return "\n".join(mine[-lines:])


@pytest.fixture(scope="session")
def kafka_jars() -> Path:
    """The directory of jars up.sh runs from (fetched with mvn on the first run only)."""
    return Path(
        _last_line(run_kafka_script("up.sh", "--fetch-only", timeout=FETCH_TIMEOUT_S), "up.sh")
    )


@pytest.fixture(scope="session")
def kafka_stack(kafka_jars: Path) -> Iterator[KafkaStack]:
    """One Kafka broker + Kafka Connect for the whole session (connectors come per test)."""
    workdir = Path(tempfile.mkdtemp(prefix="pgml-sidecar-kafka-"))
    try:
        yield start_stack(workdir)
    finally:
        stop_stack(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


DebeziumFactory = Callable[..., Debezium]


@pytest.fixture
def debezium(
    kafka_stack: KafkaStack, source_dsn: str, request: pytest.FixtureRequest
) -> Iterator[DebeziumFactory]:
    """Register Debezium connectors for this test; they, their slots and topics go after it.

    ``debezium(dsn, tables, prefix=None, schemas=True, partitions=1, snapshot_mode="initial",
    heartbeat_ms=10000, decimal_mode=None, settings=None, exact_prefix=False,
    replica_identity_full=False)``: ``prefix`` is a stem, made unique (read ``.topic_prefix``),
    or with ``exact_prefix`` the prefix itself (from ``unique_prefix()``, for a test that
    creates the topics first); ``settings`` are extra connector properties;
    ``replica_identity_full`` passes up.sh's flag of that name. Returns once the
    connector and its task are RUNNING (the snapshot may still be under way).
    """
    created: list[Debezium] = []

    def register(
        dsn: str,
        tables: str | Sequence[str],
        *,
        prefix: str | None = None,
        schemas: bool = True,
        partitions: int = 1,
        snapshot_mode: str = "initial",
        heartbeat_ms: int = 10_000,
        decimal_mode: str | None = None,
        settings: Mapping[str, str] | None = None,
        exact_prefix: bool = False,
        replica_identity_full: bool = False,
    ) -> Debezium:
        names = [qualified(t) for t in ([tables] if isinstance(tables, str) else tables)]
        if exact_prefix and not prefix:
            raise ValueError("exact_prefix needs a prefix (from unique_prefix())")
        name = prefix if exact_prefix and prefix else unique_prefix(prefix or request.node.name)
        args = [
            "--pg-dsn", dsn, "--tables", ",".join(names), "--topic-prefix", name,
            "--schemas", "true" if schemas else "false", "--partitions", str(partitions),
            "--snapshot-mode", snapshot_mode, "--heartbeat-ms", str(heartbeat_ms),
            "--drop-slot-on-stop",
        ]  # fmt: skip
        if decimal_mode is not None:
            args += ["--decimal-mode", decimal_mode]
        for key, value in (settings or {}).items():
            args += ["--set", f"{key}={value}"]
        if replica_identity_full:
            args.append("--replica-identity-full")
        connector = Debezium(
            stack=kafka_stack,
            name=name,
            dsn=dsn,
            tables=names,
            slot_name=f"dbz_{name}"[:63],
            publication_name=f"dbz_{name}"[:63],
            schemas=schemas,
            partitions=partitions,
        )
        created.append(connector)  # removed after the test even if registering fails midway
        start_stack(kafka_stack.workdir, *args)
        return connector

    yield register
    if request.node.stash.get(TEST_FAILED, False):
        for connector in created:
            status = ""
            with contextlib.suppress(Exception):
                status = json.dumps(connector.status())
            sys.stderr.write(
                f"--- Debezium connector {connector.name}: {status}\n"
                f"{connector_log(kafka_stack, connector.name)}\n"
            )
    errors = []
    for connector in reversed(created):
        try:
            connector.remove()
        except BaseException as e:  # pytest.fail too: remove the others, then report
            errors.append(f"{connector.name}: {e}")
    if errors:
        raise RuntimeError("removing Debezium connectors failed: " + "; ".join(errors))


@pytest.fixture
def kafka_produce(kafka_stack: KafkaStack) -> Callable[..., tuple[int, int]]:
    """``kafka_produce(topic, value, key=None, partition=None, headers=None)`` on the stack."""

    def produce(
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> tuple[int, int]:
        return produce_raw(kafka_stack.bootstrap, topic, value, key, partition, headers)

    return produce
