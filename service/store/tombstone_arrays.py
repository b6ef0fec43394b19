"""The snapshot's tombstones as a few flat arrays, built without a Python object per tombstone.

    gone.keys      uint8    every key's bytes, concatenated: our own ids as their 16 raw bytes, a
                            client-chosen id as its UTF-8 text
    gone.key_len   int32    each key's length in gone.keys
    gone.raw       bool     whether the key is 16 raw bytes (an id of ours, written back as hex)
    gone.reason    uint8    index into the header's `gone_reasons`
    gone.owner     int32    index into the header's `owners`
    gone.until     float64  wall-clock time the tombstone is forgotten

A snapshot runs every few seconds and there may be `max_sessions` tombstones per served version. The
format 2 layout (a fixed-width unicode array of hex ids, built from a new str per id, a float per time,
and a new (key, value) tuple per tombstone when copied) cost ~33 MB of temporaries for 100,000
tombstones, ~10 MB of them small objects, and a soak's RSS grew by steps (+8% to +32% after its
warm-up); without the small objects it stays flat. The likely mechanism: they fill free slots of
Python's small-object arenas between the tombstones made meanwhile, and once freed leave arenas that a
few long-lived objects keep from being returned (malloc_trim after each snapshot changed nothing, so it
is not the C heap). This layout is built from the objects the tombstones already hold, into a few numpy
buffers (~6 MB all told for 100,000). Files of format 1 and 2 (`gone.ids`, unicode reasons) are still
read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from service.store.base import SessionKey
from service.store.pieces import Pieces

JOIN_KEYS = 1024

Tomb = tuple[str, int, float]  # (reason, owner index, monotonic time it is forgotten)


def encode(
    keys: list[SessionKey], tombs: list[Tomb], now: float, wall_offset: float
) -> tuple[list[str], dict[str, np.ndarray | Pieces]]:
    """(reasons, arrays) of the tombstones (`keys[i]`'s is `tombs[i]`) not yet past their time (`now`
    monotonic)."""
    until = np.fromiter((t[2] for t in tombs), np.float64, count=len(tombs))
    keep = until > now
    if not keep.all():
        mask = keep.tolist()
        keys, tombs = list(itertools.compress(keys, mask)), list(itertools.compress(tombs, mask))
    m = len(keys)
    reasons = sorted({t[0] for t in tombs})
    code = {r: i for i, r in enumerate(reasons)}
    return reasons, {
        "gone.keys": _joined(keys),
        "gone.key_len": np.fromiter(
            (len(k) if isinstance(k, bytes) else len(k.encode()) for k in keys), np.int32, count=m
        ),
        "gone.raw": np.fromiter((isinstance(k, bytes) for k in keys), np.bool_, count=m),
        "gone.reason": np.fromiter((code[t[0]] for t in tombs), np.uint8, count=m),
        "gone.owner": np.fromiter((t[1] for t in tombs), np.int32, count=m),
        "gone.until": until[keep] + wall_offset,
    }


def _joined(keys: list[SessionKey]) -> Pieces:
    """The keys' bytes, joined JOIN_KEYS at a time (bytes.join holds an 80-byte buffer record per item
    while it runs: 8 MB for 100,000 keys at once)."""
    parts = []
    for start in range(0, len(keys), JOIN_KEYS):
        raw = b"".join(k if isinstance(k, bytes) else k.encode() for k in keys[start : start + JOIN_KEYS])
        parts.append(np.frombuffer(raw, np.uint8))
    return Pieces(np.dtype(np.uint8), (sum(len(p) for p in parts),), parts)


def decode(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Iterator[tuple[str, str, int, float]]:
    """(session id, reason, owner index, wall-clock until) of every tombstone in the file, of any format."""
    if "gone.keys" not in arrays:  # formats 1 and 2
        if "gone.ids" in arrays:
            yield from zip(
                arrays["gone.ids"].tolist(),
                arrays["gone.reason"].tolist(),
                arrays["gone.owner"].tolist(),
                arrays["gone.until"].tolist(),
                strict=True,
            )
        return
    reasons: list[str] = header["gone_reasons"]
    blob = arrays["gone.keys"].tobytes()
    ends = np.cumsum(arrays["gone.key_len"], dtype=np.int64).tolist()
    if (ends[-1] if ends else 0) != len(blob):
        raise ValueError("the snapshot's tombstone keys do not add up to their lengths")
    start = 0
    for end, raw, reason, owner, until in zip(
        ends,
        arrays["gone.raw"].tolist(),
        arrays["gone.reason"].tolist(),
        arrays["gone.owner"].tolist(),
        arrays["gone.until"].tolist(),
        strict=True,
    ):
        key = blob[start:end]
        start = end
        yield (key.hex() if raw else key.decode()), reasons[reason], owner, until
