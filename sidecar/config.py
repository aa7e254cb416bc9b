"""Settings of ``run``, ``init`` and ``status``: flags, then environment, then a TOML file.

Every setting has a flag (``--metrics-port``), an environment variable
(``PGML_SIDECAR_METRICS_PORT``) and a key in the config file (``metrics_port = 9464``). Secrets
never come from flags or the file: the endpoint password from ``PGML_SIDECAR_ENDPOINT_PASSWORD``
or the file named by ``password_file``, the source password from ``PGPASSWORD`` or
``~/.pgpass`` (libpq reads them), so they never show in ``ps``, logs or ``status``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mirror.errors import ConfigError
from predictor.time_settings import TimeSetting
from sidecar import masking

ENV_PREFIX = "PGML_SIDECAR_"


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    kind: type
    default: Any
    help: str


SETTINGS = [
    Setting("source", str, None, "libpq connection string of the source database"),
    Setting("mirror", str, None, "path of the DuckDB mirror file"),
    Setting("tables", str, "", "comma-separated tables to mirror, as schema.table"),
    Setting("publication", str, "pgml_sidecar", "publication name"),
    Setting("slot", str, "pgml_sidecar", "replication slot name"),
    Setting("kafka", str, None, "Kafka bootstrap servers: consume Debezium's topics instead"),
    Setting("topic_prefix", str, None, "the Debezium connector's topic.prefix"),
    Setting("group_id", str, "pgml-sidecar", "Kafka consumer group"),
    Setting("kafka_config", str, None, "Kafka client properties file (sasl.*, ssl.*)"),
    Setting("host", str, "127.0.0.1", "address of the SQL endpoint"),
    Setting("port", int, 6433, "port of the SQL endpoint"),
    Setting("metrics_host", str, "127.0.0.1", "address of /metrics and /healthz"),
    Setting("metrics_port", int, 9464, "port of /metrics and /healthz"),
    Setting("memory_limit", str, "1GB", "memory DuckDB may use"),
    Setting("checkpoint_rows", int, 100_000, "rows an online model learns between checkpoints"),
    Setting("password_file", str, None, "file holding the SQL endpoint's password"),
    Setting("users_file", str, None, "SQL endpoint users: verifiers and source roles (adduser)"),
    Setting("tls_cert", str, None, "PEM certificate for the SQL endpoint"),
    Setting("tls_key", str, None, "PEM private key of tls_cert"),
    Setting("statement_timeout", str, "0", "SQL endpoint: cancel longer statements ('5s'; 0 off)"),
    Setting("authentication_timeout", str, "10s", "SQL endpoint: time to authenticate ('10s')"),
    Setting("training_time_limit", str, "1h", "stop longer trainings ('30min'; 0 none)"),
    Setting("endpoint_dsn", str, None, "how the source reaches the endpoint (for pgml.predict)"),
    Setting(
        "replica_identity_full",
        bool,
        False,
        "set REPLICA IDENTITY FULL on a mirrored table without a replica identity (no primary"
        " key), instead of refusing it: published as it is, it refuses the application's UPDATE"
        " and DELETE. FULL writes each UPDATE's and DELETE's whole old row to the WAL; a primary"
        " key is cheaper",
    ),
]
_BY_NAME = {s.name: s for s in SETTINGS}


def load(flags: Mapping[str, Any], config_file: str | None) -> dict[str, Any]:
    """Resolve every setting: a flag given wins, then the environment, then the file."""
    from_file = _read(Path(config_file)) if config_file else {}
    resolved: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for setting in SETTINGS:
        value = flags.get(setting.name)
        where = f"--{setting.name.replace('_', '-')}"
        if value is None:
            env = os.environ.get(ENV_PREFIX + setting.name.upper())
            value, where = (env, ENV_PREFIX + setting.name.upper()) if env else (None, where)
        if value is None and setting.name in from_file:
            value, where = from_file[setting.name], f"{config_file}: {setting.name}"
        if value is None:
            value = setting.default
        resolved[setting.name] = _typed(setting, value, where)
        origins[setting.name] = where
    if resolved["source"]:
        check_dsn(resolved["source"], origins["source"])
    for name in ("source", "endpoint_dsn"):
        dsn, env = resolved[name], ENV_PREFIX + name.upper()
        if dsn and masking.has_password(dsn) and origins[name] != env:
            raise ConfigError(
                f"the {name} connection string holds a password: keep it out of flags and"
                f" files; use PGPASSWORD, ~/.pgpass, or {env} in the environment"
            )
    return resolved


def check_dsn(dsn: str, where: str = "--source") -> None:
    """Refuse a connection string libpq cannot read, saying how to write one."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{where} is not a valid connection string: {reason}; write it as key=value pairs"
            " (host=db dbname=shop user=sidecar) or as a postgresql:// URI"
        ) from None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config file {path}: {exc.strerror}; fix the path given to --config"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for key in data:
        if key in ("password", "endpoint_password", "source_password"):
            raise ConfigError(
                f"{path}: {key} does not belong in the config file; set"
                " PGML_SIDECAR_ENDPOINT_PASSWORD or password_file (and PGPASSWORD for the source)"
            )
        if key not in _BY_NAME and key != "chroma":  # [[chroma]]: sidecar.chroma_config
            raise ConfigError(
                f"{path}: unknown setting {key!r}; the settings are: {', '.join(_BY_NAME)}"
            )
    return data


def _typed(setting: Setting, value: Any, where: str) -> Any:
    if value is None:
        return None
    if setting.name == "tables" and isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if setting.kind is bool:
        return _boolean(value, where)
    try:
        return setting.kind(value)
    except (TypeError, ValueError):
        wanted = "a whole number" if setting.kind is int else f"a {setting.kind.__name__}"
        raise ConfigError(f"{where} must be {wanted}, not {value!r}; give {wanted}") from None


def _boolean(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{where} must be true or false, not {value!r}")


TRAINING_TIME_LIMIT = TimeSetting("training_time_limit", "s", 0, 2_147_483_647)
"""The longest a training may run (killed past it): the default and the most a request gets."""


def training_time_limit(value: str | int) -> int:
    """Seconds from a ``training_time_limit`` value ('1h', '30min', 90; 0: no limit)."""
    return TRAINING_TIME_LIMIT.parse_setting(value, "'30min', '2h' or 0 (none)")


def masked(dsn: str) -> str:
    """A connection string fit for logs and ``status``: any password replaced."""
    return masking.mask(dsn)
