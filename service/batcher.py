"""A generic sequence batcher: many sessions' step jobs of one model version -> few ONNX Runtime calls.

It knows nothing about words, sensors or state; three hooks do (LitServe's split)::

    await batch(items)            -> prepared   event loop: stack inputs, read the states
    predict(prepared)             -> output     worker thread (or the loop's, below): the ONNX Runtime
                                                call (may return `Timed(output, seconds)` to time the
                                                call alone)
    await unbatch(items, prepared, output, keep) -> one result per item
                                                event loop: split outputs, write the states back

`batch` and `unbatch` are coroutines so that a networked session store can read and write a batch's
states in one round trip each; the memory store awaits nothing in them.

Scheduling (Triton's sequence batcher, LitServe's loop; service.gathering): the loop takes whatever is
queued, up to `max_batch_size` jobs. If the batch holds more than one job and is not full, and a queue
delay is configured, it waits for more until the oldest job has waited `max_queue_delay_us`; a lone job
(nothing else was queued) runs at once. Jobs are grouped by their event count T and each group is ONE call of
shape [B, T, ...]: all events of a request go in one call, never T calls. Groups run one after the other
on a dedicated single-thread executor, so the event loop keeps accepting work meanwhile.

Unless the calls hold the GIL anyway (`on_loop`). ONNX Runtime releases it; small numpy operations do
not. A call that is mostly the latter (a sensor model: some 150 operations on [B, F] arrays of session
statistics, each too small for numpy to release the GIL, around a graph of ~0.1 ms) gains nothing on
the worker: the loop cannot run while it runs, and the two threads taking turns at the GIL (each turn a
futex wake and a cold cache) cost more CPU than the call itself: with its calls on the loop's own
thread a sensor WebSocket event cost 57 us of server CPU instead of 69 (side by side, 256 sessions).
lm calls, 16 ms of ONNX Runtime in each batch of 128, stay on the worker, so the loop keeps receiving
meanwhile. So does a long call: of more than ON_LOOP_EVENTS events per job (a request of 1,024
readings: ~100 ms of statistics, one pass per reading) or ON_LOOP_WORK events in all (a bulk request
of 4,096 steps of 16 readings), which would hold the loop that long where the worker gives it a turn
every switch interval (5 ms); the longest a call on the loop runs is ~15 ms. And a call that finds the
worker busy queues behind it there, so that calls never overlap.

A failed group fails only its own jobs, with InferenceFailed, or with a copy of the ServiceError a hook
raised (StoreUnavailable: the session store is down). A job whose caller was cancelled before its group
ran is dropped; one cancelled while its group ran is reported to `unbatch` through `keep` (apply
nothing for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from service.errors import InferenceFailed, ServiceError, ShuttingDown
from service.gathering import Gathering
from service.metrics import Metrics

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - the item type, as in LitServe's hooks
O = TypeVar("O")  # noqa: E741
I_contra = TypeVar("I_contra", contravariant=True)
O_co = TypeVar("O_co", covariant=True)

ON_LOOP_EVENTS = 16  # most events per job of a call that `on_loop` runs on the loop's thread (docs)
ON_LOOP_WORK = 4096  # and most events in all (jobs x events): a bulk request's largest at one event


class BatchHooks(Protocol[I_contra, O_co]):
    async def batch(self, items: Sequence[I_contra]) -> Any: ...

    def predict(self, prepared: Any) -> Any: ...

    async def unbatch(
        self, items: Sequence[I_contra], prepared: Any, output: Any, keep: Sequence[bool]
    ) -> Sequence[O_co]: ...


@dataclass(slots=True)
class Timed:
    """What `predict` may return to report the duration of its inference call alone (without the
    rest of `predict`, e.g. batched postprocessing); otherwise the whole `predict` is timed."""

    output: Any
    seconds: float


def _own_copy(exc: ServiceError) -> ServiceError:
    """The same error as a new object, so that each caller's traceback is its own."""
    clone = type(exc).__new__(type(exc), *exc.args)
    clone.__dict__.update(exc.__dict__)
    clone.details, clone.headers = dict(exc.details), dict(exc.headers)
    return clone


