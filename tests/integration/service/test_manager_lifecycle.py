"""Snapshot file across stop/start, export/restore, generate, TTL and capacity through the facade."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from manager_support import FakeClock, Reference, body, running, state_of

from service import schemas
from service.errors import (
    CapacityExceeded,
    InvalidInput,
    SequenceConflict,
    SessionDeleted,
    SessionEvicted,
    SessionExpired,
    SessionNotFound,
    ShuttingDown,
)
from service.metrics import Metrics
from service.predictors.detok import detokenize
from service.sessions import SessionManager
from service.settings import Settings
from service.store.transfer import snapshot_checksum

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# The snapshot file is the memory store's (Redis persists by itself), and a fake clock drives only the
# memory store's TTL (Redis expires by its own clock: see test_manager_redis.py).
memory_only = pytest.mark.parametrize("store_backend", ["memory"])


@memory_only
async def test_snapshot_file_stop_start_continues_identically(
    make_settings: Callable[..., Settings], references: dict[str, Reference], tmp_path: Path
) -> None:
    path = tmp_path / "var" / "sessions.snapshot"
    # only at shutdown (interval 0): the file moves aside once loaded (periodic: test_manager_snapshots.py)
    settings = make_settings(snapshot_path=path, max_batch_size=1, snapshot_interval_s=0)
    rng = np.random.default_rng(2)
    plan = {
        name: [references[name].events(rng, 3), references[name].events(rng, 4)]
        for name in ("lm-gru", "sensor-lstm", "sensor-rnn")
    }
    async with running(settings) as manager:
        ids = {}
        for name, (first, _) in plan.items():
            ids[name] = (await manager.create(schemas.CreateSession(model=name), "key-1")).session_id
            answers = await manager.step(ids[name], "key-1", body(references[name].task, first, 0))
        infos = {name: await manager.get(sid, "key-1") for name, sid in ids.items()}
    assert path.is_file()
    async with running(settings) as manager:
        assert not path.exists() and path.with_name(path.name + ".loaded").is_file()
        for name, (first, second) in plan.items():
            ref = references[name]
            info = await manager.get(ids[name], "key-1")
            assert info.seq == len(first) and info.expires_at == infos[name].expires_at
            assert info.created_at == infos[name].created_at
            response = await manager.step(ids[name], "key-1", body(ref.task, second, len(first)))
            assert response.seq == len(first) + len(second)
            got = state_of((await manager.export_state(ids[name], "key-1")).state, ref)
            assert np.array_equal(got, np.stack([s[:, 0] for s in ref.run_chunks([first, second])]))
        # exactly-once survives the restart: the last answer before stop was kept with the session
        sensor = ids["sensor-rnn"]
        with pytest.raises(SequenceConflict):
            await manager.step(sensor, "key-1", body("sensor", plan["sensor-rnn"][0], 0))
    assert answers.seq == 3


@memory_only
async def test_snapshot_file_keeps_ended_ids_answering_gone(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(snapshot_path=tmp_path / "s.snapshot", max_sessions=1, capacity_policy="evict")
    async with running(settings) as manager:
        deleted = (await manager.create(schemas.CreateSession(model="lm-rnn"), "key-1")).session_id
        await manager.delete(deleted, "key-1")
        evicted = (await manager.create(schemas.CreateSession(model="lm-rnn"), None)).session_id
        live = (await manager.create(schemas.CreateSession(model="lm-rnn"), "key-2")).session_id
        with pytest.raises(SessionEvicted):
            await manager.get(evicted, None)
    async with running(settings) as manager:
        assert (await manager.get(live, "key-2")).seq == 0
        with pytest.raises(SessionDeleted):
            await manager.get(deleted, "key-1")
        with pytest.raises(SessionEvicted):
            await manager.get(evicted, None)
        with pytest.raises(SessionNotFound):  # a tombstone still belongs to the key that ended it
            await manager.get(deleted, "key-2")


@memory_only
async def test_snapshot_file_of_a_version_no_longer_loaded_is_refused(
    make_settings: Callable[..., Settings], tiny_models_dir: Path, tmp_path: Path
) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "lm-rnn", models / "lm-rnn")
    shutil.copytree(tiny_models_dir / "lm-gru", models / "lm-gru")
    path = tmp_path / "s.snapshot"
    async with running(make_settings(models_dir=models, snapshot_path=path)) as manager:
        keep = (await manager.create(schemas.CreateSession(model="lm-rnn"), None)).session_id
        await manager.create(schemas.CreateSession(model="lm-gru"), None)
    shutil.rmtree(models / "lm-gru")
    async with running(make_settings(models_dir=models, snapshot_path=path)) as manager:
        assert (await manager.get(keep, None)).seq == 0
        assert await manager.store.live_sessions("lm-gru/1") == 0


async def test_export_and_restore_continue_identically(
    make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    ref = references["sensor-gru"]
    rng = np.random.default_rng(4)
    first, second = ref.events(rng, 5), ref.events(rng, 3)
    async with running(make_settings()) as manager:
        original = (await manager.create(schemas.CreateSession(model="sensor-gru"), None)).session_id
        await manager.step(original, None, body("sensor", first))
        snapshot = await manager.export_state(original, None)
        assert snapshot.seq == 5 and snapshot.checksum == snapshot_checksum(snapshot)
        restored = await manager.create(schemas.CreateSession(model="sensor-gru", snapshot=snapshot), "other")
        assert restored.seq == 5 and restored.session_id != original
        a = await manager.step(original, None, body("sensor", second, 5))
        b = await manager.step(restored.session_id, "other", body("sensor", second, 5))
        assert a.model_dump() == b.model_dump()
        first_output = a.outputs[0]
        assert isinstance(first_output, schemas.SensorOutput)
        assert first_output.score is not None  # the restored session scores its first reading

        def tampered(**changes: Any) -> schemas.Snapshot:
            bad = snapshot.model_copy(update=changes)
            return bad.model_copy(update={"checksum": snapshot_checksum(bad)})

        short = base64.b64encode(base64.b64decode(snapshot.state)[:-4]).decode()
        nan = base64.b64encode(
            np.full(len(base64.b64decode(snapshot.state)) // 4, np.nan, "<f4").tobytes()
        ).decode()
        cases = [
            (snapshot.model_copy(update={"seq": 6}), "checksum"),
            (tampered(state=short), "bytes"),
            (tampered(state=nan), "non-finite"),
            (tampered(model="sensor-lstm"), "sensor-lstm"),
            (tampered(version="9"), "not loaded"),
        ]
        for bad, words in cases:
            model = bad.model if bad.model != "sensor-lstm" else "sensor-gru"
            with pytest.raises(InvalidInput, match=words) as info:
                await manager.create(schemas.CreateSession(model=model, snapshot=bad), None)
            assert info.value.status == 422


@pytest.mark.parametrize("name", ["lm-rnn", "lm-lstm"])
async def test_generate_greedy_commit_and_no_commit(
    name: str, make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    ref = references[name]
    prompt = ["w1", "w2", "w3"]
    async with running(make_settings()) as manager:
        sid = (await manager.create(schemas.CreateSession(model=name), None)).session_id
        await manager.step(sid, None, {"tokens": prompt})
        before = (await manager.export_state(sid, None)).state
        greedy = {"max_tokens": 5, "temperature": 0, "stop_at_eos": False, "include_special": True}
        out = await manager.generate(sid, None, greedy)
        assert out.seq == 3 and len(out.tokens) == 5 and out.text == detokenize(out.tokens)
        assert (await manager.export_state(sid, None)).state == before  # no commit: untouched
        # greedy = argmax of the reference, token by token
        state = ref.run_chunks([prompt])
        outs, _ = ref.run(prompt, ref.zero_state())
        dist = outs["log_probs"][0, -1]
        for token in out.tokens:
            assert ref.vocab[int(np.argmax(dist))] == token
            step, state = ref.run([token], state)
            dist = step["log_probs"][0, -1]
        # by default greedy never picks <unk> or <eos>: argmax of the reference without them
        clean = await manager.generate(sid, None, {**greedy, "include_special": False, "max_tokens": 8})
        specials = [ref.vocab.index("<unk>"), ref.vocab.index("<eos>")]
        clean_state, dist = ref.run_chunks([prompt]), outs["log_probs"][0, -1]
        for token in clean.tokens:
            dist[specials] = -np.inf
            assert ref.vocab[int(np.argmax(dist))] == token
            step, clean_state = ref.run([token], clean_state)
            dist = step["log_probs"][0, -1]
        assert len(clean.tokens) == 8
        sampled = {"max_tokens": 6, "temperature": 1.5, "top_k": 5, "seed": 3}
        a = await manager.generate(sid, None, sampled)
        b = await manager.generate(sid, None, sampled)
        assert a.tokens == b.tokens  # seeded
        # sampled ones neither: hot and long enough that 1 in 40 words would show up without the ban
        hot = {"max_tokens": 60, "temperature": 5.0, "top_k": 0, "stop_at_eos": False}
        hot_raw = (await manager.generate(sid, None, {**hot, "seed": 1, "include_special": True})).tokens
        assert {"<unk>", "<eos>"} & set(hot_raw)
        assert not {"<unk>", "<eos>"} & set((await manager.generate(sid, None, {**hot, "seed": 1})).tokens)
        committed = await manager.generate(sid, None, {**greedy, "commit": True})
        assert committed.tokens == out.tokens and committed.seq == 8
        got = state_of((await manager.export_state(sid, None)).state, ref)
        np.testing.assert_allclose(got, np.stack([s[:, 0] for s in state]), atol=1e-5, rtol=0)
        with pytest.raises(InvalidInput):
            await manager.generate(sid, None, {"max_tokens": 10_000})


@memory_only
async def test_idle_sessions_expire_and_lru_is_evicted_through_the_facade(
    make_settings: Callable[..., Settings],
) -> None:
    clock = FakeClock()
    settings = make_settings(session_ttl_s=10.0, max_sessions=2, capacity_policy="evict")
    metrics = Metrics()
    async with running(settings, clock, metrics) as manager:
        a = (await manager.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        clock.now += 1
        b = (await manager.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        clock.now += 1
        await manager.step(a, None, {"tokens": ["w1"]})
        await manager.create(schemas.CreateSession(model="lm-gru"), None)  # evicts b, the LRU
        with pytest.raises(SessionEvicted):
            await manager.step(b, None, {"tokens": ["w1"]})
        clock.now += 11
        assert await manager.sweep() == 2
        with pytest.raises(SessionExpired) as info:
            await manager.get(a, None)
        assert info.value.status == 410 and info.value.code == "session_expired"
    get = metrics.registry.get_sample_value
    assert get("rnnserve_sessions_ended_total", {"model": "lm-gru", "reason": "evicted"}) == 1
    assert get("rnnserve_active_sessions", {"model": "lm-gru", "version": "1"}) == 0


async def test_reject_policy_answers_429(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(max_sessions=1, capacity_policy="reject")) as manager:
        await manager.create(schemas.CreateSession(model="sensor-rnn"), None)
        with pytest.raises(CapacityExceeded) as info:
            await manager.create(schemas.CreateSession(model="sensor-rnn"), None)
        assert info.value.status == 429 and "Retry-After" in info.value.headers
        await manager.create(schemas.CreateSession(model="sensor-gru"), None)  # capacity is per version


async def test_stop_drains_in_flight_steps_then_refuses(make_settings: Callable[..., Settings]) -> None:
    manager = SessionManager(make_settings(), Metrics())
    await manager.start()
    sids = [(await manager.create(schemas.CreateSession(model="lm-lstm"), None)).session_id for _ in range(8)]
    steps = [asyncio.ensure_future(manager.step(s, None, {"tokens": ["w1", "w2"], "seq": 0})) for s in sids]
    await asyncio.sleep(0)
    await manager.stop()
    assert [s.result().seq for s in steps] == [2] * 8
    assert not manager.ready
    with pytest.raises(ShuttingDown):
        await manager.step(sids[0], None, {"tokens": ["w1"]})
