"""Leaving the source as it was: what ``pgml-sidecar uninstall`` drops, and who may drop it.

The sidecar leaves four things behind: its replication slot (the server keeps WAL for it for
as long as it exists), its publication, schemas pgml and pgml_scores (with every request and
score table), and its local state (the mirror file, DuckDB's WAL beside it, the snapshots and
models in ``<mirror>.pgml/``). :func:`survey` finds what is there and what the connected role
may drop; :func:`drop` drops that, the slot first; :func:`owner_script` is what the owner of
the rest runs. Each step finds what an earlier one left, so running it again is harmless.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psycopg

from mirror.errors import SidecarError, SlotBusyError
from replicator import source
from sidecar import source_schema
from trainer.train import artifact_home


@dataclass
class Leftovers:
    """What pgml-sidecar left in the source and beside the mirror."""

    slot: source.SlotUse | None = None
    may_drop_slot: bool = False
    """Only a role with REPLICATION (or a superuser) may drop a slot."""
    publication: str | None = None
    publication_tables: list[str] = field(default_factory=list)
    publication_owner: str = ""
    may_drop_publication: bool = False
    schemas: list[str] = field(default_factory=list)
    """pgml (when pgml-sidecar made it, not PostgresML's) and pgml_scores, if there."""
    schema_owners: list[str] = field(default_factory=list)
    may_drop_schemas: bool = False
    score_tables: int = 0
    files: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.slot or self.publication or self.schemas or self.files)

    def droppable(self) -> list[str]:
        """What the connected role will drop, a line each."""
        lines = []
        if self.slot is not None and self.may_drop_slot:
            lines.append(self._slot())
        if self.publication and self.may_drop_publication:
            lines.append(self._publication())
        if self.schemas and self.may_drop_schemas:
            lines.append(self._schemas())
        lines += [_file_line(path) for path in self.files]
        return lines

    def for_owners(self) -> list[str]:
        """What only another role may drop, a line each."""
        lines = []
        if self.slot is not None and not self.may_drop_slot:
            lines.append(f"{self._slot()}: only a role with REPLICATION drops it")
        if self.publication and not self.may_drop_publication:
            lines.append(f"{self._publication()}: owned by {self.publication_owner}")
        if self.schemas and not self.may_drop_schemas:
            lines.append(f"{self._schemas()}: owned by {', '.join(self.schema_owners)}")
        return lines

    def for_owners_sql(self) -> bool:
        """Whether the owner of the publication or the schemas has SQL to run."""
        return bool(
            (self.publication and not self.may_drop_publication)
            or (self.schemas and not self.may_drop_schemas)
        )

    def owners_error(self) -> str:
        """One line: what is left, whose it is, what they run."""
        what = []
        owners: list[str] = []
        if self.publication and not self.may_drop_publication:
            what.append(f"publication {self.publication}")
            owners.append(self.publication_owner)
        if self.schemas and not self.may_drop_schemas:
            what.append("schemas " + " and ".join(self.schemas))
            owners += [o for o in self.schema_owners if o not in owners]
        advice = []
        if what:
            them = "it" if len(owners) == 1 else "them"
            advice.append(
                f"{' and '.join(what)} belong to {', '.join(owners)}: have {them} run the SQL"
                " above through psql (`pgml-sidecar uninstall --print-sql` prints it again)"
            )
        if self.slot is not None and not self.may_drop_slot:
            advice.append(
                f"replication slot {self.slot.name} is dropped only by a role with REPLICATION:"
                " run uninstall as the sidecar's role"
            )
        return "; ".join(advice) + ", then run uninstall again"

    def _slot(self) -> str:
        assert self.slot is not None
        return (
            f"replication slot {self.slot.name}, which retains"
            f" {self.slot.retained_wal_bytes} bytes of WAL"
        )

    def _publication(self) -> str:
        tables = ", ".join(self.publication_tables) or "no tables"
        return f"publication {self.publication} ({tables})"

    def _schemas(self) -> str:
        scores = f"{self.score_tables} score table{'s' if self.score_tables != 1 else ''}"
        return (
            f"schemas {' and '.join(self.schemas)}, with every training request, the pgml.*"
            f" functions and {scores}"
        )


