-- pgml-sidecar: a least-privilege role for the sidecar, in the database it mirrors.
--
--     psql -d shop -v role=pgml_sidecar -v tables=public.customers,public.orders -f sidecar/sql/role.sql
--
-- Run it as a superuser, or the platform's admin user (RDS/Aurora master user, Cloud SQL
-- cloudsqlsuperuser, Azure azure_pg_admin). Variables:
--   role      the role to create or update (required)
--   password  its password (optional; `\password <role>` in psql keeps it out of the logs)
--   tables    comma-separated tables to mirror, schema-qualified (optional; SELECT on each)
-- Running it again changes nothing that is already in place. Run it after install.sql when
-- the database owner installs the pgml schema, so the grants on it are made too. Where the
-- sidecar's role has REPLICATION and nothing else, `pgml-sidecar init --print-sql` prints the
-- same grants (without CREATE on the database) for the tables' owner to run instead.

\set ON_ERROR_STOP on

\if :{?role}
\else
do $$ begin
    raise exception 'sidecar/sql/role.sql needs -v role=<name>';
end $$;
\endif

-- LOGIN, and REPLICATION for the slot (RDS and Aurora: membership in rds_replication).
select format('create role %I login', :'role')
where not exists (select from pg_roles where rolname = :'role') \gexec

\if :{?password}
select format('alter role %I password %L', :'role', :'password') \gexec
\endif

select case
    when exists (select from pg_roles where rolname = 'rds_replication')
        then format('grant rds_replication to %I', :'role')
    else format('alter role %I replication', :'role')
end \gexec

-- CREATE on the database: to create the publication, and schemas pgml and pgml_scores when
-- the sidecar installs them itself.
select format('grant connect, create on database %I to %I', current_database(), :'role') \gexec

-- SELECT on the tables to mirror (the initial copy reads them).
\if :{?tables}
select distinct format('grant usage on schema %I to %I', c.relnamespace::regnamespace, :'role')
from unnest(string_to_array(:'tables', ',')) as t(name)
join pg_class c on c.oid = btrim(t.name)::regclass \gexec

select format('grant select on table %s to %I', btrim(t.name)::regclass, :'role')
from unnest(string_to_array(:'tables', ',')) as t(name) \gexec
\endif

-- Schemas pgml and pgml_scores installed by another role: the sidecar reads requests and
-- sets their outcome (never who asked), writes settings, drifts and projects, and creates its
-- score tables in pgml_scores.
select format('grant usage on schema pgml to %I', :'role')
where to_regnamespace('pgml') is not null \gexec

select format('grant select, update (status, error, model_id, finished_at, notice)'
              ' on table pgml.training_requests to %I', :'role')
where to_regclass('pgml.training_requests') is not null \gexec

select format('grant select, insert, update, delete on table pgml.projects to %I', :'role')
where to_regclass('pgml.projects') is not null \gexec

select format('grant select, insert, update on table pgml.settings to %I', :'role')
where to_regclass('pgml.settings') is not null \gexec

select format('grant select, insert on table pgml.drift_events to %I', :'role')
where to_regclass('pgml.drift_events') is not null \gexec

select format('grant select, insert, update, delete on table pgml.%I to %I', t, :'role')
from unnest(array['snapshots', 'models', 'deployments']) t
where to_regclass('pgml.' || t) is not null \gexec

select format('grant usage, create on schema pgml_scores to %I', :'role')
where to_regnamespace('pgml_scores') is not null \gexec
