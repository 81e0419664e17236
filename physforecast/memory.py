"""Hand freed memory back to the operating system between large pieces of work.

Evaluation builds and drops a chunk of forecasts, truths and metric intermediates
(tens of MB) again and again. CPython frees xarray's reference cycles only when its
collector runs, and glibc's allocator keeps freed heap pages (its threshold for giving
large blocks their own ``mmap`` rises to the size of the blocks freed), so without help
the resident size creeps up chunk after chunk. :func:`chunked_work` gives a loop over
chunks a :func:`release_memory` that does both steps and costs milliseconds, not the
full collection of every object the process holds (a lazy store's dask graph has
hundreds of thousands).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable, Iterator

__all__ = ["release_memory", "chunked_work"]

_depth = 0  # nesting of chunked_work: only the outermost freezes and unfreezes


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on another C library (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


def release_memory() -> None:
    """Collect unreachable Python objects, then return the allocator's free pages to the
    operating system (glibc's ``malloc_trim``; only the collection elsewhere)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextlib.contextmanager
def chunked_work() -> Iterator[Callable[[], None]]:
    """A block that processes data chunk by chunk; yields :func:`release_memory`, to call
    after each chunk.

    The objects alive at entry are moved out of the collector's sight (``gc.freeze``)
    until the block ends, so each collection inside looks only at what the chunks made.

    Examples
    --------
    >>> with chunked_work() as release:
    ...     for chunk in range(3):
    ...         scratch = [bytearray(1 << 20) for _ in range(8)]
    ...         del scratch
    ...         release()
    """
    global _depth
    if _depth == 0:
        gc.collect()
        gc.freeze()
    _depth += 1
    try:
        yield release_memory
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()
