-- pgml-sidecar: what the source database gets, schema version 3.
--
-- Plain SQL and plpgsql: no superuser, no extension. Run it as a role with CREATE on the
-- database (its owner, or the sidecar's role from role.sql), in one transaction:
--
--     psql -v ON_ERROR_STOP=1 --single-transaction -f sidecar/sql/install.sql
--
-- or let `pgml-sidecar init` apply it. Running it again on the same version changes nothing
-- but the function bodies. Upgrades from older versions are sidecar/sql/upgrade/<n>_to_<n+1>.sql.
--
-- Who may do what: requests are made only through the pgml.* functions, which run as the role
-- that installed this (SECURITY DEFINER) and stamp each request with the role that asked
-- (`requested_by`). pgml.train checks that role may SELECT every column of the relation; a
-- project belongs to the role that created it, and only it, a member of it, or a member of
-- pgml_admin may retrain it, write it back, schedule it or stop either.

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
        if installed is distinct from '3' then
            raise exception 'pgml-sidecar schema version % is installed, this is version 3',
                coalesce(installed, 'unknown')
                using errcode = 'object_not_in_prerequisite_state',
                      hint = 'pgml-sidecar init upgrades an older version; by hand, apply'
                             ' sidecar/sql/upgrade/<n>_to_<n+1>.sql in order. A newer version needs'
                             ' the pgml-sidecar release that installed it';
        end if;
    end if;
end
$guard$;

create schema if not exists pgml;
comment on schema pgml is 'pgml-sidecar: training requests and predictions (sidecar/sql/install.sql)';

create schema if not exists pgml_scores;
comment on schema pgml_scores is
    'pgml-sidecar: one table of written-back predictions per project, keyed like its relation';

create table if not exists pgml.settings (
    name text primary key,
    value text not null
);
comment on table pgml.settings is
    'pgml-sidecar settings: schema_version, endpoint_dsn (a libpq DSN or a foreign server name)';

insert into pgml.settings (name, value) values ('schema_version', '3')
on conflict (name) do nothing;

-- Older databases get cron (version 2), requested_by, time_limit, pgml.train's other arguments,
-- notice and strategy (version 3) and the named checks from sidecar/sql/upgrade/; keep them in step.
create table if not exists pgml.training_requests (
    id bigint generated always as identity primary key,
    kind text not null default 'train',
    project_name text check (btrim(project_name) <> ''),
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
    requested_by text not null default current_user,
    time_limit text,
    search text,
    search_params jsonb not null default '{}'
        constraint training_requests_search_params_check
        check (jsonb_typeof(search_params) = 'object'),
    search_args jsonb not null default '{}'
        constraint training_requests_search_args_check
        check (jsonb_typeof(search_args) = 'object'),
    test_size real,
    test_sampling text,
    automatic_deploy boolean,
    preprocess jsonb not null default '{}'
        constraint training_requests_preprocess_check
        check (jsonb_typeof(preprocess) = 'object'),
    notice text,
    strategy text,
    constraint training_requests_kind_check
        check (kind in ('train', 'train_joint', 'writeback', 'schedule', 'retrain_on_drift',
                        'deploy')),
    constraint training_requests_enabled_check
        check ((kind in ('writeback', 'retrain_on_drift')) = (enabled is not null)),
    constraint training_requests_cron_check check (kind = 'schedule' or cron is null),
    constraint training_requests_strategy_check check ((kind = 'deploy') = (strategy is not null)),
    constraint training_requests_project_check
        check (project_name is not null or (kind = 'deploy' and model_id is not null))
);
alter table pgml.training_requests replica identity default;
comment on table pgml.training_requests is
    'pgml-sidecar requests (pgml.train, pgml.writeback, pgml.schedule, pgml.retrain_on_drift),'
    ' replicated to the sidecar, which sets status, error, model_id and finished_at';
comment on column pgml.training_requests.cron is
    'schedule requests: a 5-field cron expression, or NULL to clear the schedule';
comment on column pgml.training_requests.requested_by is
    'the role that asked: the session''s role (after SET ROLE) when a pgml.* function made it';
comment on column pgml.training_requests.time_limit is
    'train requests: pgml.training_time_limit as the session had it (''10min''); NULL: the'
    ' sidecar''s training_time_limit, which is also the most a request gets';
comment on column pgml.training_requests.preprocess is
    'train requests: PostgresML''s preprocess, per column {"encode", "impute", "scale"}; {}: the'
    ' sidecar''s defaults';
comment on column pgml.training_requests.strategy is
    'deploy requests: how the model is chosen (best_score, most_recent, rollback,'
    ' best_recent_score), or specific for the model_id asked for (project_name NULL)';
comment on column pgml.training_requests.notice is
    'set by the sidecar: what a finished training wants known (columns it left out of the'
    ' features and why, a model no better than predicting the most frequent class or the mean)';

-- Only the pgml.* functions write requests; a grant made by mistake does not change that.
revoke insert, update, delete, truncate on pgml.training_requests from public;

create or replace function pgml.refuse_direct_requests() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not pg_has_role(current_user,
                       (select c.relowner from pg_class c where c.oid = tg_relid), 'usage') then
        raise exception 'permission denied for table %', tg_table_name
            using errcode = 'insufficient_privilege',
                  hint = 'request with pgml.train(), pgml.deploy(), pgml.writeback(),'
                         ' pgml.schedule() or pgml.retrain_on_drift(), which record who asks';
    end if;
    return new;
end
$$;
comment on function pgml.refuse_direct_requests() is
    'Trigger: only the owner of pgml.training_requests (the pgml.* functions) inserts requests';
do $trigger$
begin
    if not exists (select from pg_trigger
                   where tgrelid = 'pgml.training_requests'::regclass
                     and tgname = 'training_requests_by_functions_only') then
        create trigger training_requests_by_functions_only
            before insert on pgml.training_requests
            for each row execute function pgml.refuse_direct_requests();
    end if;
end
$trigger$;

-- Written by the sidecar (the drifts it records in its own registry); never published.
create table if not exists pgml.drift_events (
    id bigint generated always as identity primary key,
    project_name text not null,
    model_id bigint,
    detector text not null,
    feature text,
    statistic double precision not null,
    threshold double precision not null,
    detected_at timestamptz not null default now(),
    lsn pg_lsn,
    rows_since_deployment bigint
);
comment on table pgml.drift_events is
    'pgml-sidecar: drift its monitors detected in deployed models, written by the sidecar';
comment on column pgml.drift_events.lsn is
    'pgml-sidecar: the source commit (replication batch) that brought the row that set it off';
comment on column pgml.drift_events.rows_since_deployment is
    'pgml-sidecar: rows the detector had seen since the model was deployed (labelled rows, for'
    ' error drift) when it detected the drift';

-- Written by the sidecar (its own record of projects is in the mirror); never published.
create table if not exists pgml.projects (
    project_name text primary key,
    owner name,
    score_table name unique,
    scored_relation text,
    updated_at timestamptz not null default now()
);
comment on table pgml.projects is
    'pgml-sidecar: each project''s owner (NULL: made before version 3, pgml_admin only), its'
    ' pgml_scores table and the relation it scores; written by the sidecar';

-- Members of pgml_admin may change every project. The role is the cluster's, so it is made
-- once, by a role that may create roles; pgml-sidecar init --print-sql shows how otherwise.
do $admin$
begin
    if to_regrole('pgml_admin') is null then
        if exists (select from pg_roles
                   where rolname = current_user and (rolsuper or rolcreaterole)) then
            create role pgml_admin nologin;
            comment on role pgml_admin is
                'pgml-sidecar: its members may change every project (retrain, write back,'
                ' schedule), not only their own';
        else
            raise notice 'role pgml_admin does not exist and % may not create roles', current_user
                using hint = 'as a role with CREATEROLE: CREATE ROLE pgml_admin NOLOGIN;'
                             ' then GRANT pgml_admin TO the roles that administer projects';
        end if;
    end if;
end
$admin$;

-- The role a request is made for: the session's role as SET ROLE left it, not the owner of
-- the SECURITY DEFINER function asking (current_user there) nor the login (session_user).
create or replace function pgml.requesting_role() returns name
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(nullif(current_setting('role'), 'none'), session_user)::name
$$;
comment on function pgml.requesting_role() is
    'The role pgml.* requests are stamped with: the session''s current role after SET ROLE';

-- Raise 42501 unless the requester may SELECT every column of the relation the sidecar will
-- train on.
-- relation_name is resolved as the sidecar resolves it in the mirror (trainer/snapshots.py):
-- split at the last dot, one pair of double quotes taken off each part, exact names; a bare
-- name is looked for in public, main and pgml, and every one of those that exists is checked.
create or replace function pgml.check_relation(requester name, relation_name text) returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    parts text[] := regexp_match(relation_name, '^(.*)\.([^.]*)$');
    schema_part text := coalesce(parts[1], '');
    table_part text := coalesce(parts[2], relation_name);
    candidate record;
    who pg_roles%rowtype;
begin
    select * into who from pg_roles r where r.rolname = requester;
    if not found then
        raise exception 'role "%" does not exist', requester using errcode = 'undefined_object';
    end if;
    if length(schema_part) >= 2 and left(schema_part, 1) = '"' and right(schema_part, 1) = '"'
    then
        schema_part := replace(substr(schema_part, 2, length(schema_part) - 2), '""', '"');
    end if;
    if length(table_part) >= 2 and left(table_part, 1) = '"' and right(table_part, 1) = '"' then
        table_part := replace(substr(table_part, 2, length(table_part) - 2), '""', '"');
    end if;
    for candidate in
        select c.oid, c.relname, c.relowner, c.relrowsecurity, c.relforcerowsecurity,
               n.oid as nspoid, n.nspname
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relname = table_part
          and n.nspname = any (case when schema_part = '' then array['public', 'main', 'pgml']
                                    else array[schema_part] end)
    loop
        if not has_schema_privilege(who.oid, candidate.nspoid, 'usage') then
            raise exception 'permission denied for schema %', candidate.nspname
                using errcode = 'insufficient_privilege';
        end if;
        if exists (select from pg_attribute a
                   where a.attrelid = candidate.oid and a.attnum > 0 and not a.attisdropped
                     and not has_column_privilege(who.oid, candidate.oid, a.attnum, 'select'))
        then
            raise exception 'permission denied for table %', candidate.relname
                using errcode = 'insufficient_privilege',
                      hint = format('training reads every column: %s needs SELECT on all of'
                                    ' %I.%I', requester, candidate.nspname, candidate.relname);
        end if;
        if candidate.relrowsecurity and not (who.rolsuper or who.rolbypassrls
                or (pg_has_role(who.oid, candidate.relowner, 'usage')
                    and not candidate.relforcerowsecurity)) then
            raise exception 'permission denied for table %', candidate.relname
                using errcode = 'insufficient_privilege',
                      hint = 'row-level security is enabled on it, and the sidecar''s copy of'
                             ' it has every row';
        end if;
    end loop;
end
$$;
comment on function pgml.check_relation(name, text) is
    'Raise 42501 unless the role may SELECT every column of the relation (as the sidecar'
    ' resolves its name)';

-- Raise 42501 unless the requester may change the project: it owns it (or is a member of its
-- owner), or is a member of pgml_admin. A project pgml.projects does not know yet is the
-- sidecar's to judge (it is new, or made on the SQL endpoint).
create or replace function pgml.check_project(requester name, project_name text) returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    known pgml.projects%rowtype;
    who oid := to_regrole(quote_ident(requester));
begin
    select * into known from pgml.projects p where p.project_name = check_project.project_name;
    if not found then
        return;
    end if;
    if who is not null and (
            (to_regrole(quote_ident(known.owner)) is not null
             and pg_has_role(who, to_regrole(quote_ident(known.owner)), 'usage'))
            or (to_regrole('pgml_admin') is not null
                and pg_has_role(who, to_regrole('pgml_admin'), 'usage'))) then
        return;
    end if;
    raise exception 'must be owner of project %', project_name
        using errcode = 'insufficient_privilege',
              hint = case when known.owner is null
                     then 'it was made before pgml-sidecar recorded owners: only members of'
                          ' pgml_admin may change it'
                     else format('it belongs to role %s: only that role, its members and'
                                 ' members of pgml_admin may change it', known.owner) end;
end
$$;
comment on function pgml.check_project(name, text) is
    'Raise 42501 unless the role owns the project (or is a member of its owner or pgml_admin)';

revoke execute on function pgml.check_relation(name, text) from public;
revoke execute on function pgml.check_project(name, text) from public;

-- PostgresML's signature, positions and defaults (test_sampling's is the sidecar's, as on its
-- endpoint). Versions 1 and 2, and 3 before preprocess, took only the first six arguments.
do $six_arguments$
begin
    if to_regprocedure('pgml.train(text, text, text, text, text, jsonb)') is not null then
        drop function pgml.train(text, text, text, text, text, jsonb);
    end if;
