"""pgml.train in the source on a view of the source: real source, real roles, the daemon running.

The view joins a mirrored table with one that is not mirrored yet, and has a CASE, casts, an
aggregate grouped by a primary key alone and JSON operators. Training on it publishes and
copies the missing table, makes the view in the mirror, and trains on the same rows as the
source's view.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg.conninfo import conninfo_to_dict

from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.sidecar.test_daemon import finished, one
from tests.source_roles import MakeRole, as_role, make_role, run
from trainer.split import split

__all__ = ["make_role"]  # the fixture, used by name

SQL_DIR = Path(__file__).resolve().parents[2] / "sidecar" / "sql"

CUSTOMERS = 400
VIEW = """
create or replace view public.customer_features as
select c.score::float8 as score,
       (c.attrs ->> 'visits')::int as visits,
       case when c.plan = 'pro' then 1 when c.plan = 'team' then 2 else 0 end as plan_code,
       count(o.id) as orders,
       coalesce(sum(o.amount), 0)::float8 as spent,
       c.attrs #>> '{address,city}' as city,
       c.ltv
from public.customers c left join public.orders o on o.customer_id = c.id
group by c.id
"""


@dataclass
class Shop:
    dsn: str
    daemon: Daemon
    analyst: str
    """May SELECT the view, and neither of its tables."""
    outsider: str
    """May SELECT nothing."""

    def train(self, role: str, call: str) -> int:
        request_id = one(as_role(self.dsn, role), f"select {call}")
        assert isinstance(request_id, int)
        return request_id

    def mirror_rows(self, sql: str) -> list[tuple[Any, ...]]:
        cursor = self.daemon.mirror.con.cursor()
        try:
            return cursor.execute(sql).fetchall()
        finally:
            cursor.close()


def view_sql(extra: str = "") -> str:
    """The view, with ``extra`` columns at its end (all ``create or replace view`` allows)."""
    return VIEW.replace("       c.ltv\n", f"       c.ltv{extra}\n")


@pytest.fixture
def shop(source_dsn: str, mirror_path: Path, make_role: MakeRole) -> Iterator[Shop]:
    analyst, outsider = make_role("analyst"), make_role("outsider")
    run(
        source_dsn,
        "create table public.customers (id bigint primary key, name text, plan text,"
        " attrs jsonb, score numeric, ltv double precision, joined timestamp)",
        "create table public.orders (id bigint primary key, customer_id bigint,"
        " amount numeric(10,2), qty int)",
        "insert into public.customers select i, 'c' || i, (array['free','pro','team'])[1 + i % 3],"
        " jsonb_build_object('visits', i % 17, 'address', jsonb_build_object('city',"
        " (array['Lyon','Oslo','Lima'])[1 + i % 3 + (i / 7) % 2])),"
        " (i % 13) * 1.5, (i % 17) * 3 + (i % 13) * 2.0 + (i % 3) * 5 + (i * 7919 % 11),"
        " timestamp '2024-01-01' + i * interval '37 hours 5 minutes'"
        f" from generate_series(1, {CUSTOMERS}) i",
        "insert into public.orders select i, 1 + i * 7 % 397, (i % 50) + 0.25, 1 + i % 5"
        " from generate_series(1, 1200) i",
        view_sql(),
        f"grant select on public.customer_features to {analyst}",
    )
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    run(
        source_dsn,
        f"grant usage on schema pgml to {analyst}, {outsider}",
        f"grant select on pgml.training_requests to {analyst}, {outsider}",
    )
    daemon = Daemon(
        DaemonSettings(
            source_dsn=source_dsn,
            mirror_path=mirror_path,
            tables=["public.customers"],  # public.orders only through the view
            port=0,
            metrics_port=0,
        )
    )
    daemon.start()
    shop = Shop(source_dsn, daemon, analyst, outsider)
    try:
        yield shop
    finally:
        shop.daemon.stop()  # the one running: a test may have started another


def source_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def assert_same_rows(
    shop: Shop, columns: int, view: str = "customer_features", rows: int = CUSTOMERS
) -> None:
    """The source's view and the mirror's give the same rows, ordered by every column;
    numbers PostgreSQL computes as numeric and DuckDB as double agree to 1e-12."""
    assert columns == one(
        shop.dsn, "select count(*) from information_schema.columns where table_name = %s", view
    )
    order = ", ".join(str(i) for i in range(1, columns + 1))
    query = f"select * from public.{view} order by {order}"
    source, mirror = source_rows(shop.dsn, query), shop.mirror_rows(query)
    assert len(source) == len(mirror) == rows
    for left, right in zip(source, mirror, strict=True):
        assert len(left) == len(right) == columns
        for index, (ours, theirs) in enumerate(zip(left, right, strict=True), 1):
            if isinstance(ours, Decimal | float) and theirs is not None:
                assert math.isclose(float(ours), float(theirs), rel_tol=1e-12), (index, left)
            else:
                assert ours == theirs, (index, ours, theirs, left)


def sklearn_r2(shop: Shop, model_id: int) -> tuple[float, float]:
    """The model's r2, and scikit-learn's LinearRegression's on the snapshot's rows, split as
    the trainer splits them (the city one-hot encoded, as the trainer does for text)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    trainer = shop.daemon.trainer
    record = trainer.registry.model(model_id)
    assert record is not None
    snapshot = trainer.registry.snapshot(record.snapshot_id)
    assert snapshot is not None
    table = pq.read_table(trainer.home / snapshot.path)
    y = np.asarray(table.column("ltv").to_pylist(), dtype=float)
    numbers = [c for c in table.column_names if c not in ("ltv", "city")]
    x = np.column_stack([np.asarray(table.column(c).to_pylist(), dtype=float) for c in numbers])
    cities = table.column("city").to_pylist()
    names = sorted(set(cities), key=str)  # None (no city) is a category of its own
    x = np.column_stack([x] + [[float(c == name) for c in cities] for name in names])
    train, test = split(
        len(y), test_size=snapshot.test_size, sampling=snapshot.test_sampling, seed=snapshot.seed
    )
    fitted = LinearRegression().fit(x[train], y[train])
    return record.metrics["r2"], float(r2_score(y[test], fitted.predict(x[test])))


