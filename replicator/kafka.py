"""The Debezium source: consume Debezium's Kafka topics into the mirror, exactly once.

Debezium writes one topic per table, ``<prefix>.<schema>.<table>``. The consumer decodes each
batch of messages into change batches (``replicator/debezium.py``) and commits them to the
mirror in ONE DuckDB transaction with the offsets they were consumed up to. On start, and
whenever Kafka assigns it partitions, it seeks to the offsets stored in the mirror (or to the
beginning of a partition the mirror has never seen); Kafka's own group offsets are committed
after the mirror, for monitoring only. A kill -9 at any moment therefore loses and duplicates
nothing: what the mirror committed is never read again, what it did not is read again.

Several consumers in one group split the partitions between them, each into its own mirror.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from mirror.changes import Change, Column, Lsn, SchemaChange
from mirror.errors import (
    ConfigError,
    MirrorError,
    MirrorOutOfMemory,
    SidecarError,
    SourceConnectionLost,
)
from mirror.store import Mirror
from replicator.debezium import DebeziumDecoder, Decoded, Message
from replicator.replicate import ReplicationStats

log = logging.getLogger("pgml_sidecar.replicator")

_PROGRESS_SECONDS = 10.0
_REPEAT_SECONDS = 30.0


class _OncePer(logging.Filter):
    """Let a message through once per ``seconds`` (librdkafka repeats a refused connection
    every few milliseconds); digits do not make a message new."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        self._last[key] = now
        return True


kafka_log = logging.getLogger("pgml_sidecar.kafka")
kafka_log.addFilter(_OncePer(_REPEAT_SECONDS))
_POLL_MESSAGES = 10_000


@dataclass
class KafkaSettings:
    """Where Debezium's topics are and how to consume them."""

    bootstrap: str
    topic_prefix: str
    mirror_path: Path
    tables: Sequence[str] = ()
    group_id: str = "pgml-sidecar"
    catch_up: bool = False
    batch_messages: int = 50_000
    """Commit once this many messages wait."""
    batch_bytes: int | None = None
    """Commit once the waiting messages hold this many bytes (keys and values). Default: an
    eighth of the mirror's memory limit. A batch DuckDB runs out of memory on is committed
    again in halves."""
    max_delay: float = 0.2
    """Commit once the oldest uncommitted message has waited this many seconds."""
    min_delay: float = 0.02
    """Once the consumer has read all there is, commit messages that have waited this long."""
    behind_after: float = 0.5
    """Messages written to Kafka this many seconds ago mean catching up: commit less often."""
    catch_up_delay: float = 1.0
    memory_limit: str = "256MB"
    consumer_config: Mapping[str, str] = field(default_factory=dict)
    """Extra librdkafka settings (security.protocol, sasl.*, ssl.*...)."""

    @property
    def source(self) -> str:
        """The mirror's name for this source (its row in ``_pgml_sidecar.positions``)."""
        return f"kafka:{self.topic_prefix}"

    def topic(self, schema: str, name: str) -> str:
        return f"{self.topic_prefix}.{schema}.{name}"


def parse_tables(tables: Sequence[str]) -> list[tuple[str, str]]:
    """``schema.table`` names (schema ``public`` when left out) as pairs."""
    out = []
    for table in tables:
        schema, _, name = table.strip().rpartition(".")
        if not name:
            raise ConfigError(f"bad table name {table!r}: use schema.table")
        out.append((schema or "public", name))
    return out


