"""The generic batcher with trivial hooks and a fake clock: sizes, delay, idle, failures, order, drain."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from service.batcher import ON_LOOP_EVENTS, ON_LOOP_WORK, Batcher, Coalescer
from service.errors import InferenceFailed, ShuttingDown, StoreUnavailable
from service.metrics import Metrics

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hooks:
    """Items are (value, events); predict doubles values; a value < 0 makes its whole group fail."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.unbatched: list[list[bool]] = []
        self.gate: asyncio.Event | None = None

    async def batch(self, items: Sequence[tuple[int, int]]) -> list[int]:
        return [value for value, _ in items]

    def predict(self, prepared: list[int]) -> list[int]:
        self.calls.append(list(prepared))
        if any(v < 0 for v in prepared):
            raise RuntimeError("bad value")
        return [2 * v for v in prepared]

    async def unbatch(
        self, items: Sequence[tuple[int, int]], prepared: Any, output: Any, keep: Sequence[bool]
    ) -> list[int]:
        self.unbatched.append(list(keep))
        if any(v == 99 for v in prepared):  # e.g. the session store went down while writing back
            raise StoreUnavailable("the session store is unavailable", retry_after_s=2)
        return list(output)


def make(
    hooks: Any,
    clock: FakeClock,
    max_batch_size: int = 4,
    delay_us: int = 0,
    metrics: Metrics | None = None,
    on_loop: bool = False,
) -> Batcher[tuple[int, int], int]:
    batcher: Batcher[tuple[int, int], int] = Batcher(
        hooks,
        max_batch_size=max_batch_size,
        max_queue_delay_us=delay_us,
        metrics=metrics,
        labels=("m", "1"),
        clock=clock,
        name="test",
        on_loop=on_loop,
    )
    batcher.start()
    return batcher


async def test_takes_whatever_is_queued_up_to_max_batch_size() -> None:
    hooks, clock = Hooks(), FakeClock()
    batcher = make(hooks, clock, max_batch_size=4)
    results = await asyncio.gather(*(batcher.submit((v, 1), 1) for v in range(10)))
    assert results == [2 * v for v in range(10)]  # outputs match inputs one for one, in order
    assert hooks.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    await batcher.stop()


async def test_never_waits_when_nothing_else_is_queued() -> None:
    hooks, clock = Hooks(), FakeClock()
    batcher = make(hooks, clock, delay_us=1_000_000)  # one (fake) second of allowed delay
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await batcher.submit((5, 1), 1) == 10
    assert loop.time() - started < 0.5  # ran at once, the clock never moved
    await batcher.stop()


async def test_waits_up_to_the_queue_delay_for_more_once_several_are_queued() -> None:
    hooks, clock = Hooks(), FakeClock()
    batcher = make(hooks, clock, max_batch_size=8, delay_us=5_000_000)
    first = [asyncio.ensure_future(batcher.submit((v, 1), 1)) for v in (1, 2)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert hooks.calls == []  # two queued together: waiting for more within the delay
    late = asyncio.ensure_future(batcher.submit((3, 1), 1))
    for _ in range(20):
        await asyncio.sleep(0)
    assert hooks.calls == []  # joined the waiting batch; the deadline has not passed
    clock.now += 6.0  # past the oldest job's deadline: the next wake-up runs the batch
    last = asyncio.ensure_future(batcher.submit((4, 1), 1))
    assert await asyncio.gather(*first, late, last) == [2, 4, 6, 8]
    assert hooks.calls == [[1, 2, 3, 4]]
    await batcher.stop()


async def test_a_full_batch_does_not_wait() -> None:
    hooks, clock = Hooks(), FakeClock()
    batcher = make(hooks, clock, max_batch_size=2, delay_us=5_000_000)
    assert await asyncio.gather(*(batcher.submit((v, 1), 1) for v in (1, 2))) == [2, 4]
    await batcher.stop()


async def test_groups_by_event_count_one_call_each() -> None:
    hooks, clock = Hooks(), FakeClock()
    batcher = make(hooks, clock, max_batch_size=8)
    jobs = [(1, 1), (2, 3), (3, 1), (4, 3), (5, 2)]
    results = await asyncio.gather(*(batcher.submit(job, job[1]) for job in jobs))
    assert results == [2, 4, 6, 8, 10]
    assert hooks.calls == [[1, 3], [2, 4], [5]]


async def test_a_failed_group_fails_only_its_own_jobs() -> None:
    hooks, clock = Hooks(), FakeClock()
    metrics = Metrics()
    batcher = make(hooks, clock, max_batch_size=8, metrics=metrics)
    jobs = [(1, 1), (-1, 2), (3, 1), (4, 2)]
    results = await asyncio.gather(*(batcher.submit(job, job[1]) for job in jobs), return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], InferenceFailed) and isinstance(results[3], InferenceFailed)
    assert results[1] is not results[3]  # each caller gets its own exception object
    assert len(hooks.unbatched) == 1  # the failed group was never unbatched: its state is untouched
    assert (
        metrics.registry.get_sample_value("rnnserve_batch_failures_total", {"model": "m", "version": "1"})
        == 1
    )
    # the loop survives a failure
    assert await batcher.submit((7, 1), 1) == 14
    await batcher.stop()


