"""Ended session ids, remembered for a while so that they answer 410 with the reason, not 404.

A tombstone holds the reason the session ended (expired, evicted, deleted), the owner it belonged to
(only that API key is told the reason: anyone else gets 404, as for an id that never existed) and the
time it is forgotten. Insertion order is age order, so trimming drops the oldest first; a count limit
keeps a flood of short sessions from growing memory without bound.
"""

from __future__ import annotations

from service.store.base import SessionKey


class Tombstones:
    def __init__(self) -> None:
        self._gone: dict[SessionKey, tuple[str, int, float]] = {}  # key -> (reason, owner index, until)

    def __contains__(self, key: SessionKey) -> bool:
        return key in self._gone

    def __len__(self) -> int:
        return len(self._gone)

    def add(self, key: SessionKey, reason: str, owner: int, until: float) -> None:
        self._gone[key] = (reason, owner, until)

    def discard(self, key: SessionKey) -> None:
        self._gone.pop(key, None)

    def reason_for(self, key: SessionKey, owner: int, now: float) -> str | None:
        """Why the session of `key` ended, if it did recently and belonged to `owner`."""
        tomb = self._gone.get(key)
        return tomb[0] if tomb is not None and tomb[2] > now and tomb[1] == owner else None

    def reason(self, key: SessionKey) -> str | None:
        tomb = self._gone.get(key)
        return tomb[0] if tomb is not None else None

    def trim(self, now: float, limit: int) -> None:
        """Forget tombstones past their time, and the oldest beyond `limit`."""
        gone = self._gone
        while gone:
            first = next(iter(gone))
            if gone[first][2] > now and len(gone) <= limit:
                break
            del gone[first]

    def copy(self) -> tuple[list[SessionKey], list[tuple[str, int, float]]]:
        """The keys and the (reason, owner index, until) of every tombstone, expired or not, in the
        same order: two lists of the objects the tombstones hold (no new object per tombstone)."""
        return list(self._gone), list(self._gone.values())
