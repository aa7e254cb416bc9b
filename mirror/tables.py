"""A source table's place in the mirror: its columns as mirrored, and how its schema follows.

Table sync states (``MirroredTable.state``, persisted in ``_pgml_sidecar.tables``):

- ``copying``: an initial copy committed chunk by chunk is under way; found at start, the table
  is copied again.
- ``catchup``: copied while streaming, under a snapshot consistent with WAL position
  ``catchup_until``; changes of transactions that committed before it are in the copy already
  and are skipped, until the stream passes it.
- ``ready``: every change is applied as it comes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from mirror.changes import Lsn, Relation
from mirror.column_types import MirrorType, SourceType, mirror_type, prepare_step
from mirror.duckdb_sql import quote, sql_literal


@dataclass(frozen=True, slots=True)
class MirrorColumn:
    """A mirrored column: its source description and how text becomes its DuckDB type."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool
    sql: str
    cast: str
    json_array: bool
    """Whether text values go through a ``prepare`` step (named by ``rewrite``) first."""
    rewrite: str = ""

    @property
    def mirror_type(self) -> MirrorType:
        return MirrorType(
            self.sql, self.cast, prepare_step(self.json_array, self.rewrite), self.rewrite
        )


@dataclass(slots=True)
class MirroredTable:
    """A source table's place in the mirror."""

    schema: str
    name: str
    columns: list[MirrorColumn]
    identity: str
    state: str
    catchup_until: Lsn
    relid: int = 0
    """The source table's OID: another OID under the same name is another table."""

    @property
    def qualified(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"

    @property
    def keys(self) -> list[MirrorColumn]:
        return [c for c in self.columns if c.is_key]

    @property
    def has_primary_key(self) -> bool:
        return self.identity != "f" and bool(self.keys)


def mirror_columns(
    relation: Relation, catalog: Mapping[int, SourceType] | None = None
) -> list[MirrorColumn]:
    """The mirror's columns for ``relation``, typed through the source's ``catalog``."""
    columns = []
    for column in relation.columns:
        kind = mirror_type(column.type_oid, column.type_modifier, catalog)
        columns.append(
            MirrorColumn(
                column.name,
                column.type_oid,
                column.type_modifier,
                column.is_key,
                kind.sql,
                kind.cast,
                kind.prepare is not None,
                kind.rewrite,
            )
        )
    return columns


def prepared_value(column: MirrorColumn, value: str | None) -> str | None:
    """A text value as the column's cast expects it (a Postgres array literal as JSON)."""
    prepare = column.mirror_type.prepare
    if prepare is None or value is None:
        return value
    return str(prepare(pa.array([value], type=pa.string()))[0].as_py())


@dataclass(frozen=True, slots=True)
class SchemaPlan:
    """How a mirror table's columns become a relation's new columns, and whether they can.

    A Relation message names columns but not their identity, so a rename cannot be told from a
    drop and an add, nor a type change ``USING`` an expression from a cast; neither reaches the
    WAL. Only drops of non-key columns and additions are followed in place; for anything else
    ``copy_reason`` says why the table must be copied again.
    """

    drops: list[str]
    adds: list[MirrorColumn]
    copy_reason: str | None

    @property
    def empty(self) -> bool:
        return not (self.drops or self.adds or self.copy_reason)


def plan_schema(table: MirroredTable, relation: Relation, wanted: list[MirrorColumn]) -> SchemaPlan:
    """What following ``relation`` (mirrored as ``wanted``) changes in ``table``."""
    old = {c.name: c for c in table.columns}
    new_names = {c.name for c in wanted}
    drops = [c.name for c in table.columns if c.name not in new_names]
    adds = [c for c in wanted if c.name not in old]
    reason = None
    if table.relid and table.relid != relation.oid:
        reason = "was dropped and created again"
    elif relation.replica_identity != table.identity or [c.name for c in wanted if c.is_key] != [
        c.name for c in table.columns if c.is_key
    ]:
        reason = "changed its key or replica identity"
    elif any(c.name in old and old[c.name].sql != c.sql for c in wanted):
        reason = "changed a column's type"
    elif drops and adds:
        reason = "renamed or replaced columns"
    elif any(old[name].is_key for name in drops):
        reason = "dropped a key column"
    return SchemaPlan(drops, adds, reason)


def schema_steps(
    table: MirroredTable, plan: SchemaPlan, fill: Mapping[str, str | None]
) -> list[str]:
    """ALTER TABLE statements carrying out ``plan``; ``fill`` gives added columns' values for
    the rows already there (Postgres' text form), as the source's fast defaults do."""
    assert plan.copy_reason is None
    target = table.qualified
    steps = [f"alter table {target} drop column {quote(name)}" for name in plan.drops]
    for column in plan.adds:
        value = fill.get(column.name)
        if value is None:
            steps.append(f"alter table {target} add column {quote(column.name)} {column.sql}")
            continue
        default = column.mirror_type.cast_sql(sql_literal(prepared_value(column, value)))
        steps.append(
            f"alter table {target} add column {quote(column.name)} {column.sql} default {default}"
        )
        steps.append(f"alter table {target} alter column {quote(column.name)} drop default")
    return steps
