"""The endpoint's users file and ``pgml-sidecar adduser``: verifiers a SCRAM client accepts."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import scramp

from mirror.errors import ConfigError
from predictor.scram import AuthenticationFailed, ScramExchange, ScramVerifier
from predictor.users import EndpointUser, UsersFile, add_user, parse_users, read_users

CHECKOUT = Path(__file__).resolve().parents[2]
VERIFIER = ScramVerifier.from_password("s3cret", salt=b"0123456789abcdef").text()


def logs_in(verifier: ScramVerifier, password: str) -> bool:
    """Run a whole SCRAM exchange: scramp as the client, our server side with ``verifier``."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], "ignored", password)
    server = ScramExchange(verifier)
    first = server.server_first(client.get_client_first().encode())
    client.set_server_first(first.decode())
    try:
        final = server.server_final(client.get_client_final().encode())
    except AuthenticationFailed:
        return False
    client.set_server_final(final.decode())  # raises if the server did not prove the verifier
    return True


def test_a_users_file_like_pgbouncers() -> None:
    text = f'''
; PgBouncer-style comments
# and these
"alice" "{VERIFIER}"
  "report ""writer"""   "{VERIFIER}"   "analyst"

"app.svc" "{VERIFIER}" "app"
'''
    users = parse_users(text)
    assert list(users) == ["alice", 'report "writer"', "app.svc"]
    assert users["alice"].role == "alice"  # the role defaults to the name
    assert users['report "writer"'].role == "analyst"
    assert users["app.svc"] == EndpointUser("app.svc", ScramVerifier.parse(VERIFIER), "app")
    assert logs_in(users["alice"].verifier, "s3cret")
    assert not logs_in(users["alice"].verifier, "s3cret ")
    assert users['report "writer"'].line() == f'"report ""writer""" "{VERIFIER}" "analyst"'
    assert users["alice"].line() == f'"alice" "{VERIFIER}"'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice SCRAM-SHA-256$4096:x", "line 3: expected a field in double quotes at column 1"),
        ('"alice"', "line 3: expected 2 or 3 fields"),
        (f'"a" "{VERIFIER}" "r" "extra"', "line 3: expected 2 or 3 fields"),
        (f'"alice" "{VERIFIER}"x', "line 3: expected a space after the field ending"),
        (f'"alice"x "{VERIFIER}"', "line 3: expected a space after the field ending at column 7"),
        (f'"alice" "{VERIFIER}" ; a comment', "line 3: expected a field in double quotes"),
        (f'"" "{VERIFIER}"', "line 3: the user name is empty"),
        (f'"alice" "{VERIFIER}" ""', "line 3: the source role of alice is empty"),
        (f'"al\tice" "{VERIFIER}"', "line 3: a name holds a control character"),
        ('"alice" "md5d41d8cd98f00b204e9800998ecf8427e"', "line 3: the password of alice is not"),
        ('"alice" "SCRAM-SHA-256$0:AAAA$AAAA:AAAA"', "line 3: the verifier of alice is not"),
        (f'"bob" "{VERIFIER}"', "line 3: user bob is already on line 2"),
        ('"alice" "unterminated', "line 3: expected a field in double quotes"),
    ],
)
def test_a_wrong_line_is_named_and_no_password_is_shown(line: str, message: str) -> None:
    text = f'; users\n"bob" "{VERIFIER}"\n{line}\n'
    with pytest.raises(ConfigError, match=r"^users file, line 3") as caught:
        parse_users(text)
    assert message in str(caught.value)
    assert "md5d41d8" not in str(caught.value) and VERIFIER not in str(caught.value)


