"""Pieces of JSON answers built from arrays, byte for byte what orjson writes for the same values as
Python objects: bulk ingest encodes a whole batch's answers without a dict per event.

    numbers(a)          one orjson pass over a float64 array, split into each value's text (the same
                        digits as orjson gives a Python float: shortest round trip; NaN and inf null)
    rows(a)             the same pass over [N, F], split into each row's values joined by commas (the
                        inside of a JSON array: one piece per row for a vector field, not F)
    fill(template, rows) one %-format per row, run by map() in C: no Python frame per event
    filled(template, rows, size)  `fill`, each run of `size` events joined into a JSON array (a
                        step's events); for one event per step the brackets are in the %-format
"""

from __future__ import annotations

from collections.abc import Iterable
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


def filled(template: bytes, rows: Iterable[tuple[Any, ...]], size: int) -> list[bytes]:
    """Each step's events (`size` consecutive rows each), `template % row` for each, as a JSON array:
    [a,b],[c,d] from rows a b c d. A step of one event (the common case) is written by the same
    %-format as its event, brackets and all."""
    if size == 1:
        return fill(b"[" + template + b"]", rows)
    events = fill(template, rows)
    return [b"[" + b",".join(events[n : n + size]) + b"]" for n in range(0, len(events), size)]
