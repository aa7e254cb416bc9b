"""The ``init``, ``run`` and ``status`` commands."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.errors import ConfigError
from sidecar import config, masking

if TYPE_CHECKING:
    from sidecar.daemon import DaemonSettings

log = logging.getLogger("pgml_sidecar")

_CONFIG_HELP = "TOML file with the settings (flags and PGML_SIDECAR_* variables win over it)"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser(
        "init",
        help="install schema pgml (control table, pgml.train) and the publication in the source",
        description=(
            "Install sql/install.sql into the source (schema pgml with the control table"
            " pgml.training_requests and the functions pgml.train, pgml.writeback and"
            " pgml.predict; schema pgml_scores), idempotently; create the publication for the"
            " tables and the control table. Needs CREATE on the database, no superuser and no"
            " extension."
        ),
    )
    _add(init, "source", "tables", "publication", "endpoint_dsn")
    init.add_argument(
        "--print-sql", action="store_true", help="print the SQL init would run, for a DBA"
    )
    init.set_defaults(run=_init)

    run = commands.add_parser(
        "run",
        help="the daemon: replicate, carry out pgml.train() requests, write scores back, serve SQL",
        description=(
            "Mirror the tables, carry out pgml.train() and pgml.writeback() requests made in the"
            " source, keep pgml_scores.<project> in the source up to date, serve the SQL endpoint"
            " and Prometheus metrics, until SIGINT or SIGTERM."
        ),
    )
    _add(run, *(s.name for s in config.SETTINGS if s.name != "endpoint_dsn"))
    run.add_argument(
        "--check",
        action="store_true",
        help="check the settings (file, environment, flags) and the files they name, print"
        " them with secrets masked, and exit without connecting to anything",
    )
    run.set_defaults(run=_run)

    status = commands.add_parser(
        "status",
        help="replication slot (or Kafka) lag, requests and projects, and the daemon's health",
        description="Read the source and the running daemon's /healthz; print a summary.",
    )
    _add(status, "source", "slot", "kafka", "topic_prefix", "group_id", "metrics_host",
         "metrics_port")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_status)


def _add(parser: argparse.ArgumentParser, *names: str) -> None:
    parser.add_argument("--config", help=_CONFIG_HELP)
    for name in names:
        setting = next(s for s in config.SETTINGS if s.name == name)
        flag = "--" + name.replace("_", "-")
        env = config.ENV_PREFIX + name.upper()
        default = f"; default {setting.default}" if setting.default not in (None, "") else ""
        parser.add_argument(
            flag, dest=name, type=setting.kind, default=None,
            help=f"{setting.help} (env {env}{default})",
        )  # fmt: skip


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    flags = {s.name: getattr(args, s.name, None) for s in config.SETTINGS}
    settings = config.load(flags, args.config)
    masking.remember_settings(settings)  # hidden wherever they would show from now on
    return settings


def _required(settings: dict[str, Any], *names: str) -> None:
    for name in names:
        if not settings[name]:
            env = config.ENV_PREFIX + name.upper()
            raise ConfigError(
                f"no {name}: pass --{name.replace('_', '-')}, set {env} or put {name} in --config"
            )


def _tables(settings: dict[str, Any]) -> list[str]:
    return [t.strip() for t in settings["tables"].split(",") if t.strip()]


def _init(args: argparse.Namespace) -> int:
    from replicator import source
    from sidecar import source_schema

    settings = _settings(args)
    if args.print_sql:  # with --source, from the version installed there
        with source.connect(settings["source"]) if settings["source"] else nullcontext() as found:
            installed = source_schema.installed_version(found) if found else None
        print(source_schema.install_script(installed), end="")
        return 0
    _required(settings, "source")
    with source.connect(settings["source"]) as conn:
        source.check_wal_level(conn)
        version = source_schema.install(conn, endpoint_dsn=settings["endpoint_dsn"])
        if advice := source_schema.admin_role_advice(conn):
            print(f"note: {advice}")
        tables = source.resolve_tables(conn, _tables(settings)) if settings["tables"] else []
        source.ensure_publication(
            conn, settings["publication"], [*tables, ("pgml", "training_requests")]
        )
    print(
        f"installed pgml schema version {version} in {config.masked(settings['source'])};"
        f" publication {settings['publication']} covers"
        f" {', '.join('.'.join(t) for t in tables) or 'no tables yet'} and"
        " pgml.training_requests"
    )
    print("next: pgml-sidecar run --source ... --mirror PATH")
    return 0


def _run(args: argparse.Namespace) -> int:
    stopping = StopSignals()  # first: a SIGTERM while it starts stops it, never half-way
    from sidecar.daemon import Daemon

    settings = _settings(args)
    _required(settings, "source", "mirror")
    if args.check:
        return _check(settings)
    daemon = Daemon(_daemon_settings(settings))
    stopping.relay(daemon.stop_event)
    log.info(
        "running: source %s, mirror %s, SQL on %s:%d",
        config.masked(settings["source"]), settings["mirror"], settings["host"],
        settings["port"],
    )  # fmt: skip
    if daemon.stop_event.is_set():
        daemon.stop()  # asked to stop while it was being built: start nothing
    else:
        daemon.run()
    log.info("stopped")
    return 0


def _daemon_settings(settings: dict[str, Any]) -> DaemonSettings:
    """What the daemon needs from resolved settings: the files they name are read here."""
    from predictor.server import read_password
    from replicator.kafka import read_client_properties
    from sidecar.daemon import DaemonSettings

    password_file = Path(settings["password_file"]) if settings["password_file"] else None
    return DaemonSettings(
        source_dsn=settings["source"],
        mirror_path=Path(settings["mirror"]),
        tables=_tables(settings),
        publication=settings["publication"],
        slot=settings["slot"],
        host=settings["host"],
        port=settings["port"],
        password=read_password(password_file),
        users_file=Path(settings["users_file"]) if settings["users_file"] else None,
        tls_cert=Path(settings["tls_cert"]) if settings["tls_cert"] else None,
        tls_key=Path(settings["tls_key"]) if settings["tls_key"] else None,
        statement_timeout=settings["statement_timeout"],
        authentication_timeout=settings["authentication_timeout"],
        training_time_limit=settings["training_time_limit"],
        metrics_host=settings["metrics_host"],
        metrics_port=settings["metrics_port"],
        memory_limit=settings["memory_limit"],
        checkpoint_rows=settings["checkpoint_rows"],
        kafka=settings["kafka"],
        topic_prefix=settings["topic_prefix"],
        group_id=settings["group_id"],
        kafka_config=read_client_properties(Path(settings["kafka_config"]))
        if settings["kafka_config"]
        else {},
    )


def _check(settings: dict[str, Any]) -> int:
    """``run --check``: refuse what ``run`` would refuse before it connects, print the rest."""
    from predictor.server import check_settings, tls_context
    from predictor.users import read_users

    daemon = _daemon_settings(settings)  # reads the password and Kafka properties files
    config.training_time_limit(daemon.training_time_limit)
    if daemon.kafka and not daemon.topic_prefix:
        raise ConfigError("kafka needs topic_prefix: the Debezium connector's topic.prefix")
    endpoint = daemon.endpoint()
    check_settings(endpoint)
    if endpoint.users_file is not None:
        read_users(endpoint.users_file)
    tls_context(endpoint)
    for name, value in settings.items():
        if name != "endpoint_dsn":  # init's, not run's
            print(f"{name} = {json.dumps(masking.mask_values(value))}")
    print("the settings are valid (nothing was connected to)")
    return 0


class StopSignals:
    """SIGINT and SIGTERM from the moment it is made: each sets every event relayed to."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self._events = [self.asked]
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        for event in list(self._events):
            event.set()

    def relay(self, event: threading.Event) -> None:
        """Set ``event`` too, now if a signal came already."""
        self._events.append(event)
        if self.asked.is_set():
            event.set()


