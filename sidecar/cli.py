"""The ``pgml-sidecar`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import duckdb
import psycopg

from mirror.errors import ConfigError, MirrorOutOfMemory, SidecarError
from sidecar import (
    cli_chroma,
    cli_daemon,
    cli_serve,
    cli_train,
    cli_uninstall,
    cli_users,
    config,
    masking,
)

log = logging.getLogger("pgml_sidecar")

DESCRIPTION = """\
PostgresML-style machine learning beside a PostgreSQL database that cannot load extensions.
pgml-sidecar mirrors production tables into a local DuckDB file through logical replication
(or from Debezium's Kafka topics).
"""
EXIT_CODES = (
    "Exit codes: 0 done; 1 an error, printed as one line 'error: ...' that says what to do"
    " next; 2 a bad flag or setting; 130 interrupted (status has its own: see status --help)."
)


REPLICA_IDENTITY_HELP = (
    "set REPLICA IDENTITY FULL on a mirrored table that has no replica identity (no primary"
    " key, REPLICA IDENTITY NOTHING, or each such partition), instead of refusing it: once"
    " published, such a table refuses the application's UPDATE and DELETE. FULL writes the"
    " whole old row to the WAL on every UPDATE and DELETE; a primary key is cheaper"
    " (env PGML_SIDECAR_REPLICA_IDENTITY_FULL=1)"
)


def _replicate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "replicate",
        help="mirror source tables into a DuckDB file and keep it fresh",
        description=(
            "Create a publication and a logical replication slot on the source (if missing),"
            " copy the tables under the slot's snapshot, then stream every change into the"
            " DuckDB mirror. Each batch of changes is committed with the source position it"
            " ends at, so a restart (or kill -9) resumes exactly where it stopped. The source"
            " needs wal_level = logical and a user with the REPLICATION attribute. A table"
            " without a replica identity (no primary key) is refused: once published, it would"
            " refuse the application's UPDATE and DELETE (see --replica-identity-full)."
        ),
    )
    p.add_argument(
        "--source",
        default=os.environ.get("PGML_SIDECAR_SOURCE"),
        help="libpq connection string of the source database (env PGML_SIDECAR_SOURCE);"
        " put the password in PGPASSWORD or ~/.pgpass, not here",
    )
    p.add_argument(
        "--mirror",
        default=os.environ.get("PGML_SIDECAR_MIRROR"),
        help="path of the DuckDB mirror file, created if missing (env PGML_SIDECAR_MIRROR)",
    )
    p.add_argument(
        "--tables",
        default=os.environ.get("PGML_SIDECAR_TABLES", ""),
        help="comma-separated tables to mirror, as schema.table (default schema public);"
        " defaults to the tables already in the publication",
    )
    p.add_argument(
        "--publication", default="pgml_sidecar", help="publication name (default %(default)s)"
    )
    p.add_argument(
        "--slot", default="pgml_sidecar", help="replication slot name (default %(default)s)"
    )
    p.add_argument(
        "--memory-limit",
        default=os.environ.get("PGML_SIDECAR_MEMORY_LIMIT", "256MB"),
        help="memory DuckDB may use for the mirror in this process (default %(default)s; env"
        " PGML_SIDECAR_MEMORY_LIMIT); raise it if DuckDB reports it is out of memory",
    )
    p.add_argument(
        "--replica-identity-full",
        action="store_true",
        default=os.environ.get("PGML_SIDECAR_REPLICA_IDENTITY_FULL", "") in ("1", "true"),
        help=REPLICA_IDENTITY_HELP,
    )
    p.add_argument(
        "--catch-up",
        action="store_true",
        help="exit 0 once everything committed on the source before the start is in the mirror"
        " (with --kafka: every message in the topics when they were assigned)",
    )
    kafka = p.add_argument_group(
        "Debezium through Kafka",
        "Consume the topics a Debezium PostgreSQL connector writes (<prefix>.<schema>.<table>,"
        " JSON converter, with or without schemas) instead of a replication slot. --source,"
        " --publication and --slot are then not used. Offsets are stored in the mirror with the"
        " changes, so a restart resumes exactly; several sidecars in one --group-id split the"
        " partitions, each into its own mirror.",
    )
    kafka.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        default=os.environ.get("PGML_SIDECAR_KAFKA"),
        help="Kafka bootstrap servers, host:port[,host:port] (env PGML_SIDECAR_KAFKA)",
    )
    kafka.add_argument(
        "--topic-prefix",
        default=os.environ.get("PGML_SIDECAR_TOPIC_PREFIX"),
        help="the connector's topic.prefix (env PGML_SIDECAR_TOPIC_PREFIX)",
    )
    kafka.add_argument(
        "--group-id",
        default=os.environ.get("PGML_SIDECAR_GROUP_ID", "pgml-sidecar"),
        help="Kafka consumer group (default %(default)s; env PGML_SIDECAR_GROUP_ID)",
    )
    kafka.add_argument(
        "--kafka-config",
        metavar="FILE",
        default=os.environ.get("PGML_SIDECAR_KAFKA_CONFIG"),
        help="Kafka client properties file (key=value: security.protocol, sasl.*, ssl.*),"
        " read by librdkafka; the place for Kafka credentials",
    )
    p.set_defaults(run=_replicate)


def _replicate(args: argparse.Namespace) -> int:
    from replicator.kafka import KafkaReplicator, KafkaSettings, read_client_properties
    from replicator.replicate import ReplicationSettings, Replicator

    if not args.mirror:
        raise ConfigError("no mirror file: pass --mirror PATH or set PGML_SIDECAR_MIRROR")
    masking.remember_settings({"source": args.source, "kafka_config": args.kafka_config})
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    replicator: Replicator | KafkaReplicator
    if args.kafka:
        if not args.topic_prefix:
            raise ConfigError("--kafka needs --topic-prefix: the Debezium connector's topic.prefix")
        properties = read_client_properties(Path(args.kafka_config)) if args.kafka_config else {}
        replicator = KafkaReplicator(
            KafkaSettings(
                bootstrap=args.kafka, topic_prefix=args.topic_prefix,
                mirror_path=Path(args.mirror), tables=tables, group_id=args.group_id,
                catch_up=args.catch_up, memory_limit=args.memory_limit,
                consumer_config=properties,
            )
        )  # fmt: skip
    else:
        if not args.source:
            raise ConfigError("no source database: pass --source DSN or set PGML_SIDECAR_SOURCE")
        config.check_dsn(args.source)
        replicator = Replicator(
            ReplicationSettings(
                source_dsn=args.source, mirror_path=Path(args.mirror), tables=tables,
                publication=args.publication, slot=args.slot, catch_up=args.catch_up,
                memory_limit=args.memory_limit, replica_identity_full=args.replica_identity_full,
            )
        )  # fmt: skip
    _stop_on_signals(replicator.stopping.set)
    try:
        stats = replicator.run()
    finally:
        replicator.close()
    if args.kafka:
        log.info(
            "stopped: %d messages, %d rows applied, %d dead letters",
            stats.messages, stats.rows_applied, sum(stats.dead_letters.values()),
        )  # fmt: skip
    else:
        log.info(
            "stopped: %d rows in %d transactions applied, %d reconnects",
            stats.rows_applied, stats.transactions, stats.reconnects,
        )  # fmt: skip
    return 0


def _demo_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="run the whole flow on a throwaway local PostgreSQL, no configuration",
        description=(
            "Start a throwaway PostgreSQL, create and fill a sample table, replicate it into a"
            " DuckDB mirror, change some rows, catch up again and print what the mirror holds."
        ),
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to keep the throwaway database and the mirror (default: a temporary directory)",
    )
    p.add_argument("--rows", type=int, default=20_000, help="rows in the sample table")
    p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from sidecar.demo import run_demo

    return run_demo(workdir=args.workdir, rows=args.rows)


def _stop_on_signals(stop: object) -> None:
    def handler(signum: int, frame: object) -> None:
        log.info("received %s: committing and stopping", signal.Signals(signum).name)
        stop()  # type: ignore[operator]

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class CommandLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where the help is.

    It exits with 2, or with the parser's default ``usage_exit_code`` (``status`` has 3).
    Every command's help ends with the exit codes (unless it has its own epilog) and takes
    ``-v`` before or after the command.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", EXIT_CODES)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
            help="log debugging detail, and the traceback of an unexpected error",
        )  # fmt: skip

    def error(self, message: str) -> NoReturn:
        code = self.get_default("usage_exit_code") or 2
        self.exit(code, masking.mask(f"error: {message}; see {self.prog} --help") + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="pgml-sidecar", description=DESCRIPTION)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _replicate_parser(commands)
    cli_train.add_parsers(commands)
    cli_serve.add_parser(commands)
    cli_daemon.add_parsers(commands)
    cli_users.add_parsers(commands)
    cli_uninstall.add_parsers(commands)
    cli_chroma.add_parsers(commands)
    _demo_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    masking.install()  # every log line and uncaught error goes out masked
    masking.remember_environment()
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except MirrorOutOfMemory as exc:
        _print_error(f"{exc}; raise --memory-limit (or PGML_SIDECAR_MEMORY_LIMIT) and run again")
        return exc.exit_code
    except SidecarError as exc:
        _print_error(str(exc))
        return exc.exit_code
    except psycopg.Error as exc:  # a source that refuses a statement
        _print_error(f"the source refused: {_first_line(exc)}; grant what it asks for, or see"
                     " sidecar/sql/README.md for the privileges the sidecar needs")  # fmt: skip
        return 1
    except duckdb.OutOfMemoryException as exc:
        _print_error(
            f"the mirror ran out of memory ({_first_line(exc)}); raise --memory-limit (or"
            " PGML_SIDECAR_MEMORY_LIMIT) and run again"
        )
        return 1
    except OSError as exc:  # a file or a port the command needs
        where = f" {exc.filename}" if exc.filename else ""
        _print_error(f"{exc.strerror or exc}:{where}; check the paths and addresses given")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, the traceback with --verbose
        log.debug("unexpected error", exc_info=True)
        _print_error(
            f"unexpected {type(exc).__name__}: {_first_line(exc)}; run again with --verbose"
            " for the traceback, and report it"
        )
        return 1


def _print_error(message: str) -> None:
    print(f"error: {masking.mask(message)}", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


if __name__ == "__main__":
    sys.exit(main())
