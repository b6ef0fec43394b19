"""The memory store: slab gather/scatter and growth, TTL, LRU evict vs reject, tombstones, snapshot file."""

from __future__ import annotations

import gc
import secrets
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import (
    BadRequest,
    CapacityExceeded,
    SessionDeleted,
    SessionEvicted,
    SessionExpired,
    SessionNotFound,
)
from service.metrics import Metrics
from service.settings import Settings
from service.store import MemoryStore, StoredAnswer
from service.store.base import Status
from service.store.slab import Partition

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

KEY = "m/1"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def make_store(clock: FakeClock, **overrides: Any) -> MemoryStore:
    values: dict[str, Any] = {
        "session_ttl_s": 60.0,
        "gone_retention_s": 30.0,
        "max_sessions": 4,
        "snapshot_path": None,
        **overrides,
    }
    store = MemoryStore(Settings(**values), Metrics(), clock, initial_rows=2)
    store.attach_spec(KEY, state_count=2, layers=2, hidden=3, sha256="a" * 64)
    return store


def test_partition_gathers_and_scatters_rows_and_grows_by_doubling() -> None:
    p = Partition(KEY, state_count=2, layers=2, hidden=3, max_rows=5, initial_rows=1)
    rows = [p.allocate() for _ in range(5)]
    assert rows == [0, 1, 2, 3, 4] and p.capacity == 5 and p.allocate() is None  # 1, 2, 4, capped at 5
    new = [np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3) + 100 * k for k in range(2)]  # [L, B, H]
    p.scatter(np.array([3, 1]), new)
    got = p.gather(np.array([3, 1]))
    assert all(g.flags.c_contiguous and g.shape == (2, 2, 3) for g in got)
    assert all(np.array_equal(g, n) for g, n in zip(got, new, strict=True))
    assert not p.gather(np.array([0]))[0].any()  # other rows untouched
    p.release(np.array([1]))
    assert p.gen[1] == 1 and p.owner[1] == -1 and p.allocate() == 1  # freed rows are reused


async def test_ids_are_128_bit_and_bound_to_their_owner() -> None:
    store = make_store(FakeClock())
    record = await store.create(KEY, "alice")
    assert len(record.session_id) == 32 and int(record.session_id, 16) >= 0
    assert (await store.lookup(record.session_id, "alice")).row == record.row
    for other in ("bob", None):
        with pytest.raises(SessionNotFound):
            await store.lookup(record.session_id, other)
    with pytest.raises(SessionNotFound):
        await store.lookup("0" * 32, "alice")


async def test_idle_sessions_expire_lazily_and_in_sweeps() -> None:
    clock = FakeClock()
    store = make_store(clock)
    a = await store.create(KEY, None)
    b = await store.create(KEY, None)
    clock.now += 40
    await store.lookup(a.session_id, None)  # touching keeps `a` alive
    clock.now += 30
    with pytest.raises(SessionExpired):  # `b` idle 70 s > 60 s: found expired on lookup
        await store.lookup(b.session_id, None)
    clock.now += 31
    assert await store.sweep() == 1  # `a` idle 61 s
    with pytest.raises(SessionExpired):
        await store.lookup(a.session_id, None)
    assert await store.live_sessions(KEY) == 0
    ended = store.metrics.registry.get_sample_value(  # type: ignore[union-attr]
        "rnnserve_sessions_ended_total", {"model": "m", "reason": "expired"}
    )
    assert ended == 2


async def test_expires_at_is_wall_time_of_last_use_plus_ttl() -> None:
    clock = FakeClock()
    store = make_store(clock)
    record = await store.create(KEY, None)
    assert record.expires_at == pytest.approx(store.wall_offset + clock.now + 60)
    assert abs(record.created_at - __import__("time").time()) < 5


async def test_reject_policy_refuses_at_capacity_with_retry_after() -> None:
    clock = FakeClock()
    store = make_store(clock, capacity_policy="reject")
    for _ in range(4):
        await store.create(KEY, None)
    clock.now += 10
    with pytest.raises(CapacityExceeded) as info:
        await store.create(KEY, None)
    assert info.value.headers["Retry-After"] == "50"  # when the oldest session will have expired


async def test_capacity_frees_expired_sessions_before_refusing() -> None:
    clock = FakeClock()
    store = make_store(clock, capacity_policy="reject")
    first = await store.create(KEY, None)
    for _ in range(3):
        await store.create(KEY, None)
    clock.now += 61
    await store.create(KEY, None)
    with pytest.raises(SessionExpired):
        await store.lookup(first.session_id, None)