end
$six_arguments$;
create or replace function pgml.request_training(
    kind text,
    labels text,
    project_name text,
    task text,
    relation_name text,
    algorithm text,
    hyperparams jsonb,
    search text,
    search_params jsonb,
    search_args jsonb,
    test_size real,
    test_sampling text,
    runtime text,
    automatic_deploy boolean,
    preprocess jsonb
) returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    requester name := pgml.requesting_role();
    request_id bigint;
    session_limit text := nullif(btrim(current_setting('pgml.training_time_limit', true)), '');
    limit_parts text[];
    limit_seconds numeric;
begin
    if project_name is null or btrim(project_name) = '' then
        raise exception 'pgml.train needs a project name'
            using errcode = 'invalid_parameter_value';
    end if;
    if task is not null
            and task not in ('regression', 'classification', 'clustering', 'cluster',
                             'decomposition') then
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
    if search is not null and search not in ('grid', 'random') then
        raise exception 'pgml.train: unknown search %', quote_literal(search)
            using errcode = 'invalid_parameter_value',
                  hint = 'search is grid, random, or NULL to train once';
    end if;
    if search_params is null or jsonb_typeof(search_params) <> 'object' then
        raise exception 'pgml.train: search_params must be a JSON object, like'
                        ' ''{"alpha": [0.1, 1]}'''
            using errcode = 'invalid_parameter_value';
    end if;
    if search_args is null or jsonb_typeof(search_args) <> 'object' then
        raise exception 'pgml.train: search_args must be a JSON object, like ''{"cv": 3}'''
            using errcode = 'invalid_parameter_value';
    end if;
    if test_size is null or not (test_size > 0 and test_size < 'Infinity'::real) then
        raise exception 'pgml.train: test_size must be a positive number, not %',
                        coalesce(test_size::text, 'NULL')
            using errcode = 'invalid_parameter_value',
                  hint = 'a fraction of the rows to hold out, such as 0.25, or a number of rows';
    end if;
    if test_sampling is null or test_sampling not in ('random', 'last', 'stratified') then
        raise exception 'pgml.train: unknown test_sampling %',
                        coalesce(quote_literal(test_sampling), 'NULL')
            using errcode = 'invalid_parameter_value',
                  hint = 'test_sampling is random, last or stratified';
    end if;
    if runtime is not null and runtime not in ('python', 'rust') then
        raise exception 'pgml.train: runtime % does not exist', quote_literal(runtime)
            using errcode = 'invalid_parameter_value',
                  hint = 'PostgresML''s runtimes are python and rust; pgml-sidecar serves both'
                         ' with python';
    end if;
    if automatic_deploy is null then
        raise exception 'pgml.train: automatic_deploy must be true or false'
            using errcode = 'invalid_parameter_value';
    end if;
    -- materialize_snapshot is accepted and changes nothing: every snapshot is a Parquet file.
    if preprocess is null or jsonb_typeof(preprocess) <> 'object' then
        raise exception 'pgml.train: preprocess must be a JSON object, like'
                        ' ''{"age": {"impute": "median"}}'''
            using errcode = 'invalid_parameter_value';
    end if;
    -- As PostgreSQL checks a setting counted in seconds ('10min', '2h', '90s', a number is s).
    if session_limit is not null then
        limit_parts := regexp_match(session_limit,
            '^([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)$');
        if limit_parts is null or limit_parts[2] not in ('', 'us', 'ms', 's', 'min', 'h', 'd')
        then
            raise exception 'invalid value for parameter "pgml.training_time_limit": "%"',
                            session_limit
                using errcode = 'invalid_parameter_value',
                      hint = 'Valid units for this parameter are "us", "ms", "s", "min", "h",'
                             ' and "d".';
        end if;
        begin
            limit_seconds := round(limit_parts[1]::numeric * case limit_parts[2]
                when 'us' then 0.000001 when 'ms' then 0.001 when 'min' then 60
                when 'h' then 3600 when 'd' then 86400 else 1 end);
            if limit_seconds = 0 and limit_parts[1]::numeric > 0 then
                limit_seconds := 1;  -- as PostgreSQL: a nonzero value never rounds to zero
            end if;
        exception when numeric_value_out_of_range then
            limit_seconds := null;  -- '1e999999': beyond any range
        end;
        if limit_seconds is null or limit_seconds not between 0 and 2147483647 then
            raise exception '% s is outside the valid range for parameter'
                            ' "pgml.training_time_limit" (0 s .. 2147483647 s)',
                            coalesce(limit_seconds::text, limit_parts[1])
                using errcode = 'invalid_parameter_value';
        end if;
    end if;
    perform pgml.check_project(requester, request_training.project_name);
    if request_training.relation_name is not null then
        perform pgml.check_relation(requester, request_training.relation_name);
    end if;
    insert into pgml.training_requests
        (kind, project_name, task, relation_name, y_column_name, algorithm, hyperparams,
         requested_by, time_limit, search, search_params, search_args, test_size,
         test_sampling, automatic_deploy, preprocess)
    values (request_training.kind, request_training.project_name, request_training.task,
            request_training.relation_name, request_training.labels, request_training.algorithm,
            request_training.hyperparams, requester, session_limit, request_training.search,
            request_training.search_params, request_training.search_args,
            request_training.test_size, request_training.test_sampling,
            request_training.automatic_deploy, request_training.preprocess)
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.request_training(text, text, text, text, text, text, jsonb, text,
                                          jsonb, jsonb, real, text, text, boolean, jsonb) is
    'Make the request of pgml.train and pgml.train_joint (labels: y_column_name as stored)';
