"""Exactly-once steps under random replays, duplicates, gaps and stale retries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from manager_support import ALL_MODELS, Reference, body, running, state_of, stats_of

from service import schemas
from service.errors import SequenceConflict
from service.metrics import Metrics
from service.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.mark.parametrize("name", ALL_MODELS)
async def test_random_retries_leave_the_state_bit_identical(
    name: str, make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    ref = references[name]
    rng = np.random.default_rng(11)
    metrics = Metrics()
    applied: list[list[Any]] = []  # the chunks the server must have applied, in order
    async with running(make_settings(max_batch_size=1), metrics=metrics) as manager:
        sid = (await manager.create(schemas.CreateSession(model=name), None)).session_id
        count = 0
        last: tuple[dict[str, Any], schemas.StepResponse] | None = None
        replays = conflicts = 0
        for _ in range(40):
            action = rng.choice(["send", "send", "replay", "duplicate", "gap", "stale", "unsequenced"])
            if action in ("send", "duplicate", "unsequenced"):
                events = ref.events(rng, int(rng.integers(1, 4)))
                payload = body(ref.task, events, None if action == "unsequenced" else count)
                if action == "duplicate":  # the same request twice at once: applied once, answered twice
                    first, second = await asyncio.gather(
                        manager.step(sid, None, payload), manager.step(sid, None, payload)
                    )
                    assert second.model_dump() == first.model_dump()
                    replays += 1
                else:
                    first = await manager.step(sid, None, payload)
                applied.append(events)
                count += len(events)
                assert first.seq == count
                last = (payload, first) if action != "unsequenced" else None
            elif action == "replay" and last is not None:
                again = await manager.step(sid, None, last[0])
                assert again.model_dump() == last[1].model_dump()
                replays += 1
            elif action in ("gap", "stale") and count > 0:
                seq = count + int(rng.integers(1, 5)) if action == "gap" else int(rng.integers(0, count))
                payload = body(ref.task, ref.events(rng, 1), seq)
                with pytest.raises(SequenceConflict) as info:
                    await manager.step(sid, None, payload)
                assert info.value.expected_seq == count and info.value.status == 409
                conflicts += 1
        if last is not None:  # same seq as the last applied request, other payload: conflict
            other = {**last[0], "seq": last[0]["seq"]}
            other["tokens" if ref.task == "lm" else "readings"] = ref.events(rng, 1)
            with pytest.raises(SequenceConflict):
                await manager.step(sid, None, other)
            conflicts += 1
        assert (await manager.get(sid, None)).seq == count
        exported = (await manager.export_state(sid, None)).state
        got = state_of(exported, ref)
        if ref.task == "sensor":  # the session statistics too: the same as one clean pass
            clean = (await manager.create(schemas.CreateSession(model=name), None)).session_id
            for events in applied:
                await manager.step(clean, None, body(ref.task, events))
            want_stats = stats_of((await manager.export_state(clean, None)).state, ref)
            assert np.array_equal(stats_of(exported, ref), want_stats)
            assert want_stats[0] == count
    want = np.stack([s[:, 0] for s in ref.run_chunks(applied)])
    assert np.array_equal(got, want)  # bit for bit: same chunking, B = 1 on both sides
    get = metrics.registry.get_sample_value
    assert get("rnnserve_replays_total", {"model": name}) == replays
    assert get("rnnserve_seq_conflicts_total", {"model": name}) == conflicts


async def test_interleaved_sessions_each_exactly_once(
    make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    """Several sessions, each client retrying every request once, all at the same time."""
    ref = references["lm-lstm"]
    rng = np.random.default_rng(5)
    async with running(make_settings()) as manager:
        plans = [[ref.events(rng, int(rng.integers(1, 4))) for _ in range(6)] for _ in range(4)]
        ids = [(await manager.create(schemas.CreateSession(model="lm-lstm"), None)).session_id for _ in plans]

        async def client(sid: str, chunks: list[list[Any]]) -> None:
            count = 0
            for chunk in chunks:
                payload = body("lm", chunk, count)
                a, b = await asyncio.gather(
                    manager.step(sid, None, payload), manager.step(sid, None, payload)
                )
                assert a.model_dump() == b.model_dump()
                count += len(chunk)

        await asyncio.gather(*(client(sid, chunks) for sid, chunks in zip(ids, plans, strict=True)))
        for sid, chunks in zip(ids, plans, strict=True):
            got = state_of((await manager.export_state(sid, None)).state, ref)
            want = np.stack([s[:, 0] for s in ref.run_chunks(chunks)])
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)  # GRU/LSTM rows are batch-independent