async def test_evict_policy_evicts_the_least_recently_used() -> None:
    clock = FakeClock()
    store = make_store(clock, capacity_policy="evict")
    records = []
    for _ in range(4):
        records.append(await store.create(KEY, None))
        clock.now += 1
    await store.lookup(records[0].session_id, None)  # now the LRU is records[1]
    newcomer = await store.create(KEY, None)
    assert newcomer.row == records[1].row
    with pytest.raises(SessionEvicted):
        await store.lookup(records[1].session_id, None)
    for r in (records[0], records[2], records[3]):
        await store.lookup(r.session_id, None)


async def test_tombstones_say_why_for_a_while_then_404() -> None:
    clock = FakeClock()
    store = make_store(clock)
    record = await store.create(KEY, "alice")
    await store.delete(record.session_id, "alice")
    with pytest.raises(SessionDeleted) as info:
        await store.lookup(record.session_id, "alice")
    assert info.value.details["reason"] == "deleted"
    with pytest.raises(SessionNotFound):  # another key learns nothing
        await store.lookup(record.session_id, "bob")
    clock.now += 31
    with pytest.raises(SessionNotFound):
        await store.lookup(record.session_id, "alice")


async def test_tombstones_are_bounded() -> None:
    clock = FakeClock()
    store = make_store(clock, max_sessions=3)
    ids = []
    for _ in range(10):
        record = await store.create(KEY, None)
        ids.append(record.session_id)
        await store.delete(record.session_id, None)
    assert len(store.ids.gone) == 3  # max_sessions per served version; the oldest go first
    with pytest.raises(SessionNotFound):
        await store.lookup(ids[0], None)
    with pytest.raises(SessionDeleted):
        await store.lookup(ids[-1], None)


async def test_commit_checks_and_sets_and_skips_rows_that_ended() -> None:
    clock = FakeClock()
    store = make_store(clock)
    a = await store.create(KEY, None)
    b = await store.create(KEY, None)
    new = [np.ones((2, 2, 3), np.float32), 2 * np.ones((2, 2, 3), np.float32)]  # [L, B, H]
    done = await store.commit(0, [a, b], new, 3, [StoredAnswer(0, 7, b"{}"), None])
    assert done.status.tolist() == [Status.APPLIED, Status.APPLIED] and done.seqs.tolist() == [3, 3]
    assert await store.last_answer(a) == StoredAnswer(0, 7, b"{}")
    await store.delete(b.session_id, None)
    c = await store.create(KEY, None)  # reuses b's row with a new generation
    assert c.row == b.row and c.gen != b.gen
    read = await store.gather(0, [a, b, c])  # `a` moved on since its record; `b` is gone
    assert read.status.tolist() == [Status.CONFLICT, Status.GONE, Status.READY]
    assert read.seqs.tolist() == [3, -1, 0]
    a = await store.lookup(a.session_id, None)
    done = await store.commit(0, [a, b], [3 * s for s in new], 3, [None, None])
    assert done.status.tolist() == [Status.APPLIED, Status.GONE] and done.seqs.tolist() == [6, -1]
    seq, state = await store.read_state(a)
    assert seq == 6 and np.array_equal(state[1], 6 * np.ones((2, 3)))
    assert not (await store.read_state(c))[1][0].any()  # the stale write to the reused row was dropped
    assert await store.last_answer(a) is None  # superseded by an unsequenced step
    stale = await store.commit(0, [replace(a, seq=3)], [s[:, :1] for s in new], 1, [None])
    assert stale.status.tolist() == [Status.CONFLICT] and stale.seqs.tolist() == [6]
    assert (await store.read_state(a))[0] == 6  # a conflicting write changes nothing


def test_session_keys_are_raw_bytes_only_for_exact_128_bit_hex_ids() -> None:
    from service.store.base import key_to_id, session_key

    for ours in ("0123456789abcdef" * 2, "0" * 32, "9" * 32):
        assert session_key(ours) == bytes.fromhex(ours) and key_to_id(session_key(ours)) == ours
    for theirs in ("0123456789ABCDEF" * 2, "seq-1", "00 " * 10 + "00", "g" * 32):
        assert session_key(theirs) == theirs


def test_session_keys_of_many_ids_are_session_key_of_each() -> None:
    """The one-pass conversion of many ids agrees with `session_key` whatever the mix: all ours, one
    of theirs among ours (upper case, a space, a non-hex letter, non-ASCII, another length), none."""
    from service.store.base import session_key, session_keys

    ours = [secrets.token_hex(16) for _ in range(5)]
    odd = [
        "0123456789ABCDEF" * 2,
        "00 " * 10 + "00",
        "g" * 32,
        "\u00e9" + "0" * 31,
        "0" * 31,
        "0" * 34,
        "0 " * 16,
    ]
    cases = [ours, [], [ours[0]], *([*ours[:2], theirs, *ours[2:]] for theirs in odd), odd]
    for ids in cases:
        assert session_keys(ids) == [session_key(s) for s in ids], ids


