"""The mirror's key log: what online learning replays after a restart."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from mirror.change_log import rows_in_change_order, rows_of_commits
from mirror.changes import Column, Inserts, Relation, Tuples
from mirror.duckdb_sql import META
from mirror.store import Mirror

RELATION = Relation(1, "public", "t", "d", (Column("id", 20, -1, True), Column("v", 25, -1, False)))


def test_logged_keys_come_back_in_commit_order(mirror_path: Path) -> None:
    mirror = Mirror(mirror_path)
    try:
        mirror.create_table(RELATION, state="ready")
        mirror.commit("slot", 1)
        mirror.watched = [{("public", "t")}]
        mirror.logged = {("public", "t")}
        for lsn, ids in ((10, ["1", "2", "2"]), (20, ["3"])):
            rows = pa.table({"id": ids, "v": ["x"] * len(ids)})
            mirror.apply([Inserts(RELATION, Tuples(rows), replace=True)])
            mirror.commit("slot", lsn)
        logged = mirror.logged_changes("public", "t", after=0)
        assert [(lsn, keys.column("id").to_pylist()) for lsn, keys in logged] == [
            (10, ["1", "2", "2"]),
            (20, ["3"]),
        ]
        assert [lsn for lsn, _ in mirror.logged_changes("public", "t", after=10)] == [20]
        mirror.forget_changes("public", "t", upto=10)
        assert [lsn for lsn, _ in mirror.logged_changes("public", "t", after=0)] == [20]
    finally:
        mirror.close()


def test_a_log_of_json_keys_is_converted_on_open(mirror_path: Path) -> None:
    con = duckdb.connect(str(mirror_path))
    con.execute(f"create schema {META}")
    con.execute(
        f"create table {META}.changes (lsn ubigint not null, schema_name varchar not null,"
        " table_name varchar not null, keys json not null)"
    )
    con.execute(
        f"insert into {META}.changes values (5, 'public', 't', ?)",
        ['[{"id": "7"}, {"id": "8"}]'],
    )
    con.close()
    mirror = Mirror(mirror_path)
    try:
        [(lsn, keys)] = mirror.logged_changes("public", "t", after=0)
        assert (lsn, keys.column("id").to_pylist()) == (5, ["7", "8"])
        kind = mirror.con.execute(
            "select data_type from information_schema.columns"
            f" where table_schema = '{META}' and table_name = 'changes' and column_name = 'keys'"
        ).fetchone()
        assert kind == ("BLOB",)
    finally:
        mirror.close()


def test_rows_come_back_in_the_order_of_their_last_change(mirror_path: Path) -> None:
    con = duckdb.connect(str(mirror_path))
    try:
        con.execute("create table t (a bigint, b varchar, v double, primary key (a, b))")
        con.execute("insert into t select i % 7, 'k' || (i // 7), i from range(70) r(i)")
        touched = [(3, "k1"), (1, "k0"), (2, "k9"), (1, "k0"), (6, "k4"), (5, "k5")]
        keys = pa.table({"a": [str(a) for a, _ in touched], "b": [b for _, b in touched]})
        rows = rows_in_change_order(con, "main", "t", keys, ["a", "b", "v"])
        assert list(zip(rows["a"].to_pylist(), rows["b"].to_pylist(), strict=True)) == [
            (3, "k1"), (2, "k9"), (1, "k0"), (6, "k4"), (5, "k5"),
        ]  # fmt: skip
        assert rows["v"].to_pylist() == [10.0, 65.0, 1.0, 34.0, 40.0]
    finally:
        con.close()


def test_commits_read_together_come_back_as_each_alone(mirror_path: Path) -> None:
    """A row touched twice in a commit comes once, at its last change; touched by two
    commits, in both; a key without a row, in neither."""
    con = duckdb.connect(str(mirror_path))
    try:
        con.execute("create table t (a bigint primary key, v double)")
        con.execute("insert into t select i, i / 2 from range(50) r(i)")
        commits = [
            pa.table({"a": ["4", "9", "4", "70"]}),
            pa.table({"a": ["9", "1"]}),
            pa.table({"a": ["71"]}),
            pa.table({"a": ["3", "4"]}),
        ]
        together = rows_of_commits(con, "main", "t", commits, ["a", "v"])
        alone = [rows_in_change_order(con, "main", "t", keys, ["a", "v"]) for keys in commits]
        assert [t.to_pylist() for t in together] == [t.to_pylist() for t in alone]
        assert [t["a"].to_pylist() for t in together] == [[9, 4], [9, 1], [], [3, 4]]
    finally:
        con.close()
