"""The endpoint's users file: one SCRAM verifier per user, each mapped to a source role.

Like PgBouncer's ``userlist.txt``, one user a line, fields in double quotes (a ``"`` inside a
field is written ``""``)::

    ; comments start with ; or #, blank lines are ignored
    "alice" "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"
    "reports" "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>" "analyst"

The third field is the source role whose privileges the user gets (default: the user's own
name). Only SCRAM-SHA-256 verifiers are accepted, never a password: ``pgml-sidecar adduser``
writes them (:func:`add_user`). A mistake is reported with its line number and never with the
content of a password field.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import ConfigError
from predictor.scram import DEFAULT_ITERATIONS, ScramVerifier

log = logging.getLogger("pgml_sidecar")

_FIELD = re.compile(r'"((?:[^"]|"")*)"')
_COMMENTS = (";", "#")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
"""Characters a name may not hold: they would break or hide a line of the file."""


@dataclass(frozen=True, slots=True)
class EndpointUser:
    """A user of the SQL endpoint: its name, its password's verifier, its source role."""

    name: str
    verifier: ScramVerifier
    role: str

    def line(self) -> str:
        """The user as a line of the users file."""
        fields = [self.name, self.verifier.text()]
        if self.role != self.name:
            fields.append(self.role)
        return " ".join(_quote(f) for f in fields)


def _quote(field: str) -> str:
    return '"' + field.replace('"', '""') + '"'


def parse_users(text: str, *, source: str = "users file") -> dict[str, EndpointUser]:
    """Read a users file's text; raise ConfigError naming ``source`` and the line at fault."""
    users: dict[str, EndpointUser] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(_COMMENTS):
            continue
        where = f"{source}, line {number}"
        fields = _fields(stripped, where)
        if len(fields) not in (2, 3):
            raise ConfigError(
                f'{where}: expected 2 or 3 fields ("name" "SCRAM-SHA-256$..."'
                f' ["source role"]), found {len(fields)}'
            )
        name, password, *role = fields
        if not name:
            raise ConfigError(f"{where}: the user name is empty")
        if _CONTROL.search(name) or (role and _CONTROL.search(role[0])):
            raise ConfigError(f"{where}: a name holds a control character")
        if role and not role[0]:
            raise ConfigError(f"{where}: the source role of {name} is empty")
        if name in users:
            raise ConfigError(f"{where}: user {name} is already on line {lines[name]}")
        if not password.startswith("SCRAM-SHA-256$"):
            raise ConfigError(
                f"{where}: the password of {name} is not a SCRAM-SHA-256 verifier (passwords"
                " are never stored here); write one with pgml-sidecar adduser"
            )
        try:
            verifier = ScramVerifier.parse(password)
        except ValueError as exc:
            raise ConfigError(f"{where}: the verifier of {name} is {exc}") from None
        users[name] = EndpointUser(name, verifier, role[0] if role else name)
        lines[name] = number
    return users


def _fields(line: str, where: str) -> list[str]:
    fields: list[str] = []
    position = 0
    while position < len(line):
        if line[position].isspace():
            position += 1
            continue
        match = _FIELD.match(line, position)
        if match is None:
            raise ConfigError(
                f"{where}: expected a field in double quotes at column {position + 1}"
                ' (write a " inside a field as "")'
            )
        end = match.end()
        if end < len(line) and not line[end].isspace():
            raise ConfigError(f"{where}: expected a space after the field ending at column {end}")
        fields.append(match.group(1).replace('""', '"'))
        position = end
    return fields


def read_users(path: Path) -> dict[str, EndpointUser]:
    """Read a users file; raise ConfigError when it is missing or wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"users file {path} does not exist; write it with pgml-sidecar adduser NAME"
            f" --users-file {path}, or fix --users-file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read users file {path}: {exc}; give this user read access to it"
        ) from None
    _warn_if_readable_by_others(path)
    return parse_users(text, source=f"users file {path}")


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "users file %s can be read by other users of this host (mode %o): chmod 600 it",
            path, mode & 0o777,
        )  # fmt: skip


def add_user(
    path: Path,
    name: str,
    password: str,
    *,
    role: str | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> tuple[EndpointUser, bool]:
    """Add ``name`` to the users file (created, mode 0600) or change its password (and role;
    without ``role`` a known user keeps its own, a new one gets its name).

    Return the user and whether it was new. Other lines, comments included, stay as they are;
    the file is replaced in one rename, so a reader never sees half of it.
    """
    if not name or _CONTROL.search(name):
        raise ConfigError("the user name is empty or holds a control character")
    if role is not None and (not role or _CONTROL.search(role)):
        raise ConfigError("the source role is empty or holds a control character")
    if not password:
        raise ConfigError("the password is empty")
    try:
        verifier = ScramVerifier.from_password(password, iterations=iterations)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read users file {path}: {exc}; give this user read access to it"
        ) from None
    known = parse_users(existing, source=f"users file {path}")  # never rewrite what is wrong
    if role is None:
        role = known[name].role if name in known else name
    user = EndpointUser(name, verifier, role)
    lines = existing.splitlines()
    new = True
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith(_COMMENTS) and _fields(stripped, "")[0] == name:
            lines[index] = user.line()
            new = False
    if new:
        lines.append(user.line())
    try:
        _write_private(path, "\n".join(lines) + "\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot write users file {path}: {exc.strerror or exc}; create its directory, or"
            " choose another --users-file"
        ) from None
    return user, new


def _write_private(path: Path, text: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class UsersFile:
    """A users file the endpoint reads at each login, re-read when it changes on disk.

    A file made wrong by an edit is refused with its line number in the log, and the users
    read before stay in force until it is fixed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users = read_users(path)
        self._stamp = self._stat()
        self._lock = threading.Lock()
        self._mock_key = secrets.token_bytes(32)

    def lookup(self, name: str) -> EndpointUser | None:
        """The user called ``name``, or None."""
        self._reload_if_changed()
        return self._users.get(name)

    def verifier(self, name: str) -> ScramVerifier:
        """The verifier to authenticate ``name`` with.

        An unknown name gets a made-up verifier, the same for the same name while the process
        runs (like PostgreSQL's mock authentication): the exchange then fails exactly like a
        wrong password, and the salt does not tell which names exist.
        """
        user = self.lookup(name)
        if user is not None:
            return user.verifier
        seed = hmac.new(self._mock_key, name.encode(), hashlib.sha256).digest()
        return ScramVerifier(
            salt=seed[:16],
            iterations=DEFAULT_ITERATIONS,
            stored_key=hashlib.sha256(seed + b"stored").digest(),
            server_key=hashlib.sha256(seed + b"server").digest(),
        )

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            found = self.path.stat()
        except OSError:
            return None
        return (found.st_ino, found.st_size, found.st_mtime_ns)

    def _reload_if_changed(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                users = read_users(self.path)
            except ConfigError as exc:
                log.warning("%s; keeping the %d users read before", exc, len(self._users))
                self._stamp = stamp
                return
            self._users, self._stamp = users, stamp
            log.info("users file %s read again: %d users", self.path, len(users))