revoke execute on function pgml.request_training(text, text, text, text, text, text, jsonb, text,
                                                 jsonb, jsonb, real, text, text, boolean, jsonb)
    from public;

create or replace function pgml.train(
    project_name text,
    task text default null,
    relation_name text default null,
    y_column_name text default null,
    algorithm text default 'linear',
    hyperparams jsonb default '{}',
    search text default null,
    search_params jsonb default '{}',
    search_args jsonb default '{}',
    test_size real default 0.25,
    test_sampling text default 'stratified',
    runtime text default null,
    automatic_deploy boolean default true,
    materialize_snapshot boolean default false,
    preprocess jsonb default '{}'
) returns bigint
language sql
security definer
set search_path = pg_catalog, pg_temp
as $$
    -- materialize_snapshot is accepted and changes nothing: every snapshot is a Parquet file.
    select pgml.request_training('train', y_column_name,
        project_name, task, relation_name, algorithm, hyperparams, search,
        search_params, search_args, test_size, test_sampling, runtime, automatic_deploy,
        preprocess)
$$;
comment on function pgml.train(text, text, text, text, text, jsonb, text, jsonb, jsonb, real, text,
                               text, boolean, boolean, jsonb) is
    'Ask the sidecar to train a model; returns the request id in pgml.training_requests';

