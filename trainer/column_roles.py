"""Which columns a model learns from when ``preprocess`` does not say: the sidecar's defaults.

A column the training's ``preprocess`` names is used as it says. Any other column is used
unless it names rows instead of describing them:

- the relation's primary key (recorded in the snapshot's columns as ``"primary_key": true``);
- text with so many distinct values that most rows have one of their own (more than
  :data:`IDENTIFIER_SHARE` of the rows, and more than :data:`ONE_HOT_AUTO` values): names,
  e-mail addresses, uuids, order numbers;
- text with too many values to one-hot encode when there is no label to target encode it with
  (clustering, decomposition).

Those are left out with the reason, which the training reports. Other text is one-hot encoded
up to :data:`ONE_HOT_AUTO` distinct values and target encoded (out of fold) beyond. The same
rules serve batch and online models: both are fitted through :class:`trainer.preprocess
.Preprocessor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ONE_HOT_AUTO = 100
"""Text with at most this many distinct values is one-hot encoded unless preprocess says."""
IDENTIFIER_SHARE = 0.5
"""Text with distinct values in more than this share of its rows identifies rows."""

PRIMARY_KEY = "the primary key: it names rows, it does not describe them"


def key_columns(snapshot_columns: Sequence[Mapping[str, Any]]) -> list[str]:
    """The primary-key columns a snapshot recorded (none for snapshots from before it did)."""
    return [str(c["name"]) for c in snapshot_columns if c.get("primary_key")]


def text_encoding(distinct: int, rows: int, *, labelled: bool) -> tuple[str | None, str]:
    """How text with ``distinct`` values in ``rows`` non-NULL rows is encoded by default.

    Returns the encoding and why, or None and the reason the column is left out.
    """
    if distinct <= ONE_HOT_AUTO:
        return "one_hot", f"{distinct:,} distinct values"
    counted = f"{distinct:,} distinct values in {rows:,} rows"
    if distinct > IDENTIFIER_SHARE * rows:
        return None, f"it identifies rows rather than describing them ({counted})"
    if labelled:
        return "target", f"{counted}: too many to one-hot encode, target encoded out of fold"
    return None, (
        f"{counted}: too many to one-hot encode, and without a label it cannot be target"
        ' encoded; set its preprocess to {"encode": "ordinal"} to use it'
    )


def left_out_notice(name: str, reason: str, *, text: bool) -> str:
    """What a training says about a column it left out, with how to use it anyway."""
    encode = "target" if text else "native"
    return (
        f"column {name!r} left out of the features: {reason}; to use it anyway, name it in"
        f' preprocess, e.g. {{"{name}": {{"encode": "{encode}"}}}}'
    )
