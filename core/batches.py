"""Fixed-size batches: a compiled program sees one batch shape, so the last, shorter batch is padded (and its extra
rows dropped by the caller), and a table of any size compiles once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:
    from fastsamplers.core.typing import ArrayT


def pad_rows(batch: ArrayT, size: int) -> ArrayT:
    """`batch` (numpy or JAX, rows first) with zero rows appended up to `size` rows, in its own array library.

    Example:
        >>> pad_rows(np.ones((2, 3)), 4).tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    n = batch.shape[0]
    if n > size:
        raise ValueError(f"a batch of {n} rows does not fit the batch size {size}")
    if n == size:
        return batch
    xp = batch.__array_namespace__() if hasattr(batch, "__array_namespace__") else np
    return xp.concatenate([batch, xp.zeros((size - n, *batch.shape[1:]), batch.dtype)])


def padded_batches(array: ArrayT, size: int) -> Iterator[tuple[int, ArrayT, int]]:
    """(start, batch of exactly `size` rows, number of real rows) over `array` in order; the last batch padded.

    Example:
        >>> [(start, batch.shape[0], n) for start, batch, n in padded_batches(np.zeros((5, 2)), 2)]
        [(0, 2, 2), (2, 2, 2), (4, 2, 1)]
    """
    check_batch_size(size)
    for start in range(0, array.shape[0], size):
        chunk = array[start:start + size]
        yield start, pad_rows(chunk, size), chunk.shape[0]


def check_batch_size(size: Any) -> int:
    """`size` as an int if it is a positive integer; ValueError otherwise."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"batch_size must be a positive int, got {size!r}")
    return int(size)
