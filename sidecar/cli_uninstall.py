"""The ``uninstall`` command: drop the slot, the publication, the schemas and the local state."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from mirror.errors import SidecarError, SourceSetupError
from sidecar import cli_daemon, config


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "uninstall",
        help="drop the replication slot, the publication, schemas pgml and pgml_scores, and"
        " the mirror",
        description=(
            "Say what pgml-sidecar left behind and drop it, after asking (--yes does not ask):"
            " the replication slot (the source keeps WAL for it while it exists), the"
            " publication, schemas pgml and pgml_scores with every request and score table"
            " (sidecar/sql/uninstall.sql), and with --mirror the local state: the mirror file, its"
            " write-ahead log and the snapshots and models beside it. Stop pgml-sidecar run"
            " first: a slot in use is refused, and so is a mirror open elsewhere. What the role"
            " of --source does not own (the publication and the schemas made by the tables'"
            " owner, in the least-privilege setup) is left, with the SQL its owner runs printed"
            " (--print-sql prints only that). Running it again drops what is left; the config"
            " file, the users file and role pgml_admin are kept."
        ),
    )
    cli_daemon._add(p, "source", "mirror", "publication", "slot")
    p.add_argument("--yes", action="store_true", help="drop without asking")
    p.add_argument(
        "--print-sql",
        action="store_true",
        help="print, and run nothing, the SQL the owner of the publication and of schemas"
        " pgml and pgml_scores runs to drop them",
    )
    p.set_defaults(run=_uninstall)


def _uninstall(args: argparse.Namespace) -> int:
    from replicator import source
    from sidecar import uninstall

    settings = cli_daemon._settings(args)
    if args.print_sql:
        with source.connect(settings["source"]) if settings["source"] else nullcontext() as conn:
            print(uninstall.owner_script(conn, publication=settings["publication"]), end="")
        return 0
    cli_daemon._required(settings, "source")
    mirror = Path(settings["mirror"]) if settings["mirror"] else None
    with source.connect(settings["source"]) as conn:
        found = uninstall.survey(
            conn, slot=settings["slot"], publication=settings["publication"], mirror=mirror
        )
        uninstall.check_idle(found, mirror)
        where = f"{config.masked(settings['source'])}" + (f" and beside {mirror}" if mirror else "")
        if found.empty():
            print(f"nothing to drop in {where}: pgml-sidecar is not installed there")
            return 0
        droppable, for_owners = found.droppable(), found.for_owners()
        if droppable:
            print("pgml-sidecar uninstall will drop:")
            print("".join(f"  {line}\n" for line in droppable), end="")
        if for_owners:
            print("and leave, for their owner to drop (the SQL follows):")
            print("".join(f"  {line}\n" for line in for_owners), end="")
        if mirror is None:
            print("no --mirror: the local state (mirror, snapshots, models) is kept")
        if droppable and not args.yes and not _confirmed():
            raise SidecarError("nothing dropped: answer y to drop, or pass --yes not to be asked")
        uninstall.drop(conn, found)
        if droppable:
            print("dropped" + (": the rest is for its owner" if for_owners else ""))
        if for_owners:
            if found.for_owners_sql():
                print()
                print(uninstall.owner_script(conn, publication=settings["publication"]), end="")
            raise SourceSetupError(found.owners_error())
    return 0


def _confirmed() -> bool:
    print("Drop them? [y/N] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not answer:
        print()
    return answer.strip().lower() in ("y", "yes")
