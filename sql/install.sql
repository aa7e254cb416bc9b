-- pgml-sidecar: what the source database gets, schema version 2.
--
-- Plain SQL and plpgsql: no superuser, no extension. Run it as a role with CREATE on the
-- database (its owner, or the sidecar's role from role.sql), in one transaction:
--
--     psql -v ON_ERROR_STOP=1 --single-transaction -f sql/install.sql
--
-- or let `pgml-sidecar init` apply it. Running it again on the same version changes nothing
-- but the function bodies. Upgrades from older versions are sql/upgrade/<n>_to_<n+1>.sql.

select pg_advisory_xact_lock(hashtext('pgml-sidecar schema'));

do $guard$
declare
    installed text;
begin
    if to_regnamespace('pgml') is not null and to_regclass('pgml.settings') is null then
        raise exception 'schema pgml exists but was not created by pgml-sidecar'
            using errcode = 'duplicate_schema',
                  hint = 'PostgresML or another tool owns it: drop or rename it, or install'
                         ' pgml-sidecar in another database';
    end if;
    if to_regclass('pgml.settings') is not null then
        select value into installed from pgml.settings where name = 'schema_version';
        if installed is distinct from '2' then
            raise exception 'pgml-sidecar schema version % is installed, this is version 2',
                coalesce(installed, 'unknown')
                using errcode = 'object_not_in_prerequisite_state',
                      hint = 'pgml-sidecar init upgrades an older version; by hand, apply'
                             ' sql/upgrade/<n>_to_<n+1>.sql in order. A newer version needs'
                             ' the pgml-sidecar release that installed it';
        end if;
    end if;
end
$guard$;

create schema if not exists pgml;
comment on schema pgml is 'pgml-sidecar: training requests and predictions (sql/install.sql)';

create schema if not exists pgml_scores;
comment on schema pgml_scores is
    'pgml-sidecar: one table of written-back predictions per project, keyed like its relation';

create table if not exists pgml.settings (
    name text primary key,
    value text not null
);
comment on table pgml.settings is
    'pgml-sidecar settings: schema_version, endpoint_dsn (a libpq DSN or a foreign server name)';

insert into pgml.settings (name, value) values ('schema_version', '2')
on conflict (name) do nothing;

-- Version 1 databases get the cron column and the three named checks from
-- sql/upgrade/1_to_2.sql; keep the two in step.
create table if not exists pgml.training_requests (
    id bigint generated always as identity primary key,
    kind text not null default 'train',
    project_name text not null check (btrim(project_name) <> ''),
    task text,
    relation_name text,
    y_column_name text,
    algorithm text,
    hyperparams jsonb not null default '{}' check (jsonb_typeof(hyperparams) = 'object'),
    enabled boolean,
    requested_at timestamptz not null default now(),
    status text not null default 'pending'
        check (status in ('pending', 'running', 'done', 'failed')),
    error text,
    model_id bigint,
    finished_at timestamptz,
    cron text,
    constraint training_requests_kind_check
        check (kind in ('train', 'writeback', 'schedule', 'retrain_on_drift')),
    constraint training_requests_enabled_check
        check ((kind in ('writeback', 'retrain_on_drift')) = (enabled is not null)),
    constraint training_requests_cron_check check (kind = 'schedule' or cron is null)
);
alter table pgml.training_requests replica identity default;
comment on table pgml.training_requests is
    'pgml-sidecar requests (pgml.train, pgml.writeback, pgml.schedule, pgml.retrain_on_drift),'
    ' replicated to the sidecar, which sets status, error, model_id and finished_at';
comment on column pgml.training_requests.cron is
    'schedule requests: a 5-field cron expression, or NULL to clear the schedule';

-- Written by the sidecar (the drifts it records in its own registry); never published.
create table if not exists pgml.drift_events (
    id bigint generated always as identity primary key,
    project_name text not null,
    model_id bigint,
    detector text not null,
    feature text,
    statistic double precision not null,
    threshold double precision not null,
    detected_at timestamptz not null default now()
);
comment on table pgml.drift_events is
    'pgml-sidecar: drift its monitors detected in deployed models, written by the sidecar';

create or replace function pgml.train(
    project_name text,
    task text default null,
    relation_name text default null,
    y_column_name text default null,
    algorithm text default 'linear',
    hyperparams jsonb default '{}'
) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    request_id bigint;
begin
    if project_name is null or btrim(project_name) = '' then
        raise exception 'pgml.train needs a project name'
            using errcode = 'invalid_parameter_value';
    end if;
    if task is not null
            and task not in ('regression', 'classification', 'clustering', 'decomposition') then
        raise exception 'pgml.train: unknown task %', quote_literal(task)
            using errcode = 'invalid_parameter_value',
                  hint = 'task is one of regression, classification, clustering, decomposition,'
                         ' or NULL to retrain a known project';
    end if;
    if algorithm is null or btrim(algorithm) = '' then
        raise exception 'pgml.train needs an algorithm (default linear)'
            using errcode = 'invalid_parameter_value';
    end if;
    if hyperparams is null or jsonb_typeof(hyperparams) <> 'object' then
        raise exception 'pgml.train: hyperparams must be a JSON object, like ''{"alpha": 0.5}'''
            using errcode = 'invalid_parameter_value';
    end if;
    insert into pgml.training_requests
        (kind, project_name, task, relation_name, y_column_name, algorithm, hyperparams)
    values ('train', train.project_name, train.task, train.relation_name, train.y_column_name,
            train.algorithm, train.hyperparams)
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.train(text, text, text, text, text, jsonb) is
    'Ask the sidecar to train a model; returns the request id in pgml.training_requests';

create or replace function pgml.writeback(project_name text, enabled boolean default true)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    request_id bigint;
begin
    if project_name is null or btrim(project_name) = '' then
        raise exception 'pgml.writeback needs a project name'
            using errcode = 'invalid_parameter_value';
    end if;
    if enabled is null then
        raise exception 'pgml.writeback: enabled must be true or false'
            using errcode = 'invalid_parameter_value';
    end if;
    insert into pgml.training_requests (kind, project_name, enabled)
    values ('writeback', writeback.project_name, writeback.enabled)
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.writeback(text, boolean) is
    'Ask the sidecar to write (or stop writing) a project''s predictions to pgml_scores';

create or replace function pgml.schedule(project_name text, cron text)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    request_id bigint;
    fields text[];
begin
    if project_name is null or btrim(project_name) = '' then
        raise exception 'pgml.schedule needs a project name'
            using errcode = 'invalid_parameter_value';
    end if;
    if cron is not null then
        fields := array(select m[1] from regexp_matches(cron, '([^[:space:]]+)', 'g') as m);
        if cardinality(fields) <> 5 then
            raise exception 'pgml.schedule: cron % does not have 5 fields; write it like'
                            ' ''0 3 * * *'' (every day at 03:00)', quote_literal(cron)
                using errcode = 'invalid_parameter_value',
                      hint = 'the fields are minute, hour, day of month, month, day of week;'
                             ' NULL clears the schedule';
        end if;
    end if;
    insert into pgml.training_requests (kind, project_name, cron)
    values ('schedule', schedule.project_name, array_to_string(fields, ' '))
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.schedule(text, text) is
    'Ask the sidecar to retrain a project on a cron schedule (NULL clears it); returns the'
    ' request id in pgml.training_requests';

create or replace function pgml.retrain_on_drift(project_name text, enabled boolean default true)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    request_id bigint;
begin
    if project_name is null or btrim(project_name) = '' then
        raise exception 'pgml.retrain_on_drift needs a project name'
            using errcode = 'invalid_parameter_value';
    end if;
    if enabled is null then
        raise exception 'pgml.retrain_on_drift: enabled must be true or false'
            using errcode = 'invalid_parameter_value';
    end if;
    insert into pgml.training_requests (kind, project_name, enabled)
    values ('retrain_on_drift', retrain_on_drift.project_name, retrain_on_drift.enabled)
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.retrain_on_drift(text, boolean) is
    'Ask the sidecar to retrain (or stop retraining) a project when its model drifts;'
    ' returns the request id in pgml.training_requests';

create or replace function pgml.predict(project text, features float8[])
returns float8
language plpgsql
strict
set search_path = pg_catalog, pg_temp
as $$
declare
    link_schema text;
    dsn text;
    open_links text[];
    link constant text := 'pgml_sidecar';
    statement text;
    remote text;
    prediction float8;
begin
    select n.nspname into link_schema
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace
    where e.extname = 'dblink';
    if link_schema is null then
        raise exception 'pgml.predict needs the dblink extension in this database'
            using errcode = 'feature_not_supported',
                  hint = 'CREATE EXTENSION dblink; (available on RDS, Aurora, Cloud SQL and'
                         ' Azure) then point pgml.settings endpoint_dsn at the sidecar';
    end if;
    select value into dsn from pgml.settings where name = 'endpoint_dsn';
    if dsn is null or btrim(dsn) = '' then
        raise exception 'pgml.predict needs the sidecar''s SQL endpoint, and pgml.settings'
                        ' has no endpoint_dsn'
            using errcode = 'object_not_in_prerequisite_state',
                  hint = 'run pgml-sidecar init, or: INSERT INTO pgml.settings VALUES'
                         ' (''endpoint_dsn'', ''host=... port=6433 dbname=pgml user=pgml'')'
                         ' ON CONFLICT (name) DO UPDATE SET value = excluded.value';
    end if;

    -- The endpoint reads the features as an ARRAY[...] of numbers: float8 output is digits,
    -- signs and exponents only; the three special values and NULL are spelled out.
    select format('select pgml.predict(%L, array[%s]::float8[])', project,
                  coalesce(string_agg(case
                      when f is null then 'null'
                      when f in ('NaN', 'Infinity', '-Infinity') then format('%L::float8', f)
                      else f::text end, ', ' order by i), ''))
    into remote
    from unnest(features) with ordinality as u(f, i);

    -- One connection per session, opened on first use and reopened when endpoint_dsn changes
    -- or the connection broke (the sidecar restarted).
    execute format('select %I.dblink_get_connections()', link_schema) into open_links;
    if link = any(coalesce(open_links, '{}'))
            and current_setting('pgml_sidecar.predict_dsn', true) is distinct from dsn then
        execute format('select %I.dblink_disconnect(%L)', link_schema, link);
        open_links := null;
    end if;
    if not link = any(coalesce(open_links, '{}')) then
        execute format('select %I.dblink_connect(%L, %L)', link_schema, link, dsn);
        perform set_config('pgml_sidecar.predict_dsn', dsn, false);
    end if;
    statement := format('select * from %I.dblink(%L, %L) as t(prediction float8)',
                        link_schema, link, remote);
    begin
        execute statement into prediction;
    exception when connection_exception then
        execute format('select %I.dblink_disconnect(%L)', link_schema, link);
        execute format('select %I.dblink_connect(%L, %L)', link_schema, link, dsn);
        execute statement into prediction;
    end;
    return prediction;
end
$$;
comment on function pgml.predict(text, float8[]) is
    'Predict with a project''s deployed model, answered by the sidecar''s SQL endpoint'
    ' through dblink';
