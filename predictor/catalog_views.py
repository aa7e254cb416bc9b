"""PostgreSQL's system catalogs as psql and postgres_fdw query them, answered from DuckDB's own.

They live in schema ``_pgml_catalog`` of the mirror (:mod:`predictor.catalog` names them; the
statement translator sends catalog references here). DuckDB has a ``pg_catalog`` too, but with
its own type ids and every relation of every attached database in it; these give PostgreSQL's
type oids and names (an imported foreign table gets ``smallint[]``, ``numeric(10,2)``), and
show each user only its catalog (:mod:`predictor.catalog_scope`):

- the **scoped** relations (``pg_class``, ``pg_attribute``, ``pg_namespace``, ``pg_index``,
  ``pg_constraint``, ``pg_attrdef``, ``pg_roles``, ``information_schema.tables`` ...) are
  table macros of the scope, as are the functions that describe a relation by its oid
  (``pg_get_indexdef``, ``pg_get_viewdef``, ``pg_table_size`` ...): the translator passes
  the statement's scope as their last argument;
- the rest are the same for everyone: the ``pgml`` functions in ``pg_proc``
  (:mod:`predictor.pg_proc`), one database, and empty ``pg_policy``, ``pg_inherits``,
  ``pg_publication`` ... (the mirror has none of those).

Primary keys and unique constraints are DuckDB constraints, not indexes: each is shown as an
index of its own (named as PostgreSQL names them, ``<table>_pkey``) and a constraint on it.
"""

from __future__ import annotations

import duckdb

from mirror.duckdb_sql import META, transaction
from predictor import pg_proc
from predictor.catalog import INFORMATION_SCHEMA, SCHEMA
from predictor.catalog_scope import SIDECAR_OID, SIDECAR_ROLE, USER_OID

S = SCHEMA

# (DuckDB type, PostgreSQL oid, array oid, PostgreSQL name); arrays get the array oid and "name[]".
_TYPES = [
    ("BOOLEAN", 16, 1000, "boolean"),
    ("TINYINT", 21, 1005, "smallint"),
    ("SMALLINT", 21, 1005, "smallint"),
    ("INTEGER", 23, 1007, "integer"),
    ("BIGINT", 20, 1016, "bigint"),
    ("HUGEINT", 1700, 1231, "numeric"),
    ("UTINYINT", 21, 1005, "smallint"),
    ("USMALLINT", 23, 1007, "integer"),
    ("UINTEGER", 20, 1016, "bigint"),
    ("UBIGINT", 1700, 1231, "numeric"),
    ("FLOAT", 700, 1021, "real"),
    ("DOUBLE", 701, 1022, "double precision"),
    ("VARCHAR", 25, 1009, "text"),
    ("BLOB", 17, 1001, "bytea"),
    ("DATE", 1082, 1182, "date"),
    ("TIME", 1083, 1183, "time without time zone"),
    ("TIMESTAMP", 1114, 1115, "timestamp without time zone"),
    ("TIMESTAMP WITH TIME ZONE", 1184, 1185, "timestamp with time zone"),
    ("INTERVAL", 1186, 1187, "interval"),
    ("UUID", 2950, 2951, "uuid"),
    ("JSON", 114, 199, "json"),
]


def _type_cases() -> tuple[str, str]:
    """SQL CASE arms: DuckDB data_type → PostgreSQL oid, and oid → PostgreSQL type name."""
    to_oid = []
    names: dict[int, str] = {}
    for duck, oid, array_oid, name in _TYPES:
        to_oid.append(f"when '{duck}' then {oid} when '{duck}[]' then {array_oid}")
        names.setdefault(oid, name)
        names.setdefault(array_oid, name + "[]")
    to_name = " ".join(f"when {oid} then '{name}'" for oid, name in names.items())
    return " ".join(to_oid), to_name


def _scope_list(key: str) -> str:
    return f"json_transform(json_extract(scope, '$.{key}'), '[[\"VARCHAR\"]]')"


