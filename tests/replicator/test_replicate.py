"""The replicator against a real PostgreSQL: copy, stream, types, TOAST, schema changes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.replicator.mirror_check import (
    Running,
    assert_same_rows,
    catch_up,
    current_lsn,
    execute,
    holds_for,
    mirror_columns,
    mirror_rows,
    query,
    slot_confirmed,
    streaming,
    terminate_walsender,
    wait_for,
)

ALL_TYPES = """
create type mood as enum ('sad', 'ok', 'happy');
create table every_type (
    id int primary key,
    i2 smallint, i4 integer, i8 bigint,
    n numeric(12,3), n_any numeric, f4 real, f8 double precision,
    b boolean, t text, vc varchar(10), ch char(5), by bytea,
    d date, tm time, ts timestamp, tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb, e mood,
    ai int[], at text[], an numeric[], ae mood[], ad date[],
    p point
)"""

ROWS = [
    "(1, 1, 2, 3, 1.5, 2.25, 0.5, 1.25, true, 'hello', 'short', 'ab', '\\x00ff10',"
    " '2024-02-29', '12:34:56.789', '2024-01-02 03:04:05.123456',"
    " '2024-01-02 03:04:05.5+02', '1 day 02:03:04.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',"
    " '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', 'happy', '{1,NULL,3}',"
    ' \'{"x,y", NULL, "q\\"uote", "", "{br}"}\', \'{1.5,NULL}\', \'{sad,ok}\','
    " '{2024-01-01,NULL}', '(1,2)')",
    "(2, -32768, -2147483648, -9223372036854775808, -999999999.999, -1e-20, -0.25,"
    " -1e300, false, '', 'ünï€ode', 'x', '', '1970-01-01', '00:00:00', '1999-12-31 23:59:59',"
    " '1999-12-31 23:59:59+00', '-3 hours', '00000000-0000-0000-0000-000000000000',"
    " '[]', '[1, \"two\"]', 'sad', '{}', '{}', '{}', '{}', '{}', '(-1.5,0)')",
    "(3" + ", null" * 27 + ")",
]


def test_every_type_round_trips_through_copy_and_stream(source_dsn: str, mirror_path: Path):
    execute(source_dsn, ALL_TYPES, f"insert into every_type values {ROWS[0]}, {ROWS[2]}")
    catch_up(source_dsn, mirror_path, ["public.every_type"])
    execute(
        source_dsn,
        f"insert into every_type values {ROWS[1]}",
        "insert into every_type select id + 100, i2, i4, i8, n, n_any, f4, f8, b, t, vc, ch, by,"
        " d, tm, ts, tstz, iv, u, j, jb, e, ai, at, an, ae, ad, p from every_type",
    )
    stats = catch_up(source_dsn, mirror_path)
    assert stats.rows_applied == 4
    same = assert_same_rows(
        source_dsn, mirror_path, "public.every_type", "id", ["j", "jb"], {"ae": "::text[]"}
    )
    assert same == 6
    types = dict(mirror_columns(mirror_path, "public.every_type"))
    assert types["n"] == "DECIMAL(12,3)"
    assert types["n_any"] == "DOUBLE"
    assert types["tstz"] == "TIMESTAMP WITH TIME ZONE"
    assert types["by"] == "BLOB"
    assert types["ai"] == "INTEGER[]"
    assert types["at"] == "VARCHAR[]"
    assert types["ad"] == "DATE[]"
    assert types["u"] == "UUID"
    assert types["e"] == "VARCHAR"
    assert types["p"] == "VARCHAR"


@pytest.mark.parametrize("protocol_2", [True, False], ids=["protocol-2", "protocol-1"])
def test_inserts_updates_deletes_and_key_changes_stream(
    source_dsn: str, mirror_path: Path, protocol_2: bool
):
    execute(
        source_dsn,
        "create table items (id int primary key, name text, qty int)",
        "insert into items select g, 'item ' || g, g from generate_series(1, 500) g",
    )
    catch_up(source_dsn, mirror_path, ["items"])
    execute(
        source_dsn,
        "insert into items select g, 'new ' || g, null from generate_series(501, 800) g",
        "update items set qty = qty * 2, name = null where id % 3 = 0",
        "delete from items where id % 5 = 0",
        "update items set id = id + 10000 where id between 10 and 20",
        "begin; update items set qty = 1 where id = 1; update items set qty = 2 where id = 1;"
        " delete from items where id = 2; insert into items values (2, 'again', 7);"
        " update items set id = 3000 where id = 4; insert into items values (4, 'four', 4);"
        " commit",
    )
    catch_up(source_dsn, mirror_path, stream_large_transactions=protocol_2)
    assert assert_same_rows(source_dsn, mirror_path, "public.items", "id") == 641


def test_truncate_empties_the_mirrored_table(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table t (id int primary key)",
        "insert into t select generate_series(1, 100)",
    )
    catch_up(source_dsn, mirror_path, ["t"])
    execute(source_dsn, "truncate t", "insert into t values (7)")
    catch_up(source_dsn, mirror_path)
    assert mirror_rows(mirror_path, "public.t", "id") == [(7,)]


def test_unchanged_toast_values_keep_their_mirrored_value(source_dsn: str, mirror_path: Path):
    big = "(select string_agg(md5(random()::text), '') from generate_series(1, 400))"
    execute(
        source_dsn,
        "create table docs (id int primary key, body text, views int)",
        f"insert into docs select g, {big}, 0 from generate_series(1, 20) g",
    )
    catch_up(source_dsn, mirror_path, ["docs"])
    execute(
        source_dsn,
        "update docs set views = views + 1",  # body is TOASTed and unchanged
        "update docs set views = views + 1 where id <= 10",
        f"update docs set body = {big} where id = 3",
    )
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.docs", "id") == 20
    rows = mirror_rows(mirror_path, "public.docs", "id")
    assert all(len(r[1]) == 12800 for r in rows)


def test_schema_changes_follow_without_losing_rows(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table s (id int primary key, a int, b text, c int)",
        "insert into s select g, g, 'b' || g, g from generate_series(1, 50) g",
    )
    catch_up(source_dsn, mirror_path, ["s"])
    execute(
        source_dsn,
        "alter table s add column d numeric(6,2) default 1.5",
        "insert into s values (51, 51, 'x', 51, 2.25)",
        "alter table s drop column c",
        "insert into s values (52, 52, 'y', 3.5)",
        "alter table s rename column b to label",
        "update s set label = 'renamed' where id = 1",
        "alter table s alter column a type bigint",
        "insert into s values (53, 9000000000, 'big', null)",
    )
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.s", "id") == 53
    assert mirror_columns(mirror_path, "public.s") == [
        ("id", "INTEGER"),
        ("a", "BIGINT"),
        ("label", "VARCHAR"),
        ("d", "DECIMAL(6,2)"),
    ]


def test_table_without_primary_key_uses_replica_identity_full(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table log (k int, v text)",
        "alter table log replica identity full",
        "insert into log values (1, 'a'), (1, 'a'), (2, null), (3, 'c')",
    )
    catch_up(source_dsn, mirror_path, ["log"])
    execute(
        source_dsn,
        "delete from log where ctid = (select min(ctid) from log where k = 1)",
        "update log set v = 'set' where k = 2",
        "insert into log values (3, 'c')",
        "delete from log where k = 3 and ctid = (select max(ctid) from log where k = 3)",
    )
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.log", "k, v") == 3


@pytest.mark.parametrize("spool", [False, True], ids=["in-memory", "spooled"])
def test_large_transactions_stream_before_commit(source_dsn: str, mirror_path: Path, spool: bool):
    # A transaction keeps a batch's bytes decoded in memory, and spools the rest.
    options: dict[str, Any] = {"batch_bytes": 4096} if spool else {}
    dbname = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]
    execute(
        source_dsn,
        f"alter database \"{dbname}\" set logical_decoding_work_mem = '64kB'",
        "create table big (id int primary key, v text)",
    )
    catch_up(source_dsn, mirror_path, ["big"])
    execute(
        source_dsn,
        "begin; insert into big select g, 'v' || g from generate_series(1, 20000) g;"
        " savepoint s1; insert into big select g, 'gone' from generate_series(20001, 25000) g;"
        " rollback to savepoint s1;"
        " update big set v = 'kept' where id % 2 = 0; commit",
        "begin; insert into big select g, 'aborted' from generate_series(30001, 40000) g; rollback",
        "insert into big values (50000, 'after')",
        "update big set v = 'streamed without subtransactions' where id % 3 = 0",
    )
    catch_up(source_dsn, mirror_path, **options)
    assert assert_same_rows(source_dsn, mirror_path, "public.big", "id") == 20001
    with psycopg.connect(source_dsn) as conn:
        row = conn.execute(
            "select stream_txns from pg_stat_replication_slots where slot_name = 'pgml_sidecar'"
        ).fetchone()
    assert row is not None and row[0] > 0, "the server never streamed a transaction"


def test_table_added_on_a_later_start_is_copied(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table a (id int primary key)",
        "create table b (id int primary key, v text)",
        "insert into a select generate_series(1, 10)",
        "insert into b select g, 'v' from generate_series(1, 10) g",
    )
    catch_up(source_dsn, mirror_path, ["a"])
    execute(source_dsn, "insert into b values (11, 'w')", "update b set v = 'u' where id = 1")
    catch_up(source_dsn, mirror_path, ["a", "b"])
    execute(source_dsn, "delete from b where id = 2", "insert into a values (11)")
    catch_up(source_dsn, mirror_path, ["a", "b"])
    assert assert_same_rows(source_dsn, mirror_path, "public.a", "id") == 11
    assert assert_same_rows(source_dsn, mirror_path, "public.b", "id") == 10


def test_table_added_to_the_publication_while_streaming_is_copied(
    source_dsn: str, mirror_path: Path
):
    execute(
        source_dsn,
        "create table a (id int primary key)",
        "create table c (id int primary key, v int)",
        "insert into c select g, g from generate_series(1, 1000) g",
    )
    with Running(source_dsn, mirror_path, ["a"]) as running:
        wait_for(lambda: streaming(source_dsn), what="the replicator to stream")
        execute(
            source_dsn,
            "alter publication pgml_sidecar add table c",
            "update c set v = -v where id <= 10",
            "insert into c values (1001, 1)",
            "insert into a values (1)",
        )
        target = current_lsn(source_dsn)
        wait_for(lambda: slot_confirmed(source_dsn) >= target, what="the mirror to catch up")
        running.stop()
    assert assert_same_rows(source_dsn, mirror_path, "public.c", "id") == 1001
    assert assert_same_rows(source_dsn, mirror_path, "public.a", "id") == 1


def test_idle_replicator_keeps_the_slot_advancing(source_dsn: str, mirror_path: Path):
    execute(source_dsn, "create table quiet (id int primary key)", "create table noisy (x int)")
    with Running(source_dsn, mirror_path, ["quiet"], status_interval=0.2):
        wait_for(lambda: streaming(source_dsn), what="the replicator to stream")
        before = slot_confirmed(source_dsn)
        execute(source_dsn, "insert into noisy select generate_series(1, 1000)")
        target = current_lsn(source_dsn)
        wait_for(
            lambda: slot_confirmed(source_dsn) >= target,
            what="the slot to advance past unrelated WAL",
        )
    assert slot_confirmed(source_dsn) > before


def test_terminated_walsender_reconnects_and_loses_nothing(source_dsn: str, mirror_path: Path):
    execute(source_dsn, "create table r (id int primary key, v int)")
    with Running(source_dsn, mirror_path, ["r"]) as running:
        for round_ in range(3):
            wait_for(lambda: streaming(source_dsn), what="the replicator to stream")
            execute(
                source_dsn,
                f"insert into r select g, {round_} from generate_series({round_ * 100 + 1},"
                f" {round_ * 100 + 100}) g",
            )
            assert terminate_walsender(source_dsn)
            execute(source_dsn, f"update r set v = v + 1 where id % 7 = {round_}")
        target = current_lsn(source_dsn)
        wait_for(lambda: slot_confirmed(source_dsn) >= target, timeout=60, what="catch-up")
        stats = running.stop()
    assert stats.reconnects >= 3
    assert assert_same_rows(source_dsn, mirror_path, "public.r", "id") == 300


@pytest.mark.parametrize("batch_messages", [3, 100_000])
def test_batch_size_does_not_change_the_result(
    source_dsn: str, mirror_path: Path, batch_messages: int
):
    execute(source_dsn, "create table m (id int primary key, v int)")
    catch_up(source_dsn, mirror_path, ["m"])
    execute(
        source_dsn,
        "insert into m select g, g from generate_series(1, 100) g",
        "begin; update m set v = v + 1 where id < 50; delete from m where id > 90;"
        " insert into m values (1000, 1); update m set id = 2000 where id = 1000; commit",
    )
    catch_up(source_dsn, mirror_path, batch_messages=batch_messages)
    assert assert_same_rows(source_dsn, mirror_path, "public.m", "id") == 91


ONE_F_ROW = "{} where ctid = (select ctid from f where a = %s order by b limit 1)"


def test_small_transactions_across_tables_apply_in_their_order(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table k (id int primary key, v text)",
        "create table f (a int, b text)",
        "alter table f replica identity full",
    )
    catch_up(source_dsn, mirror_path, ["k", "f"])
    rng = random.Random(14)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        for i in range(600):  # one batch of interleaved runs, each key touched many times
            key, other = rng.randrange(8), rng.randrange(8)
            with conn.transaction():
                conn.execute(
                    "insert into k values (%s, %s) on conflict (id) do update set v = excluded.v",
                    [key, f"v{i}"],
                )
                conn.execute("insert into f values (%s, %s)", [key, f"b{i % 3}"])
                if i % 3 == 0:
                    conn.execute("delete from k where id = %s", [other])
                    conn.execute(ONE_F_ROW.format("update f set b = %s"), [f"u{i}", other])
                if i % 5 == 0:
                    conn.execute(ONE_F_ROW.format("delete from f"), [key])
                    conn.execute("update k set id = id + 10 where id = %s", [other])
                    conn.execute("delete from k where id >= 10")
    stats = catch_up(source_dsn, mirror_path, behind_after=3600, max_delay=60)
    assert stats.transactions == 600
    assert stats.batches < 60  # many transactions to a batch
    assert assert_same_rows(source_dsn, mirror_path, "public.k", "id") > 0
    assert assert_same_rows(source_dsn, mirror_path, "public.f", "a, b") > 100


def test_a_long_copy_while_streaming_keeps_the_connection(source_dsn: str, mirror_path: Path):
    dbname = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]
    execute(
        source_dsn,
        f"alter database \"{dbname}\" set wal_sender_timeout = '2s'",
        "create table wide (id int primary key, v text)",
        "insert into wide select g, md5(g::text) from generate_series(1, 3000000) g",
    )
    catch_up(source_dsn, mirror_path, ["wide"])
    with Running(source_dsn, mirror_path, ["wide"]) as running:
        wait_for(lambda: streaming(source_dsn), what="the replicator to stream")
        execute(
            source_dsn,
            # A volatile default rewrites the table without WAL: the mirror copies it again.
            "alter table wide add column r float default random()",
            "insert into wide values (0, 'after', 0.5)",
        )
        target = current_lsn(source_dsn)
        wait_for(lambda: slot_confirmed(source_dsn) >= target, timeout=120, what="the copy")
        stats = running.stop()
    assert stats.copied_rows["public.wide"] == 3_000_001
    assert stats.reconnects == 0
    assert query(mirror_path, "select count(*), count(r) from public.wide") == [
        (3_000_001, 3_000_001)
    ]


def test_the_server_hears_from_a_replicator_held_up_longer_than_its_timeout(
    source_dsn: str, mirror_path: Path
):
    dbname = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]
    execute(
        source_dsn,
        f"alter database \"{dbname}\" set wal_sender_timeout = '2s'",
        "create table held (id int primary key, v text)",
        "insert into held values (1, 'one')",
    )
    catch_up(source_dsn, mirror_path, ["held"])
    with (
        Running(source_dsn, mirror_path, ["held"]) as running,
        psycopg.connect(source_dsn, autocommit=True) as open_transaction,
    ):
        wait_for(lambda: streaming(source_dsn), what="the replicator to stream")
        open_transaction.execute("begin")
        open_transaction.execute("select pg_current_xact_id()")
        execute(
            source_dsn,
            # The mirror copies the table again, under a slot whose creation waits for every
            # transaction open now: the replicator is held up until the test commits.
            "alter table held add column r float default random()",
            "insert into held values (2, 'two', 0.5)",
        )
        wait_for(lambda: copy_slot_waits(source_dsn), what="the copy to wait")
        holds_for(  # three times wal_sender_timeout
            lambda: streaming(source_dsn), seconds=6, what="the stream of a held-up replicator"
        )
        open_transaction.execute("commit")
        target = current_lsn(source_dsn)
        wait_for(lambda: slot_confirmed(source_dsn) >= target, what="the copy")
        stats = running.stop()
    assert stats.reconnects == 0
    assert query(mirror_path, "select id, v, r is not null from public.held order by id") == [
        (1, "one", True),
        (2, "two", True),
    ]


def copy_slot_waits(dsn: str) -> bool:
    """Whether a walsender creating a slot waits for a transaction to end."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select count(*) from pg_locks l join pg_stat_activity a using (pid)"
            " where l.locktype = 'transactionid' and not l.granted"
            " and a.backend_type = 'walsender'"
        ).fetchone()
    return bool(row and row[0])