def _status(args: argparse.Namespace) -> int:
    import psycopg

    settings = _settings(args)
    _required(settings, "source")
    report: dict[str, Any] = {"source": config.masked(settings["source"])}
    with psycopg.connect(settings["source"], autocommit=True) as conn:
        if settings["kafka"]:  # Debezium's slot is not the sidecar's: Kafka's lag is
            report["kafka"] = {
                "bootstrap": settings["kafka"], "topic_prefix": settings["topic_prefix"],
                "group_id": settings["group_id"],
            }  # fmt: skip
        slot = (
            None
            if settings["kafka"]
            else conn.execute(
                "select active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                " from pg_replication_slots where slot_name = %s",
                (settings["slot"],),
            ).fetchone()
        )
        if not settings["kafka"]:
            report["slot"] = (
                {"name": settings["slot"], "active": slot[0], "lag_bytes": slot[1],
                 "retained_wal_bytes": slot[2]}
                if slot else {"name": settings["slot"], "missing": True}
            )  # fmt: skip
        if conn.execute("select to_regclass('pgml.training_requests')").fetchone() != (None,):
            rows = conn.execute(  # notice: not in early installs of schema version 3
                "select distinct on (project_name) project_name, kind, status, error, model_id,"
                " requested_at, to_jsonb(r)->>'notice' from pgml.training_requests r"
                " order by project_name, id desc"
            ).fetchall()
            report["projects"] = [
                {"project": r[0], "last_request": r[1], "status": r[2], "error": r[3],
                 "model_id": r[4], "requested_at": r[5].isoformat(), "notice": r[6]}
                for r in rows
            ]  # fmt: skip
    url = f"http://{settings['metrics_host']}:{settings['metrics_port']}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            report["daemon"] = json.loads(reply.read())
    except urllib.error.HTTPError as exc:  # 503: degraded, and the body says why
        report["daemon"] = json.loads(exc.read() or b"{}")
    except OSError as exc:
        report["daemon"] = {"status": "unreachable", "url": url, "error": str(exc)}
    report = masking.mask_values(report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_status(report)
    return 0


def _print_status(report: dict[str, Any]) -> None:
    print(f"source:  {report['source']}")
    daemon = report["daemon"]
    if "kafka" in report:
        kafka = report["kafka"]
        live = daemon.get("kafka", {})
        print(
            f"kafka:   {kafka['topic_prefix']}.* on {kafka['bootstrap']}, group"
            f" {kafka['group_id']}: {live.get('lag_messages', '?')} messages behind,"
            f" {live.get('dead_letters', '?')} dead letters,"
            f" partitions {', '.join(live.get('partitions', [])) or '-'}"
        )
    slot = report.get("slot", {})
    if slot.get("missing"):
        print(f"slot:    {slot['name']} does not exist (run pgml-sidecar run)")
    elif slot:
        print(
            f"slot:    {slot['name']} {'active' if slot['active'] else 'INACTIVE'},"
            f" lag {slot['lag_bytes']} bytes, retains {slot['retained_wal_bytes']} bytes of WAL"
        )
    print(f"daemon:  {daemon.get('status')}" + (f" ({daemon.get('error')})"
          if daemon.get("status") == "unreachable" else ""))  # fmt: skip
    for project in report.get("projects", []):
        line = f"project: {project['project']}: {project['last_request']} {project['status']}"
        if project["model_id"]:
            line += f", model {project['model_id']}"
        if project["error"]:
            line += f", error: {project['error']}"
        print(line)
        for notice in (project.get("notice") or "").splitlines():
            print(f"         notice: {notice}")