def read_client_properties(path: Path) -> dict[str, str]:
    """A Kafka client properties file (``key=value`` lines, ``#`` comments) as librdkafka
    settings: where SASL and TLS settings, secrets included, belong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read Kafka client properties {path}: {exc.strerror}; fix --kafka-config"
            " (kafka_config)"
        ) from None
    settings = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected key=value, got {line!r}")
        settings[key.strip()] = value.strip()
    return settings


class KafkaReplicator:
    """Mirror Debezium's topics for the configured tables into DuckDB, exactly once."""

    def __init__(self, settings: KafkaSettings, mirror: Mirror | None = None) -> None:
        self.settings = settings
        self._mirror = mirror
        self._owns_mirror = mirror is None
        self._memory_limit: int | None = None
        self.stats = ReplicationStats()
        self.stopping = threading.Event()
        self.tables = parse_tables(settings.tables)
        if not self.tables:
            raise ConfigError("no tables: pass --tables schema.table,... (Debezium's topics)")
        self.topics = {settings.topic(schema, name): (schema, name) for schema, name in self.tables}
        self.decoder = DebeziumDecoder(self.tables, known=self._mirrored_columns)
        self.lag_messages = 0
        """Messages in the assigned partitions not yet in the mirror (at the last look)."""
        self._consumer: Any = None
        self._pending: list[Message] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._next: dict[tuple[str, int], int] = {}
        """Next offset of each assigned partition, as consumed (committed or pending)."""
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._ends: dict[tuple[str, int], int] = {}
        """Each assigned partition's end offset when it was assigned (for --catch-up)."""
        self._assigned = False
        self.assignment: set[tuple[str, int]] = set()
        """The topic partitions Kafka has assigned this consumer."""
        self._behind = False
        self._lsn: Lsn = 0
        self._unknown_topics: set[str] = set()

    @property
    def mirror(self) -> Mirror:
        if self._mirror is None:
            self._mirror = Mirror(
                self.settings.mirror_path, memory_limit=self.settings.memory_limit
            )
        return self._mirror

    @property
    def assigned(self) -> bool:
        """Whether Kafka has assigned this consumer its partitions (and it sought to them)."""
        return self._assigned

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None

    def _mirrored_columns(self, schema: str, name: str) -> Sequence[Column] | None:
        table = self.mirror.tables.get((schema, name))
        if table is None:
            return None
        return [Column(c.name, c.type_oid, c.type_modifier, c.is_key) for c in table.columns]

    # -- running -------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        s = self.settings
        return {
            "bootstrap.servers": s.bootstrap,
            "group.id": s.group_id,
            # Static membership: a restart (kill -9 too) takes its partitions back at once
            # instead of after the session timeout. The mirror file is the identity: two
            # processes never share one.
            "group.instance.id": _instance_id(s.mirror_path),
            # A sidecar that stopped for good hands its partitions on after this long.
            "session.timeout.ms": 10_000,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Partitions the mirror has not seen start at the beginning (see _on_assign); a
            # stored offset Kafka no longer has (retention) is an error, never a silent skip.
            "auto.offset.reset": "error",
            "topic.metadata.refresh.interval.ms": 5000,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            "logger": kafka_log,
            **s.consumer_config,
        }

    def run(self) -> ReplicationStats:
        """Consume until stopped (or, with catch_up, until the end offsets seen at start)."""
        s = self.settings
        self._lsn = self.mirror.position(s.source) or 0
        try:
            consumer = Consumer(self._config())
        except KafkaException as exc:
            raise ConfigError(f"bad Kafka consumer settings: {exc.args[0].str()}") from None
        self._consumer = consumer
        self.stats.prepared = True
        consumer.subscribe(
            sorted(self.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info(
            "consuming %s from %s as group %s",
            ", ".join(sorted(self.topics)),
            s.bootstrap,
            s.group_id,
        )
        progress_at = time.monotonic() + _PROGRESS_SECONDS
        try:
            while not self.stopping.is_set():
                records = consumer.consume(num_messages=_POLL_MESSAGES, timeout=s.min_delay)
                for record in records:
                    self._take(record)
                if records:
                    written_ms = records[-1].timestamp()[1]
                    self._behind = (
                        written_ms > 0 and time.time() - written_ms / 1000 > s.behind_after
                    )
                if self._due(len(records) < _POLL_MESSAGES):
                    self.flush()
                if time.monotonic() >= progress_at:
                    progress_at = time.monotonic() + _PROGRESS_SECONDS
                    self._report_progress()
                if s.catch_up and self._caught_up():
                    break
            self.flush()
        finally:
            self._consumer = None
            consumer.close()
        return self.stats

    def _due(self, drained: bool) -> bool:
        """Whether to commit the pending messages now. Near the present: once the consumer
        has read all there is and the oldest has waited ``min_delay`` (latency). Behind
        (catching up): only in big batches (throughput)."""
        if not self._pending:
            return False
        s = self.settings
        age = time.monotonic() - self._pending_since
        if len(self._pending) >= s.batch_messages or self._pending_bytes >= self._batch_bytes():
            return True
        if self._behind:
            return age >= s.catch_up_delay
        return age >= s.max_delay or (drained and age >= s.min_delay)

    def _take(self, record: Any) -> None:
        error = record.error()
        if error is not None:
            if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                topic = record.topic() or ""
                if topic not in self._unknown_topics:
                    self._unknown_topics.add(topic)
                    log.warning(
                        "topic %s does not exist yet: is Debezium capturing its table? Waiting"
                        " for it",
                        topic,
                    )
                return
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.code() == KafkaError._AUTO_OFFSET_RESET:
                raise MirrorError(
                    f"{record.topic()}[{record.partition()}]: the offset stored in the mirror is"
                    " no longer in Kafka (retention deleted it), so the mirror misses changes:"
                    " mirror the table into a new mirror file, and keep the topics' retention"
                    " (or compaction) longer than the sidecar may be down"
                )
            if error.fatal():
                raise SourceConnectionLost(f"Kafka consumer failed: {error.str()}")
            if error.code() == KafkaError._ALL_BROKERS_DOWN:
                kafka_log.warning(
                    "cannot reach Kafka at %s (is it running, and is --kafka right?); retrying",
                    self.settings.bootstrap,
                )
                return
            kafka_log.warning("Kafka: %s", error.str())
            return
        message = Message(
            record.topic(), record.partition(), record.offset(), record.key(), record.value()
        )
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(message)
        self._pending_bytes += len(message.key or b"") + len(message.value or b"")
        place = (message.topic, message.partition)
        self._next[place] = message.offset + 1
        self._uncommitted[place] = message.offset + 1

    def flush(self) -> None:
        """Apply the pending messages and commit them with their offsets, in one transaction."""
        if not self._uncommitted:
            return
        messages, offsets = self._pending, self._uncommitted
        self._pending, self._uncommitted, self._pending_bytes = [], {}, 0
        try:
            decoded = self.decoder.decode(messages)
            self._commit(decoded, messages, offsets)
        except MirrorOutOfMemory as exc:
            self._in_halves(messages, exc)
        except (duckdb.Error, SidecarError) as exc:
            self.mirror.rollback()
            self.decoder.forget()
            log.warning(
                "a batch of %d messages failed (%s); applying them one at a time",
                len(messages),
                exc,
            )
            self._one_by_one(messages, offsets)
        consumer = self._consumer
        if consumer is not None:
            advisory = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            try:
                consumer.commit(offsets=advisory, asynchronous=True)
            except KafkaException as exc:
                log.debug("group offset commit refused: %s", exc)

    def _commit(
        self, decoded: Decoded, messages: list[Message], offsets: Mapping[tuple[str, int], int]
    ) -> None:
        mirror = self.mirror
        mirror.begin()
        applied = self._apply(decoded.changes)
        for dead in decoded.dead:
            m = dead.message
            mirror.dead_letter(m.topic, m.partition, m.offset, dead.reason, m.key, m.value)
            log.warning("dead letter %s[%d]@%d: %s", m.topic, m.partition, m.offset, dead.reason)
        self._lsn = max(self._lsn + 1, decoded.lsn)
        mirror.commit(self.settings.source, self._lsn, offsets)
        stats = self.stats
        stats.rows_applied += applied
        stats.messages += len(messages)
        for dead in decoded.dead:
            topic = dead.message.topic
            stats.dead_letters[topic] = stats.dead_letters.get(topic, 0) + 1
        stats.batches += 1
        stats.flushed_lsn = self._lsn
        if decoded.source_time:
            stats.last_commit_time = max(stats.last_commit_time, decoded.source_time)

    def _batch_bytes(self) -> int:
        if self._memory_limit is None:
            self._memory_limit = self.mirror.memory_limit_bytes
        return self.settings.batch_bytes or self._memory_limit // 8

    def _in_halves(self, messages: list[Message], exc: MirrorOutOfMemory) -> None:
        """Commit a batch DuckDB ran out of memory on (rolled back) in two, each halved again
        while it does; a single message that still does not fit stands as the error (it is no
        dead letter: nothing is wrong with it)."""
        self.mirror.rollback()
        self.decoder.forget()
        if exc.invalidated:  # DuckDB refuses everything until the database is opened again
            if not self._owns_mirror:
                raise exc
            self.close()
        if len(messages) < 2:
            raise exc
        self.stats.memory_retries += 1
        half = len(messages) // 2
        log.warning("%s; committing its %d messages in halves", exc, len(messages))
        for part in (messages[:half], messages[half:]):
            offsets: dict[tuple[str, int], int] = {}
            for m in part:
                offsets[(m.topic, m.partition)] = m.offset + 1
            try:
                self._commit(self.decoder.decode(part), part, offsets)
            except MirrorOutOfMemory as again:
                self._in_halves(part, again)
            except (duckdb.Error, SidecarError):
                self.mirror.rollback()
                self.decoder.forget()
                self._one_by_one(part, offsets)

    def _one_by_one(self, messages: list[Message], offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit each message alone; one that still fails is kept as a dead letter."""
        mirror = self.mirror
        for message in messages:
            place = {(message.topic, message.partition): message.offset + 1}
            try:
                self._commit(self.decoder.decode([message]), [message], place)
                continue
            except (duckdb.Error, SidecarError) as exc:
                mirror.rollback()
                self.decoder.forget()
                reason = f"cannot be applied: {exc}"
            mirror.dead_letter(
                message.topic, message.partition, message.offset, reason, message.key,
                message.value,
            )  # fmt: skip
            self._lsn += 1
            mirror.commit(self.settings.source, self._lsn, place)
            dead = self.stats.dead_letters
            dead[message.topic] = dead.get(message.topic, 0) + 1
            log.warning(
                "dead letter %s[%d]@%d: %s", message.topic, message.partition, message.offset,
                reason,
            )  # fmt: skip

    def _apply(self, changes: list[Change]) -> int:
        """Apply changes to the open transaction; a new table is created, a new column added."""
        mirror = self.mirror
        touched = 0
        start = 0
        for index, change in enumerate(changes):
            if not isinstance(change, SchemaChange):
                continue
            touched += mirror.apply(changes[start:index])
            start = index + 1
            relation = change.relation
            table = mirror.table_for(relation)
            if table is None:
                log.info("mirroring %s", relation.qualified_name)
                mirror.create_table(relation, state="ready")
                continue
            # Never drop a column: a partition behind the others still sends events of the
            # shape before an ADD COLUMN, after events of the shape after it.
            named = {c.name for c in relation.columns}
            kept = tuple(
                Column(c.name, c.type_oid, c.type_modifier, c.is_key)
                for c in table.columns
                if c.name not in named
            )
            if kept:
                relation = replace(relation, columns=relation.columns + kept)
            plan = mirror.schema_plan(relation)
            if plan is not None and plan.copy_reason is not None:
                raise MirrorError(
                    f"{relation.qualified_name} {plan.copy_reason} in Debezium's events; the"
                    " mirror cannot follow that in place: mirror the table into a new mirror"
                    " file (a new --group-id reads the topic again)"
                )
            mirror.follow_schema(relation)
        return touched + mirror.apply(changes[start:])

    # -- partitions ----------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        stored = self.mirror.kafka_offsets()
        for tp in partitions:
            place = (tp.topic, tp.partition)
            tp.offset = stored.get(place, OFFSET_BEGINNING)
            if place in stored:
                self._next[place] = stored[place]
            if self.settings.catch_up:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                self._ends[place] = high
                self._next.setdefault(place, low)
        consumer.assign(partitions)
        self._assigned = True
        self.assignment |= {(tp.topic, tp.partition) for tp in partitions}
        log.info(
            "assigned %s",
            ", ".join(f"{tp.topic}[{tp.partition}]@{_offset(tp.offset)}" for tp in partitions)
            or "no partitions",
        )

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Partitions go to another consumer: commit what was consumed of them first."""
        self.flush()
        for tp in partitions:
            place = (tp.topic, tp.partition)
            self._ends.pop(place, None)
            self._next.pop(place, None)
            self.assignment.discard(place)
        self._assigned = False

    def _caught_up(self) -> bool:
        if not self._assigned or self._pending or self._uncommitted:
            return False
        return all(self._next.get(place, 0) >= end for place, end in self._ends.items())

    def _report_progress(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        lag = 0
        try:
            for tp in consumer.assignment():
                _, high = consumer.get_watermark_offsets(tp, timeout=1, cached=True)
                position = self._next.get((tp.topic, tp.partition))
                if high >= 0 and position is not None:
                    lag += max(high - position, 0)
        except KafkaException:
            return
        self.lag_messages = lag
        log.info(
            "%d messages, %d rows applied, %d dead letters; %d messages behind",
            self.stats.messages,
            self.stats.rows_applied,
            sum(self.stats.dead_letters.values()),
            lag,
        )


def _instance_id(mirror: Path) -> str:
    name = f"pgml-sidecar:{socket.gethostname()}:{mirror.resolve()}"
    if len(name) <= 200:
        return name
    return f"pgml-sidecar:{hashlib.sha256(name.encode()).hexdigest()}"


def _offset(offset: int) -> str:
    return "beginning" if offset == OFFSET_BEGINNING else str(offset)
