"""SessionManager without HTTP on every tiny model: batched streams equal whole-sequence ONNX Runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from manager_support import ALL_MODELS, TOL, Reference, body, check_outputs, running, state_of

from service import schemas
from service.metrics import Metrics
from service.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.mark.parametrize("name", ALL_MODELS)
async def test_interleaved_single_steps_batch_and_match_whole_sequences(
    name: str, make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    ref = references[name]
    rng = np.random.default_rng(7)
    sessions, steps = 6, 10
    streams = [ref.events(rng, steps) for _ in range(sessions)]
    metrics = Metrics()
    async with running(make_settings(max_batch_size=64), metrics=metrics) as manager:
        ids = [(await manager.create(schemas.CreateSession(model=name), None)).session_id for _ in streams]

        async def stream(session_id: str, events: list[Any]) -> list[schemas.LmOutput | schemas.SensorOutput]:
            outputs: list[schemas.LmOutput | schemas.SensorOutput] = []
            for event in events:
                response = await manager.step(session_id, None, body(ref.task, [event]))
                outputs.extend(response.outputs)
            return outputs

        results = await asyncio.gather(*(stream(i, e) for i, e in zip(ids, streams, strict=True)))
        for session_id, events, outputs in zip(ids, streams, results, strict=True):
            check_outputs(ref, events, outputs)
            info = await manager.get(session_id, None)
            assert info.seq == steps
            snapshot = await manager.export_state(session_id, None)
            want = np.stack([s[:, 0] for s in ref.run_chunks([events])])
            np.testing.assert_allclose(state_of(snapshot.state, ref), want, atol=TOL, rtol=0)
    labels = {"model": name, "version": "1"}
    calls = metrics.registry.get_sample_value("rnnserve_batch_size_count", labels)
    rows = metrics.registry.get_sample_value("rnnserve_batch_size_sum", labels)
    assert rows == sessions * steps and calls is not None and calls < rows / 2  # batches of several sessions
    assert metrics.registry.get_sample_value("rnnserve_events_total", labels) == sessions * steps


@pytest.mark.parametrize("name", ALL_MODELS)
async def test_multi_event_requests_equal_single_steps(
    name: str, make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    ref = references[name]
    events = ref.events(np.random.default_rng(3), 12)
    async with running(make_settings()) as manager:
        chunked = (await manager.create(schemas.CreateSession(model=name), None)).session_id
        single = (await manager.create(schemas.CreateSession(model=name), None)).session_id
        chunk_outputs: list[Any] = []
        start = 0
        for size in (4, 1, 5, 2):
            response = await manager.step(chunked, None, body(ref.task, events[start : start + size]))
            assert response.seq == start + size and len(response.outputs) == size
            chunk_outputs.extend(response.outputs)
            start += size
        single_outputs = [(await manager.step(single, None, body(ref.task, [e]))).outputs[0] for e in events]
        check_outputs(ref, events, chunk_outputs)
        check_outputs(ref, events, single_outputs)
        a = state_of((await manager.export_state(chunked, None)).state, ref)
        b = state_of((await manager.export_state(single, None)).state, ref)
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
