"""Per-key turn-taking: requests for one session run one at a time, in arrival order.

Only keys with a request in progress hold an entry, and only keys that someone waits on hold a queue
(a deque of waiting futures; None while nobody waits), so an idle session costs nothing here and a
bulk request takes and gives back a thousand free turns in a few dict operations.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Hashable, Iterable


class Turns:
    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[asyncio.Future[None]] | None] = {}

    def busy(self, key: Hashable) -> bool:
        return key in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def try_acquire(self, key: Hashable) -> bool:
        """Take `key`'s turn now if nobody holds it (pair a True with one `release`); never waits."""
        if key in self._waiting:
            return False
        self._waiting[key] = None
        return True

    def try_acquire_all(self, keys: Collection[Hashable]) -> bool:
        """Take the turns of all of these distinct keys now if nobody holds any of them, else take none
        (pair a True with `release_all` or one `release` per key); never waits."""
        waiting = self._waiting
        if not waiting.keys().isdisjoint(keys):
            return False
        waiting.update(dict.fromkeys(keys))
        return True

    async def acquire(self, key: Hashable) -> None:
        """Wait for `key`'s turn (FIFO). Pair every successful acquire with one `release`."""
        if key not in self._waiting:
            self._waiting[key] = None
            return
        waiting = self._waiting[key]
        if waiting is None:
            waiting = self._waiting[key] = deque()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # the turn was handed to us as we were cancelled: pass it on
            raise

    def release(self, key: Hashable) -> None:
        waiting = self._waiting[key]
        while waiting:
            future = waiting.popleft()
            if not future.done():  # skip waiters that were cancelled
                future.set_result(None)
                return
        del self._waiting[key]

    def release_all(self, keys: Iterable[Hashable]) -> None:
        """`release` of each key (each held once by the caller)."""
        waiting = self._waiting
        for key in keys:
            if waiting[key] is None:  # nobody waits: the common case, without a call
                del waiting[key]
            else:
                self.release(key)
