"""A commit DuckDB refuses leaves the mirror as it was, and usable."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from mirror.changes import Column, Inserts, Relation, Tuples
from mirror.store import Mirror

RELATION = Relation(1, "public", "t", "d", (Column("id", 20, -1, True),))


def rows(*ids: str) -> list[Inserts]:
    return [Inserts(RELATION, Tuples(pa.table({"id": list(ids)})))]


def test_a_refused_commit_applies_nothing_and_the_next_one_works(mirror_path: Path) -> None:
    mirror = Mirror(mirror_path)
    try:
        mirror.create_table(RELATION, state="ready")
        mirror.commit("slot", 10)
        mirror.apply(rows("1", "2"))
        other = mirror.con.cursor()  # another writer commits key 1 first: the commit must fail
        other.execute("insert into public.t values (1)")
        with pytest.raises(duckdb.Error):
            mirror.commit("slot", 20)
        assert mirror.position("slot") == 10
        assert mirror.con.execute("select id from public.t").fetchall() == [(1,)]
        mirror.apply(rows("3"))
        mirror.commit("slot", 30)
        assert mirror.position("slot") == 30
        ids = mirror.con.execute("select id from public.t order by id").fetchall()
        assert ids == [(1,), (3,)]
    finally:
        mirror.close()
