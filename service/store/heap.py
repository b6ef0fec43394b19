"""Hand the C heap's free pages back to the operating system after each periodic snapshot.

The tombstones are a dict of up to `max_sessions` entries with entries added at one end and dropped at
the other, so its table (10 MB for 100,000 entries) is reallocated every ~250,000 deletes. glibc keeps
a freed table that is not at the top of its heap, and the process's RSS steps up by its size (the
1,000,000-cycle soak: +8.4 MiB at the resize after 923,337 deletes; a dict alone under the same churn:
+10.0 MiB there, back to +0.4 MiB after `malloc_trim(0)`). `malloc_trim(0)` returns every whole free
page of every arena; a snapshot runs every `snapshot_interval_s`, so it bounds how long such memory is
held. Elsewhere (musl, macOS) there is no such call and nothing is done.
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
