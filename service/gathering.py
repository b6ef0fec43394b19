"""Items queued one at a time, handed out as batches: the batching rule of the batcher and the step lane.

`next()` takes whatever is queued, up to `max_items`. If the batch holds more than one item and is
not full, and a delay is configured, it waits for more until the oldest item has waited `max_delay_s`;
a lone item (nothing else was queued) goes at once (Triton's dynamic batcher, LitServe's loop). Items
that `dropped` says are no longer wanted (their caller was cancelled) are skipped as they are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Gathering(Generic[T]):
    def __init__(
        self,
        max_items: int,
        max_delay_s: float,
        clock: Callable[[], float],
        enqueued_at: Callable[[T], float],
        dropped: Callable[[T], bool],
    ) -> None:
        self.max_items = max_items
        self.max_delay_s = max_delay_s
        self.clock = clock
        self._enqueued_at = enqueued_at
        self._dropped = dropped
        self._queue: deque[T] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, item: T) -> None:
        self._queue.append(item)
        self._wakeup.set()

    def close(self) -> None:
        """`next()` hands out what is queued, then None."""
        self._closing = True
        self._wakeup.set()

    def take_all(self) -> list[T]:
        """Empty the queue now, returning what it held (to fail it)."""
        items = list(self._queue)
        self._queue.clear()
        return items

    def _take(self, batch: list[T]) -> None:
        while self._queue and len(batch) < self.max_items:
            item = self._queue.popleft()
            if not self._dropped(item):
                batch.append(item)

    async def next(self) -> list[T] | None:
        """The next batch (never empty); None once closed and empty."""
        while True:
            if not self._queue:
                if self._closing:
                    return None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[T] = []
            self._take(batch)
            if self.max_delay_s > 0 and 1 < len(batch) < self.max_items:
                deadline = self._enqueued_at(batch[0]) + self.max_delay_s
                while len(batch) < self.max_items and not self._closing:
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    self._take(batch)
            if batch:
                return batch
