"""``pgml.chunk(splitter, text, kwargs)``: text split into chunks by LangChain's text splitters.

PostgresML splits with LangChain's splitters by name, each made with ``kwargs`` (a JSON object:
``chunk_size``, ``chunk_overlap``, ``separator``, ...) and asked ``split_text(text)``; the rows
are ``(chunk_index, chunk)``, counted from 1. The same splitters of the ``langchain-text-
splitters`` package give the same chunks here: ``character``, ``latex``, ``markdown``,
``python`` and ``recursive_character``. ``nltk`` and ``spacy`` need a tokenizer model
downloaded from the internet, which the sidecar never does: they are refused, saying so.

The DuckDB function ``pgml_chunk(splitter, text, kwargs)`` answers a list of
``{chunk_index, chunk}`` per row (the translator unnests it, see :mod:`predictor.translation`);
``pgml_chunk_records`` the same rows as PostgreSQL prints records, for ``SELECT pgml.chunk(...)``.
"""

from __future__ import annotations

import contextlib
import json
from functools import lru_cache
from typing import Any

import duckdb
import pyarrow as pa
from duckdb import func

from mirror.errors import SidecarError

SPLITTERS = {
    "character": "CharacterTextSplitter",
    "latex": "LatexTextSplitter",
    "markdown": "MarkdownTextSplitter",
    "python": "PythonCodeTextSplitter",
    "recursive_character": "RecursiveCharacterTextSplitter",
}
"""PostgresML's splitter names that need no model, with their LangChain classes."""

NEEDS_DOWNLOAD = {
    "nltk": "NLTK's punkt sentence tokenizer",
    "spacy": "spaCy's en_core_web_sm pipeline",
}

CHUNK = pa.struct([("chunk_index", pa.int64()), ("chunk", pa.string())])


@lru_cache(maxsize=64)
def _splitter(name: str, kwargs: str) -> Any:
    """The LangChain splitter ``name`` made with ``kwargs`` (JSON text), kept for reuse."""
    if name in NEEDS_DOWNLOAD:
        raise SidecarError(
            f"the {name} splitter needs {NEEDS_DOWNLOAD[name]}, a model downloaded from the"
            " internet, and pgml-sidecar downloads none: use one of"
            f" {', '.join(SPLITTERS)}",
            sqlstate="0A000",
        )
    if name not in SPLITTERS:
        raise SidecarError(
            f'unknown splitter "{name}": pgml.chunk splits with {", ".join(SPLITTERS)}',
            sqlstate="22023",
        )
    try:
        options = json.loads(kwargs)
    except ValueError:
        raise SidecarError(
            f"invalid input syntax for type json: {kwargs!r}", sqlstate="22P02"
        ) from None
    if not isinstance(options, dict):
        raise SidecarError("pgml.chunk's kwargs must be a JSON object", sqlstate="22023")
    import langchain_text_splitters

    try:
        return getattr(langchain_text_splitters, SPLITTERS[name])(**options)
    except (TypeError, ValueError) as exc:
        raise SidecarError(f"{name} splitter: {exc}", sqlstate="22023") from None


def chunks(splitter: str, text: str, kwargs: str = "{}") -> list[str]:
    """``text`` split as PostgresML's ``pgml.chunk(splitter, text, kwargs)`` splits it."""
    return list(_splitter(splitter, kwargs).split_text(text))


def record_text(index: int, chunk: str) -> str:
    """``(index,chunk)`` as PostgreSQL prints a record."""
    if chunk == "" or any(c in chunk for c in '"\\(),') or any(c.isspace() for c in chunk):
        chunk = '"' + chunk.replace("\\", "\\\\").replace('"', '""') + '"'
    return f"({index},{chunk})"


def _each_row(splitters: pa.Array, texts: pa.Array, kwargs: pa.Array) -> list[list[str] | None]:
    found: list[list[str] | None] = []
    try:
        for splitter, text, options in zip(
            splitters.to_pylist(), texts.to_pylist(), kwargs.to_pylist(), strict=True
        ):
            strict = splitter is None or text is None or options is None
            found.append(None if strict else chunks(splitter, text, options))
    except SidecarError as exc:
        raise ValueError(f"[pgml {exc.sqlstate}] {exc}") from None
    return found


def _chunk_lists(splitters: pa.Array, texts: pa.Array, kwargs: pa.Array) -> pa.Array:
    rows = _each_row(splitters, texts, kwargs)
    values = [
        [] if row is None else [{"chunk_index": i, "chunk": c} for i, c in enumerate(row, 1)]
        for row in rows
    ]
    return pa.array(values, pa.list_(CHUNK))


def _record_lists(splitters: pa.Array, texts: pa.Array, kwargs: pa.Array) -> pa.Array:
    rows = _each_row(splitters, texts, kwargs)
    values = [
        [] if row is None else [record_text(i, c) for i, c in enumerate(row, 1)] for row in rows
    ]
    return pa.array(values, pa.list_(pa.string()))


def register(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``pgml_chunk`` and ``pgml_chunk_records`` on the mirror's connection."""
    text = duckdb.sqltypes.VARCHAR
    pieces = duckdb.list_type(
        duckdb.struct_type({"chunk_index": duckdb.sqltypes.BIGINT, "chunk": text})
    )
    for name, function, returns in (
        ("pgml_chunk", _chunk_lists, pieces),
        ("pgml_chunk_records", _record_lists, duckdb.list_type(text)),
    ):
        with contextlib.suppress(duckdb.InvalidInputException):
            con.remove_function(name)
        con.create_function(
            name, function, [text, text, text], returns, type=func.ARROW,
            null_handling=func.SPECIAL,
        )  # fmt: skip
