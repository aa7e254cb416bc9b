"""The ``adduser`` command: a user of the SQL endpoint, as a SCRAM verifier in the users file."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from mirror.errors import ConfigError
from predictor.scram import DEFAULT_ITERATIONS

USERS_FILE_ENV = "PGML_SIDECAR_USERS_FILE"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "adduser",
        help="add a user of the SQL endpoint (or change its password) in the users file",
        description=(
            "Write NAME's SCRAM-SHA-256 verifier to the users file (created with mode 0600),"
            " mapped to a source role: the endpoint then shows NAME only what that role may"
            " SELECT in the source. The password is read from the terminal (asked twice), or"
            " from the first line of standard input when it is not a terminal; never from a"
            " flag. Adding a name that is there changes its password and role."
        ),
    )
    p.add_argument("name", help="the user name clients log in with")
    p.add_argument(
        "--role", help="the source role whose SELECT privileges the user gets (default: NAME)"
    )
    p.add_argument(
        "--users-file",
        default=os.environ.get(USERS_FILE_ENV),
        help=f"the users file, like PgBouncer's userlist.txt (env {USERS_FILE_ENV})",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help="PBKDF2 iterations of the verifier (default %(default)s, as PostgreSQL)",
    )
    p.set_defaults(run=_adduser)


def _adduser(args: argparse.Namespace) -> int:
    from pathlib import Path

    from predictor.users import add_user

    if not args.users_file:
        raise ConfigError(f"no users file: pass --users-file FILE or set {USERS_FILE_ENV}")
    if args.iterations < 1:
        raise ConfigError("--iterations must be at least 1; leave it out for PostgreSQL's")
    directory = Path(args.users_file).parent
    if not directory.is_dir():  # before the password is asked for
        raise ConfigError(
            f"cannot write users file {args.users_file}: directory {directory} does not exist;"
            " create it, or choose another --users-file"
        )
    password = read_new_password(args.name)
    user, new = add_user(
        Path(args.users_file), args.name, password, role=args.role, iterations=args.iterations
    )
    print(
        f"{'added' if new else 'changed'} endpoint user {user.name} (source role {user.role})"
        f" in {args.users_file}"
    )
    return 0


def read_new_password(name: str) -> str:
    """Ask for a password twice on a terminal, or read the first line of standard input."""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            first = getpass.getpass(f"password for endpoint user {name}: ")
            again = getpass.getpass("the same password again: ")
        except EOFError:
            raise ConfigError("no password given; type it at the prompt") from None
        if first != again:
            raise ConfigError("the two passwords differ, so nothing changed; run it again")
        password = first
    else:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ConfigError(
            "the password is empty, so nothing changed; type it at the prompt, or give it on the"
            " first line of standard input"
        )
    return password
