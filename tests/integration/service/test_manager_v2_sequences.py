"""Triton's sequence protocol (service/v2_sequence.py) through `kserve.infer`, without HTTP, on both
stores: ids as Triton defines them, exactly-once with `parameters.seq`, and failed requests that move
no sequence."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from manager_support import running

from service import kserve
from service.errors import BadRequest, CapacityExceeded, ServiceError
from service.sessions import SessionManager
from service.settings import Settings
from service.store import StoredAnswer
from service.v2_sequence import MAX_STRING_ID_BYTES, SequenceParams
from service.v2_tensors import decode_http, http_body

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

MODEL = "lm-gru"


def request(ids: list[int], **params: Any) -> dict[str, Any]:
    return {
        "parameters": params,
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [1, len(ids)], "data": ids}],
    }


async def infer(manager: SessionManager, body: dict[str, Any] | bytes, header: int | None = None) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request, tail = decode_http(raw, header)  # as the HTTP route reads it
    result = await kserve.infer(manager, None, MODEL, None, request, tail)
    answer, _ = http_body(result.header, result.outputs)
    return json.loads(answer)


async def refused(manager: SessionManager, body: dict[str, Any] | bytes, header: int | None = None) -> str:
    with pytest.raises(ServiceError) as info:
        await infer(manager, body, header)
    assert 400 <= info.value.status < 500, info.value.message
    return info.value.code


async def position(manager: SessionManager, sequence_id: int | str) -> tuple[int, str, str]:
    """(seq, state, last_used_at) of a running sequence."""
    key = SequenceParams(sequence_id, False, False, None).key(MODEL)
    sid = manager.sequence_session_id(key, None)
    info = await manager.get(sid, None)
    return info.seq, (await manager.export_state(sid, None)).state, info.last_used_at


async def test_integer_and_string_ids_are_different_sequences(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        await infer(manager, request([2, 3, 4], sequence_id=8100, sequence_start=True))
        await infer(manager, request([5], sequence_id="8100", sequence_start=True))
        assert (await position(manager, 8100))[0] == 3
        assert (await position(manager, "8100"))[0] == 1
        for sequence_id in (2**64 - 1, "pompe-é-7 🚀", "a b/c?d", "x" * MAX_STRING_ID_BYTES, "\x01"):
            answer = await infer(manager, request([2], sequence_id=sequence_id, sequence_start=True))
            assert answer["parameters"] == {"sequence_id": sequence_id, "seq": 1}
            assert (await infer(manager, request([3], sequence_id=sequence_id)))["parameters"]["seq"] == 2
        for bad in (2**64, -1, 1.5, True, [1], {"a": 1}, "\ud800", "x" * (MAX_STRING_ID_BYTES + 1)):
            assert await refused(manager, request([2], sequence_id=bad, sequence_start=True)) == "bad_request"
        for flag in ("yes", 1, None):
            assert await refused(manager, request([2], sequence_id=9, sequence_start=flag)) == "bad_request"


async def test_seq_makes_retries_exactly_once(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        first = request([2, 3], sequence_id=7, sequence_start=True, seq=0)
        answer = await infer(manager, first)
        assert answer["parameters"] == {"sequence_id": 7, "seq": 2}
        assert await infer(manager, first) == answer  # a retry of the start: replayed, not restarted
        moved = await position(manager, 7)
        assert moved[0] == 2
        second = request([4], sequence_id=7, seq=2)
        answer2 = await infer(manager, second)
        assert await infer(manager, second) == answer2
        assert (await position(manager, 7))[0] == 3
        with pytest.raises(ServiceError) as conflict:
            await infer(manager, request([4], sequence_id=7, seq=1))
        assert conflict.value.status == 409 and conflict.value.details["expected_seq"] == 3
        with pytest.raises(ServiceError) as start_conflict:
            await infer(manager, request([4], sequence_id=7, sequence_start=True, seq=5))
        assert start_conflict.value.details["expected_seq"] == 0
        assert (await position(manager, 7))[0] == 3
        # a start at seq 0 with other inputs is a new sequence under the same id
        restarted = await infer(manager, request([9], sequence_id=7, sequence_start=True, seq=0))
        assert restarted["parameters"]["seq"] == 1
        # without seq, V2 behaves as Triton does: a retry is applied again
        await infer(manager, request([5], sequence_id=7))
        await infer(manager, request([5], sequence_id=7))
        assert (await position(manager, 7))[0] == 3
        for bad in (-1, "2", 2.0, True):
            assert await refused(manager, request([4], sequence_id=7, seq=bad)) == "bad_request"


async def test_a_failed_request_moves_no_sequence(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(max_events_per_request=4)) as manager:
        await infer(manager, request([2, 3], sequence_id="s", sequence_start=True))
        before = await position(manager, "s")
        bad_requests: list[dict[str, Any]] = [
            request([2], sequence_id="s", sequence_start=True, top_k=-1),
            request([2], sequence_id="s", sequence_end=True, top_k=-1),
            request([2], sequence_id="s", sequence_start=True, sequence_end=True, top_k="5"),
            request([999], sequence_id="s", sequence_start=True),
            request([2] * 5, sequence_id="s", sequence_start=True),  # over the limit: the core refuses it
            request([2] * 5, sequence_id="s", sequence_end=True),
            request([2], sequence_id="s", seq=0),
            {**request([2], sequence_id="s", sequence_start=True), "id": "\udc00"},
            {**request([2], sequence_id="s", sequence_end=True), "id": 5},
            {**request([2], sequence_id="s"), "outputs": [{"name": "NOPE"}]},
        ]
        for body in bad_requests:
            await refused(manager, body)
        assert await position(manager, "s") == before
        ended = await infer(manager, request([4], sequence_id="s", sequence_end=True))
        assert ended["parameters"]["seq"] == 3
        assert await refused(manager, request([4], sequence_id="s")) == "session_deleted"


async def test_hostile_tensors_are_4xx(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        await infer(manager, request([2], sequence_id=1, sequence_start=True))
        before = await position(manager, 1)
        for depth in (17, 900, 5000):
            body = json.dumps(request([2], sequence_id=1)).encode()
            await refused(manager, body.replace(b"[2]", b"[" * depth + b"2" + b"]" * depth))
        deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert await refused(manager, deep) == "bad_request"
        for size in (7, 9, 1):  # not a whole number of INT64 values
            head = request([2], sequence_id=1)
            spec = head["inputs"][0]
            del spec["data"]
            spec["parameters"] = {"binary_data_size": size}
            raw = json.dumps(head).encode()
            await refused(manager, raw + np.arange(2, dtype="<i8").tobytes()[:size], len(raw))
        assert await position(manager, 1) == before


async def test_a_replacing_create_is_refused_whole_or_done_whole(
    make_settings: Callable[..., Settings],
) -> None:
    """The store step under `sequence_start`: a create that replaces a live session under its id ends
    that session only when the new one fits (its room counts on the same version), all in one step."""
    async with running(make_settings(max_sessions=1)) as manager:
        store = manager.store
        gru, lstm = (manager.registry.get(name).key for name in ("lm-gru", "lm-lstm"))
        kept = StoredAnswer(3, 12345, b'{"seq":3}')
        await store.create(gru, None, session_id="x", seq=3, answer=kept)
        filler = await store.create(lstm, None)  # lm-lstm is full
        before = await store.lookup("x", None, touch=False)
        with pytest.raises(CapacityExceeded):
            await store.create(lstm, None, session_id="x", replace=True)
        for owner, replace in (("bob", True), (None, False)):  # another owner's id; no replace
            with pytest.raises(BadRequest):
                await store.create(gru, owner, session_id="x", replace=replace)
        assert await store.lookup("x", None, touch=False) == before
        assert await store.last_answer(before) == kept
        model = manager.registry.get("lm-gru")
        state = [np.full(model.manifest.state_shape, 0.5, np.float32) for _ in range(model.state_count)]
        fresh = StoredAnswer(0, 99, b'{"seq":1}')
        made = await store.create(gru, None, session_id="x", seq=1, state=state, answer=fresh, replace=True)
        assert (made.model_key, made.seq) == (gru, 1) and made.gen != before.gen
        assert await store.last_answer(made) == fresh
        assert all(
            np.array_equal(a, b) for a, b in zip((await store.read_state(made))[1], state, strict=True)
        )
        with pytest.raises(CapacityExceeded):  # the replaced one is gone: its room is the new one's
            await store.create(gru, None)
        # across versions, once there is room: the old one's room on its own version is freed
        await store.delete(filler.session_id, None)
        moved = await store.create(lstm, None, session_id="x", replace=True)
        assert moved.model_key == lstm and (await store.lookup("x", None)).model_key == lstm
        assert await store.last_answer(moved) is None
        await store.create(gru, None)
