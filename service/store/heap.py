"""Hand the C heap's free memory back to the operating system after a snapshot.

A periodic snapshot allocates a few MB of temporaries in a worker thread and frees them; glibc keeps
freed memory in its arenas (a thread's arena is trimmed only from its top, and freed large blocks raise
the threshold under which the next ones come from the heap rather than their own mapping), so the
process's RSS steps up over the first snapshots and stays there. `malloc_trim(0)` returns every whole
free page of every arena. Elsewhere (musl, macOS) there is no such call and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False where the C library cannot (or had none to return)."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))
