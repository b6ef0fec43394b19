"""The step lane (service/step_lane.py) on real tiny models: per-session steps of many sessions share one
ONNX Runtime call, and the lane keeps the route's rules where its callers come and go: a caller
cancelled before its step was taken applies nothing, one cancelled while its step runs keeps the
session's turn until the step is done, queue delays are observed, and shutdown answers what is left."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from manager_support import running

from service import schemas
from service.errors import ShuttingDown
from service.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

LM_STEP = {"tokens": ["w1"]}


def _count(manager: Any, name: str, model: str = "lm-gru") -> float:
    for family in getattr(manager.metrics, name).collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("model") == model:
                return float(sample.value)
    return 0.0


class HeldCalls:
    """Holds the served version's ONNX Runtime calls (the slab lane's `run_prepared`) until `release`:
    `entered` is set once a call is waiting. As a context manager it puts the original back."""

    def __init__(self, manager: Any, version: str = "lm-gru/1") -> None:
        served = manager.served_now(version)
        assert served is not None
        self.batcher = served.batcher
        self.run_prepared = served.batcher.run_prepared
        self.entered, self.released = asyncio.Event(), asyncio.Event()

    async def _held(self, prepared: Any, jobs: int, events: int) -> Any:
        self.entered.set()
        await self.released.wait()
        return await self.run_prepared(prepared, jobs, events)

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> HeldCalls:
        self.batcher.run_prepared = self._held
        return self

    def __exit__(self, *_: object) -> None:
        self.batcher.run_prepared = self.run_prepared


async def test_steps_of_many_sessions_share_one_call_and_answer_as_alone(
    make_settings: Callable[..., Settings],
) -> None:
    """Eight sessions stepped in one turn of the loop: one ONNX Runtime call (one observation of the
    batch size histogram, of 8), each answer equal to a twin session's stepped alone, and eight queue
    delays observed."""
    async with running(make_settings()) as manager:
        create = schemas.CreateSession(model="lm-gru")
        ids = [(await manager.create(create, None)).session_id for _ in range(8)]
        twins = [(await manager.create(create, None)).session_id for _ in range(8)]
        calls, delays = _count(manager, "batch_size"), _count(manager, "queue_delay")
        answers = await asyncio.gather(*(manager.step_json(s, None, LM_STEP) for s in ids))
        assert _count(manager, "batch_size") == calls + 1
        assert _count(manager, "queue_delay") == delays + 8
        for session_id, answer in zip(ids, answers, strict=True):
            alone = await manager.step_json(twins[ids.index(session_id)], None, LM_STEP)
            assert json.loads(answer) == json.loads(alone)
            assert (await manager.get(session_id, None)).seq == 1


async def test_sensor_calls_run_on_the_loops_thread_lm_calls_on_the_worker(
    make_settings: Callable[..., Settings],
) -> None:
    """A sensor model's calls are its statistics, work that holds the GIL (service.batcher): the batcher
    runs them on the event loop's thread; an lm model's go to the worker. Answers are checked against
    references elsewhere on both paths; this pins where each runs."""
    async with running(make_settings()) as manager:
        ran_on: dict[str, set[int]] = {}
        for model, body in (("sensor-gru", {"readings": [[0.5, 1.0, 2.0]]}), ("lm-gru", LM_STEP)):
            session = (await manager.create(schemas.CreateSession(model=model), None)).session_id
            served = manager.served_now(f"{model}/1")
            assert served is not None
            runner, predict = served.batcher.hooks, served.batcher.hooks.predict

            def noted(prepared: Any, model: str = model, predict: Any = predict) -> Any:
                ran_on.setdefault(model, set()).add(threading.get_ident())
                return predict(prepared)

            runner.predict = noted  # type: ignore[method-assign]
            try:
                for _ in range(3):
                    await manager.step_json(session, None, body)
            finally:
                runner.predict = predict  # type: ignore[method-assign]
        assert ran_on["sensor-gru"] == {threading.get_ident()}
        assert threading.get_ident() not in ran_on["lm-gru"] and len(ran_on["lm-gru"]) == 1


@pytest.mark.parametrize("store_backend", ["memory"])  # the memory store's rule: one call ahead
async def test_the_next_batch_starts_its_call_before_the_last_one_answers(
    make_settings: Callable[..., Settings],
) -> None:
    """While a batch's call runs, the next batch waits; once the call returns, the next batch is taken
    and its call started before the first batch's answers are written, and every step is still applied
    once, in its own session."""
    async with running(make_settings()) as manager:
        create = schemas.CreateSession(model="lm-gru")
        ids = [(await manager.create(create, None)).session_id for _ in range(4)]
        served = manager.served_now("lm-gru/1")
        assert served is not None
        run_prepared, released = served.batcher.run_prepared, asyncio.Event()
        first: list[asyncio.Task[bytes]] = []
        answered_at_call: list[list[bool]] = []  # per call: which first-batch steps were answered

        async def observed(prepared: Any, jobs: int, events: int) -> Any:
            answered_at_call.append([task.done() for task in first])
            if len(answered_at_call) == 1:
                await released.wait()
            return await run_prepared(prepared, jobs, events)

        served.batcher.run_prepared = observed  # type: ignore[method-assign]
        try:
            first.extend(asyncio.create_task(manager.step_json(s, None, LM_STEP)) for s in ids[:2])
            while not answered_at_call:
                await asyncio.sleep(0.001)
            second = [asyncio.create_task(manager.step_json(s, None, LM_STEP)) for s in ids[2:]]
            await asyncio.sleep(0.02)
            assert len(answered_at_call) == 1  # the second batch waits for the first call to return
            released.set()
            answers = await asyncio.wait_for(asyncio.gather(*first, *second), 10)
        finally:
            served.batcher.run_prepared = run_prepared  # type: ignore[method-assign]
        assert answered_at_call == [[False, False], [False, False]]
        assert [json.loads(a)["seq"] for a in answers] == [1, 1, 1, 1]
        assert [(await manager.get(s, None)).seq for s in ids] == [1, 1, 1, 1]


@pytest.mark.parametrize("store_backend", ["memory"])  # holds the slab lane's call
async def test_a_caller_cancelled_before_its_step_is_taken_applies_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    """The lane is busy with one call; a second session's step is queued and its caller cancelled: it
    never runs, its session stays at seq 0, and its turn is free for the next request."""
    async with running(make_settings()) as manager:
        create = schemas.CreateSession(model="lm-gru")
        busy, other = [(await manager.create(create, None)).session_id for _ in range(2)]
        with HeldCalls(manager) as calls:
            first = asyncio.create_task(manager.step_json(busy, None, LM_STEP))
            await calls.entered.wait()
            queued = asyncio.create_task(manager.step_json(other, None, LM_STEP))
            await asyncio.sleep(0.01)
            queued.cancel()
            calls.release()
            await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (await manager.get(other, None)).seq == 0
        answer = json.loads(await asyncio.wait_for(manager.step_json(other, None, LM_STEP), 10))
        assert answer["seq"] == 1


@pytest.mark.parametrize("store_backend", ["memory"])  # holds the slab lane's call
async def test_a_caller_cancelled_while_its_step_runs_keeps_the_turn_until_it_is_done(
    make_settings: Callable[..., Settings],
) -> None:
    """A step's caller is cancelled while its call runs. The step runs to its end and is applied (as a
    request whose client left after sending it may be), and a reset of the session, which takes the
    turn itself, waits for it: never beside it, so the session ends at seq 0, not written after it."""
    async with running(make_settings()) as manager:
        session_id = (await manager.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        with HeldCalls(manager) as calls:
            running_step = asyncio.create_task(manager.step_json(session_id, None, LM_STEP))
            await calls.entered.wait()
            running_step.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running_step
            reset = asyncio.create_task(manager.reset(session_id, None))
            await asyncio.sleep(0.01)
            assert not reset.done()  # waiting for the cancelled caller's step, which holds the turn
            calls.release()
            info = await asyncio.wait_for(reset, 10)
        assert info.seq == 0
        assert (await manager.get(session_id, None)).seq == 0
        answer = json.loads(await manager.step_json(session_id, None, {**LM_STEP, "seq": 0}))
        assert answer["seq"] == 1


@pytest.mark.parametrize("store_backend", ["memory"])  # holds the slab lane's call
async def test_steps_left_when_the_drain_ends_answer_shutting_down(
    make_settings: Callable[..., Settings],
) -> None:
    """Shutdown with a call that outlasts the drain: the step queued behind it is answered
    ShuttingDown (503), not left waiting, and its session is not stepped."""
    async with running(make_settings(shutdown_drain_s=0.2)) as manager:
        create = schemas.CreateSession(model="lm-gru")
        busy, other = [(await manager.create(create, None)).session_id for _ in range(2)]
        served = manager.served_now("lm-gru/1")
        assert served is not None
        entered, release = asyncio.Event(), asyncio.Event()

        async def stuck(prepared: Any, jobs: int, events: int) -> Any:
            entered.set()
            await release.wait()
            raise ShuttingDown("the server is shutting down")

        served.batcher.run_prepared = stuck  # type: ignore[method-assign]
        first = asyncio.create_task(manager.step_json(busy, None, LM_STEP))
        await entered.wait()
        queued = asyncio.create_task(manager.step_json(other, None, LM_STEP))
        await asyncio.sleep(0.01)
        await manager.stop()
        release.set()
        for task in (first, queued):
            with pytest.raises(ShuttingDown):
                await asyncio.wait_for(task, 10)