create or replace function pgml.train_joint(
    project_name text,
    task text default null,
    relation_name text default null,
    y_column_name text[] default null,
    algorithm text default 'linear',
    hyperparams jsonb default '{}',
    search text default null,
    search_params jsonb default '{}',
    search_args jsonb default '{}',
    test_size real default 0.25,
    test_sampling text default 'stratified',
    runtime text default null,
    automatic_deploy boolean default true,
    materialize_snapshot boolean default false,
    preprocess jsonb default '{}'
) returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if y_column_name is not null and (cardinality(y_column_name) = 0
            or array_position(y_column_name, null) is not null) then
        raise exception 'pgml.train_joint needs the label columns, as'
                        ' ARRAY[''weight'', ''waist'', ''pulse'']'
            using errcode = 'invalid_parameter_value';
    end if;
    -- the labels travel as a JSON array of their names in y_column_name
    return pgml.request_training('train_joint', to_jsonb(y_column_name)::text,
        project_name, task, relation_name, algorithm, hyperparams, search,
        search_params, search_args, test_size, test_sampling, runtime, automatic_deploy,
        preprocess);
end
$$;
comment on function pgml.train_joint(text, text, text, text[], text, jsonb, text, jsonb, jsonb,
                                     real, text, text, boolean, boolean, jsonb) is
    'Ask the sidecar to train one model predicting several labels at once; returns the request'
    ' id in pgml.training_requests (kind train_joint, the labels a JSON array in y_column_name)';