def _mirror_schema(name: str) -> str:
    return (
        "(select m.oid from duckdb_schemas() m where m.database_name = current_database()"
        f" and m.schema_name = {name})"
    )


def _relations() -> list[str]:
    """Every relation, then the scope's: what the scope's user may see."""
    ws = "json_extract_string(scope, '$.workspace')"
    readable_column = (
        f"(r.database_name <> current_database() or not list_contains({_scope_list('partial')},"
        f" [r.schema_name, r.relname]) or list_contains({_scope_list('columns')},"
        " [r.schema_name, r.relname, c.column_name]))"
    )
    return [
        f"create or replace view {S}.all_relations as"
        " select database_name, schema_name, table_name as relname, table_oid as oid, schema_oid,"
        " 'r' as relkind, has_primary_key or index_count > 0 as relhasindex, estimated_size,"
        " column_count, null::varchar as definition"
        " from duckdb_tables() where not internal and not temporary"
        " union all select database_name, schema_name, view_name, view_oid, schema_oid, 'v',"
        " false, 0, column_count, sql from duckdb_views() where not internal and not temporary",
        f"create or replace macro {S}.synthetic_oid(_a, _b, _c) as"
        " (3000000000 + hash(_a, _b, _c) % 800000000)::bigint",
        f"create or replace macro {S}.visible(scope) as table"
        " select r.database_name, r.schema_name, r.relname, r.oid,"
        f" coalesce({_mirror_schema('r.schema_name')}, r.schema_oid) as relnamespace, r.relkind,"
        " r.relhasindex, r.estimated_size, r.column_count, r.definition"
        f" from {S}.all_relations r where (r.database_name = current_database()"
        f" and list_contains({_scope_list('relations')}, [r.schema_name, r.relname]))"
        f" or (r.database_name = {ws} and r.schema_name <> '{META}')"
        f" union all select {ws}, v[1], v[2], {S}.synthetic_oid({ws}, v[1], v[2]),"
        f" coalesce({_mirror_schema('v[1]')}, (select w.oid from duckdb_schemas() w"
        f" where w.database_name = {ws} and w.schema_name = v[1])), 'v', false, 0,"
        f" (select count(*) from unnest({_scope_list('view_columns')}) as c(c)"
        " where c[1] = v[1] and c[2] = v[2]), v[3]"
        f" from (select unnest({_scope_list('views')}) as v)",
        f"create or replace macro {S}.visible_columns(scope) as table"
        " select r.oid as attrelid, c.column_name as attname, c.data_type,"
        " c.column_index as attnum, not c.is_nullable as attnotnull, c.column_default"
        f" from duckdb_columns() c join {S}.visible(scope) r on c.database_name ="
        " r.database_name and c.schema_name = r.schema_name and c.table_name = r.relname"
        f" where {readable_column}"
        f" union all select {S}.synthetic_oid({ws}, v[1], v[2]), v[3], v[4], v[5]::integer,"
        f" false, null from (select unnest({_scope_list('view_columns')}) as v)",
        f"create or replace view {S}.all_indexes as"
        " select database_name, schema_name, table_name, index_name as relname,"
        " index_oid as oid, is_unique, false as is_primary,"
        " trim(expressions, '[]') as columns, list_value()::integer[] as keys"
        " from duckdb_indexes()"
        " union all select database_name, schema_name, table_name, name,"
        f" {S}.synthetic_oid(database_name, schema_name, name), true,"
        " constraint_type = 'PRIMARY KEY', array_to_string(constraint_column_names, ', '),"
        " list_transform(constraint_column_indexes, lambda i: (i + 1)::integer)"
        " from (select *, case constraint_type when 'PRIMARY KEY' then table_name || '_pkey'"
        " else constraint_name end as name from duckdb_constraints())"
        " where constraint_type in ('PRIMARY KEY', 'UNIQUE')",
        # a table read in part shows none of its indexes: they would name other columns
        f"create or replace macro {S}.visible_indexes(scope) as table"
        " select i.*, r.oid as table_oid, r.relnamespace"
        f" from {S}.all_indexes i join {S}.visible(scope) r on i.database_name ="
        " r.database_name and i.schema_name = r.schema_name and i.table_name = r.relname"
        f" where r.database_name <> current_database() or not list_contains("
        f"{_scope_list('partial')}, [r.schema_name, r.relname])",
    ]