async def test_a_service_error_from_a_hook_reaches_each_caller_as_it_is() -> None:
    hooks, clock = Hooks(), FakeClock()
    batcher = make(hooks, clock, max_batch_size=8)
    jobs = [(1, 1), (99, 1), (3, 2)]
    results = await asyncio.gather(*(batcher.submit(job, job[1]) for job in jobs), return_exceptions=True)
    assert results[2] == 6  # another group: unaffected
    first, second = results[0], results[1]
    assert isinstance(first, StoreUnavailable) and isinstance(second, StoreUnavailable)
    assert first is not second and first.headers == {"Retry-After": "2"}  # 503, not InferenceFailed
    assert first.status == 503 and first.code == "store_unavailable"
    assert await batcher.submit((7, 1), 1) == 14  # the loop survives
    await batcher.stop()


async def test_records_batch_metrics() -> None:
    hooks, clock = Hooks(), FakeClock()
    metrics = Metrics()
    batcher = make(hooks, clock, max_batch_size=8, metrics=metrics)
    await asyncio.gather(*(batcher.submit((v, 3), 3) for v in range(5)))
    labels = {"model": "m", "version": "1"}
    get = metrics.registry.get_sample_value
    assert get("rnnserve_batch_size_sum", labels) == 5 and get("rnnserve_batch_size_count", labels) == 1
    assert get("rnnserve_batch_events_sum", labels) == 15
    assert get("rnnserve_queue_delay_seconds_count", labels) == 5
    assert get("rnnserve_inference_seconds_count", labels) == 1
    await batcher.stop()


class Threads(Hooks):
    """Hooks that note the thread each predict ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def predict(self, prepared: list[int]) -> list[int]:
        self.threads.append(threading.get_ident())
        return super().predict(prepared)


@pytest.mark.parametrize("on_loop", [False, True])
async def test_calls_run_on_the_worker_or_on_the_loops_own_thread(on_loop: bool) -> None:
    """Queued groups and `run_prepared` calls alike: on the worker thread by default, on the event
    loop's thread with `on_loop` (GIL-bound calls, module docs), with the same results, failures and
    metrics either way."""
    hooks, clock, metrics = Threads(), FakeClock(), Metrics()
    batcher = make(hooks, clock, max_batch_size=8, metrics=metrics, on_loop=on_loop)
    results = await asyncio.gather(*(batcher.submit(job, job[1]) for job in [(1, 1), (2, 2), (3, 1)]))
    assert results == [2, 4, 6] and hooks.calls == [[1, 3], [2]]
    assert await batcher.run_prepared([5, 6], jobs=2, events=1) == [10, 12]
    failed = await asyncio.gather(batcher.submit((-1, 1), 1), return_exceptions=True)
    assert isinstance(failed[0], InferenceFailed)
    with pytest.raises(InferenceFailed):
        await batcher.run_prepared([-2], jobs=1, events=1)
    loop_thread = threading.get_ident()
    assert len(hooks.threads) == 5
    assert all((t == loop_thread) == on_loop for t in hooks.threads)
    labels = {"model": "m", "version": "1"}
    assert metrics.registry.get_sample_value("rnnserve_batch_size_count", labels) == 3
    assert metrics.registry.get_sample_value("rnnserve_batch_failures_total", labels) == 2
    # long calls go to the worker: many events per job (one pass of statistics per event), or in all
    long = ON_LOOP_EVENTS + 1
    assert await batcher.submit((4, long), long) == 8
    assert await batcher.run_prepared([5], jobs=1, events=long) == [10]
    assert await batcher.run_prepared([6], jobs=ON_LOOP_WORK // 2 + 1, events=2) == [12]  # many in all
    assert all(t != loop_thread for t in hooks.threads[-3:])
    assert await batcher.run_prepared([7], jobs=ON_LOOP_WORK, events=1) == [14]  # at the bound
    assert (hooks.threads[-1] == loop_thread) == on_loop
    await batcher.stop()


async def test_an_on_loop_call_waits_behind_a_call_on_the_worker() -> None:
    """While a long call runs on the worker, a short one that would run on the loop's thread goes
    to the worker too, after it: a batcher's calls never overlap."""
    entered, release = threading.Event(), threading.Event()

    class Gated(Threads):
        def predict(self, prepared: list[int]) -> list[int]:
            if prepared == [1]:
                entered.set()
                release.wait(5)
            return super().predict(prepared)

    hooks, clock = Gated(), FakeClock()
    batcher = make(hooks, clock, on_loop=True)
    long = ON_LOOP_EVENTS + 1
    first = asyncio.ensure_future(batcher.run_prepared([1], jobs=1, events=long))
    while not entered.is_set():
        await asyncio.sleep(0.001)
    second = asyncio.ensure_future(batcher.run_prepared([2], jobs=1, events=1))
    await asyncio.sleep(0.05)
    assert not second.done()  # queued behind the first on the worker, not run on the loop meanwhile
    release.set()
    assert await first == [2] and await second == [4]
    assert hooks.calls == [[1], [2]]
    assert threading.get_ident() not in hooks.threads
    assert await batcher.run_prepared([3], jobs=1, events=1) == [6]  # the worker idle: on the loop
    assert hooks.threads[-1] == threading.get_ident()
    await batcher.stop()