class _Slot(Generic[O]):
    """Where `run_now` collects a job's outcome: the few Future methods `_run_group` uses, without an
    event-loop future per job (a bulk request has thousands of jobs and nobody awaits them one by one)."""

    __slots__ = ("_done", "outcome")

    def __init__(self) -> None:
        self.outcome: O | BaseException | None = None
        self._done = False

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def set_result(self, result: O) -> None:
        self.outcome, self._done = result, True

    def set_exception(self, exc: BaseException) -> None:
        self.outcome, self._done = exc, True


@dataclass(slots=True)
class _Job(Generic[I, O]):
    item: I
    events: int
    future: asyncio.Future[O] | _Slot[O]
    enqueued_at: float


class Batcher(Generic[I, O]):
    def __init__(
        self,
        hooks: BatchHooks[I, O],
        *,
        max_batch_size: int,
        max_queue_delay_us: int = 0,
        metrics: Metrics | None = None,
        labels: tuple[str, str] = ("", ""),
        clock: Callable[[], float] = time.monotonic,
        name: str = "batcher",
        on_loop: bool = False,
    ) -> None:
        self.hooks = hooks
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay_us / 1e6
        self.metrics = metrics
        self.labels = labels
        self.clock = clock
        self.name = name
        self._queue: Gathering[_Job[I, O]] = Gathering(
            max_batch_size,
            self.max_queue_delay,
            clock,
            enqueued_at=lambda job: job.enqueued_at,
            dropped=lambda job: job.future.cancelled(),
        )
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}")
        self.batches_run = 0
        self.on_loop = on_loop  # predict on the event loop's thread, not the worker (module docs)
        self._on_worker = 0  # calls on the worker now

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting jobs, run every job already accepted, then stop the loop and its thread."""
        self._closing = True
        self._queue.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning(
                    "batcher %s: %d job(s) still queued after %.1f s; failing them",
                    self.name,
                    len(self._queue),
                    timeout,
                )
                self._task.cancel()
                for job in self._queue.take_all():
                    if not job.future.done():
                        job.future.set_exception(ShuttingDown("the server is shutting down"))
        self._executor.shutdown(wait=True)

    # ---- submitting --------------------------------------------------------------------------------

    async def submit(self, item: I, events: int) -> O:
        """Queue one job of `events` events; returns its result (or raises what its group raised)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        future: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        self._queue.put(_Job(item, events, future, self.clock()))
        return await future

    async def run_now(self, items: Sequence[I], events: int) -> list[O | BaseException]:
        """Run `items` (of `events` events each) as ONE call now, beside the queue, however many there
        are (bulk ingest: a request's steps of one model version); one result or exception per item.
        The call runs where the queue's do (`_call`), so the two never overlap."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        now = self.clock()
        slots: list[_Slot[O]] = [_Slot() for _ in items]
        jobs = [_Job(item, events, slot, now) for item, slot in zip(items, slots, strict=True)]
        await self._run_group(events, jobs)
        return [slot.outcome for slot in slots]  # type: ignore[misc]  # every slot is set

    # ---- the loop ----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while (batch := await self._queue.next()) is not None:
            await self._run(batch)

    async def _run(self, batch: list[_Job[I, O]]) -> None:
        started = self.clock()
        if self.metrics is not None:
            delay = self.metrics.queue_delay.labels(*self.labels)
            for job in batch:
                delay.observe(started - job.enqueued_at)
        groups: dict[int, list[_Job[I, O]]] = {}
        for job in batch:
            groups.setdefault(job.events, []).append(job)
        for events, jobs in groups.items():
            await self._run_group(events, jobs)

    async def _call(self, prepared: Any, jobs: int, events: int) -> tuple[Any, float]:
        """The predict hook's output and inference time for `jobs` jobs of `events` events, on the
        worker thread or the loop's (module docs)."""
        short = events <= ON_LOOP_EVENTS and jobs * events <= ON_LOOP_WORK
        if self.on_loop and short and not self._on_worker:
            return self._predict(prepared)
        self._on_worker += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, prepared)
        finally:
            self._on_worker -= 1

    def _predict(self, prepared: Any) -> tuple[Any, float]:
        """The predict hook and the inference time measured in the thread that runs it (so that
        `rnnserve_inference_seconds` never includes waiting for the event loop to resume)."""
        started = time.perf_counter()
        output = self.hooks.predict(prepared)
        if isinstance(output, Timed):
            return output.output, output.seconds
        return output, time.perf_counter() - started

    async def run_prepared(self, prepared: Any, jobs: int, events: int) -> Any:
        """Run `prepared` (what `batch` would give for `jobs` jobs of `events` events, built by the
        caller from arrays: bulk ingest on the memory store) as one call beside the queue, where the
        queue's run (`_call`); returns `predict`'s output, or raises InferenceFailed (ShuttingDown when
        closing)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        try:
            output, inference_s = await self._call(prepared, jobs, events)
        except Exception as exc:
            raise self._failed(exc, jobs, events) from None
        self._observe(jobs, events, inference_s)
        return output

    def _failed(self, exc: Exception, jobs: int, events: int) -> InferenceFailed:
        log.exception("batcher %s: a batch of %d job(s) x %d event(s) failed", self.name, jobs, events)
        if self.metrics is not None:
            self.metrics.batch_failures.labels(*self.labels).inc()
        message = f"inference failed for a batch of {jobs} session(s): {type(exc).__name__}: {exc}"
        return InferenceFailed(message, events=events, batch_size=jobs)

    def _observe(self, jobs: int, events: int, inference_s: float) -> None:
        self.batches_run += 1
        if self.metrics is not None:
            m, labels = self.metrics, self.labels
            m.batch_size.labels(*labels).observe(jobs)
            m.batch_events.labels(*labels).observe(jobs * events)
            m.inference_time.labels(*labels).observe(inference_s)

    async def _run_group(self, events: int, jobs: list[_Job[I, O]]) -> None:
        items = [job.item for job in jobs]
        try:
            prepared = await self.hooks.batch(items)
            output, inference_s = await self._call(prepared, len(jobs), events)
            keep = [not job.future.cancelled() for job in jobs]
            results = await self.hooks.unbatch(items, prepared, output, keep)
            if len(results) != len(jobs):  # outputs match inputs one for one
                raise AssertionError(f"unbatch returned {len(results)} results for {len(jobs)} jobs")
        except ServiceError as exc:  # e.g. the session store is down: the callers get that, as it is
            log.warning("batcher %s: a batch of %d job(s) failed: %s", self.name, len(jobs), exc.message)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(_own_copy(exc))
            return
        except Exception as exc:
            failed = self._failed(exc, len(jobs), events)
            for job in jobs:  # one exception object per caller: each one's traceback is its own
                if not job.future.done():
                    job.future.set_exception(_own_copy(failed))
            return
        self._observe(len(jobs), events, inference_s)
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)


class Coalescer(Generic[I, O]):
    """Concurrent calls made in one turn of the event loop go out as ONE bulk call (auto-batching for
    a networked store: 256 requests arriving together cost one round trip to look up, not 256).

    `bulk(items)` answers one result per item, in order; a result that is an Exception is raised to
    that caller alone. If `bulk` raises a ServiceError, every caller of that call gets a copy of it.
    A caller never waits for a turn of the loop more than it would have for its own call."""

    def __init__(self, bulk: Callable[[list[I]], Awaitable[Sequence[O | Exception]]], max_items: int = 512):
        self.bulk = bulk
        self.max_items = max_items
        self._pending: list[tuple[I, asyncio.Future[O]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # bulk calls made, for tests and metrics

    async def __call__(self, item: I) -> O:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[O] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((item, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_items):
            task = asyncio.get_running_loop().create_task(self._run(pending[start : start + self.max_items]))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _run(self, calls: list[tuple[I, asyncio.Future[O]]]) -> None:
        self.calls += 1
        try:
            results = await self.bulk([item for item, _ in calls])
            if len(results) != len(calls):
                raise AssertionError(f"bulk call answered {len(results)} of {len(calls)} items")
        except ServiceError as exc:
            for _, future in calls:
                if not future.done():
                    future.set_exception(_own_copy(exc))
            return
        except Exception as exc:
            log.exception("coalesced call of %d item(s) failed", len(calls))
            for _, future in calls:
                if not future.done():
                    future.set_exception(ServiceError(f"{type(exc).__name__}: {exc}"))
            return
        for (_, future), result in zip(calls, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