def _pg_tables(pg_oid: str, typmod: str) -> list[str]:
    owner = f"case when r.database_name = current_database() then {SIDECAR_OID} else {USER_OID} end"
    return [
        f"create or replace macro {S}.pg_class(scope) as table"
        " select r.oid, r.relname, r.relnamespace, 0::bigint as reltype, 0::bigint as reloftype,"
        f" ({owner})::bigint as relowner, 0::bigint as relam, 0::bigint as relfilenode,"
        " 0::bigint as reltablespace, 0::integer as relpages, -1::real as reltuples,"
        " 0::integer as relallvisible, 0::bigint as reltoastrelid, r.relhasindex,"
        " false as relisshared, 'p' as relpersistence, r.relkind,"
        " r.column_count::smallint as relnatts, 0::smallint as relchecks, false as relhasoids,"
        " false as relhasrules, false as relhastriggers, false as relhassubclass,"
        " false as relrowsecurity, false as relforcerowsecurity, true as relispopulated,"
        " 'd' as relreplident, false as relispartition, 0::bigint as relrewrite,"
        " 0::bigint as relfrozenxid, 0::bigint as relminmxid, null::varchar[] as relacl,"
        " null::varchar[] as reloptions, null::varchar as relpartbound"
        f" from {S}.visible(scope) r"
        " union all select i.oid, i.relname, i.relnamespace, 0, 0,"
        f" {SIDECAR_OID}, 0, 0, 0, 0, -1, 0, 0, false, false, 'p', 'i', 0, 0, false, false,"
        " false, false, false, false, true, 'n', false, 0, 0, 0, null, null, null"
        f" from {S}.visible_indexes(scope) i",
        f"create or replace macro {S}.pg_attribute(scope) as table select attrelid, attname,"
        f" ({pg_oid})::bigint as atttypid, ({typmod})::integer as atttypmod,"
        " attnum::smallint as attnum, attnotnull, false as attisdropped,"
        " 0::bigint as attcollation, '' as attgenerated, '' as attidentity,"
        " case when data_type in ('VARCHAR', 'BLOB', 'JSON') or data_type like '%[]'"
        "  then 'x' else 'p' end as attstorage, '' as attcompression,"
        " -1::integer as attstattarget, (data_type like '%[]')::integer as attndims,"
        " column_default is not null as atthasdef, -1::smallint as attlen,"
        " null::varchar[] as attfdwoptions, null::varchar[] as attoptions, true as attislocal,"
        " 0::integer as attinhcount, null::varchar[] as attacl"
        f" from {S}.visible_columns(scope)",
        f"create or replace macro {S}.pg_attrdef(scope) as table"
        f" select {S}.synthetic_oid(attrelid::varchar, attnum::varchar, 'default') as oid,"
        " attrelid as adrelid, attnum::smallint as adnum, column_default as adbin"
        f" from {S}.visible_columns(scope) where column_default is not null",
        f"create or replace macro {S}.pg_index(scope) as table"
        " select oid as indexrelid, table_oid as indrelid, len(keys)::smallint as indnatts,"
        " len(keys)::smallint as indnkeyatts, is_unique as indisunique,"
        " is_primary as indisprimary, false as indisexclusion, true as indimmediate,"
        " false as indisclustered, true as indisvalid, false as indcheckxmin,"
        " true as indisready, true as indislive, false as indisreplident, keys as indkey,"
        " null::varchar as indexprs, null::varchar as indpred"
        f" from {S}.visible_indexes(scope)",
        f"create or replace macro {S}.pg_constraint(scope) as table"
        " select oid, relname as conname, relnamespace as connamespace,"
        " case when is_primary then 'p' else 'u' end as contype, false as condeferrable,"
        " false as condeferred, true as convalidated, table_oid as conrelid,"
        " 0::bigint as contypid, oid as conindid, 0::bigint as conparentid,"
        " 0::bigint as confrelid, keys as conkey, null::integer[] as confkey,"
        " true as conislocal, 0 as coninhcount, null::varchar as conbin"
        f" from {S}.visible_indexes(scope) where len(keys) > 0",
        f"create or replace macro {S}.pg_namespace(scope) as table"
        " select oid, nspname, min(nspowner)::bigint as nspowner, null::varchar[] as nspacl"
        f" from (select relnamespace as oid, schema_name as nspname, {SIDECAR_OID} as nspowner"
        f" from {S}.visible(scope)"
        f" union all select oid, schema_name, {SIDECAR_OID} from duckdb_schemas() where"
        " (database_name ="
        " current_database() and schema_name in ('public', 'pgml', 'pgml_scores'))"
        " or (database_name = 'system' and schema_name in ('pg_catalog', 'information_schema'))"
        f" union all select coalesce({_mirror_schema('w.schema_name')}, w.oid), w.schema_name,"
        f" case when {_mirror_schema('w.schema_name')} is null then {USER_OID}"
        f" else {SIDECAR_OID} end from duckdb_schemas() w where w.database_name ="
        f" json_extract_string(scope, '$.workspace') and w.schema_name not in ('{META}', 'main'))"
        " group by oid, nspname",
        f"create or replace macro {S}.pg_roles(scope) as table"
        " select oid, rolname, false as rolsuper, true as rolinherit, false as rolcreaterole,"
        " false as rolcreatedb, rolcanlogin, false as rolreplication, -1 as rolconnlimit,"
        " '********' as rolpassword, null::timestamptz as rolvaliduntil,"
        " false as rolbypassrls, null::varchar[] as rolconfig from (values"
        f" ({USER_OID}::bigint, json_extract_string(scope, '$.user'), true),"
        f" ({SIDECAR_OID}, '{SIDECAR_ROLE}', false)) as r(oid, rolname, rolcanlogin)",
    ]


