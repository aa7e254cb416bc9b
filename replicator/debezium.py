"""Debezium change events, as Kafka Connect's JSON converter writes them, into change batches.

A batch of Kafka messages becomes the same typed changes the pgoutput path produces (values in
Postgres' text form, one Arrow column per source column), so the mirror applies both alike:

- ``r`` (snapshot read), ``c`` and ``u`` are new row images. For a table with a key they replace
  the row with that key: Debezium delivers at least once, and a message seen twice must not
  fail or duplicate. ``d`` deletes by the old image; ``t`` truncates; a tombstone (a null
  value after a delete, for log compaction) carries nothing.
- Each column's type comes from its Connect schema when messages embed one, and is guessed
  from the JSON values when they do not (``replicator/debezium_types.py``).
- ``__debezium_unavailable_value``, Debezium's placeholder for an unchanged TOASTed value in
  an update, keeps the mirrored value.
- A column that appears in ``after`` extends the mirrored table; one that disappears is NULL
  in new rows.
- A message that is not JSON, not a Debezium change event, or about a table that is not
  mirrored is a dead letter: returned with its reason, never applied, never fatal.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from mirror.changes import (
    Change,
    Column,
    Deletes,
    Inserts,
    Lsn,
    Relation,
    SchemaChange,
    Truncate,
    Tuples,
    Updates,
)
from replicator.debezium_types import Convert, connect_type, guess, guessed_type, per_value

PLACEHOLDER = "__debezium_unavailable_value"
_PLACEHOLDER_BYTES = base64.b64encode(PLACEHOLDER.encode()).decode()
_PLACEHOLDERS = frozenset((PLACEHOLDER, _PLACEHOLDER_BYTES))
_OPS = frozenset("crudt")
_IDENTITY = "d"  # Debezium does not say; keyed tables behave as REPLICA IDENTITY DEFAULT


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka record: where it was and its raw key and value."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that cannot be applied, and why."""

    message: Message
    reason: str


@dataclass
class Decoded:
    """What a batch of messages amounts to."""

    changes: list[Change] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    lsn: Lsn = 0
    """The highest source LSN among the events (0 when none carried one)."""
    source_time: float = 0.0
    """The newest source commit time among the events, Unix seconds."""
    events: int = 0
    """Row events decoded (snapshot reads, inserts, updates, deletes)."""


class BadMessage(ValueError):
    """A message that is not a Debezium change event of a mirrored table."""


# -- shapes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """A table as one kind of message describes it: its relation and each column's decoding."""

    relation: Relation
    converts: tuple[Convert, ...]
    toastable: tuple[bool, ...]
    """Columns whose values may be Debezium's unavailable-value placeholder."""
    keyed: bool = False
    """Whether the table has a key: new row images replace the row with their key."""


