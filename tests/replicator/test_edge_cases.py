"""Edge cases of the stream: schema changes the mirror cannot follow in place, odd values."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.replicator.mirror_check import (
    Running,
    assert_same_rows,
    catch_up,
    current_lsn,
    execute,
    mirror_rows,
    query,
    slot_confirmed,
    streaming,
    wait_for,
)


def test_interleaved_runs_then_truncate(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn, "create table a (id int primary key)", "create table b (id int primary key)"
    )
    catch_up(source_dsn, mirror_path, ["a", "b"])
    execute(
        source_dsn,
        "begin; insert into a values (1); insert into b values (1); insert into a values (2);"
        " insert into b values (2); insert into a values (3); commit; truncate a",
    )
    catch_up(source_dsn, mirror_path)
    assert mirror_rows(mirror_path, "public.a", "id") == []


def test_pk_retype(source_dsn: str, mirror_path: Path):
    execute(source_dsn, "create table t (id int primary key, v int)", "insert into t values (1, 1)")
    catch_up(source_dsn, mirror_path, ["t"])
    execute(source_dsn, "alter table t alter column id type bigint", "insert into t values (2, 2)")
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.t", "id") == 2


@pytest.mark.parametrize(
    ("column_type", "value", "mirrored"),
    [
        ("interval", "-1 day +2 hours", "-1 day 02:00:00"),
        ("numeric(10,2)", "NaN", None),  # DECIMAL has no NaN
        ("numeric", "NaN", "nan"),
        ("date", "0044-03-15 BC", "0044-03-15 (BC)"),
        ("timestamptz", "0044-03-15 12:00:00+00 BC", "0044-03-15 (BC) 12:00:00+00"),
        ("int[]", "[0:1]={1,2}", "[1, 2]"),
    ],
)
def test_values_that_need_rewriting_before_the_cast(
    source_dsn: str, mirror_path: Path, column_type: str, value: str, mirrored: str | None
):
    execute(source_dsn, f"create table v (id int primary key, x {column_type})")
    catch_up(source_dsn, mirror_path, ["v"])
    execute(source_dsn, f"insert into v values (1, '{value}')")
    catch_up(source_dsn, mirror_path)
    assert query(mirror_path, "select x::varchar from public.v") == [(mirrored,)]


def test_large_transaction_on_a_table_in_catch_up_is_applied_once(
    source_dsn: str, mirror_path: Path
):
    execute(source_dsn, "create table a (id int primary key)", "create table c (id int, v int)")
    with Running(source_dsn, mirror_path, ["a"], batch_messages=3) as running:
        wait_for(lambda: streaming(source_dsn), what="the replicator to stream")
        execute(
            source_dsn,
            "alter publication pgml_sidecar add table c",
            "insert into c select g, g from generate_series(1, 20) g",
            "insert into a values (1)",
        )
        target = current_lsn(source_dsn)
        wait_for(lambda: slot_confirmed(source_dsn) >= target, what="catch up")
        running.stop()
    assert query(mirror_path, "select count(*) from public.c") == [(20,)]


def test_drop_then_add_same_type_is_not_a_rename(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table s (id int primary key, a int, b int)",
        "insert into s select g, g, g from generate_series(1, 5) g",
    )
    catch_up(source_dsn, mirror_path, ["s"])
    execute(
        source_dsn,
        "alter table s drop column b",
        "alter table s add column c int",
        "insert into s values (100, 1, null)",
    )
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.s", "id") == 6


def test_fast_default_after_rename(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table t (id int primary key)",
        "insert into t select generate_series(1, 5)",
    )
    catch_up(source_dsn, mirror_path, ["t"])
    execute(
        source_dsn,
        "alter table t add column c int default 7",
        "insert into t (id) values (100)",
        "alter table t rename column c to d",
        "insert into t values (101, 8)",
    )
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.t", "id") == 7


def test_dropped_primary_key(source_dsn: str, mirror_path: Path):
    execute(source_dsn, "create table k (id int primary key, v int)", "insert into k values (1, 1)")
    catch_up(source_dsn, mirror_path, ["k"])
    execute(
        source_dsn,
        "alter table k drop constraint k_pkey",
        "alter table k replica identity full",
        "insert into k values (1, 2)",
    )
    catch_up(source_dsn, mirror_path)
    assert query(mirror_path, "select count(*) from public.k") == [(2,)]


def test_minus_infinity_copy_vs_stream(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table ti (id int primary key, ts timestamp, d date)",
        "insert into ti values (1, '-infinity', '-infinity')",
    )
    catch_up(source_dsn, mirror_path, ["ti"])
    execute(source_dsn, "insert into ti values (2, '-infinity', '-infinity')")
    catch_up(source_dsn, mirror_path)
    assert query(mirror_path, "select id, isinf(ts), isinf(d) from public.ti order by id") == [
        (1, True, True),
        (2, True, True),
    ]


def test_retype_using_expression(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn,
        "create table p (id int primary key, cents int)",
        "insert into p values (1, 1250)",
    )
    catch_up(source_dsn, mirror_path, ["p"])
    execute(
        source_dsn,
        "alter table p alter column cents type numeric(10,2) using cents / 100.0",
        "insert into p values (2, 3.5)",
    )
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.p", "id") == 2


def test_drop_key_column(source_dsn: str, mirror_path: Path):
    execute(
        source_dsn, "create table dk (id int primary key, v int)", "insert into dk values (1, 1)"
    )
    catch_up(source_dsn, mirror_path, ["dk"])
    execute(source_dsn, "alter table dk drop column id", "insert into dk values (2)")
    catch_up(source_dsn, mirror_path)
    assert query(mirror_path, "select count(*) from public.dk") == [(2,)]


def test_dropped_and_recreated_table(source_dsn: str, mirror_path: Path):
    execute(source_dsn, "create table rt (id int primary key)", "insert into rt values (1), (2)")
    catch_up(source_dsn, mirror_path, ["rt"])
    execute(
        source_dsn,
        "drop table rt",
        "create table rt (id int primary key)",
        "alter publication pgml_sidecar add table rt",
        "insert into rt values (99)",
    )
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.rt", "id") == 1


def test_full_identity_rows_with_casts_that_name_their_value_twice(
    source_dsn: str, mirror_path: Path
):
    execute(
        source_dsn,
        "create table ledger (day date, amount numeric(10,2), note text)",
        "alter table ledger replica identity full",
        "insert into ledger values ('2024-01-01', 1.50, 'a'), ('2024-01-02', 2.50, 'b')",
    )
    catch_up(source_dsn, mirror_path, ["ledger"])
    execute(
        source_dsn,
        "update ledger set note = 'changed' where day = '2024-01-01'",
        "delete from ledger where amount = 2.50",
    )
    catch_up(source_dsn, mirror_path)
    assert assert_same_rows(source_dsn, mirror_path, "public.ledger", "day") == 1


def test_array_elements_are_rewritten_like_single_values(source_dsn: str, mirror_path: Path):
    execute(source_dsn, "create table spans (id int primary key, gaps interval[], days date[])")
    catch_up(source_dsn, mirror_path, ["spans"])
    execute(
        source_dsn,
        "insert into spans values (1, array['-1 day +2 hours'::interval],"
        " array['0044-03-15 BC'::date, '2024-01-01'])",
    )
    catch_up(source_dsn, mirror_path)
    assert query(mirror_path, "select gaps::varchar, days::varchar from public.spans") == [
        ("['-1 day 02:00:00']", "['0044-03-15 (BC)', 2024-01-01]")
    ]