def _information_schema() -> list[str]:
    visible = (
        f"select 1 from {S}.visible(scope) r where r.database_name = {{catalog}}"
        " and r.schema_name = {schema} and r.relname = {name}"
    )
    ws = "json_extract_string(scope, '$.workspace')"
    return [
        f"create or replace macro {S}.{INFORMATION_SCHEMA['tables']}(scope) as table"
        " select * replace (current_database() as table_catalog)"
        " from information_schema.tables t where exists ("
        + visible.format(catalog="t.table_catalog", schema="t.table_schema", name="t.table_name")
        + f") union all by name select current_database() as table_catalog, v[1] as table_schema,"
        " v[2] as table_name, 'VIEW' as table_type, 'NO' as is_insertable_into"
        f" from (select unnest({_scope_list('views')}) as v)",
        f"create or replace macro {S}.{INFORMATION_SCHEMA['columns']}(scope) as table"
        " select * replace (current_database() as table_catalog)"
        " from information_schema.columns t where exists ("
        + visible.format(catalog="t.table_catalog", schema="t.table_schema", name="t.table_name")
        + f") and (t.table_catalog = {ws} or not list_contains({_scope_list('partial')},"
        f" [t.table_schema, t.table_name]) or list_contains({_scope_list('columns')},"
        " [t.table_schema, t.table_name, t.column_name]))"
        " union all by name select current_database() as table_catalog, v[1] as table_schema,"
        " v[2] as table_name, v[3] as column_name, v[5]::integer as ordinal_position,"
        " 'YES' as is_nullable, v[4] as data_type"
        f" from (select unnest({_scope_list('view_columns')}) as v)",
        f"create or replace macro {S}.{INFORMATION_SCHEMA['schemata']}(scope) as table"
        " select current_database() as catalog_name, nspname as schema_name,"
        f" '{SIDECAR_ROLE}' as schema_owner, null::varchar as default_character_set_catalog,"
        " null::varchar as default_character_set_schema,"
        " null::varchar as default_character_set_name, null::varchar as sql_path"
        f" from {S}.pg_namespace(scope)",
    ]


