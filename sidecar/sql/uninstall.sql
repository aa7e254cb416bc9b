-- pgml-sidecar: remove what install.sql created, with every written-back score table.
--
--     psql -v ON_ERROR_STOP=1 --single-transaction -f sidecar/sql/uninstall.sql
--
-- Run it as the owner of schema pgml (the role that installed it). Stop the sidecar first:
-- pgml.training_requests leaves the publication with its table. A schema pgml that
-- pgml-sidecar did not create (PostgresML's) is left alone, and so is role pgml_admin (the
-- cluster's, maybe used by other databases: DROP ROLE pgml_admin when none is).

select pg_advisory_xact_lock(hashtext('pgml-sidecar schema'));

do $uninstall$
begin
    if to_regnamespace('pgml') is not null and to_regclass('pgml.settings') is null then
        raise notice 'schema pgml was not created by pgml-sidecar: left in place';
    else
        drop schema if exists pgml cascade;
    end if;
end
$uninstall$;

drop schema if exists pgml_scores cascade;