create or replace function pgml.writeback(project_name text, enabled boolean default true)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    requester name := pgml.requesting_role();
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
    perform pgml.check_project(requester, writeback.project_name);
    insert into pgml.training_requests (kind, project_name, enabled, requested_by)
    values ('writeback', writeback.project_name, writeback.enabled, requester)
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.writeback(text, boolean) is
    'Ask the sidecar to write (or stop writing) a project''s predictions to pgml_scores';

create or replace function pgml.schedule(project_name text, cron text)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    requester name := pgml.requesting_role();
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
    perform pgml.check_project(requester, schedule.project_name);
    insert into pgml.training_requests (kind, project_name, cron, requested_by)
    values ('schedule', schedule.project_name, array_to_string(fields, ' '), requester)
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
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    requester name := pgml.requesting_role();
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
    perform pgml.check_project(requester, retrain_on_drift.project_name);
    insert into pgml.training_requests (kind, project_name, enabled, requested_by)
    values ('retrain_on_drift', retrain_on_drift.project_name, retrain_on_drift.enabled,
            requester)
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.retrain_on_drift(text, boolean) is
    'Ask the sidecar to retrain (or stop retraining) a project when its model drifts;'
    ' returns the request id in pgml.training_requests';

-- PostgresML's pgml.deploy, as a request: a project's model chosen by a strategy (and an
-- algorithm), or one model by its id. Like pgml.train it returns the request id; the sidecar
-- sets model_id to the deployed model when it is done.
create or replace function pgml.deploy(
    project_name text, strategy text, algorithm text default null
) returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    requester name := pgml.requesting_role();
    request_id bigint;
