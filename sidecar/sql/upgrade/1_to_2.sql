-- pgml-sidecar: schema version 1 to 2, in the source database.
--
--     psql -v ON_ERROR_STOP=1 --single-transaction -f sidecar/sql/upgrade/1_to_2.sql
--
-- Run it as the owner of schema pgml (the role that installed it), in one transaction;
-- `pgml-sidecar init` applies it, then install.sql, by itself. Version 2 adds requests of kinds
-- `schedule` (pgml.schedule, with a new column cron) and `retrain_on_drift`
-- (pgml.retrain_on_drift), and the table pgml.drift_events the sidecar writes. Existing
-- requests are kept. Running it again, or on version 2, changes nothing. What it creates must
-- stay the same as what install.sql creates for version 2.

select pg_advisory_xact_lock(hashtext('pgml-sidecar schema'));

do $guard$
declare
    installed text;
begin
    if to_regclass('pgml.settings') is null then
        raise exception 'pgml-sidecar is not installed in this database: nothing to upgrade'
            using errcode = 'object_not_in_prerequisite_state',
                  hint = 'run sidecar/sql/install.sql, which creates the current version';
    end if;
    select value into installed from pgml.settings where name = 'schema_version';
    if installed is null or installed not in ('1', '2') then
        raise exception 'sidecar/sql/upgrade/1_to_2.sql upgrades schema version 1, and version % is'
                        ' installed', coalesce(installed, 'unknown')
            using errcode = 'object_not_in_prerequisite_state',
                  hint = 'apply sidecar/sql/upgrade/<n>_to_<n+1>.sql in order from the installed'
                         ' version; a newer version needs the pgml-sidecar release that'
                         ' installed it';
    end if;
end
$guard$;

-- Requests of two new kinds; cron for schedule requests. PostgreSQL named version 1's checks
-- training_requests_kind_check (kind) and training_requests_check (enabled exactly for
-- writeback requests): both are replaced, by the names install.sql gives them.
alter table pgml.training_requests add column if not exists cron text;
alter table pgml.training_requests
    drop constraint if exists training_requests_kind_check,
    drop constraint if exists training_requests_check,
    drop constraint if exists training_requests_enabled_check,
    drop constraint if exists training_requests_cron_check,
    add constraint training_requests_kind_check
        check (kind in ('train', 'writeback', 'schedule', 'retrain_on_drift')),
    add constraint training_requests_enabled_check
        check ((kind in ('writeback', 'retrain_on_drift')) = (enabled is not null)),
    add constraint training_requests_cron_check check (kind = 'schedule' or cron is null);
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

update pgml.settings set value = '2' where name = 'schema_version';
