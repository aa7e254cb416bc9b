"""A throwaway PostgreSQL cluster with logical replication, for the demo and the tests."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mirror.errors import SidecarError

PG_BIN_ENV = "PGML_SIDECAR_PG_BIN"
SUPERUSER = "postgres"
OS_USER = "postgres"
SOCKET_PATH_LIMIT = 100
STOP_MODES = ("smart", "fast", "immediate")
START_TIMEOUT_S = 60

_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "100",
    "listen_addresses": "'127.0.0.1'",
    "wal_sender_timeout": "'60s'",
    "logging_collector": "off",
}
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

_HBA = """\
# written by pgml-sidecar's LocalPostgres: a throwaway cluster, trust on loopback only
local   all           all                  trust
host    all           all    127.0.0.1/32  trust
local   replication   all                  trust
host    replication   all    127.0.0.1/32  trust
"""

NOT_FOUND = (
    "PostgreSQL server binaries not found: install Debian's postgresql package"
    " (apt-get install postgresql)"
)


def find_bin_dir() -> Path:
    """Return the PostgreSQL bin directory: $PGML_SIDECAR_PG_BIN, else the highest Debian one."""
    override = os.environ.get(PG_BIN_ENV)
    if override:
        if not (Path(override) / "postgres").is_file():
            raise SidecarError(f"{PG_BIN_ENV}={override} holds no postgres binary: fix or unset it")
        return Path(override)
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres") if p.is_file()]
    if not found:
        raise SidecarError(NOT_FOUND)
    return max(found, key=_major_version)


def _major_version(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name)) or (0,)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """A PostgreSQL cluster in ``workdir/data``, listening on 127.0.0.1, trusting every login.

    As root the server runs as the ``postgres`` OS user (it refuses to run as root) and the
    workdir is handed to that user; otherwise it runs as the current user. The superuser
    role is ``postgres`` either way.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        fast: bool = True,
        bin_dir: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.bin_dir = bin_dir if bin_dir is not None else find_bin_dir()
        self.superuser = SUPERUSER
        self.fast = fast
        self._port_given = port is not None
        self.port = port if port is not None else free_port()
        self._as_root = os.geteuid() == 0
        self._socket_dir: Path | None = None
        self._own_socket_dir = False

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """Return a libpq connection string for ``dbname`` over TCP."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, dbname=dbname, user=user or self.superuser
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its connection string."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def is_running(self) -> bool:
        """Tell whether a server runs on the data directory."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        return self._pg("pg_ctl", "status", "-D", str(self.data_dir)).returncode == 0

    def start(self) -> None:
        """Create the cluster if missing, start it and wait until it accepts connections."""
        if self.is_running():
            return
        self._prepare_workdir()
        if not self.data_dir.exists():
            self._initdb()
        failure = self._start_once()
        for _retry in range(2):
            if failure is None or self._port_given or "could not bind" not in failure:
                break
            self.port = free_port()  # lost a race for the port we picked: pick another
            failure = self._start_once()
        if failure is not None:
            self.stop("immediate")  # pg_ctl may have timed out with a postmaster still starting
            raise SidecarError(
                f"PostgreSQL in {self.data_dir} did not start on port {self.port}: {failure}"
            )

    def _start_once(self) -> str | None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._write_settings()
        args = ["start", "-w", "-t", str(START_TIMEOUT_S), "-D", str(self.data_dir)]
        result = self._pg("pg_ctl", *args, "-l", str(self.log_path))
        if result.returncode == 0:
            return None
        reason = result.stderr.strip() or result.stdout.strip()
        return f"{reason}\n--- tail of {self.log_path} ---\n{self._log_since(log_offset)}"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs; calling it again does nothing."""
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {', '.join(STOP_MODES)}, not {mode!r}")
        if self.is_running():
            result = self._pg("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir))
            if result.returncode != 0 and self.is_running():
                raise SidecarError(
                    f"PostgreSQL in {self.data_dir} did not stop: {result.stderr.strip()}"
                )
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self._own_socket_dir = False

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        socket_path_len = len(str(self.workdir)) + len("/.s.PGSQL.65535")
        if socket_path_len <= SOCKET_PATH_LIMIT:
            self._socket_dir = self.workdir
        elif self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-", dir="/tmp"))
            self._own_socket_dir = True
        if self._as_root:
            owner = _os_user()
            for path in (self.workdir, self._socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            if self._run("test", "-w", str(self.workdir)).returncode != 0:
                raise SidecarError(
                    f"the {OS_USER} OS user cannot write to {self.workdir}: give it access to"
                    " every parent directory (chmod o+x) or use a workdir under /tmp"
                )

    def _initdb(self) -> None:
        args = ["initdb", "-D", str(self.data_dir), "--auth=trust", "-U", self.superuser]
        args += ["--encoding=UTF8", "--locale=C"]
        if self.fast:
            args.append("--no-sync")
        result = self._pg(*args)
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise SidecarError(f"initdb failed in {self.data_dir}: {result.stderr.strip()}")
        (self.data_dir / "pg_hba.conf").write_text(_HBA)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'sidecar.conf'\n")

    def _write_settings(self) -> None:
        settings = dict(_SETTINGS, port=str(self.port))
        settings["unix_socket_directories"] = _quote(str(self._socket_dir))
        if self.fast:
            settings.update(_FAST_SETTINGS)
        lines = [f"{name} = {value}" for name, value in settings.items()]
        path = self.data_dir / "sidecar.conf"
        path.write_text("# written by LocalPostgres on every start\n" + "\n".join(lines) + "\n")
        if self._as_root:
            owner = _os_user()
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _log_since(self, offset: int, limit: int = 40) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-limit:])

    def _pg(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(str(self.bin_dir / program), *args)

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command as the server's OS user; the caller checks the return code."""
        if self._as_root:
            command = ("runuser", "-u", OS_USER, "--", *command)
        return subprocess.run(
            command,
            cwd=self.workdir if self.workdir.exists() else "/",
            capture_output=True,
            text=True,
            check=False,
        )


def _os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise SidecarError(
            f"running as root but there is no {OS_USER} OS user to run PostgreSQL:"
            " install Debian's postgresql package or run as a normal user"
        ) from None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
