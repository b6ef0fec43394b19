"""Pieces of JSON answers built from arrays, byte for byte what orjson writes for the same values as
Python objects: bulk ingest encodes a whole batch's answers without a dict per event.

    numbers(a)          one orjson pass over a float64 array, split into each value's text (the same
                        digits as orjson gives a Python float: shortest round trip; NaN and inf null)
    rows(a)             the same pass over [N, F], split into each row's values joined by commas (the
                        inside of a JSON array: one piece per row for a vector field, not F)
    fill(template, rows) one %-format per row, run by map() in C: no Python frame per event
    arrays(items, size)  runs of items joined into JSON arrays (a step's events)
    filled(template, rows, size)  `arrays(fill(template, rows), size)`, for size 1 in the one pass
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson


def numbers(values: np.ndarray) -> list[bytes]:
    """orjson's text of each value of `values` (any shape, read as float64), in C order."""
    if values.size == 0:
        return []
    flat = np.ascontiguousarray(values, np.float64).ravel()
    return orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")  # no value holds a comma


def rows(values: np.ndarray) -> list[bytes]:
    """orjson's text of each row of `values` [N, F] (read as float64, F >= 1), its values joined by
    commas, without the brackets."""
    if values.size == 0:
        return [b""] * len(values)
    matrix = np.ascontiguousarray(values, np.float64)
    return orjson.dumps(matrix, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[")  # no value holds one


def fill(template: bytes, rows: Iterable[tuple[Any, ...]]) -> list[bytes]:
    """`template % row` for each row."""
    return list(map(template.__mod__, rows))


def arrays(items: Sequence[bytes], size: int) -> list[bytes]:
    """The JSON arrays of consecutive runs of `size` items (already JSON): [a,b],[c,d] from a b c d."""
    if size == 1:
        return list(map(b"[%s]".__mod__, items))
    return [b"[" + b",".join(items[n : n + size]) + b"]" for n in range(0, len(items), size)]


def filled(template: bytes, rows: Iterable[tuple[Any, ...]], size: int) -> list[bytes]:
    """`arrays(fill(template, rows), size)`: each step's events (`size` rows each) as a JSON array; a
    step of one event (the common case) in the same %-format as its event, brackets and all."""
    if size == 1:
        return fill(b"[" + template + b"]", rows)
    return arrays(fill(template, rows), size)
