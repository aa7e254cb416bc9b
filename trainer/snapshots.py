"""Snapshots: the rows a training uses, frozen as a Parquet file with statistics and a position.

A snapshot is taken in one DuckDB read transaction: the mirror's source positions and the rows
written to Parquet are consistent with each other. Rows are written in primary-key order when
the relation has one, so the same rows always give the same file and the same split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from mirror.changes import format_lsn
from mirror.duckdb_sql import META, quote
from mirror.errors import TrainingError
from mirror.registry import Snapshot

log = logging.getLogger("pgml_sidecar")

SEARCH_SCHEMAS = ("public", "main", "pgml")
_STARTED = time.time()
"""When this process started (near enough: when this module was imported): files written
before then were written by a process that has ended."""
_NUMERIC = (
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
    "UBIGINT", "FLOAT", "DOUBLE", "REAL",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RelationColumns:
    """A relation found in the mirror: its qualified name and its columns with DuckDB types."""

    schema: str
    name: str
    columns: list[tuple[str, str]]
    key: list[str]
    source: str | None = None
    """What to read instead of the mirror's ``schema.name``: DuckDB SQL for a relation of an
    endpoint user's workspace (a table of its file, or a view's query as that user may read
    it)."""

    @property
    def qualified(self) -> str:
        if self.source is not None:
            return self.source
        return f"{quote(self.schema)}.{quote(self.name)}"

    @property
    def relation_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def column_type(self, name: str) -> str | None:
        return next((t for c, t in self.columns if c == name), None)


def find_relation(con: duckdb.DuckDBPyConnection, relation: str) -> RelationColumns:
    """Resolve ``schema.table`` (or a bare name in public, main or pgml) to a mirror relation."""
    schema, _, name = relation.rpartition(".")
    schema, name = _unquote(schema), _unquote(name)
    schemas = [schema] if schema else list(SEARCH_SCHEMAS)
    con = con.cursor()  # a connection of its own: the caller's may be busy in another thread
    try:
        return _find(con, relation, schemas, name)
    finally:
        con.close()


def _find(
    con: duckdb.DuckDBPyConnection, relation: str, schemas: list[str], name: str
) -> RelationColumns:
    for candidate in schemas:
        rows = con.execute(
            "select column_name, data_type from information_schema.columns"
            " where table_catalog = current_database() and table_schema = ? and table_name = ?"
            " order by ordinal_position",
            [candidate, name],
        ).fetchall()
        if rows:
            key = con.execute(
                "select constraint_column_names from duckdb_constraints()"
                " where database_name = current_database() and schema_name = ?"
                " and table_name = ? and constraint_type = 'PRIMARY KEY'",
                [candidate, name],
            ).fetchone()
            return RelationColumns(candidate, name, list(rows), list(key[0]) if key else [])
    raise TrainingError(
        f"relation {relation!r} does not exist in the mirror; name a mirrored table as"
        " schema.table (see `select * from information_schema.tables`)",
        sqlstate="42P01",
    )


def _unquote(identifier: str) -> str:
    if len(identifier) >= 2 and identifier[0] == identifier[-1] == '"':
        return identifier[1:-1].replace('""', '"')
    return identifier


def check_columns(relation: RelationColumns, names: Sequence[str]) -> None:
    """Raise TrainingError unless every name is a column of ``relation``."""
    known = [c for c, _ in relation.columns]
    for name in names:
        if name not in known:
            raise TrainingError(
                f"column {name!r} does not exist in {relation.relation_name}; its columns are: "
                + ", ".join(known),
                sqlstate="42703",
            )


def is_numeric(duckdb_type: str) -> bool:
    return duckdb_type in _NUMERIC or duckdb_type.startswith("DECIMAL") or duckdb_type == "BOOLEAN"


def take_snapshot(
    con: duckdb.DuckDBPyConnection,
    relation: RelationColumns,
    directory: Path,
    *,
    y_columns: Sequence[str],
    test_size: float,
    test_sampling: str,
    seed: int,
) -> Snapshot:
    """Write the relation's rows to a Parquet file in ``directory``; the result is unregistered.

    The returned snapshot has id 0 and a path relative to ``directory``'s parent; the caller
    registers it, or deletes the file if the training fails.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid.uuid4().hex}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    order = " order by " + ", ".join(quote(k) for k in relation.key) if relation.key else ""
    cur = con.cursor()
    try:
        cur.execute("begin")
        positions = _positions(cur)
        cur.execute(
            f"copy (select * from {relation.qualified}{order}) to '{_literal(tmp)}'"
            " (format parquet, compression snappy)"
        )
        cur.execute("commit")
        stats, rows = _statistics(cur, tmp, relation)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        cur.close()
    os.replace(tmp, path)
    return Snapshot(
        id=0,
        relation_name=relation.relation_name,
        y_column_name=list(y_columns),
        test_size=test_size,
        test_sampling=test_sampling,
        seed=seed,
        num_rows=rows,
        columns=stats,
        source_position=positions,
        path=str(path.relative_to(directory.parent)),
        sha256=file_sha256(path),
    )


