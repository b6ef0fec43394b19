"""store=redis: several replicas (SessionManagers) on one real redis-server, Redis outages, round trips.

Replicas share nothing but Redis: each has its own registry, batchers, turns and client. Two replicas
racing on one session must apply each step exactly once (check-and-set on seq in a Lua script), and a
Redis that goes away must turn into 503s that end by themselves when it comes back, never into a
silently reset session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from manager_support import Reference, body, check_outputs, running, state_of
from redis_support import CountingConnection, RedisServer, counting_client

from service import schemas
from service.errors import (
    SequenceConflict,
    SessionDeleted,
    SessionEvicted,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
)
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings
from service.store.base import Status, StoredAnswer
from service.store.redis_store import RedisStore

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
    pytest.mark.parametrize("store_backend", ["redis"]),
]


@asynccontextmanager
async def replicas(settings: Settings, count: int = 2) -> AsyncIterator[list[tuple[SessionManager, Metrics]]]:
    async with AsyncExitStack() as stack:
        started = []
        for _ in range(count):
            metrics = Metrics()
            started.append((await stack.enter_async_context(running(settings, metrics=metrics)), metrics))
        yield started


def total(metrics: list[Metrics], name: str, labels: dict[str, str]) -> float:
    return sum(m.registry.get_sample_value(name, labels) or 0.0 for m in metrics)


def final_state(ref: Reference, chunks: list[list[Any]]) -> np.ndarray:
    return np.stack([s[:, 0] for s in ref.run_chunks(chunks)])


@pytest.mark.parametrize("name", ["lm-gru", "sensor-lstm"])
async def test_two_replicas_racing_on_one_session_apply_each_step_exactly_once(
    name: str, make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    ref = references[name]
    rng = np.random.default_rng(21)
    applied: list[list[Any]] = []
    conflicts = 0
    async with replicas(make_settings(max_batch_size=1)) as pair:
        (a, ma), (b, mb) = pair
        sid = (await a.create(schemas.CreateSession(model=name), None)).session_id
        count = 0
        for round_ in range(12):
            kind = ("same", "different", "unsequenced")[round_ % 3]
            chunks = [ref.events(rng, int(rng.integers(1, 4))) for _ in range(2)]
            if kind == "same":  # one retried request, twice on each replica, all at once
                payload = body(ref.task, chunks[0], count)
                answers = await asyncio.gather(*(m.step(sid, None, payload) for m in (a, b, a, b)))
                assert all(r.model_dump() == answers[0].model_dump() for r in answers)
                applied.append(chunks[0])
            elif kind == "different":  # two clients, one seq, two payloads: one wins, the other 409
                results = await asyncio.gather(
                    a.step(sid, None, body(ref.task, chunks[0], count)),
                    b.step(sid, None, body(ref.task, chunks[1], count)),
                    return_exceptions=True,
                )
                won = [i for i, r in enumerate(results) if isinstance(r, schemas.StepResponse)]
                assert len(won) == 1, results
                lost = results[1 - won[0]]
                assert isinstance(lost, SequenceConflict)
                assert lost.expected_seq == count + len(chunks[won[0]])
                applied.append(chunks[won[0]])
                conflicts += 1
            else:  # unsequenced on both at once: both apply, one after the other, none lost
                first, second = await asyncio.gather(
                    a.step(sid, None, body(ref.task, chunks[0])), b.step(sid, None, body(ref.task, chunks[1]))
                )
                order = [0, 1] if first.seq == count + len(chunks[0]) else [1, 0]
                both = count + sum(map(len, chunks))
                assert {first.seq, second.seq} == {count + len(chunks[order[0]]), both}
                applied.extend(chunks[i] for i in order)
            count = sum(map(len, applied))
            assert (await b.get(sid, None)).seq == count
        got = state_of((await b.export_state(sid, None)).state, ref)
    assert np.array_equal(got, final_state(ref, applied))  # bit for bit: B = 1 throughout
    both_metrics = [ma, mb]
    assert total(both_metrics, "rnnserve_events_total", {"model": name, "version": "1"}) == count
    assert total(both_metrics, "rnnserve_replays_total", {"model": name}) == 3 * 4  # 3 of 4 per "same" round
    assert total(both_metrics, "rnnserve_seq_conflicts_total", {"model": name}) == conflicts


async def test_a_session_moves_between_replicas_with_identical_outputs(
    make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    ref = references["lm-lstm"]
    events = ref.events(np.random.default_rng(8), 12)
    async with replicas(make_settings(max_batch_size=1), count=3) as three:
        managers = [m for m, _ in three]
        info = await managers[0].create(schemas.CreateSession(model="lm-lstm"), "key-1")
        outputs: list[Any] = []
        for i, event in enumerate(events):  # each step on the next replica
            response = await managers[i % 3].step(info.session_id, "key-1", body("lm", [event], i))
            assert response.seq == i + 1
            outputs.extend(response.outputs)
        check_outputs(ref, events, outputs)
        got = state_of((await managers[2].export_state(info.session_id, "key-1")).state, ref)
        assert np.array_equal(got, final_state(ref, [[e] for e in events]))
        seen = [await m.get(info.session_id, "key-1") for m in managers]
        assert {s.seq for s in seen} == {12} and {s.created_at for s in seen} == {info.created_at}
        with pytest.raises(SessionNotFound):  # the owner check holds on every replica
            await managers[1].get(info.session_id, "key-2")
        await managers[1].delete(info.session_id, "key-1")
        with pytest.raises(SessionDeleted) as gone:  # the tombstone is shared too
            await managers[2].step(info.session_id, "key-1", body("lm", ["w1"]))
        assert gone.value.status == 410


async def test_idle_sessions_expire_and_the_lru_is_evicted_by_redis_time(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(session_ttl_s=1.5, max_sessions=2, capacity_policy="evict")
    async with replicas(settings) as pair:
        (a, ma), (b, mb) = pair
        first = (await a.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        second = (await b.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        await a.step(first, None, {"tokens": ["w1"]})  # `second` is now the least recently used
        third = (await b.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        with pytest.raises(SessionEvicted):
            await a.step(second, None, {"tokens": ["w1"]})
        assert await a.store.live_sessions("lm-gru/1") == 2
        await asyncio.sleep(1.7)
        for manager in (a, b):
            for sid in (first, third):
                with pytest.raises(SessionExpired) as info:
                    await manager.get(sid, None)
                assert info.value.code == "session_expired"
        await a.sweep()  # (each replica's sweeper runs every ttl / 10 too)
        await b.sweep()
        assert await b.store.live_sessions("lm-gru/1") == 0
    ended = "rnnserve_sessions_ended_total"
    assert total([ma, mb], ended, {"model": "lm-gru", "reason": "evicted"}) == 1
    assert total([ma, mb], ended, {"model": "lm-gru", "reason": "expired"}) == 2  # counted once


async def test_redis_killed_mid_stream_answers_503_then_the_stream_continues_identically(
    make_settings: Callable[..., Settings], references: dict[str, Reference], tmp_path: Path
) -> None:
    """An AOF-persisted Redis is killed (SIGKILL) while requests run and started again on the same port:
    meanwhile every call answers 503 store_unavailable and the replicas stay up; afterwards the client
    sends its unanswered request again (same seq) and the stream goes on as if nothing happened."""
    ref = references["sensor-gru"]
    events = ref.events(np.random.default_rng(4), 10)
    server = RedisServer(tmp_path / "redis", durable=True)
    settings = make_settings(max_batch_size=1, redis_url=server.url)
    try:
        async with replicas(settings) as pair:
            (a, _), (b, _) = pair
            sid = (await a.create(schemas.CreateSession(model="sensor-gru"), None)).session_id
            outputs: list[Any] = []
            for seq, event in enumerate(events):
                replica = (a, b)[seq % 2]
                payload = body("sensor", [event], seq)
                if seq == 4:  # Redis is killed while this step is in flight
                    step = asyncio.ensure_future(replica.step(sid, None, payload))
                    await asyncio.to_thread(server.kill)
                    try:
                        before_kill: schemas.StepResponse | None = await step
                    except StoreUnavailable:
                        before_kill = None
                    for call in (
                        replica.step(sid, None, payload),
                        replica.get(sid, None),
                        replica.create(schemas.CreateSession(model="sensor-gru"), None),
                    ):
                        with pytest.raises(StoreUnavailable) as down:
                            await call
                        error = down.value
                        assert (error.status, error.code, error.headers["Retry-After"]) == (
                            503,
                            "store_unavailable",
                            "1",
                        )
                    assert a.ready and b.ready  # up, and answering
                    await asyncio.to_thread(server.start)
                    if before_kill is not None:  # it made it before the kill
                        outputs.extend(before_kill.outputs)
                        continue
                # the request that got the 503 is sent again: applied now, or replayed if it had been
                response = await replica.step(sid, None, payload)
                assert response.seq == seq + 1
                outputs.extend(response.outputs)
            check_outputs(ref, events, outputs)
            got = state_of((await b.export_state(sid, None)).state, ref)
            assert np.array_equal(got, final_state(ref, [[e] for e in events]))
    finally:
        server.kill()


async def test_redis_restarted_empty_answers_404_not_a_fresh_session(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")  # no persistence: a restart loses every session
    try:
        async with running(make_settings(redis_url=server.url)) as manager:
            sid = (await manager.create(schemas.CreateSession(model="lm-rnn"), None)).session_id
            await manager.step(sid, None, {"tokens": ["w1", "w2"], "seq": 0})
            server.restart()
            with pytest.raises(SessionNotFound) as lost:
                await manager.step(sid, None, {"tokens": ["w3"], "seq": 2})
            assert lost.value.status == 404  # not seq 0 on a zero state
            again = (await manager.create(schemas.CreateSession(model="lm-rnn"), None)).session_id
            assert (await manager.step(again, None, {"tokens": ["w1"], "seq": 0})).seq == 1
    finally:
        server.kill()


async def test_a_replica_started_while_redis_is_down_serves_once_it_is_up(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.kill()
    try:
        async with running(make_settings(redis_url=server.url)) as manager:
            assert manager.ready
            with pytest.raises(StoreUnavailable):
                await manager.create(schemas.CreateSession(model="lm-gru"), None)
            with pytest.raises(StoreUnavailable):
                await manager.check_store()  # what a readiness probe can ask
            server.start()
            await manager.check_store()
            sid = (await manager.create(schemas.CreateSession(model="lm-gru"), None)).session_id
            assert (await manager.step(sid, None, {"tokens": ["w1"]})).seq == 1
    finally:
        server.kill()


async def test_a_batch_reads_and_writes_in_one_round_trip_each(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = make_settings(max_batch_size=64)
    # the store alone: 48 sessions, one command to read them all and one to write them all
    store = RedisStore(settings, client=counting_client(settings.redis_url))
    try:
        part = store.attach_spec("m/1", state_count=2, layers=2, hidden=3)
        records = [await store.create("m/1", None) for _ in range(48)]
        state = [np.arange(2 * 48 * 3, dtype=np.float32).reshape(2, 48, 3) + k for k in range(2)]
        answers = [StoredAnswer(0, i, b'{"seq": 1}') if i % 2 else None for i in range(48)]
        CountingConnection.reset()
        before = redis_server.evalsha_calls()
        read = await store.gather(part, records)
        done = await store.commit(part, records, state, 1, answers)
        assert CountingConnection.requests() == 2 and redis_server.evalsha_calls() - before == 2
        assert read.all_ready and not read.state[0].any()
        assert (done.status == Status.APPLIED).all() and (done.seqs == 1).all()
        again = await store.gather(part, [await store.lookup(r.session_id, None) for r in records])
        assert all(np.array_equal(g, s) for g, s in zip(again.state, state, strict=True))
        assert await store.last_answer(records[3]) == StoredAnswer(0, 3, b'{"seq": 1}')
    finally:
        await store.close()

    # through the manager: the lookups of requests that arrive together in one round trip; per batch
    # one read and one write
    metrics = Metrics()
    store = RedisStore(settings, metrics, client=counting_client(settings.redis_url))
    async with running(settings, metrics=metrics, store=store) as manager:
        new = schemas.CreateSession(model="lm-gru")
        sids = [(await manager.create(new, None)).session_id for _ in range(24)]
        CountingConnection.reset()
        await asyncio.gather(*(manager.step(s, None, {"tokens": ["w1"], "seq": 0}) for s in sids))
        labels = {"model": "lm-gru", "version": "1"}
        batches = metrics.registry.get_sample_value("rnnserve_batch_size_count", labels)
        assert batches is not None and batches < 24  # several sessions per batch
        scripts = CountingConnection.scripts
        assert scripts[store._lookup.sha] == 1  # all 24 requests came in one turn of the event loop
        assert scripts[store._gather.sha] == scripts[store._commit.sha] == batches
        assert CountingConnection.requests() == 1 + 2 * batches  # nothing else goes to Redis


async def test_a_full_redis_answers_503_and_nothing_half_written(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    async with running(make_settings()) as manager:
        sid = (await manager.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        with redis_server.client() as admin:
            admin.config_set("maxmemory", "1")  # noeviction: every write refused with OOM
            try:
                with pytest.raises(StoreUnavailable) as full:
                    await manager.create(schemas.CreateSession(model="lm-gru"), None)
                assert full.value.status == 503
                with pytest.raises(StoreUnavailable):
                    await manager.step(sid, None, {"tokens": ["w1"], "seq": 0})
            finally:
                admin.config_set("maxmemory", "0")
        assert (await manager.get(sid, None)).seq == 0  # the refused step left nothing behind
        assert (await manager.step(sid, None, {"tokens": ["w1"], "seq": 0})).seq == 1
