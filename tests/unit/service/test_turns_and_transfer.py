"""Per-session turn-taking, and the Snapshot codec of one session's state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.errors import InvalidInput
from service.registry import Registry
from service.settings import Settings
from service.store.transfer import decode_snapshot, encode_snapshot
from service.turns import Turns

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


async def test_turns_run_one_at_a_time_in_arrival_order_and_cost_nothing_idle() -> None:
    turns = Turns()
    log: list[str] = []

    async def request(name: str, key: str) -> None:
        await turns.acquire(key)
        try:
            log.append(f"{name}+")
            await asyncio.sleep(0.001)
            log.append(f"{name}-")
        finally:
            turns.release(key)

    await asyncio.gather(request("a", "s1"), request("b", "s1"), request("x", "s2"), request("c", "s1"))
    assert [e for e in log if e[0] in "abc"] == ["a+", "a-", "b+", "b-", "c+", "c-"]
    assert log.index("x+") < log.index("a-")  # another session is not held up
    assert len(turns) == 0


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    turns = Turns()
    await turns.acquire("k")
    waiter = asyncio.ensure_future(turns.acquire("k"))
    third = asyncio.ensure_future(turns.acquire("k"))
    await asyncio.sleep(0)
    waiter.cancel()
    turns.release("k")
    await third
    assert turns.busy("k")
    turns.release("k")
    assert not turns.busy("k")


async def test_turns_taken_all_at_once_or_none_and_given_back_to_waiters() -> None:
    """`try_acquire_all` takes every key's turn or, when any is held, none; `release_all` is `release`
    of each: a free key is freed, a key someone waits on goes to its first waiter."""
    turns = Turns()
    assert turns.try_acquire_all(["a", "b"]) and turns.busy("a") and turns.busy("b")
    assert not turns.try_acquire_all(["c", "b"]) and not turns.busy("c")  # b is held: c is not taken
    waiter = asyncio.ensure_future(turns.acquire("b"))
    await asyncio.sleep(0)
    turns.release_all(["a", "b"])
    await waiter  # b went to its waiter
    assert not turns.busy("a") and turns.busy("b") and len(turns) == 1
    turns.release("b")
    assert turns.try_acquire_all([]) and len(turns) == 0


def test_snapshot_codec_round_trip_and_refusals(tiny_models_dir: Path) -> None:
    registry = Registry(Settings(models_dir=tiny_models_dir, snapshot_path=None))
    model = registry.load("lm-lstm", "1")
    state = [np.random.default_rng(k).standard_normal((2, 16)).astype(np.float32) for k in range(2)]
    snapshot = encode_snapshot(model, 7, state)
    assert (snapshot.format, snapshot.model, snapshot.version, snapshot.seq) == (1, "lm-lstm", "1", 7)
    assert all(np.array_equal(a, b) for a, b in zip(decode_snapshot(snapshot, model), state, strict=True))
    with pytest.raises(InvalidInput, match="checksum"):
        decode_snapshot(snapshot.model_copy(update={"seq": 8}), model)
    with pytest.raises(InvalidInput, match="lm-lstm/1"):
        decode_snapshot(snapshot, registry.load("lm-gru", "1"))
    with pytest.raises(InvalidInput, match="bytes"):
        decode_snapshot(encode_snapshot(model, 7, state[:1]), model)
