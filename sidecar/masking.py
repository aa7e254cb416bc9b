"""Secrets never printed: one function hides every password form in whatever the sidecar shows.

Passwords reach the sidecar in a keyword DSN (``password=...``), a URI (``postgresql://u:pw@h``,
``?password=``), ``PGPASSWORD``, a ``.pgpass`` file, the endpoint password
(``PGML_SIDECAR_ENDPOINT_PASSWORD`` or ``password_file``) and Kafka's client properties
(``sasl.password``, ``sasl.jaas.config``). :func:`mask` hides them in two ways: by shape (the
value after any ``...password=`` or ``...secret:`` key, a URI's user-info password), and by
value: each secret this process knows (:func:`remember`, :func:`remember_settings`) is hidden
wherever it shows, as is, percent-encoded or escaped, e.g. inside a driver's error message.

The command line prints through it (``init``, ``run``, ``status``, errors), ``/metrics`` and
``/healthz`` answer through it, and :class:`MaskingFilter` passes every log record through it
as a last net.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

MASK = "********"
MIN_LENGTH = 4
"""Shorter secrets are hidden by shape only: hiding every "ab" would garble everything."""

_KEY = r"(?:password|passwd|secret)"
_KEYWORD = re.compile(
    rf"""(?ix)
    (   \b [\w.-]* {_KEY} ['"]? \s* = \s*          # password=, sasl.password=, PGPASSWORD=
      | ['"] [\w.-]* {_KEY} ['"] \s* : \s*          # "password": (JSON, a repr)
      | \b [\w.-]* [._] {_KEY} \s* : \s*           # ssl.key.password: (properties)
    )
    ( '(?:[^'\\]|\\.)*' | "(?:[^"\\]|\\.)*" | [^\s&'"]+ )
    """
)
_URI = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/?#@:]*:)([^\s@/]*)@")
_known: set[str] = set()
_lock = threading.Lock()


def mask(text: str) -> str:
    """``text`` with every password in it replaced by ``********``."""
    text = _KEYWORD.sub(_hide_value, text)
    text = _URI.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _hide_value(match: re.Match[str]) -> str:
    return f"{match.group(1)}{MASK}"


def mask_values(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string masked; keys are kept."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {k: mask_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_values(v) for v in value]
    return value


def has_password(dsn: str) -> bool:
    """Whether a connection string (keyword or URI form) carries a password."""
    return bool(_KEYWORD.search(dsn) or _URI.search(dsn))


def remember(secret: str | None) -> None:
    """Hide ``secret`` wherever it shows from now on, in the forms it may be printed in."""
    if not secret or len(secret) < MIN_LENGTH:
        return
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        secret.replace("\\", "\\\\").replace("'", "\\'"),
        repr(secret)[1:-1],
    }
    with _lock:
        _known.update(f for f in forms if len(f) >= MIN_LENGTH)


def remember_dsn(dsn: str | None) -> None:
    """Remember the password a connection string holds, even one that does not parse."""
    if not dsn:
        return
    with contextlib.suppress(psycopg.Error):  # malformed: the shapes below still find it
        remember(str(conninfo_to_dict(dsn).get("password") or ""))
    for match in _KEYWORD.finditer(dsn):
        value = match.group(2)
        if value[:1] in ("'", '"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        remember(value)
        remember(urllib.parse.unquote(value))
    for match in _URI.finditer(dsn):
        remember(match.group(2))
        remember(urllib.parse.unquote(match.group(2)))


def remember_passfile(path: Path) -> None:
    """Remember the passwords of a ``.pgpass`` file (``host:port:db:user:password`` lines)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            fields = re.split(r"(?<!\\):", line, maxsplit=4)
            if len(fields) == 5:
                remember(fields[4].replace("\\:", ":").replace("\\\\", "\\"))


def remember_properties(properties: Mapping[str, str]) -> None:
    """Remember the secrets of Kafka client properties (passwords, secrets, JAAS configs)."""
    for key, value in properties.items():
        if re.search(r"(?i)password|passwd|secret", key):
            remember(value)
        for match in _KEYWORD.finditer(value):  # sasl.jaas.config: ... password="...";
            inner = match.group(2)
            remember(inner[1:-1] if inner[:1] in ("'", '"') else inner)


def remember_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Remember the secrets the environment holds for libpq and the sidecar."""
    remember(environ.get("PGPASSWORD"))
    remember(environ.get("PGML_SIDECAR_ENDPOINT_PASSWORD"))
    for name in ("PGML_SIDECAR_SOURCE", "PGML_SIDECAR_ENDPOINT_DSN", "PGDATABASE"):
        remember_dsn(environ.get(name))
    passfile = environ.get("PGPASSFILE") or str(Path.home() / ".pgpass")
    remember_passfile(Path(passfile))


def remember_settings(settings: Mapping[str, Any]) -> None:
    """Remember the secrets resolved settings hold or name (DSNs, files)."""
    remember_dsn(settings.get("source"))
    remember_dsn(settings.get("endpoint_dsn"))
    password_file = settings.get("password_file")
    if password_file:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            remember(Path(password_file).read_text().strip())
    kafka_config = settings.get("kafka_config")
    if kafka_config:
        try:
            text = Path(kafka_config).read_text()
        except (OSError, UnicodeDecodeError):
            return
        pairs = (line.partition("=")[::2] for line in text.splitlines() if "=" in line)
        remember_properties({k.strip(): v.strip() for k, v in pairs})
        for line in text.splitlines():  # a line librdkafka may quote back, whatever its shape
            if re.search(r"(?i)password|passwd|secret", line.partition("=")[0]):
                remember(re.split(r"[=:\s]", line.strip(), maxsplit=1)[-1].strip())


class MaskingFilter(logging.Filter):
    """A log filter that masks each record's message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg, record.args = mask(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


def install(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Mask every log record the handlers (the root logger's) write, and uncaught errors."""
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
    logging.captureWarnings(True)  # warnings, too, go out through the filtered handlers
    sys.excepthook = _masked_excepthook
    threading.excepthook = _masked_thread_excepthook


def _masked_excepthook(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    import traceback

    sys.stderr.write(mask("".join(traceback.format_exception(kind, value, tb))))


def _masked_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    import traceback

    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(mask(f"Exception in thread {name}:\n{text}"))
