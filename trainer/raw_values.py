"""Raw column values (Arrow arrays from a snapshot or a caller) read as numbers or as text."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.errors import TrainingError
from trainer import column_kinds
from trainer.column_kinds import TEMPORAL, FeatureColumn, is_list_type, is_string_type
from trainer.preprocess_options import listing

_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
_TRUE = ("t", "true", "y", "yes", "on", "1")
_FALSE = ("f", "false", "n", "no", "off", "0")
_INTERVAL = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanos", "<i8")])
# Parquet's INTERVAL (DuckDB writes intervals so), which pyarrow reads as fixed_size_binary[12].
_PARQUET_INTERVAL = np.dtype([("months", "<u4"), ("days", "<u4"), ("millis", "<u4")])


def raw(table: pa.Table, column: FeatureColumn, columns: Sequence[FeatureColumn]) -> pa.Array:
    """The values of ``column`` in ``table`` as one array."""
    names = table.column_names
    if column.name not in names:
        missing = [c.name for c in columns if c.name not in names]
        raise TrainingError(
            f"feature column{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing: the"
            f" model takes columns {listing([c.name for c in columns])}",
            sqlstate="42703",
        )
    values = table.column(names.index(column.name)).combine_chunks()
    return _storage(values)


def _storage(values: pa.Array) -> pa.Array:
    """Dictionary-encoded values decoded; extension types (except uuid) as their storage."""
    if isinstance(values, pa.DictionaryArray):
        return _storage(values.dictionary_decode())
    if isinstance(values.type, pa.ExtensionType) and not isinstance(values.type, pa.UuidType):
        return _storage(values.storage)
    return values


def _mismatch(column: FeatureColumn, values: pa.Array, wanted: str) -> TrainingError:
    return TrainingError(
        f"column {column.name!r} holds {values.type}, but the model was trained on {wanted}",
        sqlstate="22023",
    )


# -- raw values to numbers -----------------------------------------------------------------------


def numbers(column: FeatureColumn, raw: pa.Array, source: str) -> np.ndarray:
    """One float64 per row, NaN for NULL and non-finite values; ``source`` as at fit."""
    given = column_kinds.source(raw.type)
    if given in ("number", "boolean"):
        values = _floats(raw)
    elif given in TEMPORAL:
        values = _seconds(raw, given)
    elif given == "text" and source in TEMPORAL:
        values = _parse_seconds(column, raw, source)
    elif given == "text" and source == "boolean":
        values = _parse_booleans(column, raw)
    elif given == "text" and is_string_type(raw.type):
        values = _parse_numbers(column, raw)
    else:
        raise _mismatch(column, raw, "booleans" if column.kind == "boolean" else "numbers")
    values[~np.isfinite(values)] = np.nan
    return values


def _floats(values: pa.Array) -> np.ndarray:
    as_float = pc.cast(values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return as_float if as_float.flags.writeable else as_float.copy()


def _seconds(raw: pa.Array, source: str) -> np.ndarray:
    """Dates and timestamps as seconds since 1970-01-01, times since midnight, intervals."""
    if source == "interval":  # a month counts 30 days, as in DuckDB's epoch(interval)
        parquet = raw.type == pa.binary(12)
        layout = _PARQUET_INTERVAL if parquet else _INTERVAL
        count = raw.offset + len(raw)
        fields = np.frombuffer(raw.buffers()[1], dtype=layout, count=count)
        fields = fields[raw.offset : raw.offset + len(raw)]
        seconds = fields["months"] * 30 * 86400.0 + fields["days"] * 86400.0
        seconds += fields["millis"] / 1e3 if parquet else fields["nanos"] / 1e9
        seconds[np.asarray(raw.is_null())] = np.nan
        return seconds
    if pa.types.is_date32(raw.type):
        return _floats(pc.cast(raw, pa.int32())) * 86400.0
    if pa.types.is_date64(raw.type):
        return _floats(pc.cast(raw, pa.int64())) / 1e3
    return _floats(pc.cast(raw, pa.int64())) / _UNITS[raw.type.unit]


def _parse_seconds(column: FeatureColumn, raw: pa.Array, source: str) -> np.ndarray:
    """Text such as '2024-01-01 10:00' read as the temporal type the column had at fit."""
    target = {"date": "timestamptz", "timestamp": "timestamptz", "time": "time"}
    cast = target.get(source, "interval")
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        con.register("raw", pa.table({"v": pc.cast(raw, pa.large_string())}))
        result = con.sql(f"select epoch(cast(v as {cast})) as v from raw").to_arrow_table()
    except duckdb.Error as exc:
        raise TrainingError(
            f"column {column.name!r} holds text that is not a valid {source}: {exc}",
            sqlstate="22023",
        ) from None
    finally:
        con.close()
    return _floats(result.column("v").combine_chunks())


def _parse_booleans(column: FeatureColumn, raw: pa.Array) -> np.ndarray:
    words = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(raw, pa.large_string())))
    true = np.asarray(pc.is_in(words, value_set=pa.array(_TRUE)).fill_null(False))
    false = np.asarray(pc.is_in(words, value_set=pa.array(_FALSE)).fill_null(False))
    valid = np.asarray(words.is_valid())
    if (valid & ~true & ~false).any():
        bad = words.filter(pa.array(valid & ~true & ~false))[0].as_py()
        raise TrainingError(
            f"column {column.name!r} holds {bad!r}, which is not a boolean; use true or false",
            sqlstate="22023",
        )
    return np.where(valid, true.astype(np.float64), np.nan)


def _parse_numbers(column: FeatureColumn, raw: pa.Array) -> np.ndarray:
    try:
        return _floats(pc.utf8_trim_whitespace(pc.cast(raw, pa.large_string())))
    except pa.ArrowInvalid as exc:
        raise TrainingError(
            f"column {column.name!r} holds text that is not a number: {exc}", sqlstate="22023"
        ) from None


def elements(column: FeatureColumn, raw: pa.Array) -> np.ndarray:
    """An array column as a (rows, width) block: padded with NaN, cut at ``width``."""
    width, rows = column.width, len(raw)
    if pa.types.is_null(raw.type):
        return np.full((rows, width), np.nan)
    if not is_list_type(raw.type):
        raise _mismatch(column, raw, "arrays of numbers")
    lengths = pc.list_value_length(raw).fill_null(0).to_numpy(zero_copy_only=False)
    flat = _storage(raw.flatten())
    if column_kinds.source(flat.type) in ("number", "boolean"):
        values = _floats(flat)
    else:
        values = _parse_numbers(column, flat)
    if len(values) == rows * width and (lengths == width).all():
        block = values.reshape(rows, width)  # every list as long as the column is wide
    else:
        block = np.full((rows, width), np.nan)
        starts = np.cumsum(lengths) - lengths
        row = np.repeat(np.arange(rows), lengths)
        position = np.arange(len(values)) - np.repeat(starts, lengths)
        kept = position < width
        block[row[kept], position[kept]] = values[kept]
    if not np.isfinite(block).all():
        block[~np.isfinite(block)] = np.nan
    return block


# -- raw values to text --------------------------------------------------------------------------


def text(raw: pa.Array) -> pa.Array:
    """Any column as large_string: uuids and bytes as hex, other types cast by DuckDB."""
    kind = raw.type
    if isinstance(kind, pa.UuidType):
        return _hex(raw.storage, dashes=True)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _hex(raw, dashes=False)
    if pa.types.is_fixed_size_binary(kind):
        return _hex(raw, dashes=kind.byte_width == 16)
    try:
        return pc.cast(raw, pa.large_string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        pass
    con = duckdb.connect()
    try:
        con.register("raw", pa.table({"v": raw}))
        result = con.sql("select cast(v as varchar) as v from raw").to_arrow_table()
    finally:
        con.close()
    return pc.cast(result.column("v").combine_chunks(), pa.large_string())


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex(raw: pa.Array, *, dashes: bool) -> pa.Array:
    """Bytes as lowercase hex; 16 bytes as a uuid (8-4-4-4-12) when ``dashes``."""
    if pa.types.is_fixed_size_binary(raw.type):
        size = raw.type.byte_width
        data = np.frombuffer(raw.buffers()[1], dtype=np.uint8)
        data = data[raw.offset * size : (raw.offset + len(raw)) * size]
        offsets = np.arange(len(raw) + 1, dtype=np.int64) * size
    else:
        raw = pc.cast(raw, pa.large_binary())
        offsets = np.frombuffer(raw.buffers()[1], dtype=np.int64)[
            raw.offset : raw.offset + len(raw) + 1
        ]
        data = np.frombuffer(raw.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
    digits = np.stack([_HEX_DIGITS[data >> 4], _HEX_DIGITS[data & 15]], axis=1).reshape(-1)
    if dashes and len(raw):
        chars = digits.reshape(len(raw), 32)
        dash = np.full((len(raw), 1), ord("-"), dtype=np.uint8)
        parts = [chars[:, :8], chars[:, 8:12], chars[:, 12:16], chars[:, 16:20], chars[:, 20:]]
        joined = [parts[0], dash, parts[1], dash, parts[2], dash, parts[3], dash, parts[4]]
        digits = np.concatenate(joined, axis=1).reshape(-1)
        offsets = np.arange(len(raw) + 1, dtype=np.int64) * 36
    else:
        offsets = offsets * 2
    text = pa.LargeStringArray.from_buffers(
        len(raw), pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(digits.tobytes())
    )
    return pc.if_else(raw.is_null(), pa.scalar(None, pa.large_string()), text)
