"""The ``[[chroma]]`` sections of the config file: which tables are kept in which collections.

Each section names a mirrored table, its embedding column (a pgvector ``vector(n)``), an
optional document column and metadata columns, the collection, its distance space, and where
Chroma is: ``url`` of a server or ``path`` of an embedded persistent directory. A server's
token never comes from the file: from the environment variable ``token_env`` names
(``PGML_SIDECAR_CHROMA_TOKEN`` by default) or the file ``token_file`` names.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from mirror.errors import ConfigError
from predictor.chroma_sync import SPACES, ChromaTarget
from sidecar import masking

KEYS = {
    "table": "the mirrored table, schema.table",
    "collection": "the collection's name (default: the table's, dots as underscores)",
    "embedding": "the embedding column (pgvector vector(n))",
    "document": "the document column (optional)",
    "metadata": "metadata columns (a list; optional)",
    "space": "distance: cosine (default), l2 or ip",
    "url": "a Chroma server, http://host:port",
    "path": "an embedded persistent Chroma directory (instead of url)",
    "token_env": "environment variable holding the server's token",
    "token_file": "file holding the server's token",
    "verify_seconds": "seconds between full drift checks (0: only when asked; default 600)",
}
TOKEN_ENV = "PGML_SIDECAR_CHROMA_TOKEN"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]")


def targets(config_file: str | None) -> list[ChromaTarget]:
    """The collections the config file's ``[[chroma]]`` sections ask for (none without one)."""
    if not config_file:
        return []
    try:
        data = tomllib.loads(Path(config_file).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []  # config.load said why already
    sections = data.get("chroma", [])
    if isinstance(sections, dict):
        sections = [sections]
    if not isinstance(sections, list):
        raise ConfigError(f"{config_file}: chroma must be [[chroma]] sections")
    return [_target(s, f"{config_file}: [[chroma]] #{n + 1}") for n, s in enumerate(sections)]


def _target(section: Any, where: str) -> ChromaTarget:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a table of keys")
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; the keys are: {', '.join(KEYS)}")
    for key in ("table", "embedding"):
        if not isinstance(section.get(key), str) or not section[key]:
            raise ConfigError(f"{where} needs {key}: {KEYS[key]}")
    table = section["table"] if "." in section["table"] else f"public.{section['table']}"
    collection = str(section.get("collection") or table.replace(".", "_"))
    if not _NAME.fullmatch(collection) or ".." in collection:
        raise ConfigError(
            f"{where}: {collection!r} is no Chroma collection name: 3-512 characters of"
            " a-z, A-Z, 0-9, '.', '_', '-', starting and ending with a letter or digit"
        )
    space = str(section.get("space", "cosine"))
    if space not in SPACES:
        raise ConfigError(f"{where}: space must be one of {', '.join(SPACES)}, not {space!r}")
    url, path = section.get("url"), section.get("path")
    if (url is None) == (path is None):
        raise ConfigError(f"{where} needs url (a Chroma server) or path (a directory), not both")
    if url is not None and not re.fullmatch(r"https?://[^/@\s]+(:\d+)?/?", str(url)):
        raise ConfigError(f"{where}: url must be http://host:port or https://host:port")
    metadata = section.get("metadata", [])
    if not isinstance(metadata, list) or not all(isinstance(m, str) for m in metadata):
        raise ConfigError(f"{where}: metadata must be a list of column names")
    verify = section.get("verify_seconds", 600)
    if not isinstance(verify, int | float) or verify < 0:
        raise ConfigError(f"{where}: verify_seconds must be a number of seconds, 0 or more")
    return ChromaTarget(
        table=table,
        collection=collection,
        embedding=section["embedding"],
        document=section.get("document"),
        metadata=tuple(metadata),
        space=space,
        url=str(url) if url is not None else None,
        path=Path(path) if path is not None else None,
        token=_token(section, where) if url is not None else None,
        verify_seconds=float(verify),
    )


def _token(section: dict[str, Any], where: str) -> str | None:
    if "token_file" in section:
        try:
            token = Path(section["token_file"]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read token_file: {exc.strerror}") from None
    else:
        token = os.environ.get(str(section.get("token_env", TOKEN_ENV)), "").strip()
    if token:
        masking.remember(token)  # hidden wherever it would show
    return token or None