def _shared_tables() -> list[str]:
    """The catalog tables every user sees alike (most of them empty in the mirror)."""
    empty = {
        "pg_policy": "polname varchar, polrelid bigint, polcmd varchar, polpermissive boolean,"
        " polroles bigint[], polqual varchar, polwithcheck varchar",
        "pg_inherits": "inhrelid bigint, inhparent bigint, inhseqno integer,"
        " inhdetachpending boolean",
        "pg_statistic_ext": "oid bigint, stxrelid bigint, stxname varchar, stxnamespace bigint,"
        " stxowner bigint, stxstattarget integer, stxkeys smallint[], stxkind varchar[]",
        "pg_publication": "oid bigint, pubname varchar, pubowner bigint, puballtables boolean,"
        " pubinsert boolean, pubupdate boolean, pubdelete boolean, pubtruncate boolean,"
        " pubviaroot boolean",
        "pg_publication_namespace": "oid bigint, pnpubid bigint, pnnspid bigint",
        "pg_publication_rel": "oid bigint, prpubid bigint, prrelid bigint, prqual varchar,"
        " prattrs smallint[]",
        "pg_rewrite": "oid bigint, rulename varchar, ev_class bigint, ev_type varchar,"
        " ev_enabled varchar, is_instead boolean",
        "pg_trigger": "oid bigint, tgrelid bigint, tgname varchar, tgisinternal boolean,"
        " tgenabled varchar",
        "pg_auth_members": "roleid bigint, member bigint, grantor bigint, admin_option boolean",
        "pg_description": "objoid bigint, classoid bigint, objsubid integer, description varchar",
        "pg_collation": "oid bigint, collname varchar, collnamespace bigint",
    }
    statements = [
        f"create or replace view {S}.{name} as select * from (select {_nulls(columns)}) where false"
        for name, columns in empty.items()
    ]
    statements += [
        f"create or replace view {S}.pg_type as select * from pg_catalog.pg_type",
        f"create or replace view {S}.pg_am as select * from (values (2::bigint, 'heap', 't'),"
        " (403, 'btree', 'i')) as am(oid, amname, amtype)",
        f"create or replace view {S}.pg_database as select 1::bigint as oid,"
        f" current_database() as datname, {SIDECAR_OID}::bigint as datdba, 6 as encoding,"
        " 'c' as datlocprovider, false as datistemplate, true as datallowconn,"
        " -1 as datconnlimit, 'C' as datcollate, 'C' as datctype,"
        " null::varchar as daticulocale, null::varchar as datcollversion,"
        " null::varchar[] as datacl, 1663::bigint as dattablespace",
    ]
    return statements


def _nulls(columns: str) -> str:
    return ", ".join(
        f"null::{kind} as {name}"
        for name, kind in (c.strip().split(" ", 1) for c in columns.split(","))
    )


