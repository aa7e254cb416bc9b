"""Which tables lack a replica identity, as PostgreSQL decides it when it refuses an UPDATE.

A published table whose UPDATE or DELETE the server cannot describe in the WAL refuses both
(``cannot update table ... because it does not have a replica identity``): no primary key,
REPLICA IDENTITY NOTHING, a REPLICA IDENTITY USING INDEX whose index was dropped, and each of
these in a partition (the leaf decides, not its parent). The check must find exactly those.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from mirror.errors import SourceSetupError
from replicator import source
from tests.replicator.mirror_check import catch_up, execute, query

TABLES = (
    "create table keyed (id int primary key, v int)",
    "create table nopk (a int, v int)",
    "create table nothing (id int primary key, v int)",
    "alter table nothing replica identity nothing",
    "create table full_row (a int, v int)",
    "alter table full_row replica identity full",
    "create table by_index (id int not null, v int)",
    "create unique index by_index_id on by_index (id)",
    "alter table by_index replica identity using index by_index_id",
    "create table lost_index (id int not null, v int)",
    "create unique index lost_index_id on lost_index (id)",
    "alter table lost_index replica identity using index lost_index_id",
    "drop index lost_index_id",
    "create table parted_keyed (id int primary key, v int) partition by range (id)",
    "create table parted_keyed_1 partition of parted_keyed for values from (0) to (100)",
    "create table parted (id int, v int) partition by range (id)",
    "alter table parted replica identity full",  # the parent's only: its leaves decide
    "create table parted_1 partition of parted for values from (0) to (100)",
    "create table parted_2 partition of parted for values from (100) to (200)"
    " partition by range (id)",
    "create table parted_2a partition of parted_2 for values from (100) to (150)",
    "alter table parted_2a replica identity full",
    "create table parted_2b partition of parted_2 for values from (150) to (200)",
)
REFUSING = {
    "public.nopk": ("no primary key", None),
    "public.nothing": ("REPLICA IDENTITY NOTHING", None),
    "public.lost_index": ("its replica identity index was dropped", None),
    "public.parted_1": ("no primary key", "public.parted"),
    "public.parted_2b": ("no primary key", "public.parted"),
}
NAMES = [
    "keyed", "nopk", "nothing", "full_row", "by_index", "lost_index", "parted_keyed", "parted",
]  # fmt: skip


def refuses_update(dsn: str, table: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute(f"update {table} set v = v".encode())
        except psycopg.errors.ObjectNotInPrerequisiteState:
            return True
    return False


def test_the_check_finds_what_postgresql_refuses(source_dsn: str) -> None:
    execute(source_dsn, *TABLES)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        tables = source.resolve_tables(conn, NAMES)
        missing = source.tables_without_replica_identity(conn, tables)
    found = {m.name: (m.reason, m.partition_of) for m in missing}
    assert found == REFUSING

    # The truth: publish them all and try an UPDATE of each leaf.
    execute(source_dsn, f"create publication everything for table {', '.join(NAMES)}")
    leaves = ["keyed", "nopk", "nothing", "full_row", "by_index", "lost_index",
              "parted_keyed_1", "parted_1", "parted_2a", "parted_2b"]  # fmt: skip
    refused = {f"public.{t}" for t in leaves if refuses_update(source_dsn, t)}
    assert refused == set(REFUSING)


def test_only_publications_of_updates_or_deletes_need_one(source_dsn: str) -> None:
    execute(
        source_dsn,
        "create table nopk (a int, b text)",
        "create table keyed (id int primary key)",
        "create publication inserts for table nopk, keyed with (publish = 'insert')",
        "create publication changes for table nopk, keyed",
    )
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        assert source.published_without_replica_identity(conn, "inserts") == []
        missing = source.published_without_replica_identity(conn, "changes")
        assert [m.name for m in missing] == ["public.nopk"]
        assert source.published_without_replica_identity(conn, "no_such_publication") == []


def test_replicate_refuses_to_publish_such_a_table(source_dsn: str, mirror_path: Path) -> None:
    execute(source_dsn, "create table nopk (a int, b text)", "insert into nopk values (1, 'a')")
    with pytest.raises(SourceSetupError) as refused:
        catch_up(source_dsn, mirror_path, ["public.nopk"])
    message = str(refused.value)
    assert "public.nopk has no replica identity (no primary key)" in message
    assert "add a primary key" in message
    assert "ALTER TABLE public.nopk REPLICA IDENTITY FULL" in message
    assert "--replica-identity-full" in message
    assert "\n" not in message
    assert not mirror_path.exists()
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from pg_publication").fetchone() == (0,)
        assert conn.execute("select count(*) from pg_replication_slots").fetchone() == (0,)
    execute(source_dsn, "update nopk set b = 'b'", "delete from nopk")  # the application works


def test_replicate_with_replica_identity_full_sets_it_first(
    source_dsn: str, mirror_path: Path
) -> None:
    execute(
        source_dsn,
        "create table nopk (a int, b text)",
        "insert into nopk values (1, 'a'), (2, 'b')",
    )
    catch_up(source_dsn, mirror_path, ["public.nopk"], replica_identity_full=True)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        identity = conn.execute("select relreplident from pg_class where relname = 'nopk'")
        assert identity.fetchone() == ("f",)
    execute(source_dsn, "update nopk set b = 'c' where a = 1", "delete from nopk where a = 2")
    catch_up(source_dsn, mirror_path)
    assert query(mirror_path, "select a, b from public.nopk") == [(1, "c")]


def test_a_published_table_without_one_is_reported_not_refused(
    source_dsn: str, mirror_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sidecar did not publish it, and stopping would not help the application."""
    execute(
        source_dsn,
        "create table keyed (id int primary key)",
        "create table nopk (a int, b text)",
        "create publication pgml_sidecar for table keyed, nopk",
    )
    with caplog.at_level("WARNING", logger="pgml_sidecar.replicator"):
        catch_up(source_dsn, mirror_path)
    warned = [r.getMessage() for r in caplog.records if "replica identity" in r.getMessage()]
    assert len(warned) == 1 and "public.nopk" in warned[0]
    assert "ALTER TABLE public.nopk REPLICA IDENTITY FULL" in warned[0]
