"""Per-key turn-taking: requests for one session run one at a time, in arrival order.

Only keys with a request in progress hold an entry (a deque of waiting futures), so an idle session
costs nothing here: no Lock object per session.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable


class Turns:
    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}

    def busy(self, key: Hashable) -> bool:
        return key in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def try_acquire(self, key: Hashable) -> bool:
        """Take `key`'s turn now if nobody holds it (pair a True with one `release`); never waits."""
        if key in self._waiting:
            return False
        self._waiting[key] = deque()
        return True

    async def acquire(self, key: Hashable) -> None:
        """Wait for `key`'s turn (FIFO). Pair every successful acquire with one `release`."""
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = deque()
            return
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