def test_training_on_a_source_view_mirrors_it_and_its_tables(shop: Shop) -> None:
    assert ("public", "orders") not in shop.daemon.mirror.tables
    trained = shop.train(
        shop.analyst,
        "pgml.train('LTV', 'regression', 'public.customer_features', 'ltv',"
        " test_sampling => 'random')",
    )
    status, error, model_id = finished(shop.dsn, trained)
    assert (status, error) == ("done", None) and model_id is not None
    assert shop.daemon.mirror.tables[("public", "orders")].state in ("ready", "catchup")
    assert_same_rows(shop, 7)
    ours, sklearn = sklearn_r2(shop, model_id)
    assert math.isclose(ours, sklearn, rel_tol=1e-6), (ours, sklearn)

    # on the SQL endpoint, as in the source: the analyst, who may read the view only, reads the
    # mirror's view (through its owner's privileges) and neither of its tables; the outsider
    # reads none of them
    endpoint = f"host=127.0.0.1 port={shop.daemon.endpoint.port} dbname=pgml user={shop.analyst}"
    with psycopg.connect(endpoint, autocommit=True) as conn:
        counted = conn.execute("select count(*) from public.customer_features").fetchone()
        assert counted == (CUSTOMERS,)
        for relation in ("public.orders", "public.customers"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select count(*) from {relation}")
        for sql in ("insert into public.customer_features (id) values (1)",
                    "alter table public.customer_features add column x int",
                    "drop view public.customer_features"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    outsider = endpoint.replace(f"user={shop.analyst}", f"user={shop.outsider}")
    with psycopg.connect(outsider, autocommit=True) as conn:
        for relation in ("public.orders", "public.customers", "public.customer_features"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select count(*) from {relation}")

    # new rows of the table the view added keep coming through the stream
    run(shop.dsn, "insert into public.orders values (5000, 1, 99.5, 3)")
    wait_until_same(shop, 7)

    # a changed definition is picked up at the next training that names the view
    run(shop.dsn, view_sql(", max(o.qty) as most"))
    again = shop.train(
        shop.analyst, "pgml.train('LTV', relation_name => 'public.customer_features',"
        " y_column_name => 'ltv')",
    )  # fmt: skip
    assert finished(shop.dsn, again)[:2] == ("done", None)
    assert_same_rows(shop, 8)


def wait_until_same(shop: Shop, columns: int) -> None:
    from tests.replicator.mirror_check import wait_for

    def same() -> bool:
        try:
            assert_same_rows(shop, columns)
        except AssertionError:
            return False
        return True

    wait_for(same, timeout=30, what="the mirror's view to follow the source's")


WIDE = """
create view public.wide as
select distinct on (c.id) c.id, c.plan,
  c.id / 7 as int_div, c.score / 4 as frac_div, c.id % 5 as modulo, 7 / 2 as seven_halves,
  upper(c.name) || '-' || lower(c.plan) as label_text, length(c.name) as name_len,
  substring(c.name from 2 for 2) as sub, position('1' in c.name) as pos,
  replace(c.name, 'c', 'k') as rep, left(c.name, 2) as l2, split_part('a-b-c', '-', 2) as sp,
  trim(both 'c' from c.name) as tr, concat(c.plan, ':', c.id) as cc,
  coalesce(c.attrs ->> 'missing', 'none') as co, greatest(c.score, 5) as gr,
  least(c.id, 100) as le, nullif(c.plan, 'free') as nu,
  c.joined + interval '1 day 2 hours' as later, c.joined - interval '1 mon' as month_before,
  c.joined - interval '-1 days +02:00:00' as odd_interval,
  date_trunc('month', c.joined) as month, extract(dow from c.joined) as dow,
  extract(epoch from (c.joined - timestamp '2024-01-01')) as secs, c.joined::date as day,
  c.joined::date - date '2024-01-01' as days,
  c.name like 'c1%' as like1, c.name ilike 'C2%' as ilike2, c.name ~ '^c3' as re3,
  c.name ~* '^C4' as re4, c.name like 'c\\_%' as escaped, c.name not like '%9' as not9,
  (c.attrs -> 'address') ->> 'city' as city, c.attrs #>> '{address,city}' as city_again,
  (c.attrs ->> 'visits')::numeric / 3 as visits_third,
  case when c.score > 10 then 'high' when c.score > 5 then 'mid' end as band,
  c.plan in ('pro', 'team') as paid, c.score between 3 and 9 as middle,
  c.name is distinct from 'c1' as not_c1, round(c.score / 7, 3)::float8 as rounded,
  c.id::text as id_text, c.score::int as score_int, ('{10,20,30}'::int[])[1 + c.id % 3] as pick,
  c.ltv
from public.customers c order by c.id, c.ltv desc
"""
PER_CUSTOMER = """
create view public.per_customer as
select c.id, c.ltv, count(*) filter (where o.qty > 2) as many,
  sum(o.qty) filter (where o.amount > 20) as big_qty, avg(o.amount)::float8 as avg_amount,
  bool_or(o.qty > 4) as any_big, count(distinct o.qty) as kinds,
  max(o.amount) - min(o.amount) as spread, sum(o.qty) / count(*) as per_order,
  c.plan
from public.customers c join public.orders o on o.customer_id = c.id
group by c.id
"""


def test_the_mirror_view_answers_as_the_source_construct_by_construct(shop: Shop) -> None:
    run(
        shop.dsn,
        WIDE,
        PER_CUSTOMER,
        f"grant select on public.wide, public.per_customer to {shop.analyst}",
    )
    for view, columns in (("wide", 45), ("per_customer", 10)):
        request = shop.train(
            shop.analyst, f"pgml.train('{view}', 'regression', 'public.{view}', 'ltv')"
        )
        assert finished(shop.dsn, request)[:2] == ("done", None)
        buyers = one(shop.dsn, "select count(distinct customer_id) from public.orders")
        assert_same_rows(shop, columns, view, CUSTOMERS if view == "wide" else buyers)


@pytest.mark.parametrize(
    ("definition", "named"),
    [
        ("select c.id, to_char(c.score, '999') as s, c.ltv from public.customers c", "to_char"),
        ("select c.id, c.ltv from public.customers c where c.attrs ? 'visits'", "operator ?"),
        ("select c.id, c.ltv, current_user as who from public.customers c", "current_user"),
    ],
)
def test_a_construct_the_mirror_cannot_run_fails_the_request_naming_it(
    shop: Shop, definition: str, named: str
) -> None:
    run(
        shop.dsn,
        f"create view public.odd as {definition}",
        f"grant select on public.odd to {shop.analyst}",
    )
    request = shop.train(shop.analyst, "pgml.train('Odd', 'regression', 'public.odd', 'ltv')")
    status, error, _ = finished(shop.dsn, request)
    assert status == "failed"
    assert error is not None and "\n" not in error
    assert named in error and "public.odd" in error and "cannot run" in error


def test_a_materialized_view_is_refused_saying_why(shop: Shop) -> None:
    run(
        shop.dsn,
        "create materialized view public.frozen as select id, ltv from public.customers",
        f"grant select on public.frozen to {shop.analyst}",
    )
    request = shop.train(shop.analyst, "pgml.train('F', 'regression', 'public.frozen', 'ltv')")
    status, error, _ = finished(shop.dsn, request)
    assert status == "failed"
    assert error is not None and "materialized view" in error and "cannot be replicated" in error


def test_a_role_that_may_not_select_the_view_is_refused(shop: Shop) -> None:
    call = "pgml.train('Spy', 'regression', 'public.customer_features', 'ltv')"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="customer_features"):
        shop.train(shop.outsider, call)
    # a request no function checked (the control table owner's own) is judged again
    with psycopg.connect(shop.dsn, autocommit=True) as conn:
        row = conn.execute(
            "insert into pgml.training_requests (kind, project_name, task, relation_name,"
            " y_column_name, algorithm, requested_by) values ('train', 'Spy', 'regression',"
            " 'public.customer_features', 'ltv', 'linear', %s) returning id",
            [shop.outsider],
        ).fetchone()
    assert row is not None
    status, error, _ = finished(shop.dsn, int(row[0]))
    assert status == "failed"
    assert error is not None and error.startswith("permission denied for view customer_features")
    assert ("public", "orders") not in shop.daemon.mirror.tables  # nothing published for it


def test_a_security_invoker_view_needs_the_requesters_rights_on_its_tables(shop: Shop) -> None:
    """As PostgreSQL reads it: with the reader's privileges on its tables, not its owner's."""
    run(
        shop.dsn,
        "create view public.invoked with (security_invoker = true) as"
        " select c.id, c.ltv, c.score::float8 as score from public.customers c",
        f"grant select on public.invoked to {shop.analyst}",
    )
    request = shop.train(
        shop.analyst, "pgml.train('Invoked', 'regression', 'public.invoked', 'ltv')"
    )
    status, error, _ = finished(shop.dsn, request)
    assert status == "failed"
    assert error is not None and error.startswith("permission denied for table customers")
    assert f"as role {shop.analyst}" in error

    run(shop.dsn, f"grant select on public.customers to {shop.analyst}")
    request = shop.train(
        shop.analyst, "pgml.train('Invoked', 'regression', 'public.invoked', 'ltv')"
    )
    assert finished(shop.dsn, request)[:2] == ("done", None)
    # on the endpoint too: the analyst reads it (SELECT on it and on its table); the outsider,
    # given SELECT on the view alone, does not
    run(shop.dsn, f"grant select on public.invoked to {shop.outsider}")
    endpoint = f"host=127.0.0.1 port={shop.daemon.endpoint.port} dbname=pgml user="
    with psycopg.connect(endpoint + shop.analyst, autocommit=True) as conn:
        assert conn.execute("select count(*) from public.invoked").fetchone() == (CUSTOMERS,)
    outsider = psycopg.connect(endpoint + shop.outsider, autocommit=True)
    with outsider as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select count(*) from public.invoked")


def test_a_view_over_a_table_with_row_level_security_is_refused(
    shop: Shop, make_role: MakeRole
) -> None:
    """The view reads its tables as its owner, to whom the policy applies; the mirror's copy
    has every row."""
    keeper = make_role("keeper")
    run(
        shop.dsn,
        f"grant select on public.customers, public.orders to {keeper}",
        f"alter view public.customer_features owner to {keeper}",
        "alter table public.customers enable row level security",
        "create policy even_only on public.customers using (id % 2 = 0)",
    )
    request = shop.train(
        shop.analyst, "pgml.train('RLS', 'regression', 'public.customer_features', 'ltv')"
    )
    status, error, _ = finished(shop.dsn, request)
    assert status == "failed"
    assert error is not None and "row-level security" in error and keeper in error


def test_the_endpoint_serves_no_view_over_a_table_with_row_level_security(shop: Shop) -> None:
    """Mirrored before the policy came: the mirror's copy would show every row."""
    trained = shop.train(
        shop.analyst, "pgml.train('LTV', 'regression', 'public.customer_features', 'ltv')"
    )
    assert finished(shop.dsn, trained)[:2] == ("done", None)
    run(
        shop.dsn,
        "alter table public.customers enable row level security",
        "create policy even_only on public.customers using (id % 2 = 0)",
    )
    endpoint = f"host=127.0.0.1 port={shop.daemon.endpoint.port} dbname=pgml user={shop.analyst}"
    access = shop.daemon.endpoint.access
    assert access is not None
    access.privileges.refresh()  # the source's answer of now
    analyst = psycopg.connect(endpoint, autocommit=True)
    with analyst as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select count(*) from public.customer_features")


def test_a_view_over_a_view_is_followed_to_its_tables(shop: Shop) -> None:
    run(
        shop.dsn,
        "create view public.busy as select f.score, f.orders, f.spent / 2 as half, f.ltv"
        " from public.customer_features f where f.orders > 2",
        f"grant select on public.busy to {shop.analyst}",  # and not on customer_features
        f"revoke select on public.customer_features from {shop.analyst}",
    )
    request = shop.train(shop.analyst, "pgml.train('Busy', 'regression', 'public.busy', 'ltv')")
    assert finished(shop.dsn, request)[:2] == ("done", None)
    rows = one(shop.dsn, "select count(*) from public.busy")
    assert_same_rows(shop, 4, "busy", rows)
    assert_same_rows(shop, 7)  # the view it reads, made in the mirror too


def test_a_sidecar_that_may_not_publish_the_views_tables_says_who_must(
    pg_bin: Path, source_dsn: str, mirror_path: Path, make_role: MakeRole
) -> None:
    """The least-privilege setup: the tables' owner publishes; the sidecar's role may not."""
    sidecar, analyst = make_role("sidecar"), make_role("analyst")
    run(
        source_dsn,
        "create table public.customers (id bigint primary key, plan text, ltv float8)",
        "create table public.orders (id bigint primary key, customer_id bigint, qty int)",
        "insert into public.customers select i, (array['a','b'])[1 + i % 2], i % 7"
        " from generate_series(1, 50) i",
        "insert into public.orders select i, 1 + i % 50, i % 4 from generate_series(1, 200) i",
        "create view public.per_customer as select c.id, c.ltv, sum(o.qty) as qty"
        " from public.customers c join public.orders o on o.customer_id = c.id group by c.id",
        f"grant select on public.per_customer to {analyst}",
    )
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    params = conninfo_to_dict(source_dsn)
    subprocess.run(
        [str(pg_bin / "psql"), "-X", "-q", "-h", str(params["host"]), "-p", str(params["port"]),
         "-U", "postgres", "-d", str(params["dbname"]), "-v", f"role={sidecar}",
         "-v", "tables=public.customers,public.orders", "-f", str(SQL_DIR / "role.sql")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    run(
        source_dsn,
        f"grant usage on schema pgml to {analyst}",
        "create publication pgml_sidecar for table public.customers, pgml.training_requests",
    )
    daemon = Daemon(
        DaemonSettings(
            source_dsn=as_role(source_dsn, sidecar),
            mirror_path=mirror_path,
            tables=["public.customers"],
            port=0,
            metrics_port=0,
        )
    )
    daemon.start()
    try:
        call = "select pgml.train('Qty', 'regression', 'public.per_customer', 'ltv')"
        status, error, _ = finished(source_dsn, one(as_role(source_dsn, analyst), call))
        assert status == "failed" and error is not None
        assert error.startswith(
            "view public.per_customer reads public.orders, which are not mirrored yet, and the"
            " sidecar could not add them: the sidecar's role may not add public.orders to"
            " publication pgml_sidecar: have the owner of the tables and of the publication run"
            " ALTER PUBLICATION pgml_sidecar ADD TABLE public.orders, then ask again"
        )
        run(source_dsn, "alter publication pgml_sidecar add table public.orders")  # its owner
        status, error, _ = finished(source_dsn, one(as_role(source_dsn, analyst), call))
        assert (status, error) == ("done", None)
        query = "select * from public.per_customer order by id"
        cursor = daemon.mirror.con.cursor()
        try:
            assert cursor.execute(query).fetchall() == source_rows(source_dsn, query)
        finally:
            cursor.close()
    finally:
        daemon.stop()


def test_a_views_tables_keep_streaming_after_a_restart(shop: Shop, mirror_path: Path) -> None:
    request = shop.train(
        shop.analyst, "pgml.train('LTV', 'regression', 'public.customer_features', 'ltv')"
    )
    assert finished(shop.dsn, request)[:2] == ("done", None)
    shop.daemon.stop()
    run(shop.dsn, "insert into public.orders values (6000, 2, 10.5, 2)")  # while it is down
    shop.daemon = Daemon(shop.daemon.settings)  # tables: public.customers only, as before
    shop.daemon.start()  # the fixture stops this one
    wait_until_same(shop, 7)
    run(shop.dsn, "update public.orders set qty = 9 where id = 6000")
    wait_until_same(shop, 7)
