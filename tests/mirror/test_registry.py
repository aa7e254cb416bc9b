"""The registry's storage: a mirror file from before the columns of drift positions, model
failures and current progress gets them when it is opened, its rows kept."""

from __future__ import annotations

from pathlib import Path

import duckdb

from mirror.registry import Registry

BEFORE = """
create schema pgml;
create table pgml.projects (id bigint primary key, name varchar not null unique,
    task varchar not null, created_at timestamptz not null default current_timestamp,
    updated_at timestamptz not null default current_timestamp);
create table pgml.models (id bigint primary key, project_id bigint not null,
    snapshot_id bigint not null, num_features integer, algorithm varchar not null,
    runtime varchar not null default 'python', hyperparams json,
    status varchar not null default 'successful', metrics json, search varchar,
    search_params json, search_args json, search_results json, preprocess json,
    path varchar not null, sha256 varchar not null,
    created_at timestamptz not null default current_timestamp,
    updated_at timestamptz not null default current_timestamp);
create sequence pgml.drift_events_id_seq start 2;
create sequence pgml.progress_id_seq start 2;
create table pgml.drift_events (
    id bigint primary key default nextval('pgml.drift_events_id_seq'), project_id bigint not null,
    project varchar, model_id bigint not null, detector varchar not null, feature varchar,
    statistic double not null, threshold double not null,
    detected_at timestamptz not null default current_timestamp);
create table pgml.progress (
    id bigint primary key default nextval('pgml.progress_id_seq'), model_id bigint not null,
    rows_learned bigint not null, metrics json, source_position json,
    recorded_at timestamptz not null default current_timestamp);
insert into pgml.projects (id, name, task) values (1, 'p', 'regression');
insert into pgml.models (id, project_id, snapshot_id, algorithm, path, sha256)
    values (1, 1, 1, 'online_linear', 'models/a.pickle', 'x');
insert into pgml.drift_events values (1, 1, 'p', 1, 'ddm', null, 0.3, 4.0, now());
insert into pgml.progress values (1, 1, 500, '{}', '{"mirror": "0/1A"}', now());
"""


def test_an_older_registry_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "mirror.duckdb"
    con = duckdb.connect(str(path))
    con.execute(BEFORE)
    con.close()
    con = duckdb.connect(str(path))
    try:
        registry = Registry(con)
        assert registry.learned_position(1) == 0x1A  # its progress rows were checkpoints
        registry.set_current_progress(1, 700, {"r2": 0.5}, {"mirror": "0/2B"})
        assert registry.learned_position(1) == 0x1A  # the current row is no checkpoint
        added = registry.add_drift_event(1, 1, "adwin", None, 0.4, 0.002, lsn="0/2B",
                                         rows_since_deployment=120)  # fmt: skip
        again = registry.add_drift_event(1, 1, "adwin", None, 0.4, 0.002, lsn="0/2B",
                                         rows_since_deployment=120)  # fmt: skip
        assert added is not None and again is None
        rows = con.execute(
            "select detector, lsn, rows_since_deployment from pgml.drift_events order by id"
        ).fetchall()
        assert rows == [("ddm", None, None), ("adwin", "0/2B", 120)]
        registry.mark_failed(1, "cannot be pickled: RecursionError")
        record = registry.model(1)
        assert record is not None and record.status == "failed"
        assert registry.failures() == {1: "cannot be pickled: RecursionError"}
        Registry(con)  # opening it again changes nothing
        assert con.execute("select count(*) from pgml.progress").fetchone() == (2,)
    finally:
        con.close()
