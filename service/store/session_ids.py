"""The memory store's ids: each live session's key -> where its slab row is, the owner table, and the
tombstones of ended ids (tombstones.py).

A live session is one dict entry: its key (base.session_key: 16 raw bytes for our own ids) -> one int,
(partition << 32) | row, so that there is no Python object per session beyond the key. Owners (API key
identities, None when auth is off) are interned as small ints, the `owner` column of a slab row.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from itertools import repeat

import numpy as np

from service.errors import SessionNotFound, session_gone
from service.store.base import SessionKey, session_key, session_keys
from service.store.tombstones import Tombstones

_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1
NO_OWNER = -2  # the owner index of an owner never seen: no row and no tombstone has it


class SessionIds:
    def __init__(self) -> None:
        self.live: dict[SessionKey, int] = {}  # key -> (partition << 32) | row
        self.owners: list[str | None] = [None]  # a row's `owner` column indexes it
        self._owner_index: dict[str | None, int] = {None: 0}
        self.gone = Tombstones()

    def __len__(self) -> int:
        return len(self.live)

    def __contains__(self, key: SessionKey) -> bool:
        return key in self.live

    def owner(self, owner: str | None) -> int:
        """The index of `owner` in the owner table, added if new."""
        index = self._owner_index.get(owner)
        if index is None:
            index = self._owner_index[owner] = len(self.owners)
            self.owners.append(owner)
        return index

    def owner_code(self, owner: str | None) -> int:
        """The index of `owner`, NO_OWNER if it has none (it owns nothing)."""
        return self._owner_index.get(owner, NO_OWNER)

    def new_key(self) -> SessionKey:
        """A random 128-bit key that is neither live nor remembered as ended."""
        key = secrets.token_bytes(16)
        while key in self.live or key in self.gone:
            key = secrets.token_bytes(16)
        return key

    def add(self, key: SessionKey, part: int, row: int) -> None:
        self.live[key] = (part << _ROW_BITS) | row

    def locate(self, session_id: str, owner: str | None, now: float) -> tuple[int, int, int]:
        """(partition, row, owner index) of a live id (whose row may be another owner's: the caller
        checks); SessionGone for an id that `owner` ended recently, else SessionNotFound."""
        key = session_key(session_id)
        packed = self.live.get(key)
        owner_index = self.owner_code(owner)
        if packed is None:
            reason = self.gone.reason_for(key, owner_index, now)
            if reason is not None:
                raise session_gone(session_id, reason)
            raise SessionNotFound(f"no session {session_id}", session_id=session_id)
        return packed >> _ROW_BITS, packed & _ROW_MASK, owner_index

    def locate_many(self, session_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(partition, row) [B] of each id; partition -1 for an id that is not live."""
        keys = session_keys(session_ids)
        packed = np.fromiter(map(self.live.get, keys, repeat(-1)), np.int64, len(keys))
        return packed >> _ROW_BITS, packed & _ROW_MASK

    def end(
        self, keys: Sequence[SessionKey | None], owners: Sequence[int], reason: str, until: float | None
    ) -> None:
        """Forget live keys, and remember each as ended for `reason` by its owner (index) until `until`
        (None: not at all)."""
        for key, owner in zip(keys, owners, strict=True):
            assert key is not None
            del self.live[key]
            if until is not None:
                self.gone.add(key, reason, owner, until)
