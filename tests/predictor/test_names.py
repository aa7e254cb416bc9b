"""Project names: two names with one table name are refused, a score table is never re-pointed,
and a registry from an older version that holds two such projects still starts and serves."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mirror.errors import TrainingError
from mirror.registry import NAME_BYTES, project_slug
from mirror.store import Mirror
from predictor import score_views
from predictor.server import EndpointSettings, SqlEndpoint
from sidecar import source_schema
from sidecar.daemon import Daemon, DaemonSettings
from tests.predictor.endpoint_client import connect
from tests.replicator.mirror_check import execute, wait_for
from tests.sidecar.test_daemon import CREATE, FILL, finished, one
from trainer.train import Trainer, artifact_home
from trainer.worker import FitWorker

ROWS = 2000
OTHERS = "create table others (id bigint primary key, age int not null, churned boolean)"
FILL_OTHERS = "insert into others select i, i % 50, i % 4 = 0 from generate_series(1, 500) i"
KEYED = (
    "create schema if not exists public",
    "create table public.accounts (id bigint primary key, age int, spend double, churned bool)",
    "insert into public.accounts select i, 18 + i % 60, (i % 97) * 1.5, i % 3 = 0"
    " from range(1, 501) t(i)",
)


def test_slugs_are_cut_where_postgresql_cuts_names() -> None:
    assert project_slug("Customer Churn!") == "customer_churn_"
    assert project_slug("a" * 100) == "a" * NAME_BYTES
    assert project_slug("Leak") == project_slug("LEAK") == project_slug("leak")


def test_the_endpoint_refuses_a_second_name_for_one_table(endpoint: SqlEndpoint) -> None:
    with connect(endpoint) as conn:
        conn.execute("select * from pgml.load_dataset('iris')")
        conn.execute("select * from pgml.train('Leak', 'classification', 'pgml.iris', 'target')")
        for name in ("LEAK", "leak"):
            with pytest.raises(psycopg.errors.DuplicateObject) as refused:
                conn.execute(
                    "select * from pgml.train(%s, 'regression', 'pgml.iris', 'sepal_length')",
                    (name,),
                )
            assert (
                f'project "{name}" would share its table name pgml_scores.leak with project'
                ' "Leak"' in str(refused.value)
            )
        # The first keeps working: it predicts and retrains; nothing of the refused is left.
        assert conn.execute(
            "select pgml.predict('Leak', array[5.1, 3.5, 1.4, 0.2])"
        ).fetchone() == (0.0,)
        conn.execute("select * from pgml.train('Leak', algorithm => 'random_forest')")
    registry = endpoint.trainer.registry
    assert [p.name for p in registry.projects()] == ["Leak"]
    assert len(registry.models(registry.projects()[0].id)) == 2


def test_names_past_the_identifier_limit_collide_too(mirror: Mirror, trainer: Trainer) -> None:
    execute_duckdb(mirror, *KEYED)
    first, second = "p" * NAME_BYTES + "1", "p" * NAME_BYTES + "2"
    trainer.train(first, task="regression", relation="public.accounts", y="spend")
    with pytest.raises(TrainingError, match="would share its table name") as refused:
        trainer.train(second, task="regression", relation="public.accounts", y="spend")
    assert refused.value.sqlstate == "42710"
    assert [p.name for p in trainer.registry.projects()] == [first]
    snapshots = list((trainer.home / "snapshots").iterdir())
    assert len(snapshots) == 1  # refused before any snapshot was taken


def test_registering_checks_again(mirror: Mirror, trainer: Trainer) -> None:
    """Two trainings racing past the first check: the registry refuses the second."""
    trainer.registry.add_project("Race", "regression")
    with pytest.raises(TrainingError, match="would share its table name"):
        trainer.registry.add_project("RACE", "regression")


def execute_duckdb(mirror: Mirror, *statements: str) -> None:
    cursor = mirror.con.cursor()
    try:
        for statement in statements:
            cursor.execute(statement)
    finally:
        cursor.close()


def older_registry(mirror: Mirror, trainer: Trainer) -> tuple[int, int]:
    """Projects "Leak" and "LEAK" both deployed, as older versions let a registry hold them;
    their model ids."""
    leak = trainer.train("Leak", task="classification", relation="public.accounts", y="churned")
    other = trainer.train("Other", task="regression", relation="public.accounts", y="spend")
    execute_duckdb(mirror, "update pgml.projects set name = 'LEAK' where name = 'Other'")
    return leak.model_id, other.model_id


def test_an_older_registry_with_two_such_projects_still_serves(
    mirror: Mirror, trainer: Trainer
) -> None:
    execute_duckdb(mirror, *KEYED)
    leak_model, _ = older_registry(mirror, trainer)
    served = SqlEndpoint(EndpointSettings(port=0), mirror.con, trainer)  # refreshes the views
    served.start()
    try:
        with connect(served) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.execute("select pgml.predict('Leak', array[20, 3.0])").fetchone()
        cursor = mirror.con.cursor()
        rows = cursor.execute(
            "select model_id, count(*) from pgml_scores.leak group by model_id"
        ).fetchall()
        cursor.close()
        assert rows == [(leak_model, 500)]  # the first project's view, no error
    finally:
        served.stop()


def test_a_view_that_cannot_be_built_is_skipped(mirror: Mirror, trainer: Trainer) -> None:
    execute_duckdb(mirror, *KEYED)
    trainer.train("Good", task="regression", relation="public.accounts", y="spend")
    broken = trainer.train("Broken", task="classification", relation="public.accounts", y="churned")
    record = trainer.registry.model(broken.model_id)
    assert record is not None
    (trainer.home / record.path).unlink()  # its model file is gone
    SqlEndpoint(EndpointSettings(port=0), mirror.con, trainer)  # the endpoint still starts
    assert score_views.refresh(mirror.con, trainer) == ["pgml_scores.good"]
    execute_duckdb(mirror, "alter table public.accounts drop column age")  # Good's view breaks
    assert score_views.refresh(mirror.con, trainer) == []
    cursor = mirror.con.cursor()
    views = cursor.execute(
        "select view_name from duckdb_views() where schema_name = 'pgml_scores'"
    ).fetchall()
    cursor.close()
    assert views == []  # no stale view left to predict with a model no longer deployed


# -- write-back from the source -----------------------------------------------------------------


def start_daemon(source_dsn: str, mirror_path: Path) -> Daemon:
    running = Daemon(
        DaemonSettings(
            source_dsn=source_dsn,
            mirror_path=mirror_path,
            tables=["public.accounts", "public.others"],
            port=0,
            metrics_port=0,
        )
    )
    running.start()
    return running


@pytest.fixture
def source(source_dsn: str) -> str:
    execute(source_dsn, CREATE, FILL.format(lo=1, hi=ROWS), OTHERS, FILL_OTHERS)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        source_schema.install(conn)
    return source_dsn


@pytest.fixture
def daemon(source: str, mirror_path: Path) -> Iterator[Daemon]:
    running = start_daemon(source, mirror_path)
    try:
        yield running
    finally:
        running.stop()


def train(dsn: str, call: str) -> tuple[str, str | None, int | None]:
    return finished(dsn, one(dsn, f"select pgml.train({call})"))


def scored(dsn: str, table: str) -> int | None:
    """Rows in pgml_scores.<table> of the source, None while it does not exist."""
    if one(dsn, "select to_regclass(%s)", f"pgml_scores.{table}") is None:
        return None
    return int(one(dsn, f"select count(*) from pgml_scores.{table}"))


def write_back(dsn: str, project: str) -> tuple[str, str | None, int | None]:
    return finished(dsn, one(dsn, "select pgml.writeback(%s)", project))


def test_the_source_refuses_a_second_name_for_one_table(daemon: Daemon, source: str) -> None:
    assert train(source, "'Leak', 'classification', 'public.accounts', 'churned'")[0] == "done"
    status, error, _ = train(source, "'LEAK', 'regression', 'public.accounts', 'spend'")
    assert status == "failed"
    assert error is not None and "would share its table name pgml_scores.leak" in error
    assert write_back(source, "Leak")[:2] == ("done", None)
    wait_for(lambda: one(source, "select count(*) from pgml_scores.leak") == ROWS,
             timeout=60, what="the backfill")  # fmt: skip
    status, error, _ = write_back(source, "LEAK")
    assert status == "failed" and error is not None
    assert [p.name for p in daemon.trainer.registry.projects()] == ["Leak"]


def test_a_score_table_is_never_pointed_at_another_relation(daemon: Daemon, source: str) -> None:
    assert train(source, "'Churn', 'classification', 'public.accounts', 'churned'")[0] == "done"
    assert write_back(source, "Churn")[:2] == ("done", None)
    count = "select count(*) from pgml_scores.churn"
    wait_for(lambda: one(source, count) == ROWS, timeout=60, what="the backfill")
    # The project is trained again on another relation, and that model deployed.
    status, _, model_id = train(
        source, "'Churn', relation_name => 'public.others', y_column_name => 'churned'"
    )
    assert status == "done" and model_id is not None
    daemon.trainer.deploy(model_id=model_id)
    status, error, _ = write_back(source, "Churn")
    assert status == "failed" and error is not None
    assert "holds scores of public.accounts" in error and "drop pgml_scores.churn" in error
    assert one(source, count) == ROWS  # still the scores of public.accounts, untouched
    assert one(source, "select count(*) from pgml_scores.churn where id > 500") == ROWS - 500
    # Dropping the table lets the new relation be written back.
    execute(source, "drop table pgml_scores.churn")
    assert write_back(source, "Churn")[:2] == ("done", None)
    wait_for(lambda: one(source, count) == 500, timeout=60, what="the new relation's scores")


def test_a_table_the_sidecar_did_not_create_is_never_written(daemon: Daemon, source: str) -> None:
    mallory = f"mallory_{secrets.token_hex(4)}"
    execute(
        source,
        f"create role {mallory}",
        f"grant usage, create on schema pgml_scores to {mallory}",
        f"set role {mallory}",
        "create table pgml_scores.fake (id bigint primary key, prediction double precision,"
        " model_id bigint not null, scored_at timestamptz not null default now())",
        "insert into pgml_scores.fake values (-1, 42, 42)",
        "reset role",
    )
    assert train(source, "'Fake', 'classification', 'public.accounts', 'churned'")[0] == "done"
    status, error, _ = write_back(source, "Fake")
    assert status == "failed" and error is not None
    assert "pgml_scores.fake in the source is not a table the sidecar created" in error
    assert one(source, "select count(*) from pgml_scores.fake") == 1


def test_an_unmarked_table_is_used_only_if_it_fits(daemon: Daemon, source: str) -> None:
    # A table an older version created (the sidecar's role, no mark) with the right columns
    # is taken over; one with other columns is refused and kept as it is.
    execute(
        source,
        "create table pgml_scores.old (id bigint primary key, prediction double precision,"
        " model_id bigint not null, scored_at timestamptz not null default now())",
        "create table pgml_scores.odd (id text primary key, prediction double precision,"
        " model_id bigint not null, scored_at timestamptz not null default now())",
        "insert into pgml_scores.odd values ('x', 1, 1)",
    )
    assert train(source, "'Old', 'classification', 'public.accounts', 'churned'")[0] == "done"
    assert train(source, "'Odd', 'classification', 'public.accounts', 'churned'")[0] == "done"
    assert write_back(source, "Old")[:2] == ("done", None)
    wait_for(lambda: one(source, "select count(*) from pgml_scores.old") == ROWS, timeout=60,
             what="the backfill")  # fmt: skip
    mark = one(source, "select obj_description('pgml_scores.old'::regclass, 'pg_class')")
    assert '"project": "Old"' in mark and '"relation": "public.accounts"' in mark
    status, error, _ = write_back(source, "Odd")
    assert status == "failed" and error is not None and "has the columns (id text" in error
    assert one(source, "select count(*) from pgml_scores.odd") == 1


def mirrored_rows(daemon: Daemon) -> int:
    cursor = daemon.mirror.con.cursor()
    try:
        row = cursor.execute("select count(*) from public.accounts").fetchone()
    except Exception:
        return 0  # not copied yet
    finally:
        cursor.close()
    return int(row[0]) if row else 0


def test_an_older_registry_with_two_such_projects_still_runs(
    source: str, mirror_path: Path, fit_worker: FitWorker
) -> None:
    daemon = start_daemon(source, mirror_path)
    try:
        wait_for(lambda: mirrored_rows(daemon) == ROWS, timeout=60, what="the initial copy")
    finally:
        daemon.stop()
    mirror = Mirror(mirror_path)
    trainer = Trainer(mirror.con, artifact_home(mirror_path), worker=fit_worker)
    try:
        leak_model, _ = older_registry(mirror, trainer)
        cursor = mirror.con.cursor()
        cursor.execute("insert into _pgml_sidecar.writebacks values ('Leak', true), ('LEAK', true)")
        cursor.close()
    finally:
        trainer.close()
        mirror.close()
    daemon = start_daemon(source, mirror_path)  # starts: no view or table error stops it
    try:
        wait_for(lambda: scored(source, "leak") == ROWS, timeout=60,
                 what="the first project's scores")  # fmt: skip
        assert one(source, "select array_agg(distinct model_id) from pgml_scores.leak") == [
            leak_model
        ]
        status, error, _ = write_back(source, "LEAK")
        assert status == "failed" and error is not None
        assert "its table name pgml_scores.leak belongs to project 'Leak'" in error
        assert daemon.health()["status"] == "ok"
    finally:
        daemon.stop()