def _functions(to_name: str) -> list[str]:
    """The catalog functions; those of a relation's oid take the scope last."""
    user = "json_extract_string(scope, '$.user')"
    index_def = (
        "(select 'CREATE ' || case when _i.is_unique then 'UNIQUE ' else '' end || 'INDEX '"
        " || _i.relname || ' ON ' || _i.schema_name || '.' || _i.table_name || ' USING art ('"
        f" || _i.columns || ')' from {S}.visible_indexes(scope) _i where _i.oid = _index)"
    )
    constraint_def = (
        "(select case when _i.is_primary then 'PRIMARY KEY (' else 'UNIQUE (' end || _i.columns"
        f" || ')' from {S}.visible_indexes(scope) _i where _i.oid = _constraint)"
    )
    view_def = (
        "(select regexp_replace(_r.definition, '^CREATE VIEW .*? AS ', '')"
        f" from {S}.visible(scope) _r where _r.oid = _view)"
    )
    size = (
        f"(select coalesce(max(_r.estimated_size), 0) * 64 from {S}.visible(scope) _r"
        " where _r.oid::varchar = _relation::varchar or _r.relname = _relation::varchar"
        " or _r.schema_name || '.' || _r.relname = _relation::varchar)"
    )
    visible = (
        f"exists (select 1 from {S}.pg_class(scope) _c join {S}.pg_namespace(scope) _n"
        " on _n.oid = _c.relnamespace where _c.oid = _relation"
        " and _n.nspname in ('public', 'main'))"
    )
    return [
        f"create or replace macro {S}.format_type(_type, _typmod) as"
        " case when _type = 1700 and _typmod > 4 then 'numeric('"
        " || ((_typmod - 4) >> 16) || ',' || ((_typmod - 4) & 65535) || ')'"
        f" else case _type {to_name} else 'text' end end",
        f"create or replace macro {S}.pg_get_expr(_expression, _relation) as _expression,"
        " (_expression, _relation, _pretty) as _expression",
        f"create or replace macro {S}.pg_get_userbyid(_role, scope) as case _role"
        f" when {USER_OID} then {user} when {SIDECAR_OID} then '{SIDECAR_ROLE}'"
        " else 'unknown (OID=' || _role || ')' end",
        f"create or replace macro {S}.pg_table_is_visible(_relation, scope) as {visible}",
        f"create or replace macro {S}.pg_get_indexdef(_index, scope) as {index_def},"
        f" (_index, _column, _pretty, scope) as {index_def}",
        f"create or replace macro {S}.pg_get_constraintdef(_constraint, scope) as"
        f" {constraint_def}, (_constraint, _pretty, scope) as {constraint_def}",
        f"create or replace macro {S}.pg_get_viewdef(_view, scope) as {view_def},"
        f" (_view, _pretty, scope) as {view_def}",
        f"create or replace macro {S}.pg_relation_size(_relation, scope) as {size},"
        f" (_relation, _fork, scope) as {size}",
        f"create or replace macro {S}.pg_table_size(_relation, scope) as {size}",
        f"create or replace macro {S}.pg_total_relation_size(_relation, scope) as {size}",
        f"create or replace macro {S}.pg_encoding_to_char(_encoding) as"
        " case _encoding when 6 then 'UTF8' when 0 then 'SQL_ASCII' else '' end",
        f"create or replace macro {S}.obj_description(_object) as null::varchar,"
        " (_object, _catalog) as null::varchar",
        f"create or replace macro {S}.col_description(_table, _column) as null::varchar",
        f"create or replace macro {S}.shobj_description(_object, _catalog) as null::varchar",
        f"create or replace macro {S}.pg_get_ruledef(_rule) as null::varchar,"
        " (_rule, _pretty) as null::varchar",
        f"create or replace macro {S}.pg_get_statisticsobjdef_columns(_statistics) as"
        " null::varchar",
        f"create or replace macro {S}.pg_relation_is_publishable(_relation) as false",
        f"create or replace macro {S}.array_upper(_array, _dimension) as"
        " case when _dimension = 1 and len(_array) > 0 then len(_array) end",
        f"create or replace macro {S}.array_lower(_array, _dimension) as"
        " case when _dimension = 1 and len(_array) > 0 then 1 end",
    ]


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or refresh) the catalog views and functions in schema ``_pgml_catalog``."""
    to_oid, to_name = _type_cases()
    pg_oid = (
        f"case when data_type like 'DECIMAL%[]' then 1231 when data_type like 'DECIMAL%' then 1700"
        f" else case data_type {to_oid} else 25 end end"
    )
    precision = "regexp_extract(data_type, '^DECIMAL\\((\\d+),(\\d+)\\)', ['p', 's'])"
    typmod = (
        f"case when data_type like 'DECIMAL(%' then ((({precision}).p::integer << 16)"
        f" | ({precision}).s::integer) + 4 else -1 end"
    )
    with transaction(con) as cursor:
        cursor.execute(f"create schema if not exists {S}")
        for statement in [
            *_relations(),
            *_pg_tables(pg_oid, typmod),
            *_information_schema(),
            *_shared_tables(),
            *_functions(to_name),
        ]:
            cursor.execute(statement)
        pg_proc.install(cursor, S)
