"""The step lane: per-session steps (`POST /v1/sessions/{id}/events`, the session's WebSocket stream,
V2 infer) gathered across sessions and run as bulk ingest's batch lane, as one bulk request would be.

    step_json (the session's turn taken)  -> put (session, owner, events body) here
    the lane's loop: whatever is queued, up to max_batch_size steps (service.gathering: the batcher's
                     rule, max_queue_delay_us included)
                  -> per owner: BulkSteps.run_lane: on the memory store, the slab's arrays (decode_many,
                     one gather, ONE ONNX Runtime call per version and event count, vectorized answers
                     and commit); otherwise, or for what that leaves, records, decode and one batched
                     call per (version, events), as the batcher's hooks do
                  -> each step's answer (JSON bytes) or error to its caller; its turn released

Why: through the batcher each step was a record, a decoded object, a job, a future, a result and an
answer built alone, ~40 Python calls per event; here a step is one small object, and what is done per
event is done per batch, on arrays. The rules stay those of the route (stepping.py): the caller holds
the session's turn, so the lane's steps are of distinct sessions, in arrival order per session; seq,
replays and 409s, and every error, are decided by the same code as bulk ingest's, which answers as the
per-session route does (the bulk end-to-end tests compare the two).

Two flushes may be in progress at once; their steps are of distinct sessions, as each step holds its
turn. On the memory store the next flush starts once the running one's ONNX Runtime call has returned,
and runs up to its own call before the first writes its answers (`_Flush.returned`): ONNX Runtime, on
its own thread, then waits only for the next batch's decode and gather, not for the last one's answers
and commit, and the next batch still holds everything that arrived during the call (at 256 lm sessions
over WebSocket on 2 cores: +20-30% events/s, batches as large). With a networked store (Redis) the
next flush starts at once (`calls_ahead=2`), so that one flush's round trips overlap the other's
inference, as the batcher's hooks overlapped them.

The turn travels with the step: the lane releases it once the step is answered, also when the caller
was cancelled meanwhile (a step taken into a call runs to its end before its session takes another).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.errors import ServiceError, ShuttingDown
from service.gathering import Gathering
from service.metrics import Metrics, observe_many
from service.settings import Settings
from service.turns import Turns

if TYPE_CHECKING:
    from service.bulk import BulkSteps
    from service.stepping import Served

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Step:
    session_id: str
    owner: str | None
    payload: dict[str, Any]
    future: asyncio.Future[bytes]
    enqueued_at: float


class StepLane:
    def __init__(
        self,
        bulk: BulkSteps,
        turns: Turns,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        calls_ahead: int = 1,
    ) -> None:
        """`calls_ahead`: flushes that may be before the return of their ONNX Runtime call at once (of
        at most `_FLUSHES` in progress): 1 on the memory store, 2 with a networked one (module doc)."""
        self.bulk = bulk
        self.calls_ahead = calls_ahead
        self.turns = turns
        self.metrics = metrics
        self.clock = clock
        self._queue: Gathering[_Step] = Gathering(
            settings.max_batch_size,
            settings.max_queue_delay_us / 1e6,
            clock,
            enqueued_at=lambda step: step.enqueued_at,
            dropped=self._dropped,
        )
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._flushes: set[_Flush] = set()  # in progress
        self._changed: asyncio.Future[None] | None = None  # the loop waits on it for room

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="step-lane")

    async def stop(self, timeout: float | None = None) -> None:
        """Run every step already queued (their turns are held: the manager waits for them first),
        then stop; what is left after `timeout` is answered ShuttingDown."""
        self._closing = True
        self._queue.close()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            for step in self._queue.take_all():
                self._answer(step, ShuttingDown("the server is shutting down"))

    async def step(self, session_id: str, owner: str | None, payload: dict[str, Any]) -> bytes:
        """The step's answer (the JSON of a `schemas.StepResponse`); the caller holds the session's
        turn and hands it over: the lane releases it."""
        if self._closing:
            self.turns.release(session_id)
            raise ShuttingDown("the server is shutting down")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.put(_Step(session_id, owner, payload, future, self.clock()))
        return await future

    def _dropped(self, step: _Step) -> bool:
        """A step whose caller left before it was taken: not run, its turn passed on."""
        if step.future.cancelled():
            self.turns.release(step.session_id)
            return True
        return False

    def _answer(self, step: _Step, outcome: bytes | BaseException) -> None:
        if not step.future.done():
            if isinstance(outcome, BaseException):
                step.future.set_exception(outcome)
            else:
                step.future.set_result(outcome)
        self.turns.release(step.session_id)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        flushes = self._flushes
        try:
            while (steps := await self._queue.next()) is not None:
                flush = _Flush(self, steps)
                flush.task = loop.create_task(self._flush(flush))
                flushes.add(flush)
                flush.task.add_done_callback(functools.partial(self._ended, flush))
                while len(flushes) >= _FLUSHES or self._calling() >= self.calls_ahead:
                    self._changed = loop.create_future()
                    await self._changed
            if flushes:
                await asyncio.wait([flush.task for flush in flushes])
        except asyncio.CancelledError:  # stopped past the drain: each flush answers what it holds
            for flush in flushes:
                flush.task.cancel()
            raise

    def _calling(self) -> int:
        """Flushes in progress whose (first) call has not returned."""
        return sum(flush.calling for flush in self._flushes)

    def _unstarted(self) -> bool:
        """Whether a flush in progress has not run yet."""
        return any(not flush.started for flush in self._flushes)

    def _ended(self, flush: _Flush, _: asyncio.Task[None]) -> None:
        self._flushes.discard(flush)
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def _flush(self, flush: _Flush) -> None:
        flush.started = True
        by_owner: dict[str | None, list[_Step]] = {}
        for step in flush.steps:
            by_owner.setdefault(step.owner, []).append(step)
        for owner, own in by_owner.items():
            await self._run(owner, own, flush)

    async def _run(self, owner: str | None, steps: list[_Step], flush: _Flush) -> None:
        answered = [False] * len(steps)

        def ok(i: int, _: str, answer: bytes) -> None:
            answered[i] = True
            self._answer(steps[i], answer)

        def failed(i: int, _: str, error: ServiceError) -> None:
            answered[i] = True
            self._answer(steps[i], error)

        try:
            lane = [(i, step.session_id, step.payload) for i, step in enumerate(steps)]
            await self.bulk.run_lane(owner, lane, ok, failed, _Calls(flush, steps))
        except Exception as exc:  # a bug: its steps answer 500 (their callers log it), the lane goes on
            log.exception("the step lane failed on %d step(s)", len(steps))
            for i, step in enumerate(steps):
                if not answered[i]:
                    answered[i] = True
                    self._answer(step, exc)
        finally:  # cancelled (shutdown past its drain): whoever is left is told so, and their turns freed
            for i, step in enumerate(steps):
                if not answered[i]:
                    self._answer(step, ShuttingDown("the server is shutting down"))


_FLUSHES = 2  # in progress at once: one writing its answers while the next runs its call
_HANDOVER_TURNS = 4  # at most, for the next flush to reach its call (it takes two: `_Flush.returned`)


class _Flush:
    """One batch of the lane in progress: `started` once its task runs, `calling` until its (first)
    call returns."""

    __slots__ = ("calling", "lane", "started", "steps", "task")

    task: asyncio.Task[None]

    def __init__(self, lane: StepLane, steps: list[_Step]) -> None:
        self.lane, self.steps, self.calling, self.started = lane, steps, True, False

    async def returned(self) -> None:
        """After a call: let the next flush start and run up to its own call before this one goes on
        to its answers and commit. One turn of the event loop lets the lane's loop take the next batch
        and create its flush, the next lets that flush run until it awaits its call; with nothing
        queued, one turn is all it costs."""
        lane = self.lane
        if self.calling:  # the loop may start the next flush
            self.calling = False
            lane._wake()
        for _ in range(_HANDOVER_TURNS):
            await asyncio.sleep(0)
            if not lane._unstarted():
                return


class _Calls:
    """`bulk.Progress` of one owner's steps in a flush: queue delays observed as they go into a call,
    and each call's return handed to the flush."""

    __slots__ = ("flush", "steps")

    def __init__(self, flush: _Flush, steps: list[_Step]) -> None:
        self.flush, self.steps = flush, steps

    def starting(self, served: Served, positions: Sequence[int]) -> None:
        lane, steps = self.flush.lane, self.steps
        now = lane.clock()
        waited = [now - steps[i].enqueued_at for i in positions]
        observe_many(lane.metrics.queue_delay.labels(*served.batcher.labels), waited)

    async def returned(self) -> None:
        await self.flush.returned()