def test_a_plain_password_is_refused_without_being_repeated(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text('"alice" "correct horse battery"\n')
    with pytest.raises(ConfigError) as caught:
        read_users(path)
    assert str(caught.value).startswith(f"users file {path}, line 1: the password of alice")
    assert "correct horse" not in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        read_users(tmp_path / "missing.txt")


def test_add_user_writes_a_private_file_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    user, new = add_user(path, "alice", "first password", iterations=1000)
    assert new and user.role == "alice" and user.verifier.iterations == 1000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with path.open("a") as out:
        out.write("; the reporting tool\n")
    add_user(path, "reports", "r", role="analyst")
    user, new = add_user(path, "alice", "second password")
    assert not new
    lines = path.read_text().splitlines()
    assert lines[0].startswith('"alice" "SCRAM-SHA-256$4096:')  # replaced where it was
    assert lines[1:] == ["; the reporting tool", lines[2]] and lines[2].endswith('"analyst"')
    users = read_users(path)
    assert logs_in(users["alice"].verifier, "second password")
    assert not logs_in(users["alice"].verifier, "first password")
    assert logs_in(users["reports"].verifier, "r")
    add_user(path, "reports", "r2")  # a new password keeps the role
    assert read_users(path)["reports"].role == "analyst"
    assert "first password" not in path.read_text() and "second" not in path.read_text()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left

    for name, password in (("", "x"), ("a\nb", "x"), ("alice", "")):
        with pytest.raises(ConfigError):
            add_user(path, name, password)
    path.write_text('"broken\n')
    with pytest.raises(ConfigError, match="line 1"):
        add_user(path, "carol", "x")
    assert path.read_text() == '"broken\n'  # a file it cannot read is never rewritten


def adduser(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "adduser", *args],
        input=stdin, capture_output=True, text=True, cwd=CHECKOUT, timeout=60,
        env={**os.environ, "PGML_SIDECAR_USERS_FILE": ""},
    )  # fmt: skip


def test_the_adduser_command_reads_the_password_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    done = adduser("alice", "--users-file", str(path), stdin="pässwörd\nignored\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"added endpoint user alice (source role alice) in {path}"
    done = adduser("bi", "--role", "analyst", "--users-file", str(path), stdin="x\r\n")
    assert done.returncode == 0, done.stderr
    assert "(source role analyst)" in done.stdout
    users = read_users(path)
    assert logs_in(users["alice"].verifier, "pässwörd")
    assert logs_in(users["bi"].verifier, "x")
    assert "pässwörd" not in done.stdout + done.stderr

    done = adduser("carol", "--users-file", str(path), stdin="")
    assert done.returncode != 0 and "the password is empty" in done.stderr
    assert "Traceback" not in done.stderr
    done = adduser("carol", stdin="pw\n")
    assert done.returncode != 0 and "no users file" in done.stderr
    done = adduser("carol", "--password", "pw", "--users-file", str(path), stdin="pw\n")
    assert done.returncode != 0  # there is no such flag: passwords never go on a command line
    assert set(read_users(path)) == {"alice", "bi"}


def test_the_endpoint_reads_the_file_again_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.txt"
    add_user(path, "alice", "one")
    users = UsersFile(path)
    assert users.lookup("bob") is None
    add_user(path, "bob", "two", role="app")
    found = users.lookup("bob")
    assert found is not None and found.role == "app"
    assert logs_in(users.verifier("bob"), "two")

    good = path.read_text()
    path.write_text(good + '"carol" "plain text"\n')
    with caplog.at_level(logging.WARNING, logger="pgml_sidecar"):
        assert users.lookup("bob") is not None  # the last good file stays in force
    assert any("line 3" in r.getMessage() for r in caplog.records)
    assert all("plain text" not in r.getMessage() for r in caplog.records)
    assert users.lookup("carol") is None
    path.write_text(good.replace('"bob"', '"robert"'))
    assert users.lookup("bob") is None and users.lookup("robert") is not None


def test_an_unknown_user_fails_like_a_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    add_user(path, "alice", "pw")
    users = UsersFile(path)
    mock = users.verifier("mallory")
    assert mock == users.verifier("mallory")  # the same salt each time, as for a real user
    assert mock.salt != users.verifier("trudy").salt
    assert not logs_in(mock, "pw") and not logs_in(mock, "")
    assert logs_in(users.verifier("alice"), "pw")
