"""DuckDB as the mirror speaks it: the bookkeeping schema, quoted names, transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

META = "_pgml_sidecar"
"""The mirror's bookkeeping schema: positions, tables, the change log, Kafka offsets."""


def quote(identifier: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + identifier.replace('"', '""') + '"'


def sql_literal(value: str | None) -> str:
    """A text value (or NULL) as a DuckDB string literal."""
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of its own in one transaction: committed if the block succeeds, else rolled back."""
    cursor = con.cursor()
    try:
        cursor.execute("begin")
        yield cursor
        cursor.execute("commit")
    except BaseException:
        cursor.execute("rollback")
        raise
    finally:
        cursor.close()
