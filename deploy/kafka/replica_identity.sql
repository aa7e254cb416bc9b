-- deploy/kafka/replica_identity.sql: run by up.sh through psql with -v include=LIST (the
-- connector's table.include.list: comma-separated regular expressions over schema.table,
-- matched whole and case-insensitively, as Debezium matches them).
--
-- Prints one line per table that the connector's publication would make refuse the
-- application's UPDATE and DELETE ("cannot update table ... because it does not have a
-- replica identity and publishes updates"): a plain table or leaf partition without a
-- primary key, with REPLICA IDENTITY NOTHING, or whose REPLICA IDENTITY USING INDEX index
-- was dropped. A partition's own identity counts, not its parent's. Fields, separated by
-- the field separator psql is given: schema.table, its quoted name, why, and the
-- partitioned table it belongs to (empty for a plain table). The same rules as
-- replicator/source.py (_LEAVES_WITHOUT_IDENTITY); tests/replicator/test_replica_identity.py
-- holds both to what PostgreSQL refuses.
with named as (
    select c.oid
    from pg_class c
    join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p')
      and exists (
          select from unnest(string_to_array(:'include', ',')) as p(pattern)
          where n.nspname || '.' || c.relname ~* ('^(?:' || btrim(p.pattern) || ')$'))
), leaf as (
    select oid as relid from named
    union
    select t.relid from named cross join lateral pg_partition_tree(named.oid) as t
    where t.isleaf
)
select n.nspname || '.' || c.relname,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       case c.relreplident
           when 'n' then 'REPLICA IDENTITY NOTHING'
           when 'i' then 'its replica identity index was dropped'
           else 'no primary key'
       end,
       case when root.oid <> c.oid then rn.nspname || '.' || root.relname else '' end
from leaf
join pg_class c on c.oid = leaf.relid
join pg_namespace n on n.oid = c.relnamespace
join pg_class root on root.oid = coalesce(pg_partition_root(c.oid), c.oid)
join pg_namespace rn on rn.oid = root.relnamespace
where c.relkind = 'r' and c.relreplident <> 'f'
  and not exists (
      select from pg_index i
      where i.indrelid = c.oid and i.indisvalid
        and ((c.relreplident = 'd' and i.indisprimary)
             or (c.relreplident = 'i' and i.indisreplident)))
order by n.nspname, c.relname;
