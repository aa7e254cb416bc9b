"""Arrow columns in Postgres text output format, converted a column at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from predictor import value_text
from predictor.pg_types import is_list, is_vector
from predictor.value_text import (
    FAST_DIGITS_BELOW,
    float_text,
    interval_text,
    json_text,
    trim_fraction,
)

_TEXT = pa.large_string()
_NULL_TEXT = pa.scalar("NULL", _TEXT)
_EMPTY = pa.scalar("", _TEXT)
_QUOTE = pa.scalar('"', _TEXT)
_INT64_MAX = np.iinfo(np.int64).max
_INT32_MAX = np.iinfo(np.int32).max
_HEX = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), np.uint8).reshape(256, 2)


def text_column(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return a column's values in Postgres text output format as a large_string array.

    Numbers, booleans, dates, times, timestamps, strings, bytea, uuid and lists of those are
    converted by Arrow and numpy kernels; intervals, structs and maps value by value.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    t = array.type
    if isinstance(t, pa.BaseExtensionType):
        storage = array.storage
        if t.extension_name == "arrow.uuid":
            return _uuid_text(storage)
        return text_column(storage)
    if pa.types.is_dictionary(t):
        return text_column(array.dictionary_decode())
    if pa.types.is_null(t):
        return pa.nulls(len(array), _TEXT)
    for test, convert in _COLUMN_TEXT:
        if test(t):
            return convert(array)
    return _each_value(array)


def _each_value(array: pa.Array) -> pa.Array:
    if pa.types.is_map(array.type):
        values: list[Any] = [None if v is None else dict(v) for v in array.to_pylist()]
        return pa.array([None if v is None else json_text(v) for v in values], _TEXT)
    if pa.types.is_struct(array.type):
        return pa.array([None if v is None else json_text(v) for v in array.to_pylist()], _TEXT)
    if pa.types.is_interval(array.type):
        return pa.array(
            [
                None if v is None else interval_text(v[0], v[1], _micros(v[2]))
                for v in array.to_pylist()
            ],
            _TEXT,
        )
    if pa.types.is_duration(array.type):
        micros = pc.cast(array, pa.duration("us"), safe=False).cast(pa.int64()).to_pylist()
        return pa.array([None if v is None else interval_text(0, 0, v) for v in micros], _TEXT)
    return pa.array([_maybe_text(v) for v in array.to_pylist()], _TEXT)


def _micros(nanoseconds: int) -> int:
    return nanoseconds // 1000 if nanoseconds >= 0 else -(-nanoseconds // 1000)


def _maybe_text(value: Any) -> str | None:
    return None if value is None else value_text.text(value)


def _cast_text(array: pa.Array) -> pa.Array:
    return pc.cast(array, _TEXT)


def _bool_text(array: pa.Array) -> pa.Array:
    return pc.if_else(array, pa.scalar("t", _TEXT), pa.scalar("f", _TEXT))


# Arrow prints the shortest round-trip digits (as Postgres does below 2**54, float4 2**25), in
# fixed layout when the decimal exponent is in [-6, 10), else as 1.5e+10 / 1.5e-7. Postgres uses
# fixed layout for exponents in [-4, 15) (float4: [-4, 6)) and two exponent digits at least.
# Values whose exponent is clear from their magnitude keep Arrow's text (exponents -9 to -7 get
# their zero), the rest (near a power of ten, in the exponent bands the two disagree on, or large)
# are redone one by one.
_NEAR = 1e-5


def _float_text(array: pa.Array) -> pa.Array:
    bits = 64 if pa.types.is_float64(array.type) else 32
    if bits == 32 and not pa.types.is_float32(array.type):
        array = pc.cast(array, pa.float32())
    text = pc.cast(array, _TEXT)
    x = np.abs(array.to_numpy(zero_copy_only=False).astype(np.float64))
    valid = _validity(array)
    fixed_high = 10.0 ** min(10, 6 if bits == 32 else 15)
    with np.errstate(invalid="ignore"):
        as_arrow = (x == 0) | ((x >= 1e-4 * (1 + _NEAR)) & (x < fixed_high * (1 - _NEAR)))
        as_arrow |= (x > 0) & (x < 1e-9 * (1 - _NEAR))
        if bits == 64:
            as_arrow |= (x >= 1e15 * (1 + _NEAR)) & (x < FAST_DIGITS_BELOW[64])
        padded = (x >= 1e-9 * (1 + _NEAR)) & (x < 1e-6 * (1 - _NEAR))
    finite = np.isfinite(x)
    if padded.any():
        fixed = pc.replace_substring_regex(text, pattern=r"e-([0-9])$", replacement=r"e-0\1")
        text = pc.if_else(pa.array(padded), fixed, text)
    nonfinite = ~finite if valid is None else ~finite & valid
    if nonfinite.any():
        values = array.to_numpy(zero_copy_only=False)
        words = np.where(np.isnan(values), "NaN", np.where(values > 0, "Infinity", "-Infinity"))
        text = pc.if_else(pa.array(nonfinite), pa.array(words, _TEXT), text)
    redo = ~(as_arrow | padded | ~finite)
    if redo.any():
        positions = np.flatnonzero(redo)
        values = array.take(pa.array(positions)).to_pylist()
        text = _scatter(
            text, positions, pa.array([float_text(v, bits=bits) for v in values], _TEXT)
        )
    return text


def _validity(array: pa.Array) -> np.ndarray | None:
    """Return a boolean array of which values are not null, or None when none is null."""
    if array.null_count == 0:
        return None
    bitmap = np.frombuffer(array.buffers()[0], np.uint8)
    bits = np.unpackbits(bitmap, bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)


def _scatter(text: pa.Array, positions: np.ndarray, replacements: pa.Array) -> pa.Array:
    mask = np.zeros(len(text), dtype=bool)
    mask[positions] = True
    return pc.replace_with_mask(text, pa.array(mask), replacements)


def _decimal_text(array: pa.Array) -> pa.Array:
    if array.type.scale >= 0:
        return pc.cast(array, _TEXT)
    return _each_value(array)


def _string_text(array: pa.Array) -> pa.Array:
    return array if array.type == _TEXT else pc.cast(array, _TEXT)


def _bytea_text(array: pa.Array) -> pa.Array:
    if not pa.types.is_large_binary(array.type):
        array = pc.cast(array, pa.large_binary())
    offsets = np.frombuffer(array.buffers()[1], np.int64)[
        array.offset : array.offset + len(array) + 1
    ]
    data = np.frombuffer(array.buffers()[2] or b"", np.uint8)[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    out_offsets = np.zeros(len(array) + 1, np.int64)
    np.cumsum(2 + 2 * lengths, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), np.uint8)
    starts = out_offsets[:-1]
    out[starts] = ord("\\")
    out[starts + 1] = ord("x")
    if len(data):
        row_of_byte = np.repeat(np.arange(len(array)), lengths)
        target = (
            2 * (np.arange(len(data)) - (offsets[:-1] - offsets[0])[row_of_byte])
            + starts[row_of_byte]
            + 2
        )
        out[target] = _HEX[data, 0]
        out[target + 1] = _HEX[data, 1]
    return _from_buffers(out_offsets, out, array)


def _from_buffers(offsets: np.ndarray, data: np.ndarray, like: pa.Array) -> pa.Array:
    validity = like.is_valid() if like.null_count else None
    mask = None if validity is None else pc.invert(validity)
    result = pa.Array.from_buffers(
        _TEXT, len(like), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return result if mask is None else pc.if_else(mask, pa.scalar(None, _TEXT), result)


def _uuid_text(array: pa.Array) -> pa.Array:
    raw = np.frombuffer(array.buffers()[1], np.uint8)
    raw = raw[array.offset * 16 : (array.offset + len(array)) * 16].reshape(-1, 16)
    hexed = _HEX[raw].reshape(-1, 32)
    out = np.full((len(array), 36), ord("-"), np.uint8)
    for start, stop, at in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        out[:, at : at + stop - start] = hexed[:, start:stop]
    offsets = np.arange(0, 36 * len(array) + 1, 36, dtype=np.int64)
    return _from_buffers(offsets, out.reshape(-1), array)


def _fixed_binary_text(array: pa.Array) -> pa.Array:
    if array.type.byte_width == 16:
        return _uuid_text(array)
    return _bytea_text(pc.cast(array, pa.large_binary()))


def _date_text(array: pa.Array) -> pa.Array:
    if not pa.types.is_date32(array.type):
        array = pc.cast(array, pa.date32())
    days = array.cast(pa.int32())
    text = pc.cast(array, _TEXT)
    return _fix_out_of_range(text, days, lo=-719162, hi=2932897, unit="D", infinity=_INT32_MAX)


def _timestamp_text(array: pa.Array) -> pa.Array:
    t: pa.TimestampType = array.type
    raw = array.cast(pa.int64())
    infinite = pc.or_(pc.equal(raw, _INT64_MAX), pc.less_equal(raw, -_INT64_MAX))
    if pc.any(infinite).as_py():
        array = pc.if_else(infinite, pa.scalar(0, t), array)
    micros = pc.cast(array, pa.timestamp("us", tz=t.tz), safe=False).cast(pa.int64())
    naive = micros.cast(pa.timestamp("us"))
    text = pc.replace_substring_regex(pc.cast(naive, _TEXT), pattern=r"\.?0+$", replacement="")
    if t.tz is not None:
        text = pc.binary_join_element_wise(text, pa.scalar("+00", _TEXT), _EMPTY)
    lo, hi = -62135596800_000000, 253402300800_000000
    text = _fix_out_of_range(text, micros, lo=lo, hi=hi, unit="us", infinity=None, tz=t.tz)
    return _infinities(text, raw, _INT64_MAX)


def _fix_out_of_range(
    text: pa.Array, ticks: pa.Array, *, lo: int, hi: int, unit: _Unit, infinity: int | None,
    tz: str | None = None,
) -> pa.Array:  # fmt: skip
    values = ticks.to_numpy(zero_copy_only=False)
    valid = ticks.is_valid().to_numpy(zero_copy_only=False)
    outside = valid & ((values < lo) | (values >= hi))
    if infinity is not None:
        outside &= np.abs(values) != infinity
    if outside.any():
        bad = np.flatnonzero(outside)
        fixed = [_far_datetime_text(int(values[i]), unit, tz is not None) for i in bad]
        text = _scatter(text, bad, pa.array(fixed, _TEXT))
    if infinity is not None:
        text = _infinities(text, ticks, infinity)
    return text


_Unit = Literal["D", "us"]


def _far_datetime_text(ticks: int, unit: _Unit, aware: bool) -> str:
    """Format a date or timestamp beyond years 1-9999 (BC years as Postgres writes them)."""
    iso = str(np.datetime64(ticks, unit)).replace("T", " ")
    negative = iso.startswith("-")
    year_text, rest = iso.lstrip("-+").split("-", 1)
    year = -int(year_text) if negative else int(year_text)
    text = f"{year if year > 0 else 1 - year:04d}-{trim_fraction(rest)}"
    return text + ("+00" if aware else "") + (" BC" if year <= 0 else "")


def _infinities(text: pa.Array, raw: pa.Array, limit: int) -> pa.Array:
    positive = pc.equal(raw, limit)
    negative = pc.less_equal(raw, -limit)
    if not (pc.any(positive).as_py() or pc.any(negative).as_py()):
        return text
    text = pc.if_else(positive, pa.scalar("infinity", _TEXT), text)
    return pc.if_else(negative, pa.scalar("-infinity", _TEXT), text)


def _time_text(array: pa.Array) -> pa.Array:
    micros = pc.cast(array, pa.time64("us"), safe=False)
    return pc.replace_substring_regex(pc.cast(micros, _TEXT), pattern=r"\.?0+$", replacement="")


def _vector_text(array: pa.Array) -> pa.Array:
    """pgvector's text form, ``[1,2.5,-3]``: float4's shortest digits, no spaces."""
    size = array.type.list_size
    values = array.values.slice(array.offset * size, len(array) * size)
    offsets = pa.array(np.arange(0, size * len(array) + 1, size, dtype=np.int64))
    mask = pc.is_null(array) if array.null_count else None
    lists = pa.LargeListArray.from_arrays(offsets, text_column(values), mask=mask)
    joined = pc.binary_join(lists, pa.scalar(",", _TEXT))
    return pc.binary_join_element_wise(pa.scalar("[", _TEXT), joined, pa.scalar("]", _TEXT), _EMPTY)


def _list_text(array: pa.Array) -> pa.Array:
    t = array.type
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        array = pc.cast(array, pa.large_list(t.value_type))
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        values = array.values.slice(array.offset * size, len(array) * size)
        offsets = pa.array(np.arange(0, size * len(array) + 1, size, dtype=np.int64))
    else:
        raw = array.offsets.to_numpy().astype(np.int64)
        values = array.values.slice(raw[0], raw[-1] - raw[0])
        offsets = pa.array(raw - raw[0])
    elements = text_column(values)
    if not is_list(array.type.value_type):
        elements = _quote_elements(elements)
    elements = pc.fill_null(elements, _NULL_TEXT)
    mask = pc.is_null(array) if array.null_count else None
    lists = pa.LargeListArray.from_arrays(offsets, elements, mask=mask)
    joined = pc.binary_join(lists, pa.scalar(",", _TEXT))
    return pc.binary_join_element_wise(pa.scalar("{", _TEXT), joined, pa.scalar("}", _TEXT), _EMPTY)


def _quote_elements(text: pa.Array) -> pa.Array:
    needs = pc.match_substring_regex(text, pattern=r'^$|[{},"\\ \t\n\r\v\f]|(?i)^null$')
    if not pc.any(needs).as_py():
        return text
    escaped = pc.replace_substring_regex(text, pattern=r'(["\\])', replacement=r"\\\1")
    quoted = pc.binary_join_element_wise(_QUOTE, escaped, _QUOTE, _EMPTY)
    return pc.if_else(needs, quoted, text)


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


_COLUMN_TEXT: tuple[tuple[Callable[[pa.DataType], bool], Callable[[pa.Array], pa.Array]], ...] = (
    (_is_int, _cast_text),
    (pa.types.is_boolean, _bool_text),
    (pa.types.is_floating, _float_text),
    (pa.types.is_decimal, _decimal_text),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), _string_text),
    (pa.types.is_string_view, _string_text),
    (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), _bytea_text),
    (pa.types.is_binary_view, _bytea_text),
    (pa.types.is_fixed_size_binary, _fixed_binary_text),
    (pa.types.is_date, _date_text),
    (pa.types.is_timestamp, _timestamp_text),
    (pa.types.is_time, _time_text),
    (is_vector, _vector_text),
    (is_list, _list_text),
)
