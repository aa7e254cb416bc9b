"""PostgresML's ``preprocess`` argument: how each feature column is encoded, imputed and scaled."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from mirror.errors import TrainingError

ENCODES: tuple[str, ...] = ("native", "target", "one_hot", "ordinal")
IMPUTES: tuple[str, ...] = ("error", "mean", "median", "mode", "min", "max", "zero")
SCALES: tuple[str, ...] = ("preserve", "standard", "min_max", "max_abs", "robust")
CHOICES: dict[str, tuple[str, ...]] = {"encode": ENCODES, "impute": IMPUTES, "scale": SCALES}


def parse_preprocess(
    spec: Mapping[str, Any] | str | None, columns: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Validate PostgresML's ``preprocess`` JSON: {"column": {"encode", "impute", "scale"}}.

    ``spec`` is a mapping or JSON text; ``columns`` are the feature columns it may name.
    """
    if isinstance(spec, str):
        if not spec.strip():
            return {}
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"preprocess is not valid JSON: {exc}", sqlstate="22023") from None
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise TrainingError(
            'preprocess must be a JSON object such as {"age": {"impute": "median"}},'
            f" not {json.dumps(spec, default=str)}",
            sqlstate="22023",
        )
    parsed: dict[str, dict[str, str]] = {}
    for column, options in spec.items():
        if column not in columns:
            raise TrainingError(
                f"preprocess names column {column!r}, which is not a feature column"
                f"{_did_you_mean(str(column), columns)}; the feature columns are:"
                f" {listing(columns)}",
                sqlstate="42703",
            )
        if not isinstance(options, Mapping):
            raise TrainingError(
                f"preprocess for column {column!r} must be an object such as"
                f' {{"impute": "mean"}}, not {json.dumps(options, default=str)}',
                sqlstate="22023",
            )
        parsed[column] = {key: _choice(column, key, value) for key, value in options.items()}
    return parsed


def _choice(column: str, key: Any, value: Any) -> str:
    """Check one option of a column's preprocess and return its value."""
    if key not in CHOICES:
        raise TrainingError(
            f"preprocess for column {column!r}: unknown key {key!r}; use encode, impute or scale",
            sqlstate="22023",
        )
    if value not in CHOICES[key]:
        raise TrainingError(
            f"preprocess for column {column!r}: unknown {key} {json.dumps(value, default=str)};"
            f" use one of: {', '.join(CHOICES[key])}",
            sqlstate="22023",
        )
    return str(value)


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def listing(names: Sequence[str], *, limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
