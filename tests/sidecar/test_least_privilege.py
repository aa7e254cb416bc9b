"""The documented least-privilege setup, end to end, with the roles a managed database has.

The tables' owner runs what ``init --print-sql`` prints, through psql; the sidecar's role has
nothing but LOGIN and REPLICATION beforehand (as ``rds_replication`` gives on RDS); the
application's role keeps updating and deleting rows while the sidecar mirrors and trains.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from sidecar.daemon import Daemon, DaemonSettings
from tests.replicator.mirror_check import wait_for
from tests.sidecar.test_daemon import finished, one
from tests.source_roles import MakeRole, as_role, make_role, run

__all__ = ["make_role"]  # the fixture, used by name

ROWS = 400
TABLES = "public.customers,public.orders"


@dataclass
class Shop:
    dsn: str
    """The superuser's: the platform's admin."""
    owner: str
    """Owns the tables and may create schemas in the database: the application's owner."""
    sidecar: str
    """LOGIN REPLICATION and nothing else, until the owner grants what the printed SQL says."""
    app: str
    """Reads and writes the tables."""
    pg_bin: Path

    def cli(self, *args: str, role: str | None = None) -> subprocess.CompletedProcess[str]:
        """``pgml-sidecar ARGS --source <DSN as role>``, the sidecar's role by default."""
        dsn = as_role(self.dsn, role or self.sidecar)
        return subprocess.run(
            [sys.executable, "-m", "sidecar.cli", *args, "--source", dsn],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def psql(self, role: str, script: str) -> subprocess.CompletedProcess[str]:
        """Run a script as ``role`` the way the printed SQL says to: one transaction, stop on
        the first error."""
        params = conninfo_to_dict(self.dsn)
        return subprocess.run(
            [str(self.pg_bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
             "-h", str(params["host"]), "-p", str(params["port"]), "-U", role,
             "-d", str(params["dbname"]), "-f", "-"],
            input=script, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def set_up_as_owner(self) -> str:
        """``init --print-sql`` as the sidecar, run by the owner; return the script."""
        printed = self.cli("init", "--print-sql", "--tables", TABLES)
        assert printed.returncode == 0, printed.stderr
        ran = self.psql(self.owner, printed.stdout)
        assert ran.returncode == 0, ran.stderr
        return printed.stdout

    def application_writes(self, n: int) -> None:
        """What the application does all day: these must never fail."""
        run(
            as_role(self.dsn, self.app),
            f"update public.customers set spend = spend + 1 where id % 7 = {n % 7}",
            f"delete from public.orders where id % 50 = {n % 50}",
            f"insert into public.orders values ({ROWS + n}, {n % ROWS + 1}, 9.5)",
        )


@pytest.fixture
def shop(pg_bin: Path, source_dsn: str, make_role: MakeRole) -> Shop:
    owner, sidecar, app = make_role("owner"), make_role("sidecar", "replication"), make_role("app")
    database = conninfo_to_dict(source_dsn)["dbname"]
    run(
        source_dsn,
        f'grant create on database "{database}" to {owner}',
        f"grant create on schema public to {owner}",
    )
    run(
        as_role(source_dsn, owner),
        "create table public.customers (id int primary key, age int, plan text, spend float8)",
        f"insert into public.customers select i, 18 + i % 50, (array['free', 'pro'])[1 + i % 2],"
        f" 10 + (i % 50) * 3.0 + i % 3 from generate_series(1, {ROWS}) i",
        "create table public.orders (id int primary key, customer_id int, amount float8)",
        f"insert into public.orders select i, 1 + i % {ROWS}, i % 90"
        f" from generate_series(1, {ROWS}) i",
        f"grant select, insert, update, delete on public.customers, public.orders to {app}",
    )
    return Shop(source_dsn, owner, sidecar, app, pg_bin)


def test_the_least_privilege_setup_works_end_to_end(shop: Shop, mirror_path: Path) -> None:
    script = shop.set_up_as_owner()
    # In order: the schema and its control table, the grants, then the publication.
    assert script.index("create table if not exists pgml.training_requests") < script.index(
        f"to {shop.sidecar}"
    ) < script.index("create publication pgml_sidecar")  # fmt: skip
    assert "public.customers, public.orders, pgml.training_requests" in script

    init = shop.cli("init", "--tables", TABLES)
    assert init.returncode == 0, init.stderr
    assert "publication pgml_sidecar covers public.customers, public.orders" in init.stdout
    owners = one(shop.dsn, "select array_agg(distinct pg_get_userbyid(nspowner)::text) from"
                 " pg_namespace where nspname in ('pgml', 'pgml_scores')")  # fmt: skip
    assert owners == [shop.owner]
    # The application's users: USAGE on pgml is the owner's to give, as the README says.
    run(as_role(shop.dsn, shop.owner), f"grant usage on schema pgml, pgml_scores to {shop.app}",
        f"grant select on pgml.training_requests to {shop.app}")  # fmt: skip

    daemon = Daemon(
        DaemonSettings(
            source_dsn=as_role(shop.dsn, shop.sidecar), mirror_path=mirror_path,
            tables=TABLES.split(","), port=0, metrics_port=0,
        )
    )  # fmt: skip
    daemon.start()
    try:
        for n in range(5):
            shop.application_writes(n)
        asked = one(
            as_role(shop.dsn, shop.app),
            "select pgml.train('Spend', 'regression', 'public.customers', 'spend')",
        )
        assert finished(shop.dsn, asked)[:2] == ("done", None)
        wrote = one(as_role(shop.dsn, shop.app), "select pgml.writeback('Spend')")
        assert finished(shop.dsn, wrote)[:2] == ("done", None)
        for n in range(5, 10):
            shop.application_writes(n)
        spend = one(shop.dsn, "select sum(spend) from public.customers")
        orders = one(shop.dsn, "select count(*) from public.orders")
        mirrored = daemon.mirror.con.cursor()
        wait_for(
            lambda: mirrored.execute("select (select sum(spend) from public.customers),"
                                     " (select count(*) from public.orders)").fetchall()
            == [(spend, orders)],
            timeout=60, what="the application's changes in the mirror",
        )  # fmt: skip
        wait_for(
            lambda: one(as_role(shop.dsn, shop.app), "select count(*) from pgml_scores.spend")
            == ROWS,
            timeout=60, what="the scores in the source",
        )  # fmt: skip
        # The registry copy, written by the sidecar's role (not the tables' owner) past the
        # rows' security, read by the application's role, which may read the relation.
        wait_for(
            lambda: one(as_role(shop.dsn, shop.app), "select string_agg(p.name || ':' ||"
                        " m.algorithm, ',') from pgml.models m join pgml.projects p"
                        " on p.id = m.project_id") == "Spend:linear",
            timeout=30, what="the registry in the source",
        )  # fmt: skip
        assert daemon.health()["status"] == "ok"
    finally:
        daemon.stop()


def test_a_refused_init_leaves_nothing_behind(shop: Shop) -> None:
    """The dead end: a sidecar that may create schemas, a publication the owner made."""
    database = conninfo_to_dict(shop.dsn)["dbname"]
    run(shop.dsn, f'grant create on database "{database}" to {shop.sidecar}')
    run(as_role(shop.dsn, shop.owner),
        "create publication pgml_sidecar for table public.customers, public.orders")  # fmt: skip

    init = shop.cli("init", "--tables", TABLES)
    assert init.returncode == 1
    [line] = init.stderr.strip().splitlines()
    assert "must be owner of publication pgml_sidecar" in line
    assert "pgml-sidecar init --print-sql" in line
    assert one(shop.dsn, "select to_regnamespace('pgml')") is None
    assert one(shop.dsn, "select to_regnamespace('pgml_scores')") is None

    # What the owner is told to run untangles it: it knows the publication is there.
    script = shop.set_up_as_owner()
    assert "create publication" not in script
    assert "alter publication pgml_sidecar add table pgml.training_requests;" in script
    init = shop.cli("init", "--tables", TABLES)
    assert init.returncode == 0, init.stderr
    shop.application_writes(1)


def test_init_without_privileges_says_what_to_run(shop: Shop) -> None:
    init = shop.cli("init", "--tables", TABLES)
    assert init.returncode == 1
    [line] = init.stderr.strip().splitlines()
    assert line.startswith("error: cannot install pgml-sidecar's schema")
    assert "pgml-sidecar init --print-sql" in line
    assert one(shop.dsn, "select to_regnamespace('pgml')") is None
    assert one(shop.dsn, "select count(*) from pg_publication") == 0


def test_print_sql_gives_the_owner_the_replica_identity_to_set(shop: Shop) -> None:
    """The sidecar's role may not ALTER the owner's tables: the owner's script does it."""
    run(
        as_role(shop.dsn, shop.owner),
        "create table public.visits (customer_id int, at timestamptz default now())",
        "insert into public.visits (customer_id) select generate_series(1, 10)",
        f"grant select, update, delete on public.visits to {shop.app}",
    )
    tables = TABLES + ",public.visits"
    refused = shop.cli("init", "--print-sql", "--tables", tables)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "public.visits has no replica identity (no primary key)" in refused.stderr
    assert "--replica-identity-full to have that in the printed SQL" in refused.stderr

    printed = shop.cli("init", "--print-sql", "--tables", tables, "--replica-identity-full")
    assert printed.returncode == 0, printed.stderr
    assert "alter table public.visits replica identity full;" in printed.stdout
    ran = shop.psql(shop.owner, printed.stdout)
    assert ran.returncode == 0, ran.stderr
    init = shop.cli("init", "--tables", tables)
    assert init.returncode == 0, init.stderr
    run(as_role(shop.dsn, shop.app), "update public.visits set at = now()",
        "delete from public.visits where customer_id = 1")  # fmt: skip
