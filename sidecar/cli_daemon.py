"""The ``init``, ``run`` and ``status`` commands."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.errors import ConfigError, SourceError
from sidecar import config, masking
from sidecar.metrics import REPLICATION_LAG_ALERT_SECONDS, RETAINED_WAL_ALERT_BYTES

if TYPE_CHECKING:
    from predictor.chroma_sync import ChromaTarget
    from sidecar.daemon import DaemonSettings

log = logging.getLogger("pgml_sidecar")

STATUS_UNKNOWN = 3
"""Exit code of ``status`` when it cannot look: a bad flag or setting (1 degraded, 2 down)."""
_CONFIG_HELP = "TOML file with the settings (flags and PGML_SIDECAR_* variables win over it)"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser(
        "init",
        help="install schema pgml (control table, pgml.train) and the publication in the source",
        description=(
            "Install sidecar/sql/install.sql into the source (schema pgml with the control table"
            " pgml.training_requests and the functions pgml.train, pgml.deploy, pgml.writeback and"
            " pgml.predict; schema pgml_scores), idempotently; create the publication for the"
            " tables and the control table. All in one transaction: a refused init leaves"
            " nothing behind. Run as the tables' owner (it needs CREATE on the database and"
            " ownership of the tables, no superuser, no extension), or least-privilege: give"
            " --print-sql the sidecar role's --source and the --tables, have the tables' owner"
            " run what it prints through psql, then run init as the sidecar's role, which"
            " then only checks. A table without a replica identity is refused (see"
            " --replica-identity-full)."
        ),
    )
    _add(init, "source", "tables", "publication", "endpoint_dsn", "replica_identity_full")
    init.add_argument(
        "--print-sql",
        action="store_true",
        help="print, and run nothing, the SQL the tables' owner runs so that the role of"
        " --source needs nothing but REPLICATION: schemas pgml and pgml_scores, the grants"
        " that role needs, the publication of --tables and the control table, in that order"
        " (with --source, fitted to what the database already has)",
    )
    init.set_defaults(run=_init)

    run = commands.add_parser(
        "run",
        help="the daemon: replicate, carry out pgml.train() requests, write scores back, serve SQL",
        description=(
            "Mirror the tables, carry out pgml.train() and pgml.writeback() requests made in the"
            " source, keep pgml_scores.<project> in the source up to date, serve the SQL endpoint"
            " and Prometheus metrics, until SIGINT or SIGTERM. A table without a replica"
            " identity is refused at start (see --replica-identity-full); one that loses it"
            " while published shows in /healthz, status and the metrics."
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
        description=(
            "Read the source (the slot, the database's other slots with the WAL they retain,"
            " each project's last request) and the running daemon's /healthz (its parts, lag,"
            " published tables without a replica identity, deployed models); print a summary"
            " ending with a verdict, or JSON with --json."
        ),
        epilog=(
            "Exit codes: 0 ok: the daemon answers and all its parts run, the slot is active,"
            f" replication lag is under {REPLICATION_LAG_ALERT_SECONDS} s and the slot retains"
            f" under {RETAINED_WAL_ALERT_BYTES // 1024**3} GiB of WAL (the alerts' thresholds),"
            " every published table has a replica identity; 1 degraded: the daemon answers but"
            " one of those is not so, or the source does not answer; 2 down: no daemon answers"
            " at --metrics-host:--metrics-port; 3 status could not look (a bad flag or"
            " setting)."
        ),
    )
    _add(status, "source", "slot", "kafka", "topic_prefix", "group_id", "metrics_host",
         "metrics_port")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_status, usage_exit_code=STATUS_UNKNOWN)


def _add(parser: argparse.ArgumentParser, *names: str) -> None:
    parser.add_argument("--config", help=_CONFIG_HELP)
    for name in names:
        setting = next(s for s in config.SETTINGS if s.name == name)
        flag = "--" + name.replace("_", "-")
        env = config.ENV_PREFIX + name.upper()
        if setting.kind is bool:  # a switch: on when given, else the environment or file
            parser.add_argument(
                flag, dest=name, action="store_const", const=True, default=None,
                help=f"{setting.help} (env {env}=1)",
            )  # fmt: skip
            continue
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
    if args.print_sql:  # with --source, fitted to the database as it is
        with source.connect(settings["source"]) if settings["source"] else nullcontext() as found:
            names = _tables(settings)
            script = source_schema.setup_script(
                found,
                role=found.info.user if found else source_schema.DEFAULT_ROLE,
                publication=settings["publication"],
                tables=source.resolve_tables(found, names)
                if found
                else [source.split_table_name(n) for n in names],
                replica_identity_full=settings["replica_identity_full"],
            )
        print(script, end="")
        return 0
    _required(settings, "source")
    with source.connect(settings["source"]) as conn:
        source.check_wal_level(conn)
        with conn.transaction():  # all or nothing: a refused init leaves nothing behind
            tables = source.resolve_tables(conn, _tables(settings)) if settings["tables"] else []
            checked = source.check_replica_identity(
                conn, settings["publication"], tables,
                set_full=settings["replica_identity_full"],
            )  # fmt: skip
            version = source_schema.install(conn, endpoint_dsn=settings["endpoint_dsn"])
            source.ensure_publication(
                conn, settings["publication"], [*tables, source_schema.CONTROL_TABLE]
            )
        if advice := source_schema.admin_role_advice(conn):
            print(f"note: {advice}")
    if checked.set_full:
        print(f"set REPLICA IDENTITY FULL on {', '.join(m.name for m in checked.set_full)}")
    if checked.published:
        print(f"warning: {source.replica_identity_advice(checked.published, published=True)}")
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
    settings = _settings(args)  # a bad setting is said at once, before the long imports
    _required(settings, "source", "mirror")
    if args.check:
        return _check(settings, args)
    from sidecar import chroma_config
    from sidecar.daemon import Daemon

    daemon = Daemon(_daemon_settings(settings, chroma_config.targets(args.config)))
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


def _daemon_settings(
    settings: dict[str, Any], chroma: Sequence[ChromaTarget] = ()
) -> DaemonSettings:
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
        replica_identity_full=settings["replica_identity_full"],
        kafka=settings["kafka"],
        topic_prefix=settings["topic_prefix"],
        group_id=settings["group_id"],
        kafka_config=read_client_properties(Path(settings["kafka_config"]))
        if settings["kafka_config"]
        else {},
        chroma=tuple(chroma),
    )


def _check(settings: dict[str, Any], args: argparse.Namespace) -> int:
    """``run --check``: refuse what ``run`` would refuse before it connects, print the rest."""
    from predictor.server import check_settings, tls_context
    from predictor.users import read_users
    from sidecar import chroma_config

    chroma = chroma_config.targets(args.config)
    daemon = _daemon_settings(settings, chroma)  # reads the password and Kafka properties files
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
    for target in chroma:
        print(
            f"[[chroma]] {target.table} -> collection {target.collection} ({target.space})"
            f" on {target.where}"
        )
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
    from sidecar import status_report

    try:
        settings = _settings(args)
        _required(settings, "source")
    except ConfigError as exc:
        exc.exit_code = STATUS_UNKNOWN  # not "down": status could not look
        raise
    report: dict[str, Any] = {"source": config.masked(settings["source"])}
    if settings["kafka"]:  # Debezium's slot is not the sidecar's: Kafka's lag is
        report["kafka"] = {
            "bootstrap": settings["kafka"], "topic_prefix": settings["topic_prefix"],
            "group_id": settings["group_id"],
        }  # fmt: skip
    url = f"http://{settings['metrics_host']}:{settings['metrics_port']}/healthz"
    report["daemon"] = _read_health(url)
    # with the Debezium source (as the daemon says, if not the flags) the sidecar has no slot
    slot = None if settings["kafka"] or "kafka" in report["daemon"] else settings["slot"]
    try:
        report |= _read_source(settings, slot)
    except SourceError as exc:  # the daemon may still answer: status goes on
        report["source_error"] = str(exc)
    _add_deployed(report)
    status_report.judge(report)
    report = masking.mask_values(report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print("\n".join(status_report.lines(report)))
    if "source_error" in report:
        print(f"error: {report['source_error']}", file=sys.stderr)
    return int(report["exit_code"])


def _read_source(settings: dict[str, Any], own: str | None) -> dict[str, Any]:
    """The slot ``own`` (None: none), the database's other slots, each project's last
    request."""
    from replicator import source

    found: dict[str, Any] = {}
    with source.connect(settings["source"]) as conn:
        if own is not None:
            slot = conn.execute(
                "select active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                " from pg_replication_slots where slot_name = %s",
                (own,),
            ).fetchone()
            found["slot"] = (
                {"name": own, "active": slot[0], "lag_bytes": slot[1],
                 "retained_wal_bytes": slot[2]}
                if slot else {"name": own, "missing": True}
            )  # fmt: skip
        found["other_slots"] = _other_slots(conn, own)
        if conn.execute("select to_regclass('pgml.training_requests')").fetchone() != (None,):
            rows = conn.execute(  # notice: not in early installs of schema version 3
                "select distinct on (project_name) project_name, kind, status, error, model_id,"
                " requested_at, to_jsonb(r)->>'notice' from pgml.training_requests r"
                " where project_name is not null order by project_name, id desc"
            ).fetchall()
            found["projects"] = [
                {"project": r[0], "last_request": r[1], "status": r[2], "error": r[3],
                 "model_id": r[4], "requested_at": r[5].isoformat(), "notice": r[6]}
                for r in rows
            ]  # fmt: skip
    return found


def _read_health(url: str) -> dict[str, Any]:
    """The daemon's /healthz (503 while degraded: the body says why), or why there is none."""
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        return {"status": "unreachable", "url": url, "error": str(reason)}
    try:
        health = json.loads(body)
    except ValueError:
        health = None
    if not isinstance(health, dict) or "status" not in health:
        return {"status": "unreachable", "url": url, "error": "the answer is no pgml-sidecar's"}
    return health


def _add_deployed(report: dict[str, Any]) -> None:
    """Give each project the model the daemon has deployed for it (when the daemon says)."""
    deployed = report["daemon"].get("deployed")
    if deployed is None:
        return
    projects = report.setdefault("projects", [])
    named = {p["project"] for p in projects}
    projects += [
        {"project": name, "last_request": None, "status": None, "error": None, "model_id": None,
         "requested_at": None, "notice": None}
        for name in sorted(set(deployed) - named)
    ]  # fmt: skip
    for project in projects:
        project["deployed"] = deployed.get(project["project"])


def _other_slots(conn: Any, slot: str | None) -> list[dict[str, Any]]:
    """Logical slots of the database but the sidecar's ``slot`` (None: it has none): left by
    earlier runs (another --slot), or someone else's; each keeps WAL on the source while it
    exists."""
    from replicator import source

    return [
        {"name": s.name, "plugin": s.plugin, "active": s.active_pid is not None,
         "retained_wal_bytes": s.retained_wal_bytes}
        for s in source.database_slots(conn) if s.name != slot
    ]  # fmt: skip
