"""JSON in: what `json.loads` reads from a body, at orjson's speed.

orjson parses a bulk request of 1,000 steps several times faster than the standard parser, and where it
reads a text at all it reads it as `json.loads` does, except for integers of more than 64 bits (orjson
makes them floats). So: orjson first unless the text holds a number of 19 or more digits; the standard
parser for that text and for everything orjson refuses (NaN, Infinity, 1e400, lone surrogates, nesting
deeper than 1,024, invalid UTF-8), which it then reads or refuses with its own error, as before.
(Nesting between the standard parser's recursion limit, ~950 levels in a server, and orjson's 1,024 is
read rather than refused; what is inside is then refused by the body's own checks.)
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# every digit as "0": a number of 19+ digits is then a run of 19 "0"s that starts where a JSON value
# may (after one of _STARTS, or at the very start); most bodies have no such run, a bulk body's hex
# ids may (inside a string, after a letter or a quote). A translation and a search or two cost a fifth
# of orjson's parse; a regular expression, several times the standard parser's
_DIGITS = bytes.maketrans(b"0123456789", b"0" * 10)
_RUN = b"0" * 19
_STARTS = frozenset(b"[:,- \t\n\r")  # what a number of a JSON text may follow: JSON's whitespace too


def _long_number(digits: bytes) -> bool:
    """Whether `digits` (a text with every digit as "0") holds a number of 19 or more digits."""
    at = digits.find(_RUN)
    while at >= 0:
        if at == 0 or digits[at - 1] in _STARTS:  # the leftmost match of a run is where it starts
            return True
        at = digits.find(_RUN, at + len(_RUN))  # the rest of this run cannot start a number
    return False


def loads(raw: str | bytes) -> Any:
    """`json.loads(raw)`: the same value, or the same exception."""
    if not _long_number(
        (raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw).translate(_DIGITS)
    ):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)