def survey(
    conn: psycopg.Connection, *, slot: str, publication: str, mirror: Path | None
) -> Leftovers:
    """Find what pgml-sidecar left, from the catalogs (which every role may read)."""
    found = Leftovers()
    found.slot = next((s for s in source.database_slots(conn) if s.name == slot), None)
    found.may_drop_slot = source.may_replicate(conn, conn.info.user)
    row = conn.execute(
        "select pg_get_userbyid(pubowner), pg_has_role(pubowner, 'usage')"
        " from pg_publication where pubname = %s",
        [publication],
    ).fetchone()
    if row is not None:
        found.publication, found.publication_owner, found.may_drop_publication = (
            publication, str(row[0]), bool(row[1])
        )  # fmt: skip
        found.publication_tables = [
            f"{s}.{t}" for s, t in source.publication_tables(conn, publication)
        ]
    rows = conn.execute(
        "select n.nspname, pg_get_userbyid(n.nspowner), pg_has_role(n.nspowner, 'usage'),"
        " (select count(*) from pg_class c where c.relnamespace = n.oid and c.relkind = 'r')"
        " from pg_namespace n"
        " where n.nspname = 'pgml_scores' or (n.nspname = 'pgml' and exists ("
        "   select from pg_class c where c.relnamespace = n.oid and c.relname = 'settings'))"
        " order by 1"
    ).fetchall()
    found.schemas = [str(r[0]) for r in rows]
    found.schema_owners = list(dict.fromkeys(str(r[1]) for r in rows))
    found.may_drop_schemas = all(bool(r[2]) for r in rows)
    found.score_tables = sum(int(r[3]) for r in rows if r[0] == "pgml_scores")
    if mirror is not None:
        candidates = [
            mirror,
            mirror.with_name(mirror.name + ".wal"),
            mirror.with_name(mirror.name + ".tmp"),  # DuckDB's spill directory, after a crash
            artifact_home(mirror),
        ]
        found.files = [path for path in candidates if path.exists()]
    return found


def check_idle(found: Leftovers, mirror: Path | None) -> None:
    """Refuse while a sidecar still uses the slot or the mirror: stop it first."""
    if found.slot is not None and found.slot.active_pid:
        raise SlotBusyError(
            f"replication slot {found.slot.name} is in use by process {found.slot.active_pid}"
            " (pgml-sidecar run or replicate still streams from it): stop it, then uninstall"
            " again"
        )
    if mirror is not None and mirror.exists():
        try:
            duckdb.connect(str(mirror), read_only=True).close()
        except duckdb.IOException:
            raise SidecarError(
                f"the mirror {mirror} is open in another process (pgml-sidecar run, serve or"
                " train): stop it, then uninstall again"
            ) from None


def drop(conn: psycopg.Connection, found: Leftovers) -> None:
    """Drop the slot, then what the role may drop in the source (one transaction), then the
    local state."""
    if found.slot is not None and found.may_drop_slot:
        try:
            source.drop_slot(conn, found.slot.name)
        except psycopg.errors.ObjectInUse:
            raise SlotBusyError(
                f"replication slot {found.slot.name} was taken by another process meanwhile:"
                " stop it, then uninstall again"
            ) from None
        except psycopg.errors.UndefinedObject:
            pass  # dropped by someone else meanwhile
    with conn.transaction():
        if found.publication and found.may_drop_publication:
            source.drop_publication(conn, found.publication)
        if found.schemas and found.may_drop_schemas:
            source_schema.uninstall(conn)
    for path in found.files:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def owner_script(conn: psycopg.Connection | None, *, publication: str) -> str:
    """The SQL the owner of the publication and the schemas runs (``uninstall --print-sql``)."""
    found = survey(conn, slot="", publication=publication, mirror=None) if conn else None
    owners = []
    if found is not None:
        owners = list(dict.fromkeys([found.publication_owner, *found.schema_owners]))
        owners = [o for o in owners if o]
    who = f" as {', '.join(owners)}" if owners else " as the owner of the publication and pgml"
    database = conn.info.dbname if conn is not None else "DATABASE"
    return (
        f"-- pgml-sidecar uninstall --print-sql: run this{who}, in one transaction:\n"
        f"--     psql -d {database} -v ON_ERROR_STOP=1 --single-transaction -f this-file.sql\n"
        "-- The replication slot and the mirror are the sidecar's: pgml-sidecar uninstall drops"
        " them.\n"
        f"drop publication if exists {source.quoted_name(conn, publication)};\n\n"
        + source_schema.uninstall_script()
    )


def _file_line(path: Path) -> str:
    if path.name.endswith(".tmp"):
        return f"{path}/ (the mirror's temporary files)"
    if path.is_dir():
        return f"{path}/ (snapshots and models)"
    if path.name.endswith(".wal"):
        return f"{path} (the mirror's write-ahead log)"
    return f"{path} (the mirror)"