begin
    if project_name is null or btrim(project_name) = '' then
        raise exception 'pgml.deploy needs a project name, or a model id'
            using errcode = 'invalid_parameter_value';
    end if;
    if strategy is null or strategy not in ('best_score', 'best_fit', 'most_recent', 'rollback',
                                            'best_recent_score') then
        raise exception 'pgml.deploy: unknown strategy %', coalesce(quote_literal(strategy), 'NULL')
            using errcode = 'invalid_parameter_value',
                  hint = 'strategy is best_score, most_recent, rollback or best_recent_score';
    end if;
    if algorithm is not null and btrim(algorithm) = '' then
        raise exception 'pgml.deploy: algorithm is a name, or NULL for any'
            using errcode = 'invalid_parameter_value';
    end if;
    perform pgml.check_project(requester, deploy.project_name);
    insert into pgml.training_requests (kind, project_name, strategy, algorithm, requested_by)
    values ('deploy', deploy.project_name, deploy.strategy, deploy.algorithm, requester)
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.deploy(text, text, text) is
    'Ask the sidecar to deploy the model of a project a strategy picks (best_score,'
    ' most_recent, rollback, best_recent_score); returns the request id';

create or replace function pgml.deploy(model_id bigint)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    request_id bigint;
begin
    if model_id is null then
        raise exception 'pgml.deploy needs a model id' using errcode = 'invalid_parameter_value';
    end if;
    -- The source does not know which project a model belongs to: the sidecar checks that the
    -- role may change it when it carries the request out.
    insert into pgml.training_requests (kind, model_id, strategy, requested_by)
    values ('deploy', deploy.model_id, 'specific', pgml.requesting_role())
    returning id into request_id;
    return request_id;
end
$$;
comment on function pgml.deploy(bigint) is
    'Ask the sidecar to deploy one model by its id; returns the request id';

-- The endpoint's answer to one statement, through dblink: one connection per session, opened
-- on first use and reopened when endpoint_dsn changes, the connection broke (the sidecar
-- restarted) or the role changed (SET ROLE): a foreign server's user mapping is the current
-- role's, and a link opened with one role's endpoint user never answers another role.
create or replace function pgml.call_endpoint(caller text, remote text)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
-- SECURITY INVOKER on purpose: dblink connects with the calling role's user mapping.
declare
    link_schema text;
    dsn text;
    open_links text[];
    link constant text := 'pgml_sidecar';
    statement text;
    answer text;
begin
    select n.nspname into link_schema
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace
    where e.extname = 'dblink';
    if link_schema is null then
        raise exception '% needs the dblink extension in this database', caller
            using errcode = 'feature_not_supported',
                  hint = 'CREATE EXTENSION dblink; (available on RDS, Aurora, Cloud SQL and'
                         ' Azure) then point pgml.settings endpoint_dsn at the sidecar';
    end if;
    select value into dsn from pgml.settings where name = 'endpoint_dsn';
    if dsn is null or btrim(dsn) = '' then
        raise exception '% needs the sidecar''s SQL endpoint, and pgml.settings'
                        ' has no endpoint_dsn', caller
            using errcode = 'object_not_in_prerequisite_state',
                  hint = 'run pgml-sidecar init, or: INSERT INTO pgml.settings VALUES'
                         ' (''endpoint_dsn'', ''host=... port=6433 dbname=pgml user=pgml'')'
                         ' ON CONFLICT (name) DO UPDATE SET value = excluded.value';
    end if;
    execute format('select %I.dblink_get_connections()', link_schema) into open_links;
    if link = any(coalesce(open_links, '{}'))
            and (current_setting('pgml_sidecar.predict_dsn', true) is distinct from dsn
                 or current_setting('pgml_sidecar.predict_role', true)
                    is distinct from current_user::text) then
        execute format('select %I.dblink_disconnect(%L)', link_schema, link);
        open_links := null;
    end if;
    if not link = any(coalesce(open_links, '{}')) then
        execute format('select %I.dblink_connect(%L, %L)', link_schema, link, dsn);
        perform set_config('pgml_sidecar.predict_dsn', dsn, false);
        perform set_config('pgml_sidecar.predict_role', current_user::text, false);
    end if;
    statement := format('select * from %I.dblink(%L, %L) as t(answer text)',
                        link_schema, link, remote);
    begin
        execute statement into answer;
    exception when connection_exception then
        execute format('select %I.dblink_disconnect(%L)', link_schema, link);
        execute format('select %I.dblink_connect(%L, %L)', link_schema, link, dsn);
        execute statement into answer;
    end;
    return answer;
