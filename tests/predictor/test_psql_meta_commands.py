"""psql's meta-commands (``\\dt``, ``\\d table``, ``\\dn``, ``\\df`` ...) against the endpoint,
for two users whose source roles may read different tables, checked by what psql prints.

A real source (``app`` may SELECT every table, ``analyst`` customers and two columns of people,
not salaries), the tables mirrored by the replicator, each user with a workspace of its own.
Each user's catalog shows what its role may read and its own workspace, nothing else.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirror.store import Mirror
from predictor.server import EndpointSettings, SqlEndpoint
from tests.predictor.endpoint_client import psql
from tests.replicator.mirror_check import catch_up
from tests.source_roles import MakeRole, as_role, make_role, run
from trainer.train import Trainer
from trainer.worker import FitWorker

__all__ = ["make_role"]  # the fixture, used by name


@dataclass
class Served:
    pg_bin: Path
    endpoint: SqlEndpoint
    app: str
    analyst: str


@pytest.fixture
def served(
    pg_bin: Path, source_dsn: str, mirror_path: Path, make_role: MakeRole, fit_worker: FitWorker
) -> Iterator[Served]:
    owner, sidecar = make_role("owner"), make_role("sidecar", "replication")
    app, analyst = make_role("app"), make_role("analyst")
    run(
        as_role(source_dsn, "postgres"),
        f"grant create on schema public to {owner}",
    )
    run(
        as_role(source_dsn, owner),
        "create table public.customers (id int primary key, name text not null,"
        " spend numeric(10,2))",
        "insert into public.customers values (1, 'ann', 10.5), (2, 'bob', 20)",
        "create table public.salaries (id int primary key, salary int)",
        "insert into public.salaries values (1, 50000)",
        "create table public.people (id int primary key, name text, ssn text)",
        "insert into public.people values (1, 'ann', '123-45-6789')",
        f"grant select on public.customers, public.salaries, public.people to {sidecar}, {app}",
        f"grant select on public.customers to {analyst}",
        f"grant select (id, name) on public.people to {analyst}",
    )
    catch_up(source_dsn, mirror_path, ["public.customers", "public.salaries", "public.people"])
    mirror = Mirror(mirror_path)
    trainer = Trainer(mirror.con, mirror_path.parent / "artifacts", worker=fit_worker)
    endpoint = SqlEndpoint(
        EndpointSettings(port=0), mirror.con, trainer, source_dsn=as_role(source_dsn, sidecar)
    )
    mirror.lock_down(allowed_directories=[trainer.home])
    endpoint.start()
    try:
        state = Served(pg_bin, endpoint, app, analyst)
        psql(pg_bin, endpoint, "create table app_notes as select 1 as n;\n"
             "create view app_pay as select id, salary from salaries;\n", user=app)  # fmt: skip
        psql(pg_bin, endpoint, "create view analyst_names as select id, name from people;\n",
             user=analyst)  # fmt: skip
        yield state
    finally:
        endpoint.stop()
        trainer.close()
        mirror.close()


def meta(served: Served, user: str, command: str, *, found: bool = True) -> str:
    """What psql prints for ``command`` (aligned, as a person sees it); no query may fail, and
    psql finds what it describes unless ``found`` is False."""
    done = subprocess.run(
        [str(served.pg_bin / "psql"), "-X", "-P", "pager=off", "-h", "127.0.0.1",
         "-p", str(served.endpoint.port), "-U", user, "-d", "pgml", "-c", command],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == (0 if found else 1) and "ERROR" not in done.stderr, done.stderr
    return done.stdout + done.stderr


def rows(text: str) -> list[list[str]]:
    """The cells of each row of an aligned psql table."""
    return [[c.strip() for c in line.split("|")] for line in text.splitlines() if "|" in line]


def test_dt_and_dv_list_what_each_user_may_read_and_its_own(served: Served) -> None:
    app, analyst = served.app, served.analyst
    assert [r[:4] for r in rows(meta(served, app, "\\dt"))[1:]] == [
        ["public", "app_notes", "table", app],
        ["public", "customers", "table", "pgml_sidecar"],
        ["public", "people", "table", "pgml_sidecar"],
        ["public", "salaries", "table", "pgml_sidecar"],
    ]
    assert [r[:3] for r in rows(meta(served, analyst, "\\dt"))[1:]] == [
        ["public", "customers", "table"],
        ["public", "people", "table"],
    ]
    assert [r[:4] for r in rows(meta(served, app, "\\dv"))[1:]] == [
        ["public", "app_pay", "view", app]
    ]
    assert [r[:4] for r in rows(meta(served, analyst, "\\dv"))[1:]] == [
        ["public", "analyst_names", "view", analyst]
    ]
    everything = [r[1] for r in rows(meta(served, analyst, "\\d"))[1:]]
    assert everything == ["analyst_names", "customers", "people"]
    registry = [r[1] for r in rows(meta(served, analyst, "\\dt pgml.*"))[1:]]
    assert "models" in registry and "projects" in registry


def test_d_table_shows_columns_types_nullability_and_primary_key(served: Served) -> None:
    shown = meta(served, served.app, "\\d salaries")
    assert 'Table "public.salaries"' in shown
    assert rows(shown)[1:] == [
        ["id", "integer", "", "not null", ""],
        ["salary", "integer", "", "", ""],
    ]
    assert '"salaries_pkey" PRIMARY KEY, art (id)' in shown
    customers = rows(meta(served, served.analyst, "\\d customers"))
    assert customers[1:] == [  # the mirror keeps the source's key, not its other NOT NULLs
        ["id", "integer", "", "not null", ""],
        ["name", "text", "", "", ""],
        ["spend", "numeric(10,2)", "", "", ""],
    ]
    verbose = meta(served, served.app, "\\d+ customers")
    assert "Storage" in verbose and "customers_pkey" in verbose


def test_d_shows_only_the_columns_a_role_may_read(served: Served) -> None:
    shown = meta(served, served.analyst, "\\d people")
    assert [r[0] for r in rows(shown)[1:]] == ["id", "name"]
    assert "ssn" not in shown and "people_pkey" not in shown  # the key would name columns
    assert [r[0] for r in rows(meta(served, served.app, "\\d people"))[1:]] == [
        "id", "name", "ssn",
    ]  # fmt: skip


def test_d_of_a_workspace_view_and_its_definition(served: Served) -> None:
    shown = meta(served, served.analyst, "\\d+ analyst_names")
    assert 'View "public.analyst_names"' in shown
    assert [r[:2] for r in rows(shown)[1:]] == [["id", "integer"], ["name", "text"]]
    assert "View definition:" in shown and "FROM people" in shown


def test_hidden_relations_are_not_found(served: Served) -> None:
    for command in ("\\d salaries", "\\d app_pay", "\\d app_notes", "\\d+ app_pay"):
        shown = meta(served, served.analyst, command, found=False)
        assert "Did not find any relation named" in shown, (command, shown)
    shown = meta(served, served.app, "\\d analyst_names", found=False)
    assert "Did not find any relation named" in shown


def test_dn_df_l_du(served: Served) -> None:
    schemas = [r[0] for r in rows(meta(served, served.analyst, "\\dn"))[1:]]
    assert schemas == ["pgml", "pgml_scores", "public"]
    functions = rows(meta(served, served.analyst, "\\df pgml.*"))
    assert ["pgml", "predict", "real", "project_name text, features real[]", "func"] in functions
    train = [r for r in functions if r[1] == "train"]
    assert train[0][2] == "TABLE(project text, task text, algorithm text, deployed boolean)"
    assert train[0][3].startswith("project_name text, task text DEFAULT NULL::text,")
    assert ["pgml", "sum", "real[]", "real[]", "agg"] in functions
    databases = rows(meta(served, served.analyst, "\\l"))
    assert len(databases) == 2 and databases[1][1:3] == ["pgml_sidecar", "UTF8"]
    roles = [r[0] for r in rows(meta(served, served.analyst, "\\du"))[1:]]
    assert roles == [served.analyst, "pgml_sidecar"]  # never the other users


def test_the_catalog_queried_by_hand_hides_what_psql_hides(served: Served) -> None:
    analyst, app = served.analyst, served.app

    def one_column(user: str, sql: str) -> list[str]:
        return psql(served.pg_bin, served.endpoint, sql + ";\n", user=user).stdout.splitlines()

    names = one_column(analyst, "select relname from pg_class order by 1")
    for hidden in ("salaries", "salaries_pkey", "app_pay", "app_notes", "people_pkey"):
        assert hidden not in names
    assert "customers" in names and "analyst_names" in names
    tables = one_column(analyst, "select table_name from information_schema.tables")
    assert "salaries" not in tables and "app_pay" not in tables and "customers" in tables
    columns = one_column(
        analyst, "select table_name || '.' || column_name from information_schema.columns"
    )
    assert "people.ssn" not in columns and "people.name" in columns
    attributes = one_column(analyst, "select attname from pg_attribute")
    assert "ssn" not in attributes and "salary" not in attributes
    assert one_column(analyst, "select current_user, session_user, user") == [
        f"{analyst}|{analyst}|{analyst}"
    ]
    # oids the app user sees describe nothing to the analyst
    view, key = one_column(
        app,
        "select (select oid from pg_class where relname = 'app_pay'),"
        " (select oid from pg_class where relname = 'salaries_pkey')",
    )[0].split("|")
    assert one_column(app, f"select pg_get_viewdef({view}) like '%salaries%'") == ["t"]
    assert one_column(
        analyst,
        f"select pg_get_viewdef({view}) is null, pg_get_indexdef({key}) is null,"
        f" pg_get_constraintdef({key}) is null, pg_relation_size('public.salaries'),"
        f" pg_table_is_visible({view})",
    ) == ["t|t|t|0|f"]
    # nor may a client name the catalog's implementation or pass a scope of its own
    for sql in (
        "select * from _pgml_catalog.pg_class('{}')",
        "select * from _pgml_catalog.all_relations",
        'select * from pg_class(\'{"relations": [["public", "salaries"]]}\')',
    ):
        done = psql(served.pg_bin, served.endpoint, sql + ";\n", user=analyst, check=False)
        assert done.returncode != 0 and "ERROR" in done.stderr, sql
    forged = '{"user": "x", "relations": [["public", "salaries"]]}'
    sizes = one_column(analyst, f"select pg_relation_size('public.salaries', '{forged}')")
    assert sizes == ["0"]
