"""Every bad request through the facade raises the right ServiceError, and leaves the session as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from manager_support import running

from service import schemas
from service.errors import (
    BadRequest,
    InvalidInput,
    ModelNotFound,
    NotReady,
    SequenceConflict,
    ServiceError,
    SessionDeleted,
    SessionNotFound,
)
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings
from service.store import MemoryStore

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_unknown_models_and_sessions(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        with pytest.raises(ModelNotFound):
            await manager.create(schemas.CreateSession(model="nope"), None)
        with pytest.raises(ModelNotFound) as info:
            await manager.create(schemas.CreateSession(model="lm-gru", version="7"), None)
        assert info.value.details["available"] == ["1"]
        with pytest.raises(SessionNotFound):
            await manager.step("f" * 32, None, {"tokens": ["w1"]})
        sid = (await manager.create(schemas.CreateSession(model="lm-gru"), "alice")).session_id
        for call in (
            manager.get(sid, "bob"),
            manager.step(sid, "bob", {"tokens": ["w1"]}),
            manager.export_state(sid, None),
            manager.delete(sid, "bob"),
            manager.reset(sid, "bob"),
        ):
            with pytest.raises(SessionNotFound) as not_found:
                await call
            assert not_found.value.status == 404
        await manager.delete(sid, "alice")
        with pytest.raises(SessionDeleted) as gone:
            await manager.step(sid, "alice", {"tokens": ["w1"]})
        assert gone.value.status == 410 and gone.value.code == "session_deleted"


BAD_LM: list[tuple[Any, type[ServiceError], str]] = [
    ([1, 2], BadRequest, "JSON object"),
    ({}, InvalidInput, "exactly one"),
    ({"tokens": ["w1"], "text": "w1"}, InvalidInput, "exactly one"),
    ({"token": ["w1"]}, InvalidInput, "token"),
    ({"tokens": "w1"}, InvalidInput, "tokens"),
    ({"tokens": ["w1"], "seq": -1}, InvalidInput, "seq"),
    ({"tokens": ["w1"] * 9}, InvalidInput, "limit is 8"),
    ({"text": " ".join(["w1"] * 9)}, InvalidInput, "limit is 8"),
]

BAD_SENSOR: list[tuple[Any, type[ServiceError], str]] = [
    ({"readings": [[1.0, 2.0]]}, InvalidInput, "has 2 values; this model takes 3"),
    ({"readings": [[1.0, 2.0, 3.0], [1.0]]}, InvalidInput, "reading 1"),
    ({"readings": [[1.0, float("nan"), 3.0]]}, InvalidInput, "pressure"),
    ({"readings": [[float("inf"), 1.0, 3.0]]}, InvalidInput, "temperature"),
    ({"readings": [[1e300, 1.0, 3.0]]}, InvalidInput, "finite"),
    ({"readings": [[1.0, 2.0, 3.0]] * 9}, InvalidInput, "limit is 8"),
    ({"readings": [[1.0, 2.0, 3.0]], "timestamps": [1, 2]}, InvalidInput, "timestamps"),
    ({"readings": [["a", 2.0, 3.0]]}, InvalidInput, "readings"),
]


async def test_bad_step_payloads(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(max_events_per_request=8)) as manager:
        for model, cases in (("lm-rnn", BAD_LM), ("sensor-gru", BAD_SENSOR)):
            sid = (await manager.create(schemas.CreateSession(model=model), None)).session_id
            for payload, error, words in cases:
                with pytest.raises(error, match=words) as info:
                    await manager.step(sid, None, payload)
                assert info.value.status == error.status, payload
            assert (await manager.get(sid, None)).seq == 0


async def test_limits_and_flags_that_are_not_errors(make_settings: Callable[..., Settings]) -> None:
    metrics = Metrics()
    async with running(make_settings(max_top_k=3), metrics=metrics) as manager:
        sid = (await manager.create(schemas.CreateSession(model="lm-lstm"), None)).session_id
        response = await manager.step(sid, None, {"text": "w1 zzz  w2", "top_k": 50})
        outputs = response.outputs
        assert [o.token for o in outputs] == ["w1", "zzz", "w2"]  # type: ignore[union-attr]
        assert [o.unknown for o in outputs] == [False, True, False]  # type: ignore[union-attr]
        assert outputs[1].token_id == 0  # type: ignore[union-attr]  # <unk>
        assert all(len(o.next) == 3 for o in outputs)  # type: ignore[union-attr]  # capped by max_top_k
        assert (await manager.step(sid, None, {"tokens": []})).seq == 3  # nothing to apply
        sensor = (await manager.create(schemas.CreateSession(model="sensor-lstm"), None)).session_id
        stamped = await manager.step(
            sensor, None, {"readings": [[20, 1000, 0.5]] * 2, "timestamps": ["a", 2]}
        )
        assert [o.timestamp for o in stamped.outputs] == ["a", 2]  # type: ignore[union-attr]
    assert (
        metrics.registry.get_sample_value(
            "rnnserve_unknown_tokens_total", {"model": "lm-lstm", "version": "1"}
        )
        == 1
    )


async def test_reset_and_sequence_ids(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        sid = (await manager.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        fresh = await manager.step(sid, None, {"tokens": ["w1", "w2"], "seq": 0})
        info = await manager.reset(sid, None)
        assert info.seq == 0
        again = await manager.step(sid, None, {"tokens": ["w1", "w2"], "seq": 0})
        assert again.model_dump() == fresh.model_dump()  # back to the initial state, first logprob null
        with pytest.raises(SequenceConflict) as conflict:
            await manager.step(sid, None, {"tokens": ["w3"], "seq": 5})
        assert conflict.value.details["expected_seq"] == 2
        # KServe / Triton sequence ids: namespaced per owner
        one = manager.sequence_session_id(42, "alice")
        assert one != manager.sequence_session_id(42, "bob")
        await manager.create(schemas.CreateSession(model="lm-gru"), "alice", one)
        await manager.step(one, "alice", {"tokens": ["w1"]})
        await manager.delete(one, "alice")
        with pytest.raises(SessionDeleted):
            await manager.step(one, "alice", {"tokens": ["w1"]})
        with pytest.raises(BadRequest):
            await manager.generate(
                (await manager.create(schemas.CreateSession(model="sensor-rnn"), None)).session_id,
                None,
                {"max_tokens": 2},
            )


async def test_not_ready_before_start(make_settings: Callable[..., Settings]) -> None:
    manager = SessionManager(make_settings(), Metrics())
    assert not manager.ready
    with pytest.raises(NotReady):
        await manager.create(schemas.CreateSession(model="lm-gru"), None)


async def test_a_refused_reset_leaves_the_idle_ttl_and_an_applied_one_restarts_it(
    make_settings: Callable[..., Settings],
) -> None:
    now = [1000.0]
    async with running(make_settings(), clock=lambda: now[0]) as manager:
        store = manager.store
        if not isinstance(store, MemoryStore):
            pytest.skip("the fake clock and a session on an unserved version need the memory store")
        # a session on a version this server does not serve (as another replica's, in a shared store)
        store.attach_spec("lm-gru/99", 1, 1, 4, sha256="f" * 64)
        ghost = store.create_now("lm-gru/99", None, session_id="ghost").session_id
        served = (await manager.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        await manager.step(served, None, {"tokens": ["w1"], "seq": 0})
        before = {sid: await store.lookup(sid, None, touch=False) for sid in (ghost, served)}
        now[0] += 5.0
        with pytest.raises(ModelNotFound):
            await manager.reset(ghost, None)
        assert await store.lookup(ghost, None, touch=False) == before[ghost]
        info = await manager.reset(served, None)
        after = await store.lookup(served, None, touch=False)
        assert info.seq == after.seq == 0
        assert after.last_used_at == before[served].last_used_at + 5.0