end
$$;
comment on function pgml.call_endpoint(text, text) is
    'The sidecar''s SQL endpoint''s answer to one statement, through dblink (for pgml.predict'
    ' and the other functions the endpoint answers)';

-- The endpoint reads the features as an ARRAY[...] of numbers: float8 output is digits, signs
-- and exponents only; the three special values and NULL are spelled out.
create or replace function pgml.endpoint_call(function_name text, project text,
                                              features float8[])
returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select format('select pgml.%s(%L, array[%s]::float8[])', function_name, project,
                  coalesce(string_agg(case
                      when f is null then 'null'
                      when f in ('NaN', 'Infinity', '-Infinity') then format('%L::float8', f)
                      else f::text end, ', ' order by i), ''))
    from unnest(features) with ordinality as u(f, i)
$$;
comment on function pgml.endpoint_call(text, text, float8[]) is
    'The statement that asks the endpoint for pgml.<function_name>(project, features)';

create or replace function pgml.predict(project text, features float8[])
returns float8
language sql
strict
set search_path = pg_catalog, pg_temp
as $$
    select pgml.call_endpoint('pgml.predict',
                              pgml.endpoint_call('predict', project, features))::float8
$$;
comment on function pgml.predict(text, float8[]) is
    'Predict with a project''s deployed model, answered by the sidecar''s SQL endpoint'
    ' through dblink';

create or replace function pgml.predict_proba(project text, features float8[])
returns float8[]
language sql
strict
set search_path = pg_catalog, pg_temp
as $$
    select pgml.call_endpoint('pgml.predict_proba',
                              pgml.endpoint_call('predict_proba', project, features))::float8[]
$$;
comment on function pgml.predict_proba(text, float8[]) is
    'The probability of each class by a project''s deployed classifier, answered by the'
    ' sidecar''s SQL endpoint through dblink';

create or replace function pgml.predict_joint(project text, features float8[])
returns float8[]
language sql
strict
set search_path = pg_catalog, pg_temp
as $$
    select pgml.call_endpoint('pgml.predict_joint',
                              pgml.endpoint_call('predict_joint', project, features))::float8[]
$$;
comment on function pgml.predict_joint(text, float8[]) is
    'Predict each label of a project''s deployed joint model, answered by the sidecar''s SQL'
    ' endpoint through dblink';

create or replace function pgml.decompose(project text, vector float8[])
returns float8[]
language sql
strict
set search_path = pg_catalog, pg_temp
as $$
    select pgml.call_endpoint('pgml.decompose',
                              pgml.endpoint_call('decompose', project, vector))::float8[]
$$;
comment on function pgml.decompose(text, float8[]) is
    'The components of a vector by a project''s deployed decomposition model, answered by the'
    ' sidecar''s SQL endpoint through dblink';