def _positions(cur: duckdb.DuckDBPyConnection) -> dict[str, str]:
    try:
        rows = cur.execute(f"select source, lsn from {META}.positions").fetchall()
    except duckdb.CatalogException:
        return {}
    return {source: format_lsn(int(lsn)) for source, lsn in rows}


def _literal(path: Path) -> str:
    return str(path).replace("'", "''")


def _statistics(
    cur: duckdb.DuckDBPyConnection, path: Path, relation: RelationColumns
) -> tuple[list[dict[str, Any]], int]:
    """Per-column statistics of the Parquet file, in one scan."""
    parts = ["count(*)"]
    for name, kind in relation.columns:
        col = quote(name)
        parts.append(f"count({col})")
        parts.append(f"approx_count_distinct({col})" if _distinct(kind) else "null")
        if is_numeric(kind):
            num = f"{col}::double"
            parts += [f"min({num})", f"max({num})", f"avg({num})", f"stddev_samp({num})"]
        else:
            parts += ["null"] * 4
    row = cur.execute(f"select {', '.join(parts)} from read_parquet('{_literal(path)}')").fetchone()
    assert row is not None
    total = int(row[0])
    stats = []
    for i, (name, kind) in enumerate(relation.columns):
        count, distinct, lo, hi, mean, std = row[1 + 6 * i : 7 + 6 * i]
        statistics: dict[str, Any] = {"missing": total - int(count), "distinct": distinct}
        if is_numeric(kind):
            statistics |= {"min": lo, "max": hi, "mean": mean, "stddev": std}
        column = {
            "name": name,
            "type": kind,
            "position": i + 1,
            "statistics": json.loads(json.dumps(statistics, default=float)),
        }
        if name in relation.key:
            column["primary_key"] = True  # not a feature unless preprocess names it
        stats.append(column)
    return stats, total


def _distinct(duckdb_type: str) -> bool:
    return not duckdb_type.endswith("[]") and duckdb_type not in ("JSON", "BLOB")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def remove_orphans(home: Path, registered: set[str]) -> int:
    """Delete the snapshot and model files in ``home`` that no registry row names, left by a
    process that ended while training (``kill -9``, power loss); return how many.

    Only files written before this process started are touched: a training running in this
    process registers its files when it succeeds, and deletes them when it fails.
    """
    removed = 0
    for folder, suffix in (("snapshots", ".parquet"), ("models", ".pickle")):
        for path in sorted((home / folder).glob(f"*{suffix}*")):
            name = f"{folder}/{path.name}"
            if name in registered or not path.name.endswith((suffix, f"{suffix}.tmp")):
                continue
            try:
                if path.stat().st_mtime >= _STARTED:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
    if removed:
        log.info("removed %d snapshot and model files no registry row names", removed)
    return removed