async def test_client_chosen_ids_and_reuse_after_end() -> None:
    store = make_store(FakeClock())
    record = await store.create(KEY, None, session_id="seq-1")
    assert record.session_id == "seq-1"
    with pytest.raises(BadRequest):
        await store.create(KEY, None, session_id="seq-1")
    with pytest.raises(BadRequest):
        await store.create(KEY, None, session_id="bad id/")
    await store.delete("seq-1", None)
    await store.create(KEY, None, session_id="seq-1")


async def test_snapshot_file_round_trip_keeps_state_seq_owner_answers_and_ttl(tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(clock)
    a = await store.create(KEY, "alice")
    b = await store.create(KEY, None, session_id="chosen")
    rng = np.random.default_rng(0)
    state = [rng.standard_normal((2, 2, 3)).astype(np.float32) for _ in range(2)]
    await store.commit(0, [a, b], state, 5, [StoredAnswer(0, 123, b'{"seq": 5}'), None])
    clock.now += 20
    c = await store.create(KEY, None)
    clock.now += 25  # a and b: 15 s left; c: 35 s left
    path = tmp_path / "snap" / "sessions.snapshot"
    assert store.save(path) == 3 and path.is_file()

    clock2 = FakeClock()
    clock2.now = 9000.0  # a new process: another monotonic origin, the same wall clock
    store2 = make_store(clock2)
    store2.attach_spec("gone/1", 1, 1, 1)
    assert store2.load(path, []) == 0  # no served model: refused
    restored = MemoryStore(Settings(session_ttl_s=60.0, max_sessions=4, snapshot_path=None), None, clock2)
    restored.wall_offset = store.wall_offset + clock.now - clock2.now  # no time passed while down

    class Model:  # what `load` reads of a served model
        key = KEY
        manifest = type("M", (), {"onnx": type("O", (), {"sha256": "a" * 64})(), "state_shape": (2, 3)})()
        state_count = 2

    assert restored.load(path, [Model()]) == 3  # type: ignore[list-item]
    ra = await restored.lookup(a.session_id, "alice", touch=False)
    assert ra.seq == 5
    assert ra.expires_at - (restored.wall_offset + clock2.now) == pytest.approx(15, abs=0.5)
    assert np.array_equal(np.stack((await restored.read_state(ra))[1]), np.stack([s[:, 0] for s in state]))
    answer = await restored.last_answer(ra)
    assert answer == StoredAnswer(0, 123, b'{"seq": 5}')
    rb = await restored.lookup("chosen", None, touch=False)
    assert np.array_equal(np.stack((await restored.read_state(rb))[1]), np.stack([s[:, 1] for s in state]))
    with pytest.raises(SessionNotFound):
        await restored.lookup(a.session_id, None)
    clock2.now += 16  # a and b expire on their old schedule, c (19 s left) lives on
    with pytest.raises(SessionExpired):
        await restored.lookup(a.session_id, "alice")
    assert (await restored.lookup(c.session_id, None)).seq == 0


async def test_snapshot_drops_sessions_that_expired_while_down(tmp_path: Path) -> None:
    clock = FakeClock()
    store = make_store(clock)
    await store.create(KEY, None)
    path = tmp_path / "s.snapshot"
    store.save(path)
    later = MemoryStore(Settings(session_ttl_s=60.0, max_sessions=4, snapshot_path=None), None, clock)
    later.wall_offset += 120  # two minutes of downtime, in wall time
    later.attach_spec(KEY, 2, 2, 3, "a" * 64)

    class Model:
        key = KEY
        manifest = type("M", (), {"onnx": type("O", (), {"sha256": "a" * 64})()})()

    assert later.load(path, [Model()]) == 0  # type: ignore[list-item]


def _deep_size_of_index(store: MemoryStore) -> int:
    """Bytes of the id -> row dict: its table plus the key and value objects it holds."""
    index = store.ids.live
    return sys.getsizeof(index) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in index.items())


async def test_bytes_per_idle_session_at_100k() -> None:
    """Whole-store memory per idle session, measured with tracemalloc at 100k sessions of a 1-layer GRU
    with H = 128 (512 state bytes: the smallest realistic state, where overhead weighs most)."""
    n, cell_states, layers, hidden = 100_000, 1, 1, 128
    clock = FakeClock()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = MemoryStore(Settings(max_sessions=n, snapshot_path=None), None, clock)
    store.attach_spec(KEY, cell_states, layers, hidden)
    for _ in range(n):
        store.create_now(KEY, "owner-key")
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    raw = cell_states * layers * hidden * 4
    per_session = used / n
    print(
        f"\nstate {raw} B/session: {per_session:.0f} B per idle session ({per_session / raw:.2f}x), "
        f"index {_deep_size_of_index(store) / n:.0f} B"
    )
    assert await store.live_sessions(KEY) == n
    assert per_session <= 1.5 * raw
