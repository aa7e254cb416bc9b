"""Values scattered through one byte buffer, gathered into Arrow arrays with numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def be_uint32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian uint32 at each position, as int64 (positions past the end read the last byte)."""
    last = len(buf) - 1
    b = [buf[np.minimum(pos + k, last)].astype(np.int64) for k in range(4)]
    return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]


def be_int32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian signed int32 at each position, as int64."""
    value = be_uint32(buf, pos)
    return np.where(value >= 1 << 31, value - (1 << 32), value)


def fixed_width(buf: np.ndarray, starts: np.ndarray, dtype: str) -> np.ndarray:
    """The big-endian values of ``dtype`` starting at each position, in native byte order."""
    kind = np.dtype(dtype)
    index = np.minimum(starts[:, None] + np.arange(kind.itemsize), len(buf) - 1)
    raw = np.ascontiguousarray(buf[index])
    return raw.view(kind).ravel().astype(kind.newbyteorder("="))


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
