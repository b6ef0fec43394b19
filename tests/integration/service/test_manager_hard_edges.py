"""Hostile input through the facade: every bad request is a 4xx ServiceError and moves nothing.

"Nothing" is checked as a whole: the session's seq and state (its exported snapshot), its stored answer
(the last sequenced request still replays) and its idle TTL (`last_used_at`) are what they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from manager_support import running

from service import schemas
from service.errors import InvalidInput, SequenceConflict, ServiceError
from service.sessions import SessionManager
from service.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def _fingerprint(manager: SessionManager, sid: str) -> tuple[Any, ...]:
    info = await manager.get(sid, None)
    snapshot = await manager.export_state(sid, None)
    return info.seq, info.last_used_at, info.expires_at, snapshot.state, snapshot.extra


async def _refused(manager: SessionManager, sid: str, payload: Any, generate: bool = False) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        if generate:
            await manager.generate(sid, None, payload)
        else:
            await manager.step(sid, None, payload)
    assert 400 <= info.value.status < 500, (payload, info.value.status, info.value.message)
    return info.value


BAD_TEXT = ["\ud800", "w1 \udfff", "w1\x00", "\x1b[31m", "w1\x7f"]


async def test_bad_text_is_422_before_anything_moves(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        sid = (await manager.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        last = {"tokens": ["w1", "w2"], "seq": 0}
        answer = await manager.step(sid, None, last)
        before = await _fingerprint(manager, sid)
        await asyncio.sleep(0.02)  # a touch would move last_used_at by at least a millisecond
        for text in BAD_TEXT:
            for payload in ({"text": text}, {"tokens": ["w3", text]}, {"text": text, "seq": 2}):
                error = await _refused(manager, sid, payload)
                assert isinstance(error, InvalidInput)
                assert "is not text" in error.message and "\\u" in error.message  # shown as JSON writes it
        assert await _fingerprint(manager, sid) == before
        assert (await manager.step(sid, None, last)).model_dump() == answer.model_dump()  # still replays
        sensor = (await manager.create(schemas.CreateSession(model="sensor-gru"), None)).session_id
        error = await _refused(manager, sensor, {"readings": [[20, 1000, 0.5]], "timestamps": ["\ud800"]})
        assert isinstance(error, InvalidInput)
        assert (await manager.get(sensor, None)).seq == 0
        # tab, newline and carriage return are text: the tokenizer splits on them
        fine = await manager.step(sid, None, {"text": "w3\tw4\r\nw5"})
        assert [o.token for o in fine.outputs] == ["w3", "w4", "w5"]  # type: ignore[union-attr]


async def test_rejected_requests_do_not_extend_the_ttl(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        sid = (await manager.create(schemas.CreateSession(model="sensor-lstm"), None)).session_id
        await manager.step(sid, None, {"readings": [[20, 1000, 0.5]], "seq": 0})
        before = await _fingerprint(manager, sid)
        await asyncio.sleep(0.02)
        await _refused(manager, sid, {"readings": [[float("nan"), 1000, 0.5]]})  # 422
        conflict = await _refused(manager, sid, {"readings": [[20, 1000, 0.5]], "seq": 7})  # 409
        assert isinstance(conflict, SequenceConflict) and conflict.expected_seq == 1
        await _refused(manager, sid, {"readings": [[20, 1000]]})  # 422 wrong width
        await _refused(manager, sid, {"max_tokens": 1}, generate=True)  # 400 not an lm
        assert await _fingerprint(manager, sid) == before
        await manager.step(sid, None, {"readings": [[21, 1001, 0.5]]})  # an applied step does extend it
        after = await manager.get(sid, None)
        assert after.seq == 2 and after.last_used_at > before[1]


async def test_sensor_errors_show_values_as_written(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        sid = (await manager.create(schemas.CreateSession(model="sensor-rnn"), None)).session_id
        for value, shown in ((float("nan"), "NaN"), (float("-inf"), "-Infinity"), (1e300, "1e+300")):
            error = await _refused(manager, sid, {"readings": [[20, value, 0.5]]})
            assert f"'pressure': {shown} is not" in error.message, error.message
            assert "np." not in error.message


GENERATE_BAD: list[dict[str, Any]] = [
    {"seed": -1},
    {"seed": 2**200},
    {"seed": "7"},
    {"temperature": -0.5},
    {"temperature": float("nan")},
    {"temperature": float("inf")},
    {"max_tokens": 0},
    {"max_tokens": 2**70},
    {"top_k": -1},
    {"commit": "yes"},
]


async def test_generate_refuses_bad_numbers_and_moves_nothing(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(max_generate_tokens=8)) as manager:
        sid = (await manager.create(schemas.CreateSession(model="lm-rnn"), None)).session_id
        await manager.step(sid, None, {"tokens": ["w1"], "seq": 0})
        before = await _fingerprint(manager, sid)
        await asyncio.sleep(0.02)
        for extra in GENERATE_BAD:
            error = await _refused(manager, sid, {"max_tokens": 3, "commit": True, **extra}, generate=True)
            assert error.status == 422, (extra, error.message)
        assert await _fingerprint(manager, sid) == before
        # extreme but valid: any temperature above 0 samples without NaN, any non-negative seed
        for temperature in (1e-320, 1e-30, 1e300):
            out = await manager.generate(
                sid, None, {"max_tokens": 3, "temperature": temperature, "seed": 2**100, "stop_at_eos": False}
            )
            assert len(out.tokens) == 3 and out.seq == 1