async def test_unbatch_must_answer_every_job() -> None:
    class Short(Hooks):
        async def unbatch(
            self, items: Sequence[tuple[int, int]], prepared: Any, output: Any, keep: Sequence[bool]
        ) -> list[int]:
            return list(output)[:-1]

    batcher = make(Short(), FakeClock())
    with pytest.raises(InferenceFailed):
        await asyncio.gather(*(batcher.submit((v, 1), 1) for v in range(3)))
    await batcher.stop()


async def test_cancelled_jobs_are_skipped_or_reported() -> None:
    release = threading.Event()

    class Slow(Hooks):
        def predict(self, prepared: list[int]) -> list[int]:
            release.wait(5)
            return super().predict(prepared)

    hooks, clock = Slow(), FakeClock()
    batcher = make(hooks, clock, max_batch_size=2)
    running = [asyncio.ensure_future(batcher.submit((v, 1), 1)) for v in (1, 2)]
    await asyncio.sleep(0.05)  # the first batch is in predict now
    queued = asyncio.ensure_future(batcher.submit((3, 1), 1))
    await asyncio.sleep(0)
    queued.cancel()  # cancelled while queued: never runs
    running[1].cancel()  # cancelled while running: unbatch is told not to apply it
    release.set()
    assert await running[0] == 2
    assert await batcher.submit((4, 1), 1) == 8
    assert hooks.calls == [[1, 2], [4]]
    assert hooks.unbatched[0] == [True, False]
    await batcher.stop()


async def test_stop_drains_accepted_jobs_then_refuses_new_ones() -> None:
    hooks, clock = Hooks(), FakeClock()
    batcher = make(hooks, clock, max_batch_size=2)
    pending = [asyncio.ensure_future(batcher.submit((v, 1), 1)) for v in range(5)]
    await asyncio.sleep(0)
    await batcher.stop(timeout=5)
    assert [p.result() for p in pending] == [0, 2, 4, 6, 8]
    with pytest.raises(ShuttingDown):
        await batcher.submit((1, 1), 1)


async def test_coalescer_sends_the_calls_of_one_loop_turn_as_one_bulk_call() -> None:
    sent: list[list[int]] = []

    async def bulk(items: list[int]) -> list[int | Exception]:
        sent.append(items)
        await asyncio.sleep(0)
        return [ValueError(f"odd {v}") if v % 2 else 10 * v for v in items]

    coalesce: Coalescer[int, int] = Coalescer(bulk, max_items=3)
    results = await asyncio.gather(*(coalesce(v) for v in range(5)), return_exceptions=True)
    assert sent == [[0, 1, 2], [3, 4]]  # one turn, split at max_items
    assert results[0] == 0 and results[2] == 20 and results[4] == 40
    assert isinstance(results[1], ValueError) and str(results[3]) == "odd 3"  # each its own answer
    assert await coalesce(6) == 60 and sent[-1] == [6]  # a lone call goes out at once, alone


async def test_coalescer_gives_every_caller_its_own_copy_of_a_bulk_failure() -> None:
    async def down(items: list[int]) -> list[int | Exception]:
        raise StoreUnavailable("the session store is unavailable", retry_after_s=1)

    coalesce: Coalescer[int, int] = Coalescer(down)
    results = await asyncio.gather(coalesce(1), coalesce(2), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results) and results[0] is not results[1]
