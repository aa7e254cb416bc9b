"""Who may read a score table in the source: the project's owner and the scored relation's readers.

``pgml_scores.<project>`` holds a prediction for every row of the relation it scores, keyed
like it, and predictions tell what the rows hold (a salary model's scores are close to the
salaries). So exactly these may read it: the project's owner, the relation's owner, and every
grantee of SELECT on the relation itself (PUBLIC included), which lets their members in too,
as the relation does. Column privileges on the relation do not count, and when row-level
security is enabled on the relation its grantees get nothing here (the scores cover every
row). Nobody holds any other privilege on it: what a default privilege granted is revoked.
The sidecar's role owns the table.

:func:`grant_score_table` applies this when the write-back prepares a table and records the
table in the source's ``pgml.projects``; :func:`regrant_score_tables` applies it again to every
recorded table, to follow GRANT and REVOKE on the relations (the daemon runs it every minute),
with what the mirror knows of each project.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import duckdb
import psycopg
from psycopg import sql

from mirror.registry import project_slug
from predictor.ownership import ProjectOwners

log = logging.getLogger("pgml_sidecar")

SCORES = "pgml_scores"

_GRANTEES = """
with rel as (
    select c.relowner, coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner)) as acl,
           c.relrowsecurity
    from pg_catalog.pg_class c where c.oid = pg_catalog.to_regclass(%(relation)s)
),
scores as (
    select c.relowner, coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner)) as acl
    from pg_catalog.pg_class c where c.oid = pg_catalog.to_regclass(%(scores)s)
),
readers as (
    select a.grantee from rel, pg_catalog.aclexplode(rel.acl) a
    where a.privilege_type = 'SELECT' and not rel.relrowsecurity
    union select relowner from rel
    union select oid from pg_catalog.pg_roles where rolname = %(owner)s
),
held as (
    select a.grantee, array_agg(a.privilege_type || case when a.is_grantable then '*' else ''
                                end order by a.privilege_type) as privileges
    from scores, pg_catalog.aclexplode(scores.acl) a
    where a.grantee <> scores.relowner
    group by a.grantee
)
select coalesce(r.grantee, h.grantee) as grantee,
       (select rolname from pg_catalog.pg_roles where oid = coalesce(r.grantee, h.grantee)),
       r.grantee is not null as wanted, coalesce(h.privileges, '{}')
from readers r full join held h on h.grantee = r.grantee
where exists (select from scores)
  and coalesce(r.grantee, h.grantee) <> (select relowner from scores)
"""


def apply_score_grants(
    source: psycopg.Connection, table: str, relation: str, owner: str | None
) -> bool:
    """Make ``pgml_scores.<table>`` readable by exactly those who may read it; True if changed.

    ``relation`` is the scored relation as SQL (``schema.table``, quoted where needed).
    """
    scores = sql.Identifier(SCORES, table)
    params = {"relation": relation, "scores": scores.as_string(source), "owner": owner}
    changed = False
    with source.transaction():
        for grantee, name, wanted, held in source.execute(_GRANTEES, params).fetchall():
            role = sql.SQL("public") if grantee == 0 else sql.Identifier(name)
            if wanted and held == ["SELECT"]:
                continue
            if held:
                source.execute(sql.SQL("revoke all on table {} from {}").format(scores, role))
            if wanted:
                source.execute(sql.SQL("grant select on table {} to {}").format(scores, role))
            changed = True
    return changed


def grant_score_table(
    source: psycopg.Connection,
    mirror: duckdb.DuckDBPyConnection,
    *,
    project: str,
    table: str,
    relation: tuple[str, str],
) -> None:
    """Grant ``pgml_scores.<table>`` (``project``'s scores of ``relation``) to its readers only.

    Called by the write-back once the table exists; records it in ``pgml.projects`` so that
    :func:`regrant_score_tables` keeps it so.
    """
    owner = ProjectOwners(mirror).owner(project)
    row = source.execute("select format('%%I.%%I', %s::text, %s::text)", relation).fetchone()
    assert row is not None
    relation_sql = str(row[0])
    apply_score_grants(source, table, relation_sql, owner)
    try:
        with source.transaction():
            source.execute(
                "insert into pgml.projects (project_name, owner, score_table, scored_relation)"
                " values (%s, %s, %s, %s) on conflict (project_name) do update"
                " set owner = excluded.owner, score_table = excluded.score_table,"
                " scored_relation = excluded.scored_relation, updated_at = now()",
                [project, owner, table, relation_sql],
            )
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege) as exc:
        log.warning(
            "score table %s.%s is granted but not recorded in pgml.projects (%s): run"
            " pgml-sidecar init (schema version 3) and sidecar/sql/role.sql again",
            SCORES, table, _first_line(exc),
        )  # fmt: skip
    except psycopg.errors.UniqueViolation as exc:
        log.warning("score table %s.%s not recorded: %s", SCORES, table, _first_line(exc))


def regrant_score_tables(
    source: psycopg.Connection,
    mirror: duckdb.DuckDBPyConnection,
    relation_of: Callable[[str], tuple[str, str] | None],
) -> int:
    """Apply the grants again to every score table in ``pgml.projects``; return those changed.

    ``pgml.projects`` only lists them: whom a table is granted to comes from the mirror (the
    project's owner, and ``relation_of(project)``, the relation its deployed model scores), and
    only tables the sidecar's role owns, named after their project, are touched. So a row
    changed by hand in the source grants nothing.
    """
    try:
        rows = source.execute(
            "select p.project_name, p.score_table from pgml.projects p"
            " join pg_catalog.pg_class c on c.relname = p.score_table"
            " and c.relnamespace = pg_catalog.to_regnamespace(%s)"
            " and c.relowner = (select oid from pg_catalog.pg_roles where rolname = current_user)",
            [SCORES],
        ).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        return 0
    owners = ProjectOwners(mirror)
    changed = 0
    for project, table in rows:
        relation = relation_of(project) if table == project_slug(project) else None
        if relation is None:
            continue
        found = source.execute("select format('%%I.%%I', %s::text, %s::text)", relation)
        relation_sql = str((found.fetchone() or ("",))[0])
        if apply_score_grants(source, table, relation_sql, owners.owner(project)):
            log.info("score table %s.%s: grants follow %s again", SCORES, table, relation_sql)
            changed += 1
    return changed


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
