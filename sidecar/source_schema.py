"""What pgml-sidecar installs into the source database: schemas pgml and pgml_scores.

The SQL ships in the package, in ``sidecar/sql/``: ``install.sql`` creates the current
version from nothing and is idempotent; ``upgrade/<n>_to_<n+1>.sql`` changes what ``create ...
if not exists`` cannot (columns, constraints, data) and records version n+1 in
``pgml.settings``. :func:`install` applies ``install.sql`` to a fresh database, the upgrade
steps and then ``install.sql`` (which replaces the functions) to an older one, and nothing to
the current version; always in one transaction.

Version 3 records who asks: the ``pgml.*`` functions run as the role that installed them,
stamp each request with the calling role (``requested_by``), refuse a relation it may not
SELECT and a project it does not own; members of :data:`ADMIN_ROLE` may change every project.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable

import psycopg
from psycopg import sql

from mirror.errors import ConfigError, SidecarError, SourceSetupError
from replicator import source

SCHEMA_VERSION = 3
"""The version ``sidecar/sql/install.sql`` creates."""

ADMIN_ROLE = "pgml_admin"
"""Members of this role may change every project; install.sql creates it when it may."""

DEFAULT_ROLE = "pgml_sidecar"
"""The sidecar's role in sidecar/sql/role.sql's examples, and in ``init --print-sql`` without
--source."""

SQL_DIR: Traversable = resources.files("sidecar") / "sql"
"""Package data: install.sql, upgrade/, uninstall.sql, role.sql and their README.md."""
CONTROL_TABLE = ("pgml", "training_requests")
SIDECAR_WRITES = (
    ("pgml", "settings"),
    ("pgml", "drift_events"),
    ("pgml", "projects"),
    ("pgml", "snapshots"),
    ("pgml", "models"),
    ("pgml", "deployments"),
)
"""Tables in schema pgml the sidecar writes: never published (nor any pgml_scores table)."""

_LOCK = "select pg_advisory_xact_lock(hashtext('pgml-sidecar schema'))"


def installed_version(conn: psycopg.Connection) -> int | None:
    """Return the schema version installed in the source database, or None if there is none."""
    row = conn.execute("select to_regclass('pgml.settings') is not null").fetchone()
    if not row or not row[0]:
        return None
    try:
        found = conn.execute(
            "select value from pgml.settings where name = 'schema_version'"
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceSetupError(
            f"cannot read pgml.settings: {_first_line(exc)}; grant SELECT on pgml.settings"
            " (and USAGE on schema pgml) to the sidecar's role, see sidecar/sql/role.sql"
        ) from None
    if found is None or not str(found[0]).isdigit():
        raise SourceSetupError(
            "pgml.settings holds no valid schema_version: the pgml schema was changed by hand;"
            " run sidecar/sql/uninstall.sql and install again"
        )
    return int(found[0])


def upgrade_steps(
    installed: int, *, target: int = SCHEMA_VERSION, sql_dir: Traversable = SQL_DIR
) -> list[Traversable]:
    """Return the upgrade scripts that take version ``installed`` to ``target``, in order."""
    if installed > target:
        raise SourceSetupError(
            f"the source has pgml-sidecar schema version {installed}, newer than this"
            f" release's {target}: use the release that installed it"
        )
    steps = [sql_dir / "upgrade" / f"{n}_to_{n + 1}.sql" for n in range(installed, target)]
    for step in steps:
        if not step.is_file():
            raise SidecarError(f"{step} is missing: this pgml-sidecar install is incomplete")
    return steps


def install(conn: psycopg.Connection, *, endpoint_dsn: str | None = None) -> int:
    """Install or upgrade schemas pgml and pgml_scores in one transaction; return the version.

    ``endpoint_dsn`` (a libpq DSN, or the name of a foreign server holding it with a user
    mapping) is where ``pgml.predict`` reaches the sidecar's SQL endpoint through dblink. At
    the current version only ``endpoint_dsn`` is written, so a role that did not install the
    schema (see sidecar/sql/role.sql) can run this too.
    """
    if endpoint_dsn is not None and not endpoint_dsn.strip():
        raise ConfigError("the endpoint DSN for pgml.predict is empty")
    script = _read(SQL_DIR / "install.sql")
    try:
        with conn.transaction():
            conn.execute(_LOCK)
            installed = installed_version(conn)
            if installed != SCHEMA_VERSION:
                for step in upgrade_steps(installed) if installed is not None else []:
                    conn.execute(_read(step))
                conn.execute(script)
            if endpoint_dsn is not None:
                conn.execute(
                    "insert into pgml.settings (name, value) values ('endpoint_dsn', %s)"
                    " on conflict (name) do update set value = excluded.value",
                    [endpoint_dsn.strip()],
                )
            version = installed_version(conn)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceSetupError(_privilege_advice(conn, "install", exc)) from None
    except (psycopg.errors.ObjectNotInPrerequisiteState, psycopg.errors.DuplicateSchema) as exc:
        raise SourceSetupError(_with_hint(exc)) from None
    if version is None:  # pragma: no cover - install.sql always records it
        raise SidecarError("sidecar/sql/install.sql recorded no schema_version")
    return version


def install_script(installed: int | None) -> str:
    """Return the SQL :func:`install` runs on a database holding version ``installed``.

    For a DBA to read or run by hand: the upgrade steps, then install.sql, which also creates
    role pgml_admin when the role running it may. ``pgml-sidecar init --print-sql`` prints it
    within :func:`setup_script`.
    """
    return _schema_sql(installed) + _admin_role_sql()


def _schema_sql(installed: int | None) -> str:
    if installed == SCHEMA_VERSION:
        return f"-- pgml-sidecar schema version {SCHEMA_VERSION} is installed already\n"
    steps = upgrade_steps(installed) if installed is not None else []
    return "\n".join([_read(step) for step in steps] + [_read(SQL_DIR / "install.sql")])


def setup_script(
    conn: psycopg.Connection | None,
    *,
    role: str,
    publication: str,
    tables: Sequence[tuple[str, str]],
    replica_identity_full: bool = False,
) -> str:
    """Everything an owner runs so that ``role``, with REPLICATION and nothing more, can run
    the sidecar: schemas pgml and pgml_scores, REPLICA IDENTITY FULL where asked, the grants
    ``role`` needs, then the publication of ``tables`` and the control table. In this order,
    in one transaction (``pgml-sidecar init --print-sql``).

    With a connection (as ``role``) the script fits the database as it is: the upgrade steps
    it needs, the tables the publication lacks; a table without a replica identity is
    refused as ``init`` refuses it.
    """
    installed = installed_version(conn) if conn is not None else None
    identity = ""
    if conn is not None:
        plan = source.replica_identity_plan(conn, publication, tables)
        if plan.new and not replica_identity_full:
            raise SourceSetupError(
                source.replica_identity_advice(plan.new, published=False)
                + ", or pass --replica-identity-full to have that in the printed SQL"
            )
        fix = plan.to_fix() if replica_identity_full else []
        identity = "".join(f"alter table {m.quoted} replica identity full;\n" for m in fix)
    elif replica_identity_full:
        raise ConfigError(
            "--print-sql --replica-identity-full needs --source, to find the tables without"
            " a replica identity"
        )
    published = [*tables, CONTROL_TABLE]
    if identity:
        identity = "\n-- Tables without a replica identity (--replica-identity-full)\n" + identity
    parts = [
        _setup_header(conn, role, publication, tables),
        "-- 1. Schemas pgml (the control table pgml.training_requests, pgml.train, ...) and"
        " pgml_scores\n",
        _schema_sql(installed),
        identity,
        f"\n-- 2. What {role} reads and writes\n",
        _grants_sql(conn, role, tables),
        "\n-- 3. The publication: the tables and the control table\n",
        source.publication_script(conn, publication, published),
        _admin_role_sql(),
    ]
    return "".join(parts)


def _setup_header(
    conn: psycopg.Connection | None, role: str, publication: str, tables: Sequence[tuple[str, str]]
) -> str:
    names = ", ".join(f"{s}.{t}" for s, t in tables) or "the tables"
    database = conn.info.dbname if conn is not None else "DATABASE"
    owners = _owners(conn, publication, tables) if conn is not None else []
    who = (
        f"as {owners[0]}, "
        if len(owners) == 1
        else f"as a member of each of {', '.join(owners)}, "
        if owners
        else ""
    )
    lines = [
        "-- pgml-sidecar init --print-sql: run this in one transaction, stopping at the first"
        " error,",
        f"-- {who}the owner of {names} (who may create schemas in the database):",
        f"--     psql -d {database} -v ON_ERROR_STOP=1 --single-transaction -f this-file.sql",
        f"-- then, as {role}: pgml-sidecar init (it checks all of this) and pgml-sidecar run.",
    ]
    if conn is None or not source.may_replicate(conn, role):
        lines += [
            f"-- {role} also needs the REPLICATION attribute, which only an administrator gives:",
            f"--     ALTER ROLE {role} REPLICATION;  -- RDS, Aurora: GRANT rds_replication TO"
            f" {role};",
        ]
    return "\n".join(lines) + "\n\n"


def _owners(
    conn: psycopg.Connection, publication: str, tables: Sequence[tuple[str, str]]
) -> list[str]:
    """The roles that own what the script changes: the tables, the publication, schema pgml."""
    rows = conn.execute(
        "select pg_get_userbyid(relowner) from pg_class"
        " where oid = any(select format('%%I.%%I', s, t)::regclass"
        "                 from unnest(%s::text[], %s::text[]) as x(s, t))"
        " union select pg_get_userbyid(pubowner) from pg_publication where pubname = %s"
        " union select pg_get_userbyid(nspowner) from pg_namespace where nspname = 'pgml'"
        " order by 1",
        [[s for s, _ in tables], [t for _, t in tables], publication],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _grants_sql(
    conn: psycopg.Connection | None, role: str, tables: Sequence[tuple[str, str]]
) -> str:
    """What the sidecar's role needs (sidecar/sql/role.sql grants the same): SELECT on the tables to
    mirror, the outcome columns of the requests, the tables in pgml it writes, pgml_scores."""
    grantee = source.quoted_name(conn, role)
    lines = [
        f"grant usage on schema {source.quoted_name(conn, schema)} to {grantee};"
        for schema in sorted({s for s, _ in tables})
        if conn is None or not _has_usage(conn, role, schema)
    ]
    if tables:
        names = ", ".join(source.quoted_name(conn, s, t) for s, t in tables)
        lines.append(f"grant select on table {names} to {grantee};")
    lines += [
        f"grant usage on schema pgml to {grantee};",
        "grant select, update (status, error, model_id, finished_at)"
        f" on table pgml.training_requests to {grantee};",
        f"grant select, insert, update, delete on table pgml.projects to {grantee};",
        f"grant select, insert, update on table pgml.settings to {grantee};",
        f"grant select, insert on table pgml.drift_events to {grantee};",
        "grant select, insert, update, delete on table pgml.snapshots, pgml.models,"
        f" pgml.deployments to {grantee};",
        f"grant usage, create on schema pgml_scores to {grantee};",
    ]
    return "\n".join(lines) + "\n"


def _has_usage(conn: psycopg.Connection, role: str, schema: str) -> bool:
    row = conn.execute("select has_schema_privilege(%s, %s, 'usage')", [role, schema]).fetchone()
    return bool(row and row[0])


def admin_role_advice(conn: psycopg.Connection) -> str | None:
    """Say how to create role pgml_admin if it does not exist (None if it does)."""
    row = conn.execute("select to_regrole(%s) is not null", [ADMIN_ROLE]).fetchone()
    if row and row[0]:
        return None
    return (
        f"role {ADMIN_ROLE} does not exist and {conn.info.user} may not create roles, so only"
        " each project's owner may change it; as a role with CREATEROLE run:"
        f" CREATE ROLE {ADMIN_ROLE} NOLOGIN; and GRANT {ADMIN_ROLE} TO the administrators"
    )


def _admin_role_sql() -> str:
    return (
        f"\n-- Members of {ADMIN_ROLE} may change every project (install.sql creates the role"
        " when it may):\n"
        f"-- CREATE ROLE {ADMIN_ROLE} NOLOGIN;\n"
        f"-- GRANT {ADMIN_ROLE} TO <each role that administers projects>;\n"
    )


def uninstall(conn: psycopg.Connection) -> None:
    """Drop schemas pgml and pgml_scores, with every score table, in one transaction."""
    script = _read(SQL_DIR / "uninstall.sql")
    try:
        with conn.transaction():
            conn.execute(script)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceSetupError(_privilege_advice(conn, "uninstall", exc)) from None


def uninstall_script() -> str:
    """The SQL :func:`uninstall` runs, for the owner of schema pgml to run by hand."""
    return _read(SQL_DIR / "uninstall.sql")


def add_control_table(conn: psycopg.Connection, publication: str) -> bool:
    """Add pgml.training_requests to the publication unless it is there; True if added.

    Refuses a publication that would carry the sidecar's own writes back to it
    (``FOR ALL TABLES``, or one holding pgml.settings, pgml.drift_events, pgml.projects or a
    pgml_scores table).
    """
    with conn.transaction():
        row = conn.execute(
            "select puballtables from pg_publication where pubname = %s", [publication]
        ).fetchone()
        if row is None:
            raise SourceSetupError(f"publication {publication} does not exist")
        members = {
            (r[0], r[1])
            for r in conn.execute(
                "select schemaname, tablename from pg_publication_tables where pubname = %s",
                [publication],
            ).fetchall()
        }
        looping = sorted(
            f"{s}.{t}" for s, t in members if s == "pgml_scores" or (s, t) in SIDECAR_WRITES
        )
        if row[0] or looping:
            what = "is FOR ALL TABLES" if row[0] else "holds " + ", ".join(looping)
            raise SourceSetupError(
                f"publication {publication} {what}, so the sidecar's own writes would come"
                " back to it; publish only the tables to mirror and pgml.training_requests"
            )
        if CONTROL_TABLE in members:
            return False
        exists = conn.execute("select to_regclass('pgml.training_requests')").fetchone()
        if not exists or exists[0] is None:
            raise SourceSetupError(
                "pgml.training_requests does not exist: install the pgml schema first"
                " (pgml-sidecar init, or psql -f sidecar/sql/install.sql)"
            )
        try:
            conn.execute(
                sql.SQL("alter publication {} add table {}").format(
                    sql.Identifier(publication), sql.Identifier(*CONTROL_TABLE)
                )
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SourceSetupError(
                f"cannot add pgml.training_requests to publication {publication}:"
                f" {_first_line(exc)}; have the owner of both run ALTER PUBLICATION"
                f" {publication} ADD TABLE pgml.training_requests"
            ) from None
    return True


def _read(path: Traversable) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SidecarError(
            f"{path} is missing: pgml-sidecar reads its SQL from sidecar/sql/ in its package;"
            " install it again"
        ) from None


def _privilege_advice(
    conn: psycopg.Connection, action: str, exc: psycopg.errors.InsufficientPrivilege
) -> str:
    """Say which privilege the role lacks to install or uninstall, and how to get it."""
    info = conn.info
    user, database = info.user, info.dbname
    reason = _first_line(exc)
    if action == "uninstall":
        advice = (
            "have the owner of schema pgml run what `pgml-sidecar uninstall --print-sql`"
            " prints, or grant that role to " + user
        )
    elif "permission denied for database" in reason or "must be owner" in reason:
        advice = (
            "have the tables' owner run what `pgml-sidecar init --print-sql` prints (with the"
            " same --source and --tables) through psql, then run init again"
        )
    else:
        advice = f"see sidecar/sql/role.sql for the privileges {user} needs"
    where = f"pgml-sidecar's schema in database {database} as {user}"
    return f"cannot {action} {where}: {reason}; {advice}"


def _with_hint(exc: psycopg.Error) -> str:
    hint = exc.diag.message_hint
    return _first_line(exc) + (f" ({hint})" if hint else "")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
