"""Decode pgvector's binary forms (vector, halfvec, sparsevec) into Arrow float32 lists.

pgvector sends a vector as int16 dimensions, int16 unused, then the big-endian float4 values;
a halfvec the same with float2 values; a sparsevec as int32 dimensions, int32 stored values
(nnz), int32 unused, the nnz int32 indices (from 0) and the nnz float4 values. Each becomes
FLOAT[n] when the column declares n dimensions (a sparsevec dense, zeros where nothing is
stored), FLOAT[] otherwise. Float2 and float4 values are exact as float32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from replicator.columnar import be_int32, fixed_width


class VectorFormatError(ValueError):
    """A value does not follow pgvector's binary form, or not its column's dimensions."""


Reader = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], pa.Array]
"""(buffer, value starts, value lengths, valid) -> Arrow array, as in copy_format."""


def dense_reader(kind: str, dims: int) -> Reader:
    """A copy reader for ``vector`` (float4) or ``halfvec`` (float2) of ``dims`` (-1: any)."""
    width, dtype = (4, ">f4") if kind == "vector" else (2, ">f2")

    def read(
        buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, valid: np.ndarray
    ) -> pa.Array:
        found = np.where(valid, fixed_width(buf, starts, ">i2").astype(np.int64), 0)
        sizes = found * width
        if np.any(np.where(valid, lengths, 0) != np.where(valid, 4 + sizes, 0)):
            raise VectorFormatError(f"a {kind} value whose length disagrees with its dimensions")
        _check_dims(kind, dims, found, valid)
        values = np.frombuffer(_gather(buf, starts + 4, sizes), dtype=dtype).astype(np.float32)
        if dims > 0:
            if not valid.all():  # a NULL holds dims zeros
                dense = np.zeros((len(starts), dims), dtype=np.float32)
                dense[valid] = values.reshape(-1, dims)
                values = dense.ravel()
            return _fixed_list(values, dims, valid)
        offsets = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(found, out=offsets[1:])
        return _list(values, offsets, valid)

    return read


def sparse_reader(dims: int) -> Reader:
    """A copy reader for ``sparsevec(dims)``, mirrored dense."""

    def read(
        buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, valid: np.ndarray
    ) -> pa.Array:
        count = len(starts)
        found = np.where(valid, be_int32(buf, starts), 0)
        stored = np.where(valid, be_int32(buf, starts + 4), 0)
        if np.any(stored < 0) or np.any(
            np.where(valid, lengths, 0) != np.where(valid, 12 + 8 * stored, 0)
        ):
            raise VectorFormatError("a sparsevec value whose length disagrees with its entries")
        _check_dims("sparsevec", dims, found, valid)
        sizes = stored * 4
        indices = np.frombuffer(_gather(buf, starts + 12, sizes), dtype=">i4").astype(np.int64)
        values = np.frombuffer(_gather(buf, starts + 12 + sizes, sizes), dtype=">f4")
        if np.any((indices < 0) | (indices >= dims)):
            raise VectorFormatError(f"a sparsevec index outside its {dims} dimensions")
        dense = np.zeros((count, dims), dtype=np.float32)
        dense[np.repeat(np.arange(count), stored), indices] = values
        return _fixed_list(dense.ravel(), dims, valid)

    return read


def _gather(buf: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> bytes:
    """The bytes ``sizes[i]`` long at each ``starts[i]``, end to end (one copy, row by row:
    far faster than numpy's byte-wise gathers for values of kilobytes)."""
    memory = memoryview(buf.data)
    return b"".join(
        [memory[s : s + n] for s, n in zip(starts.tolist(), sizes.tolist(), strict=True) if n]
    )


def _check_dims(kind: str, dims: int, found: np.ndarray, valid: np.ndarray) -> None:
    if dims > 0 and np.any(found[valid] != dims):
        other = int(found[valid][found[valid] != dims][0])
        raise VectorFormatError(f"a {kind} of {other} dimensions in a {kind}({dims}) column")


def _fixed_list(values: np.ndarray, dims: int, valid: np.ndarray) -> pa.Array:
    mask = None if valid.all() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), dims, mask=mask)


def _list(values: np.ndarray, offsets: np.ndarray, valid: np.ndarray) -> pa.Array:
    mask = None if valid.all() else pa.array(~valid)
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(values, pa.float32()), mask=mask
    )
