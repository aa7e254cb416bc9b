"""Values scattered through one byte buffer, gathered into Arrow arrays with numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PADDING = 16
"""Zero bytes a buffer needs past its end, so that every fixed-size read stays inside it."""


def padded(data: bytes | bytearray | memoryview) -> np.ndarray:
    """The bytes as a uint8 array with ``PADDING`` zero bytes after them."""
    out = np.zeros(len(data) + PADDING, dtype=np.uint8)
    out[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out


def _windows(buf: np.ndarray, width: int, starts: np.ndarray) -> np.ndarray:
    """``width`` bytes from each start, as rows of a new contiguous array."""
    view = np.lib.stride_tricks.as_strided(buf, shape=(len(buf) - width + 1, width), strides=(1, 1))
    return view[np.minimum(starts, len(buf) - width)]


def fixed_width(buf: np.ndarray, starts: np.ndarray, dtype: str) -> np.ndarray:
    """The big-endian values of ``dtype`` starting at each position, in native byte order."""
    kind = np.dtype(dtype)
    return _windows(buf, kind.itemsize, starts).view(kind).ravel().astype(kind.newbyteorder("="))


def be_uint32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian uint32 at each position, as int64."""
    return fixed_width(buf, pos, ">u4").astype(np.int64)


def be_int32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian signed int32 at each position, as int64."""
    return fixed_width(buf, pos, ">i4").astype(np.int64)


def ragged_index(starts: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The buffer index of every byte of every value, in order (a cumsum of jumps and ones)."""
    total = int(offsets[-1])
    dtype = np.int32 if total < 2**31 and (len(starts) == 0 or starts.max() < 2**31) else np.int64
    present = lengths > 0
    firsts = offsets[:-1][present]
    value_starts = starts[present]
    ends = value_starts + lengths[present] - 1
    steps = np.ones(total, dtype=dtype)
    steps[firsts[0]] = value_starts[0]
    steps[firsts[1:]] = value_starts[1:] - ends[:-1]
    return np.cumsum(steps, dtype=dtype)


def views(
    buf: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    valid: np.ndarray,
    kind: pa.DataType | None = None,
) -> pa.Array:
    """A string (or binary) view array over ``buf`` (a ``padded`` array): no value bytes are
    copied. Each 16-byte view holds the length and either the value itself (12 bytes at most)
    or its first 4 bytes and its offset in the buffer.
    """
    count = len(starts)
    if len(buf) >= 2**31:
        return variable_width(buf, starts, lengths, valid, pa.large_binary() if kind else None)
    lengths = np.where(valid, lengths, 0).astype(np.int32)
    head = _windows(buf, 12, starts)
    head = np.where(np.arange(12) < lengths[:, None], head, 0).astype(np.uint8)
    out = np.zeros((count, 16), dtype=np.uint8)
    out[:, 4:] = head
    words = out.view(np.int32)
    words[:, 0] = lengths
    long = lengths > 12
    words[long, 2] = 0
    words[long, 3] = starts[long]
    return pa.Array.from_buffers(
        kind or pa.string_view(),
        count,
        [validity(valid), pa.py_buffer(out), pa.py_buffer(buf)],
        null_count=count - int(np.count_nonzero(valid)),
    )


def variable_width(
    buf: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    valid: np.ndarray,
    kind: pa.DataType | None = None,
) -> pa.Array:
    """A large string (or binary) array of the byte ranges ``starts``/``lengths``."""
    count = len(starts)
    lengths = np.where(valid, lengths, 0)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = buf[ragged_index(starts, lengths, offsets)] if offsets[-1] else buf[:0]
    return pa.Array.from_buffers(
        kind or pa.large_string(),
        count,
        [validity(valid), pa.py_buffer(offsets), pa.py_buffer(values)],
        null_count=count - int(np.count_nonzero(valid)),
    )


def validity(valid: np.ndarray) -> pa.Buffer | None:
    """An Arrow validity bitmap, or None when every value is present."""
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))
