"""The ``serve`` command: the SQL endpoint on a mirror, without replication."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

from mirror.errors import ConfigError, SourceConnectionLost
from mirror.store import Mirror
from sidecar import config

log = logging.getLogger("pgml_sidecar")


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="answer PostgresML's SQL (pgml.train, pgml.predict, ...) over the Postgres protocol",
        description=(
            "Serve the mirror over the PostgreSQL wire protocol: psql, psycopg, dblink and"
            " postgres_fdw connect as to PostgreSQL and run PostgresML's SQL (pgml.load_dataset,"
            " pgml.train, pgml.predict, pgml.deploy, the registry views) and read-only queries"
            " over the mirrored tables. Works on an empty mirror. Without a password the"
            " endpoint trusts every client and listens on loopback only; set"
            " PGML_SIDECAR_ENDPOINT_PASSWORD or --password-file for SCRAM-SHA-256."
        ),
    )
    p.add_argument(
        "--mirror",
        default=os.environ.get("PGML_SIDECAR_MIRROR"),
        help="path of the DuckDB mirror file, created if missing (env PGML_SIDECAR_MIRROR)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=6433, help="port to listen on (default %(default)s)")
    p.add_argument(
        "--password-file",
        type=Path,
        help="file holding the endpoint password (else env PGML_SIDECAR_ENDPOINT_PASSWORD)",
    )
    p.add_argument(
        "--users-file",
        type=Path,
        default=os.environ.get("PGML_SIDECAR_USERS_FILE"),
        help="endpoint users with their own passwords and source roles, written by"
        " pgml-sidecar adduser (env PGML_SIDECAR_USERS_FILE); never trust when given",
    )
    p.add_argument(
        "--source",
        default=os.environ.get("PGML_SIDECAR_SOURCE"),
        help="the source database the mirror copies (env PGML_SIDECAR_SOURCE): each user then"
        " reads only the tables its source role may SELECT there; without it, every user reads"
        " every table of the mirror",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: offer TLS to clients")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    timeouts = (("statement_timeout", "0", "'5s', '100ms'; a number is ms"),
                ("authentication_timeout", "10s", "'10s', '1min'; a number is s"))  # fmt: skip
    for name, default, values in timeouts:
        env = "PGML_SIDECAR_" + name.upper()
        p.add_argument(
            "--" + name.replace("_", "-"), default=os.environ.get(env, default),
            help=f"as PostgreSQL's {name} ({values}; default %(default)s; env {env})",
        )  # fmt: skip
    p.add_argument(
        "--training-time-limit",
        default=os.environ.get("PGML_SIDECAR_TRAINING_TIME_LIMIT", "1h"),
        help="stop a pgml.train that runs longer ('30min', '2h'; a number is s; 0 none; default"
        " %(default)s; env PGML_SIDECAR_TRAINING_TIME_LIMIT); a session may ask for less with"
        " SET pgml.training_time_limit, never for more",
    )
    p.add_argument(
        "--memory-limit",
        default=os.environ.get("PGML_SIDECAR_MEMORY_LIMIT", "1GB"),
        help="memory DuckDB may use (default %(default)s; env PGML_SIDECAR_MEMORY_LIMIT)",
    )
    p.set_defaults(run=serve)


def _check_source(dsn: str) -> None:
    """Refuse a source that retrying cannot make answer; warn of one that does not answer yet."""
    from replicator import source

    config.check_dsn(dsn)
    try:
        source.connect(dsn).close()
    except SourceConnectionLost as exc:
        log.warning("%s; serving anyway, and asking it again for each session's privileges", exc)


def serve(args: argparse.Namespace) -> int:
    stop = threading.Event()  # first: a SIGTERM while it starts stops it, never half-way
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    from predictor.server import EndpointSettings, SqlEndpoint, check_settings, read_password
    from sidecar.config import training_time_limit
    from trainer.train import Trainer, artifact_home

    if not args.mirror:
        raise ConfigError("no mirror file: pass --mirror PATH or set PGML_SIDECAR_MIRROR")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together; give both, or neither")
    settings = EndpointSettings(
        host=args.host,
        port=args.port,
        password=read_password(args.password_file),
        users_file=args.users_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        statement_timeout=args.statement_timeout,
        authentication_timeout=args.authentication_timeout,
    )
    time_limit = training_time_limit(args.training_time_limit)
    check_settings(settings)  # settings first, then the source, then the mirror
    if args.source:
        _check_source(args.source)
    mirror = Mirror(args.mirror, memory_limit=args.memory_limit)
    trainer = Trainer(mirror.con, artifact_home(mirror.path), time_limit=time_limit)
    try:
        endpoint = SqlEndpoint(settings, mirror.con, trainer, source_dsn=args.source)
        mirror.lock_down(allowed_directories=[trainer.home])  # set up: lock DuckDB before clients
        port = endpoint.start()
        trainer.worker.warm()
        print(f"serving {mirror.path} on {settings.host}:{port}; psql -h {settings.host}"
              f" -p {port} -U pgml", flush=True)  # fmt: skip
        stop.wait()
        log.info("stopping the SQL endpoint")
        endpoint.stop()
        trainer.worker.close()  # a fit a client waits for is abandoned, not awaited
        deadline = time.monotonic() + 5
        while endpoint.sessions and time.monotonic() < deadline:  # out of DuckDB before it closes
            time.sleep(0.05)
    finally:
        trainer.close()
        mirror.close()
    return 0