def _row_fields(value_schema: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    for envelope_field in value_schema.get("fields") or ():
        if envelope_field.get("field") in ("after", "before") and envelope_field.get("fields"):
            return list(envelope_field["fields"])
    return None


def _key_names(key: bytes | None) -> list[str]:
    if not key:
        return []
    try:
        parsed = orjson.loads(key)
    except orjson.JSONDecodeError:
        return []
    if isinstance(parsed, dict) and "payload" in parsed and "schema" in parsed:
        parsed = parsed["payload"]
    return list(parsed) if isinstance(parsed, dict) else []


# -- decoding -------------------------------------------------------------------------------


@dataclass
class _Run:
    """Consecutive events of one table, shape and kind: one change."""

    shape: Shape
    kind: str
    """``upsert`` (new images of a keyed table), ``insert`` (of a keyless one), ``update``
    (images with unavailable values, or of a keyless table), ``delete``."""
    rows: list[Mapping[str, Any]] = field(default_factory=list)
    olds: list[Mapping[str, Any] | None] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def drop(self, index: int) -> None:
        del self.rows[index], self.olds[index], self.messages[index]


class DebeziumDecoder:
    """Decode batches of Debezium messages for the mirrored ``tables``.

    ``known`` gives the columns already in the mirror for a table (name to type OID), so that
    schemaless messages keep the mirrored types.
    """

    def __init__(
        self,
        tables: Collection[tuple[str, str]],
        known: Callable[[str, str], Sequence[Column] | None] | None = None,
    ) -> None:
        self.tables = set(tables)
        self.known = known or (lambda schema, name: None)
        self._shapes: dict[Any, Shape] = {}
        self._current: dict[tuple[str, str], Shape] = {}
        """The shape each table's changes were last decoded with (a new one is a schema
        change the mirror follows)."""

    def forget(self) -> None:
        """Forget which shapes the mirror has seen (its transaction was rolled back): the
        next change of each table comes after its schema again."""
        self._current.clear()

    def decode(self, messages: Sequence[Message]) -> Decoded:
        out = Decoded()
        runs: dict[tuple[str, str], list[_Run]] = {}
        order: list[tuple[str, str]] = []
        for message in messages:
            if message.value is None:
                continue  # a tombstone: compaction's marker after a delete
            try:
                self._event(message, out, runs, order)
            except BadMessage as exc:
                out.dead.append(DeadLetter(message, str(exc)))
            except (TypeError, KeyError, ValueError, AttributeError) as exc:  # odd JSON shapes
                reason = f"not a Debezium change event: {type(exc).__name__}: {exc}"
                out.dead.append(DeadLetter(message, reason))
        for table in order:
            for run in runs[table]:
                out.changes.extend(self._changes(run, out))
        return out

    def _event(
        self,
        message: Message,
        out: Decoded,
        runs: dict[tuple[str, str], list[_Run]],
        order: list[tuple[str, str]],
    ) -> None:
        assert message.value is not None
        envelope, schema = _parse(message.value)
        if not isinstance(envelope, dict):
            raise BadMessage("not a Debezium change event: the value is not a JSON object")
        op = envelope.get("op")
        source = envelope.get("source")
        if op not in _OPS or not isinstance(source, dict):
            raise BadMessage(
                "not a Debezium change event: no 'op' (c, r, u, d or t) and 'source' in it"
            )
        table = (source.get("schema"), source.get("table"))
        if table not in self.tables:
            raise BadMessage(f"table {table[0]}.{table[1]} is not mirrored (not in --tables)")
        lsn = source.get("lsn")
        if isinstance(lsn, int) and lsn > out.lsn:
            out.lsn = lsn
        ts = source.get("ts_ms")
        if isinstance(ts, int) and ts / 1000 > out.source_time:
            out.source_time = ts / 1000
        table_runs = runs.get(table)
        if table_runs is None:
            table_runs = runs[table] = []
            order.append(table)
        if op == "t":
            shape = self._current.get(table) or self._bare_shape(table)
            table_runs.append(_Run(shape, "truncate"))
            return
        before, after = envelope.get("before"), envelope.get("after")
        image = after if op != "d" else before
        if not isinstance(image, dict) or (before is not None and not isinstance(before, dict)):
            raise BadMessage(f"not a Debezium change event: op {op!r} without a row image")
        shape = self._shape(table, message, schema, image)
        kind = self._kind(op, shape, image)
        if kind == "update" and not shape.keyed and before is None:
            raise BadMessage(
                f"an update of {table[0]}.{table[1]}, which has no key, without the old row:"
                " set REPLICA IDENTITY FULL on it"
            )
        out.events += 1
        last = table_runs[-1] if table_runs else None
        if last is None or last.shape is not shape or last.kind != kind:
            last = _Run(shape, kind)
            table_runs.append(last)
        last.rows.append(image)
        last.olds.append(before)
        last.messages.append(message)

    def _kind(self, op: str, shape: Shape, image: Mapping[str, Any]) -> str:
        if op == "d":
            return "delete"
        if op == "u" and any(
            toastable and _unavailable(image.get(column.name))
            for column, toastable in zip(shape.relation.columns, shape.toastable, strict=True)
        ):
            return "update"
        if shape.keyed:
            return "upsert"
        return "insert" if op != "u" else "update"

    def _bare_shape(self, table: tuple[str, str]) -> Shape:
        return Shape(Relation(0, table[0], table[1], _IDENTITY, ()), (), ())

    def _shape(
        self,
        table: tuple[str, str],
        message: Message,
        schema: bytes | dict[str, Any] | None,
        image: Mapping[str, Any],
    ) -> Shape:
        """The shape of an event: by its schema's text when it has one (a cheap lookup: the
        schema is parsed only the first time), else by its columns' names."""
        if isinstance(schema, bytes):
            shape = self._shapes.get((table, schema))
            if shape is None:
                shape = self._shapes[(table, schema)] = self._shape(
                    table, message, _loads(schema), image
                )
            return shape
        fields = _row_fields(schema) if isinstance(schema, dict) else None
        if fields is not None:
            signature: Any = (
                table,
                tuple(
                    (f.get("field"), f.get("type"), f.get("name"), str(f.get("parameters")))
                    for f in fields
                ),
            )
        else:
            signature = (table, tuple(image))
        shape = self._shapes.get(signature)
        if shape is None:
            shape = self._new_shape(table, message, fields, image)
            self._shapes[signature] = shape
        return shape

    def _new_shape(
        self,
        table: tuple[str, str],
        message: Message,
        fields: list[Mapping[str, Any]] | None,
        image: Mapping[str, Any],
    ) -> Shape:
        keys = set(_key_names(message.key))
        mirrored = {c.name: c for c in self.known(*table) or ()}
        columns: list[Column] = []
        converts: list[Convert] = []
        toastable: list[bool] = []
        if fields is not None:
            for f in fields:
                kind = connect_type(f)
                columns.append(Column(f["field"], kind.oid, kind.modifier, f["field"] in keys))
                converts.append(kind.convert)
                toastable.append(kind.may_be_unavailable)
        else:
            for name, value in image.items():
                known = mirrored.get(name)
                oid = known.type_oid if known is not None else guessed_type(value)
                modifier = known.type_modifier if known is not None else -1
                columns.append(Column(name, oid, modifier, name in keys))
                converts.append(per_value(guess))
                toastable.append(True)
        names = {c.name for c in columns}
        for name, known in mirrored.items():  # a column gone from the events stays mirrored
            if name not in names:
                columns.append(Column(name, known.type_oid, known.type_modifier, known.is_key))
                converts.append(per_value(guess))
                toastable.append(False)
        relation = Relation(0, table[0], table[1], _IDENTITY, tuple(columns))
        return Shape(relation, tuple(converts), tuple(toastable), bool(relation.key_columns))

    def _changes(self, run: _Run, out: Decoded) -> list[Change]:
        """The run's change, after a schema change if its shape is new to the table; rows
        whose values cannot be converted become dead letters."""
        relation = run.shape.relation
        if run.kind == "truncate":
            return [Truncate((relation,))]
        try:
            change = _row_change(run)
        except BadMessage:
            for index in reversed(range(len(run.rows))):
                alone = _Run(run.shape, run.kind, run.rows[index : index + 1],
                             run.olds[index : index + 1])  # fmt: skip
                try:
                    _row_change(alone)
                except BadMessage as exc:
                    out.dead.append(DeadLetter(run.messages[index], str(exc)))
                    out.events -= 1
                    run.drop(index)
            if not run.rows:
                return []
            change = _row_change(run)
        table = (relation.schema, relation.name)
        if self._current.get(table) is run.shape:
            return [change]
        self._current[table] = run.shape
        return [SchemaChange(relation), change]


def _row_change(run: _Run) -> Change:
    shape = run.shape
    relation = shape.relation
    if run.kind == "delete":
        return Deletes(relation, _tuples(shape, run.rows, unavailable=False))
    if run.kind in ("upsert", "insert"):
        rows = _tuples(shape, run.rows, unavailable=False)
        return Inserts(relation, rows, replace=run.kind == "upsert")
    olds = None
    if not shape.keyed:
        olds = _tuples(shape, [o or {} for o in run.olds], unavailable=False)
    return Updates(relation, _tuples(shape, run.rows, unavailable=True), olds)


_SCHEMA_START = b'{"schema":'
_PAYLOAD = b',"payload":'


def _parse(value: bytes) -> tuple[Any, bytes | dict[str, Any] | None]:
    """A message's payload, and its schema: as raw text when the JSON converter's envelope
    can be split without parsing the schema (it repeats in every message and is most of its
    bytes), as parsed JSON when it cannot, None when there is none."""
    if value.startswith(_SCHEMA_START) and value.endswith(b"}"):
        split = value.find(_PAYLOAD)
        if split > 0:
            try:
                return orjson.loads(value[split + len(_PAYLOAD) : -1]), value[
                    len(_SCHEMA_START) : split
                ]
            except orjson.JSONDecodeError:
                pass  # not where the converter puts it: parse the whole message
    envelope = _loads(value)
    if isinstance(envelope, dict) and "payload" in envelope and "schema" in envelope:
        schema = envelope["schema"]
        return envelope["payload"], schema if isinstance(schema, dict) else None
    return envelope, None


def _loads(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None


def _unavailable(value: Any) -> bool:
    if isinstance(value, str):
        return value in _PLACEHOLDERS
    return isinstance(value, list) and len(value) == 1 and value[0] in _PLACEHOLDERS


def _tuples(shape: Shape, rows: list[Mapping[str, Any]], *, unavailable: bool) -> Tuples:
    names: list[str] = []
    arrays: list[pa.Array] = []
    unchanged: dict[str, np.ndarray] = {}
    for column, convert, toastable in zip(
        shape.relation.columns, shape.converts, shape.toastable, strict=True
    ):
        values = [row.get(column.name) for row in rows]
        if unavailable and toastable:
            mask = np.fromiter((_unavailable(v) for v in values), dtype=bool, count=len(values))
            if mask.any():
                unchanged[column.name] = mask
                values = [None if m else v for v, m in zip(values, mask, strict=True)]
        try:
            arrays.append(convert(values))
        except (ValueError, TypeError, pa.ArrowException) as exc:
            raise BadMessage(
                f"column {column.name} of {shape.relation.qualified_name}: {exc}"
            ) from None
        names.append(column.name)
    return Tuples(pa.Table.from_arrays(arrays, names=names), unchanged)