-- The registry, copied from the sidecar's (the mirror's) for SQL in production Postgres as in
-- PostgresML: `select ... from pgml.models join pgml.deployments ...`. Written by the sidecar
-- whenever its registry changes; never published; read-only to everyone else. A row shows only
-- to a role that may read it: a project's to its owner (or a member of it), to members of
-- pgml_admin, and to roles that may SELECT the relation it trains on; a model, deployment,
-- snapshot or drift event with its project. Row-level security filters them; the role that
-- writes them is the one with INSERT on the table (the sidecar's, see role.sql).
alter table pgml.projects add column if not exists id bigint unique;
alter table pgml.projects add column if not exists name text
    generated always as (project_name) stored;
alter table pgml.projects add column if not exists task text;
alter table pgml.projects add column if not exists relation_name text;
alter table pgml.projects add column if not exists created_at timestamptz;
comment on column pgml.projects.relation_name is
    'pgml-sidecar: the relation the project''s last training read (who may SELECT it may see'
    ' the project)';

create table if not exists pgml.snapshots (
    id bigint primary key,
    relation_name text not null,
    y_column_name text[],
    test_size real,
    test_sampling text,
    status text,
    num_rows bigint,
    columns jsonb,
    analysis jsonb,
    materialized boolean,
    created_at timestamptz,
    updated_at timestamptz
);
comment on table pgml.snapshots is
    'pgml-sidecar: the snapshots models were trained on, copied from the sidecar''s registry';

create table if not exists pgml.models (
    id bigint primary key,
    project_id bigint not null,
    snapshot_id bigint,
    num_features integer,
    algorithm text not null,
    runtime text,
    hyperparams jsonb,
    status text,
    metrics jsonb,
    search text,
    search_params jsonb,
    search_args jsonb,
    search_results jsonb,
    preprocess jsonb,
    created_at timestamptz,
    updated_at timestamptz
);
comment on table pgml.models is
    'pgml-sidecar: every model trained, with its metrics (fit_time and score_time in seconds,'
    ' inference_time: the median seconds of a one-row prediction), copied from the sidecar''s'
    ' registry';

create table if not exists pgml.deployments (
    id bigint primary key,
    project_id bigint not null,
    model_id bigint not null,
    strategy text,
    created_at timestamptz
);
comment on table pgml.deployments is
    'pgml-sidecar: each deployment of a model, copied from the sidecar''s registry';

-- Who may see a project: its owner (or a member), pgml_admin's members, and the roles that
-- may SELECT the relation it trains on. A relation name that does not resolve shows nothing.
create or replace function pgml.may_see_project(owner name, relation_name text) returns boolean
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    relation regclass;
begin
    if owner is not null and to_regrole(owner) is not null
            and pg_has_role(current_user, owner, 'member') then
        return true;
    end if;
    if to_regrole('pgml_admin') is not null
            and pg_has_role(current_user, 'pgml_admin', 'member') then
        return true;
    end if;
    if relation_name is null then
        return false;
    end if;
    begin
        relation := to_regclass(relation_name);
    exception when others then
        return false;  -- not a name PostgreSQL can parse
    end;
    return relation is not null and has_table_privilege(current_user, relation, 'select');
end
$$;
comment on function pgml.may_see_project(name, text) is
    'Whether the current role may see a project''s rows in the registry copy';

do $registry$
declare
    registry text;
    shown text;
begin
    foreach registry in array array['projects', 'snapshots', 'models', 'deployments',
                                    'drift_events'] loop
        shown := case registry
            when 'projects' then 'pgml.may_see_project(owner, relation_name)'
            when 'snapshots' then
                'exists (select from pgml.models m where m.snapshot_id = snapshots.id)'
            when 'drift_events' then
                'exists (select from pgml.projects p'
                ' where p.project_name = drift_events.project_name)'
            else format('exists (select from pgml.projects p where p.id = %I.project_id)',
                        registry)
        end;
        execute format('alter table pgml.%I enable row level security', registry);
        if exists (select from pg_policies where schemaname = 'pgml' and tablename = registry
                   and policyname = 'readers') then
            execute format('drop policy readers on pgml.%I', registry);
        end if;
        execute format('create policy readers on pgml.%I for select using (%s)', registry, shown);
        if exists (select from pg_policies where schemaname = 'pgml' and tablename = registry
                   and policyname = 'writer') then
            execute format('drop policy writer on pgml.%I', registry);
        end if;
        execute format('create policy writer on pgml.%I using'
                       ' (has_table_privilege(''pgml.%I'', ''insert''))'
                       ' with check (has_table_privilege(''pgml.%I'', ''insert''))',
                       registry, registry, registry);
        execute format('revoke insert, update, delete, truncate on pgml.%I from public', registry);
        execute format('grant select on pgml.%I to public', registry);
    end loop;
    -- PostgresML's views of them, on a server whose views can run as their caller (15 and
    -- later; earlier, a view would read as its owner, past the rows' security).
    if current_setting('server_version_num')::int >= 150000 then
        execute $view$
            create or replace view pgml.deployed_models with (security_invoker = true) as
            select p.id, p.name, p.task, m.algorithm, m.runtime, d.created_at as deployed_at,
                   m.id as model_id
            from pgml.projects p
            join (select distinct on (project_id) project_id, model_id, created_at
                  from pgml.deployments order by project_id, id desc) d
              on d.project_id = p.id
            join pgml.models m on m.id = d.model_id
        $view$;
        execute $view$
            create or replace view pgml.trained_models with (security_invoker = true) as
            select m.id, p.name, p.task, m.algorithm, m.runtime, s.relation_name,
                   s.y_column_name, s.test_sampling, s.test_size, m.metrics, m.created_at,
                   d.model_id is not null as deployed
            from pgml.projects p
            join pgml.models m on m.project_id = p.id
            left join pgml.snapshots s on s.id = m.snapshot_id
            left join (select distinct on (project_id) project_id, model_id
                       from pgml.deployments order by project_id, id desc) d
              on d.model_id = m.id
        $view$;
        grant select on pgml.deployed_models, pgml.trained_models to public;
    end if;
end
$registry$;
