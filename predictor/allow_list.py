"""What endpoint SQL may call and set: functions, table functions, session settings, statements.

The endpoint runs only what is listed here (:mod:`predictor.statements` checks every statement
against it before DuckDB sees it). The functions are PostgreSQL's ordinary scalar, aggregate and
window functions that DuckDB also has under the same name and meaning (math, strings, dates and
times, JSON, arrays), the catalog functions psql and postgres_fdw call, and the ``pgml`` API.
Anything else is refused: a name DuckDB uses to read files, run SQL text, show or change its
configuration, or reach other databases is refused with SQLSTATE 42501 (``permission denied``),
any other unknown name with 42883, as PostgreSQL answers for a function it does not have.

:func:`check_query` walks a parsed query and raises :class:`Refused` at the first function,
relation or clause not on the lists; :func:`check_setting` does the same for SET and RESET.
Relations are checked against what the mirror serves (:class:`predictor.catalog.ServedRelations`)
and what the caller may read (``readable``: every served relation unless the caller says less).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, enums, parse_sql

from mirror.errors import SidecarError
from predictor import catalog, metric_functions, pgvector, python_environment, vectors
from predictor.catalog import ServedRelation, ServedRelations
from predictor.error_words import FUNCTION_HINT
from predictor.workspace import TABLE, WorkspaceNames, WorkspaceRelation
from trainer.snapshots import SEARCH_SCHEMAS


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


PROCEDURES = (
    "train",
    "train_joint",
    "deploy",
    "load_dataset",
    "snapshot",
    "schedule",
    "retrain_on_drift",
    "dump_all",
    "load_all",
)
"""The pgml functions that are procedures: called on their own, never inside a query."""


Columns = bool | tuple[str, ...]
"""What a caller may read of one relation: True, all of it; a tuple, only these columns (in the
table's order; the query then reads the table through a subquery of them); False, nothing."""

Readable = Callable[[str, str], Columns] | Collection[tuple[str, str]]
"""Which tables and ``pgml_scores`` views of the mirror a caller may read (every served relation
but the ``pgml`` registry, see :class:`predictor.catalog.ServedRelation`): a test on ``(schema,
name)`` answering :data:`Columns`, or a collection of them (a set, or a mapping keyed by them;
all of each). It is asked about the names as the mirror holds them; a collection is also matched
without regard to case, as DuckDB resolves names. Per-user privileges come in here."""

FUNCTIONS = _words(
    # math
    "abs acos acosh asin asinh atan atan2 atanh cbrt ceil ceiling cos cosh cot degrees exp"
    " factorial floor gcd lcm ln log log10 mod pi pow power radians random round setseed sign"
    " sin sinh sqrt tan tanh trunc bit_count get_bit set_bit"
    # strings
    " ascii bit_length btrim char_length character_length chr concat concat_ws decode encode format"
    " left length like_escape lower lpad ltrim md5 octet_length overlay position regexp_matches"
    " regexp_replace regexp_split_to_array repeat replace reverse right rpad rtrim sha256"
    " split_part starts_with string_to_array strpos substr substring to_hex translate upper"
    # dates and times
    " age date_part date_trunc isfinite make_date make_time make_timestamp make_timestamptz now"
    " timezone to_timestamp transaction_timestamp"
    # json
    " array_to_json json_array_length json_extract_path json_extract_path_text json_object"
    " json_strip_nulls row_to_json to_json"
    # arrays
    " array_append array_cat array_length array_position array_prepend array_to_string"
    " cardinality"
    # aggregates, ordered-set aggregates
    " array_agg avg bit_and bit_or bit_xor bool_and bool_or corr count covar_pop covar_samp max"
    " min mode percentile_cont percentile_disc regr_avgx regr_avgy regr_count regr_intercept"
    " regr_r2 regr_slope regr_sxx regr_sxy regr_syy stddev stddev_pop stddev_samp string_agg sum"
    " var_pop var_samp variance"
    # window functions
    " cume_dist dense_rank first_value lag last_value lead nth_value ntile percent_rank rank"
    " row_number"
    # set-returning functions, also as table functions (below)
    " generate_series generate_subscripts unnest regexp_split_to_table"
    # enums, uuids, sessions
    " enum_first enum_last enum_range gen_random_uuid current_database current_query"
    " current_schema current_schemas current_user session_user version pg_sleep txid_current"
    # the catalog functions psql and postgres_fdw call (predictor.catalog answers some of them)
    " col_description obj_description shobj_description format_type pg_get_expr"
    " pg_get_constraintdef pg_get_viewdef pg_relation_size pg_table_is_visible"
    " pg_type_is_visible pg_function_is_visible pg_collation_is_visible pg_has_role"
    " pg_is_other_temp_schema pg_my_temp_schema pg_size_pretty pg_typeof"
    " pg_postmaster_start_time pg_conf_load_time inet_client_addr inet_client_port"
    " inet_server_addr inet_server_port has_any_column_privilege has_column_privilege"
    " has_database_privilege has_function_privilege has_schema_privilege has_sequence_privilege"
    " has_table_privilege"
)
"""Functions a statement may call, unqualified or as ``pg_catalog.<name>``."""

TABLE_FUNCTIONS = _words(
    "generate_series generate_subscripts unnest regexp_split_to_table json_each"
    " pg_timezone_names range"
)
"""Functions a statement may name in FROM (``range`` is DuckDB's ``generate_series``)."""

SQL_SYNTAX_FUNCTIONS = _words(
    "btrim ltrim rtrim substring position overlay overlaps timezone extract"
)
"""``pg_catalog`` functions the parser makes of SQL syntax (``trim(BOTH FROM x)``,
``EXTRACT(year FROM t)``, ``t AT TIME ZONE z``); they are printed back as that syntax."""

PGML_FUNCTIONS = (
    _words(
        "train train_joint deploy load_dataset snapshot schedule retrain_on_drift version predict"
        " predict_proba predict_joint predict_batch decompose chunk dump_all load_all"
    )
    | vectors.FUNCTIONS
    | frozenset(metric_functions.NAMES)
    | frozenset(python_environment.NAMES)
)
"""The ``pgml.*`` API (procedures, predictions, version, vector functions, metrics, what the
sidecar runs)."""

SCORING_FUNCTIONS = frozenset(
    {"predict", "predict_proba", "predict_joint", "predict_batch", "decompose"}
)
"""The ``pgml.*`` functions that score with a project's model (its name is their first
argument)."""

REFUSED_FUNCTIONS = _words(
    # files, other databases, SQL text, Python objects
    "glob query query_table sniff_csv json_execute_serialized_sql json_serialize_sql"
    " json_deserialize_sql json_serialize_plan summary histogram histogram_values seq_scan"
    " repeat_row test_all_types test_vector_types"
    # settings, variables, secrets, extensions, logs, profiling
    " current_setting set_config getenv getvariable which_secret load_extension"
    " install_extension extension_versions checkpoint force_checkpoint enable_logging"
    " disable_logging truncate_duckdb_logs write_log enable_profiling disable_profiling"
    " enable_profile disable_profile add_parquet_key add_grammar_extension"
    " remove_grammar_extension register_external_resource register_external_resource_type"
    " create_external_resource deregister_external_resource destroy_external_resource"
    # sequences (they would change the registry's ids)
    " nextval currval setval"
    # PostgreSQL's own server-side file and administration functions
    " pg_stat_file pg_file_write pg_file_rename pg_file_unlink pg_logdir_ls pg_reload_conf"
    " pg_rotate_logfile pg_terminate_backend pg_cancel_backend pg_promote pg_switch_wal"
)
"""Known dangerous names: refused with 42501 wherever they appear (and see
:func:`is_refused_function`)."""

REFUSED_PREFIXES = (
    "read_", "parquet_", "duckdb_", "pragma_", "sqlite_", "postgres_", "mysql_", "iceberg_",
    "delta_", "ducklake_", "python_", "pandas_", "arrow_", "pg_read_", "pg_ls_", "lo_", "dblink",
    "st_read", "http", "s3_", "azure_", "gcs_", "hf_",
)  # fmt: skip
REFUSED_SUFFIXES = ("_scan", "_attach", "_query", "_execute")

REFUSED_RELATIONS = _words(
    "pg_settings pg_file_settings pg_hba_file_rules pg_authid pg_shadow pg_user_mapping"
    " sqlite_master sqlite_schema sqlite_temp_master sqlite_temp_schema"
)
"""Relations that show settings, files or secrets: refused with 42501 (with the prefixes of
:data:`REFUSED_PREFIXES`, e.g. ``duckdb_settings``)."""

INTERNAL_SCHEMAS = frozenset({"_pgml_sidecar", "_pgml_catalog", "system", "temp"})
"""The mirror's bookkeeping, the catalog's implementation and DuckDB's own: refused (42501)."""

SESSION_SETTINGS = _words(
    # what the session reports and answers SHOW for (predictor.execution.DEFAULT_SETTINGS)
    "server_version server_version_num server_encoding client_encoding datestyle timezone"
    " intervalstyle integer_datetimes standard_conforming_strings transaction_isolation"
    " default_transaction_read_only transaction_read_only search_path extra_float_digits"
    " application_name is_superuser max_identifier_length"
    # what drivers, poolers, BI tools and postgres_fdw send; kept for SHOW, never given to DuckDB
    " statement_timeout lock_timeout idle_in_transaction_session_timeout idle_session_timeout"
    " client_min_messages bytea_output default_transaction_isolation"
    " default_transaction_deferrable transaction_deferrable jit geqo work_mem lc_messages"
    " lc_monetary lc_numeric lc_time xmloption escape_string_warning synchronous_commit"
    " row_security plan_cache_mode join_collapse_limit from_collapse_limit"
    " enable_seqscan enable_indexscan enable_bitmapscan enable_hashjoin enable_mergejoin"
    " enable_nestloop enable_sort enable_hashagg enable_material"
    " enable_partitionwise_join enable_partitionwise_aggregate"
    # the endpoint's own
    " pgml.exact_search"
)
"""Settings a client may SET, RESET and SHOW (and custom ``prefix.name`` ones); any other name,
DuckDB's settings among them, is refused with 42501."""

READ_ONLY_SETTINGS = _words(
    "server_version server_version_num server_encoding integer_datetimes is_superuser"
    " max_identifier_length"
)
"""Settings a client may read but not change (55P02, as PostgreSQL answers)."""

DUCKDB_ONLY_STATEMENTS = _words(
    "attach detach install force load pragma export import use checkpoint summarize describe"
    " pivot unpivot copy call create insert update delete drop alter set"
)
"""First words of statements that PostgreSQL's grammar cannot parse but DuckDB's can (``ATTACH
'x'``, ``PRAGMA ...``, ``CREATE SECRET``, ``SET VARIABLE``): refused with 42501, not 42601."""


def is_refused_function(name: str) -> bool:
    """Whether ``name`` (lowercase) is a function that reaches outside the mirror."""
    return (
        name in REFUSED_FUNCTIONS
        or name.startswith(REFUSED_PREFIXES)
        or name.endswith(REFUSED_SUFFIXES)
    )


def is_refused_relation(name: str) -> bool:
    """Whether ``name`` (lowercase) is a relation that shows settings, files or secrets."""
    return name in REFUSED_RELATIONS or name.startswith(("duckdb_", "pragma_"))


class Refused(SidecarError):
    """A statement names something the endpoint does not run: 42501 when it would reach outside
    the mirror or what the caller may read, 42883 or 42P01 when PostgreSQL has no such thing."""

    sqlstate = "42501"
    location: int | None = None
    """Where in the query string (a byte offset) the thing refused is named, if known: the
    session reports it as the error's position, as PostgreSQL does."""

    def at(self, location: int | None) -> Refused:
        """This error, placed at ``location`` (-1 or None: nowhere)."""
        self.location = location if location is not None and location >= 0 else None
        return self


SEARCH_PATH = ("public", "main")
"""Where an unqualified name is looked for after the caller's workspace: PostgreSQL's
``public``, then DuckDB's ``main`` (tables made in the mirror file by hand)."""


@dataclass(frozen=True, slots=True)
class ScoredModel:
    """The first argument of a ``pgml.predict`` in a query: which project (or model id) scores.

    ``value`` is a constant; ``param`` a ``$n`` filled in at Bind; neither (``computed``): an
    expression, known only row by row."""

    value: str | int | None = None
    param: int = 0

    @property
    def computed(self) -> bool:
        return self.value is None and not self.param


@dataclass(frozen=True, slots=True)
class CheckedQuery:
    """What the check of a query found on its way (so that nobody walks the query again)."""

    reads: tuple[ServedRelation, ...]
    """The relations the query reads (CTEs and the catalog aside)."""
    params: int
    """The highest ``$n`` in the query (0: none)."""
    pgml_calls: tuple[str, ...]
    """The ``pgml.*`` functions it calls, by name."""
    scored: tuple[ScoredModel, ...] = ()
    """The projects (or model ids) its ``pgml.predict`` and ``predict_proba`` calls score with."""
    narrowed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """The tables the caller may read only some columns of: ``id()`` of each of their
    ``RangeVar`` nodes in the query, with those columns (:func:`predictor.translation.translate`
    reads them through a subquery of the columns)."""
    columns: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """The same, by the table's schema and name: what the query was checked against."""
    registry: dict[int, str] = field(default_factory=dict)
    """The registry relations the query reads: ``id()`` of each ``RangeVar`` with the name of
    the relation in schema ``pgml`` (:func:`predictor.translation.translate` shows a caller
    only the rows of the projects it may see)."""
    workspace: dict[int, WorkspaceRelation] = field(default_factory=dict)
    """The caller's workspace tables the query names: ``id()`` of each ``RangeVar``."""
    views: dict[int, ast.SelectStmt] = field(default_factory=dict)
    """The caller's workspace views the query reads: ``id()`` of each ``RangeVar`` with the
    view's query, parsed and checked as part of this one (translated in its place)."""
    schemas: dict[int, str] = field(default_factory=dict)
    """The schema each unqualified name of a served relation was found in along the search
    path: ``id()`` of each ``RangeVar`` (the translation qualifies it, as DuckDB would look in
    ``main``)."""


def check_query(
    node: ast.SelectStmt,
    *,
    relations: ServedRelations | None,
    readable: Readable | None = None,
    workspace: WorkspaceNames | None = None,
) -> CheckedQuery:
    """Check every function, relation and clause of ``node``; raise :class:`Refused` at the
    first one not allowed.

    Without ``relations`` no mirrored table or registry relation is known (only CTEs and the
    catalog); without ``readable`` every served relation may be read. ``workspace``: the
    caller's workspace, whose names come first; each of its views the query reads is checked
    here as part of the query.
    """
    check = _QueryCheck(relations, readable, workspace)
    check.select(node, frozenset())
    return check.result()


def check_statement(
    node: ast.Node,
    *,
    skip: Collection[str],
    relations: ServedRelations | None,
    readable: Readable | None = None,
    workspace: WorkspaceNames | None = None,
) -> CheckedQuery:
    """Check a statement that writes to the workspace as :func:`check_query` checks a query:
    every field of ``node`` but those in ``skip`` (the relation it writes to), its WITH
    clause's queries in scope."""
    check = _QueryCheck(relations, readable, workspace)
    scope: frozenset[str] = frozenset()
    with_clause = getattr(node, "withClause", None)
    if with_clause is not None:
        scope = check.with_clause(with_clause, scope)
    for name in _fields(type(node)):
        if name not in skip and name != "withClause":
            check.walk(getattr(node, name), scope)
    return check.result()


def check_relation_name(
    text: str, *, relations: ServedRelations | None, readable: Readable | None = None
) -> None:
    """Refuse ``relation_name`` of ``pgml.train`` or ``pgml.snapshot`` if it names a relation the
    caller may not read, or the mirror's bookkeeping; names as the trainer resolves them.

    A relation the mirror does not serve is left to the trainer (which says it does not exist).
    """
    schema, _, name = text.rpartition(".")
    schema, name = _unquoted(schema), _unquoted(name)
    for candidate in [schema] if schema else SEARCH_SCHEMAS:
        folded = candidate.lower()
        if folded in INTERNAL_SCHEMAS or folded in ("pg_catalog", "information_schema"):
            raise Refused(f"permission denied for schema {candidate}")
        found = relations.find(candidate, name) if relations is not None else None
        if found is not None:
            allowed = True if found.kind == catalog.REGISTRY else may_read(readable, found)
            if allowed is False:
                raise Refused(f"permission denied for table {found.qualified}")
            if allowed is not True:
                raise Refused(
                    f"permission denied for table {found.qualified} (a training or a snapshot"
                    " reads every column, and your role may SELECT only some in the source)"
                )
            return


def _unquoted(identifier: str) -> str:
    if len(identifier) >= 2 and identifier[0] == identifier[-1] == '"':
        return identifier[1:-1].replace('""', '"')
    return identifier


def check_setting(name: str | None) -> None:
    """Refuse SET or RESET of ``name`` unless it is a session setting the endpoint keeps."""
    key = (name or "").lower()
    if key not in SESSION_SETTINGS and "." not in key:
        raise Refused(f'permission denied to set parameter "{name}"')
    if key in READ_ONLY_SETTINGS:
        raise Refused(f'parameter "{name}" cannot be changed', sqlstate="55P02")


def may_read(readable: Readable | None, relation: ServedRelation) -> Columns:
    """What ``readable`` lets a caller read of ``relation`` (see :data:`Columns`)."""
    if readable is None:
        return True
    if callable(readable):
        allowed = readable(relation.schema, relation.name)
        return allowed if isinstance(allowed, tuple) and allowed else bool(allowed)
    if (relation.schema, relation.name) in readable:
        return True
    key = (catalog.fold(relation.schema), catalog.fold(relation.name))
    return any((catalog.fold(s), catalog.fold(n)) == key for s, n in readable)


def _names(funcname: Iterable[ast.String] | None) -> list[str]:
    return [(n.sval or "").lower() for n in funcname or ()]


_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(kind: type) -> tuple[str, ...]:
    """The attributes of a pglast node class."""
    found = _FIELDS.get(kind)
    if found is None:
        found = _FIELDS[kind] = tuple(getattr(kind, "__slots__", ()))
    return found


def _looks_like_file(name: str) -> bool:
    return any(c in name for c in "/\\:*?~.")


MAX_VIEW_DEPTH = 16
"""How many workspace views a query may read through, one inside another."""


def parse_view(relation: WorkspaceRelation) -> ast.SelectStmt:
    """A workspace view's query, parsed from the PostgreSQL text it was stored as."""
    (raw,) = parse_sql(relation.definition or "")
    assert isinstance(raw.stmt, ast.SelectStmt)
    return raw.stmt


class _QueryCheck:
    """One walk over a query: CTE names are in scope where PostgreSQL would see them."""

    def __init__(
        self,
        relations: ServedRelations | None,
        readable: Readable | None,
        workspace: WorkspaceNames | None = None,
    ) -> None:
        self.relations = relations
        self.readable = readable
        self.workspace = workspace
        self.local: dict[int, WorkspaceRelation] = {}
        self.views: dict[int, ast.SelectStmt] = {}
        self._view_depth = 0
        self.reads: list[ServedRelation] = []
        self.params = 0
        self.pgml_calls: list[str] = []
        self.scored: list[ScoredModel] = []
        self.narrowed: dict[int, tuple[str, ...]] = {}
        self.columns: dict[tuple[str, str], tuple[str, ...]] = {}
        self.registry: dict[int, str] = {}
        self.schemas: dict[int, str] = {}

    def result(self) -> CheckedQuery:
        return CheckedQuery(
            tuple(self.reads),
            self.params,
            tuple(self.pgml_calls),
            tuple(self.scored),
            self.narrowed,
            self.columns,
            self.registry,
            self.local,
            self.views,
            self.schemas,
        )

    def select(self, node: ast.SelectStmt, scope: frozenset[str]) -> None:
        if node.intoClause is not None:
            raise Refused("SELECT INTO is not allowed: the mirror is read-only here")
        if node.withClause is not None:
            scope = self.with_clause(node.withClause, scope)
        for name in _fields(ast.SelectStmt):
            if name not in ("withClause", "intoClause"):
                self.walk(getattr(node, name), scope)

    def with_clause(self, clause: ast.WithClause, scope: frozenset[str]) -> frozenset[str]:
        ctes = [c for c in clause.ctes or () if isinstance(c, ast.CommonTableExpr)]
        names = [catalog.fold(c.ctename or "") for c in ctes]  # as DuckDB matches names
        visible = scope | frozenset(names) if clause.recursive else scope
        for cte, name in zip(ctes, names, strict=True):
            query = cte.ctequery
            if not isinstance(query, ast.SelectStmt):
                kind = type(query).__name__.removesuffix("Stmt").upper()  # INSERT, UPDATE, ...
                raise Refused(f"{kind} in WITH is not allowed: run it as a statement of its own")
            self.select(query, visible)
            if not clause.recursive:
                visible = visible | {name}
        return scope | frozenset(names)

    def walk(self, value: Any, scope: frozenset[str]) -> None:
        if isinstance(value, tuple | list):
            for item in value:
                self.walk(item, scope)
        elif isinstance(value, ast.Node):
            handler = _HANDLERS.get(type(value))
            if handler is not None:
                handler(self, value, scope)
            else:
                self.children(value, scope)

    def children(self, node: ast.Node, scope: frozenset[str]) -> None:
        for name in _fields(type(node)):
            value = getattr(node, name)
            if isinstance(value, ast.Node | tuple | list):
                self.walk(value, scope)

    # -- relations -------------------------------------------------------------------------------

    def relation(self, node: ast.RangeVar, scope: frozenset[str]) -> None:
        name, schema = node.relname or "", node.schemaname
        shown = ".".join(n for n in (node.catalogname, schema, name) if n)
        if node.catalogname:
            raise Refused(f"permission denied for table {shown}")
        if schema is None and catalog.fold(name) in scope:
            return  # a CTE of the statement
        if schema in (None, "pg_catalog") and name in catalog.TABLES:
            return  # answered by predictor.catalog
        if schema == "information_schema" and name in catalog.INFORMATION_SCHEMA:
            return  # the same
        folded = (schema or "").lower()
        if is_refused_relation(name.lower()):
            raise Refused(f"permission denied for table {shown}")
        if folded in ("pg_catalog", "information_schema"):
            raise self.placed(
                Refused(f'relation "{shown}" does not exist', sqlstate="42P01"), node.location
            )
        if folded in INTERNAL_SCHEMAS:
            raise Refused(f"permission denied for schema {schema}")
        own = self.workspace.find(schema, name) if self.workspace is not None else None
        if own is not None:
            self.workspace_relation(node, own)
            return
        found = self.served(schema, name)
        if found is None:
            if _looks_like_file(name):
                raise Refused(
                    f'permission denied for relation "{name}": the endpoint reads the mirror'
                    " only, never files"
                )
            raise self.placed(
                Refused(f'relation "{shown}" does not exist', sqlstate="42P01"), node.location
            )
        if schema is None:
            self.schemas[id(node)] = found.schema
        allowed = True if found.kind == catalog.REGISTRY else may_read(self.readable, found)
        if allowed is False:
            raise Refused(f"permission denied for table {found.qualified}")
        if isinstance(allowed, tuple):
            self.narrowed[id(node)] = self.columns[(found.schema, found.name)] = allowed
        if found.kind == catalog.REGISTRY:
            self.registry[id(node)] = found.name
        self.reads.append(found)

    def served(self, schema: str | None, name: str) -> ServedRelation | None:
        """The served relation ``schema.name`` names; an unqualified name along the search
        path."""
        if self.relations is None:
            return None
        for candidate in [schema] if schema else SEARCH_PATH:
            found = self.relations.find(candidate, name)
            if found is not None:
                return found
        return None

    def placed(self, error: Refused, location: int | None) -> Refused:
        """``error`` at ``location`` in the client's query (not in a view's text)."""
        return error.at(location if self._view_depth == 0 else None)

    def workspace_relation(self, node: ast.RangeVar, relation: WorkspaceRelation) -> None:
        """A table of the caller's workspace is the caller's; a view is its query, checked here
        with the caller's privileges of now (they may have changed since it was made)."""
        if relation.kind == TABLE:
            self.local[id(node)] = relation
            return
        if self._view_depth >= MAX_VIEW_DEPTH:
            raise Refused(
                f"infinite recursion detected in view {relation.qualified}: views read through"
                f" more than {MAX_VIEW_DEPTH} others",
                sqlstate="42P17",
            )
        query = parse_view(relation)
        self._view_depth += 1
        try:
            self.select(query, frozenset())  # a view sees none of the query's CTEs
        finally:
            self._view_depth -= 1
        self.views[id(node)] = query

    def range_function(self, node: ast.RangeFunction, scope: frozenset[str]) -> None:
        for item in node.functions or ():
            call = item[0] if isinstance(item, tuple | list) else item
            if isinstance(call, ast.FuncCall):
                self.function(call, scope, in_from=True)
            else:
                raise Refused("only function calls may appear in FROM here", sqlstate="0A000")
            self.walk(item[1:] if isinstance(item, tuple | list) else (), scope)
        self.walk(node.coldeflist, scope)

    # -- functions and operators -----------------------------------------------------------------

    def function(self, node: ast.FuncCall, scope: frozenset[str], *, in_from: bool = False) -> None:
        names = _names(node.funcname)
        name, qualifier = names[-1], names[:-1]
        if qualifier == ["pgml"]:
            if name not in PGML_FUNCTIONS:
                raise Refused(f"function pgml.{name} does not exist", sqlstate="42883")
            self.pgml_calls.append(name)
            if name in SCORING_FUNCTIONS and node.args:
                self.scored.append(_scored_model(node.args[0]))
        elif qualifier not in ([], ["pg_catalog"]):
            if is_refused_function(name):
                raise Refused(f"permission denied for function {name}")
            raise self.unknown_function(node, ".".join(names))
        elif (
            qualifier
            and name in SQL_SYNTAX_FUNCTIONS
            and node.funcformat == enums.CoercionForm.COERCE_SQL_SYNTAX
        ):
            pass  # trim(BOTH FROM x), EXTRACT(year FROM t), t AT TIME ZONE z, ...
        elif name == "current_setting" and not in_from:
            _current_setting(node)
        elif in_from and name not in TABLE_FUNCTIONS:
            if is_refused_function(name):
                raise Refused(f"permission denied for function {name}")
            if name in FUNCTIONS:
                raise Refused(f"function {name} cannot be used in FROM here", sqlstate="0A000")
            raise self.unknown_function(node, name)
        elif (
            not in_from
            and name not in FUNCTIONS
            and name not in catalog.FUNCTIONS
            and not (name in pgvector.FUNCTIONS and not qualifier)
        ):
            if is_refused_function(name):
                raise Refused(f"permission denied for function {name}")
            raise self.unknown_function(node, name)
        self.children(node, scope)

    def unknown_function(self, node: ast.FuncCall, name: str) -> Refused:
        """PostgreSQL's error for a function it does not have: ``function f(integer) does not
        exist``, the argument types as far as the text tells them."""
        types = [_argument_type(a) for a in node.args or ()]
        shown = f"{name}({', '.join(t for t in types if t)})" if all(types) else name
        error = Refused(f"function {shown} does not exist", sqlstate="42883")
        error.hint = FUNCTION_HINT  # type: ignore[attr-defined]
        return self.placed(error, node.location)

    def operator(self, node: ast.A_Expr, scope: frozenset[str]) -> None:
        names = _names(node.name)
        if len(names) > 1 and names[:-1] != ["pg_catalog"]:
            raise Refused(f"operator does not exist: {'.'.join(names)}", sqlstate="42883")
        self.children(node, scope)

    def sample(self, node: ast.RangeTableSample, scope: frozenset[str]) -> None:
        method = _names(node.method)
        if method not in (["system"], ["bernoulli"]):
            raise Refused(f"tablesample method {'.'.join(method)} does not exist", sqlstate="42704")
        self.children(node, scope)

    def parameter(self, node: ast.ParamRef, scope: frozenset[str]) -> None:
        self.params = max(self.params, node.number or 0)

    def unsupported(self, node: ast.Node, scope: frozenset[str]) -> None:
        kind = type(node).__name__
        raise Refused(f"{kind} is not supported by pgml-sidecar", sqlstate="0A000")


_TYPE_NAMES = {
    "int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
    "float8": "double precision", "bool": "boolean", "varchar": "character varying",
    "bpchar": "character", "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
}  # fmt: skip


def _argument_type(node: Any) -> str | None:
    """The type PostgreSQL would give an argument, when its text alone tells (a constant, a
    cast); None otherwise."""
    if isinstance(node, ast.TypeCast) and node.typeName is not None:
        names = node.typeName.names or ()
        name = names[-1].sval or "" if names else ""
        return _TYPE_NAMES.get(name, name) + ("[]" if node.typeName.arrayBounds else "")
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return "unknown"
        value = node.val
        kinds = {ast.Integer: "integer", ast.Float: "numeric", ast.String: "unknown",
                 ast.Boolean: "boolean"}  # fmt: skip
        return kinds.get(type(value))
    return None


def _current_setting(node: ast.FuncCall) -> None:
    """``current_setting('server_version')`` is answered; DuckDB's settings are not shown."""
    args = node.args or ()
    first = args[0] if args else None
    if not (isinstance(first, ast.A_Const) and isinstance(first.val, ast.String)):
        raise Refused("permission denied for function current_setting")
    name = (first.val.sval or "").lower()
    if name in READ_ONLY_SETTINGS:
        return
    if name in SESSION_SETTINGS:
        raise Refused(
            f"current_setting('{name}') is not supported here; use SHOW {name}", sqlstate="0A000"
        )
    raise Refused(f'permission denied to examine "{name}"')


_HANDLERS: dict[type, Callable[[_QueryCheck, Any, frozenset[str]], None]] = {
    ast.SelectStmt: _QueryCheck.select,
    ast.RangeVar: _QueryCheck.relation,
    ast.RangeFunction: _QueryCheck.range_function,
    ast.FuncCall: _QueryCheck.function,
    ast.A_Expr: _QueryCheck.operator,
    ast.RangeTableSample: _QueryCheck.sample,
    ast.ParamRef: _QueryCheck.parameter,
    ast.RangeTableFunc: _QueryCheck.unsupported,
    ast.JsonTable: _QueryCheck.unsupported,
    ast.IntoClause: _QueryCheck.unsupported,
}


def _scored_model(node: Any) -> ScoredModel:
    """What a ``pgml.predict``'s first argument names, as far as the text says."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ParamRef):
        return ScoredModel(param=node.number or 0)
    if isinstance(node, ast.A_Const) and not node.isnull:
        value = node.val
        if isinstance(value, ast.Integer):
            return ScoredModel(value=value.ival)
        if isinstance(value, ast.String):
            return ScoredModel(value=value.sval)
    return ScoredModel()
