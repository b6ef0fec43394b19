"""The snapshot's compact tombstones: round trips against a plain reference, old files still read."""

from __future__ import annotations

import asyncio
import os
import platform
import random
from pathlib import Path

import numpy as np
import pytest
from test_snapshot_file import KEY, make_store, restore

from service.errors import SessionDeleted, SessionEvicted, SessionNotFound
from service.store import tombstone_arrays
from service.store.base import SessionKey
from service.store.heap import _malloc_trim, release_free_memory
from service.store.pieces import Pieces
from service.store.snapshot_file import read_snapshot, write_snapshot

REASONS = ("deleted", "expired", "evicted", "unloaded")


def tombs(n: int, seed: int = 0) -> list[tuple[SessionKey, tuple[str, int, float]]]:
    """Our own ids (16 raw bytes, some with a zero byte) and client-chosen ids, mixed."""
    rng = random.Random(seed)
    out: list[tuple[SessionKey, tuple[str, int, float]]] = []
    for i in range(n):
        key: SessionKey = rng.randbytes(16) if i % 3 else f"client-{i}:{'x' * rng.randrange(200)}.ID"
        if i % 7 == 0 and isinstance(key, bytes):
            key = b"\x00" + key[1:]
        out.append((key, (rng.choice(REASONS), rng.randrange(5), rng.uniform(0, 100))))
    return out


def split(
    items: list[tuple[SessionKey, tuple[str, int, float]]],
) -> tuple[list[SessionKey], list[tuple[str, int, float]]]:
    return [k for k, _ in items], [t for _, t in items]


def encoded(
    items: list[tuple[SessionKey, tuple[str, int, float]]], now: float, wall_offset: float
) -> tuple[list[str], dict[str, np.ndarray]]:
    """`encode`, its pieces joined as reading the file back joins them."""
    reasons, arrays = tombstone_arrays.encode(*split(items), now, wall_offset)
    return reasons, {k: v.joined() if isinstance(v, Pieces) else v for k, v in arrays.items()}


def reference(
    items: list[tuple[SessionKey, tuple[str, int, float]]], now: float, offset: float
) -> list[tuple[str, str, int, float]]:
    return [
        (k.hex() if isinstance(k, bytes) else k, reason, owner, offset + until)
        for k, (reason, owner, until) in items
        if until > now
    ]


@pytest.mark.parametrize("n", [0, 1, 500, 2 * tombstone_arrays.JOIN_KEYS + 7])
def test_round_trip_keeps_the_live_tombstones_as_they_were(n: int) -> None:
    items = tombs(n)
    reasons, arrays = encoded(items, now=50.0, wall_offset=1e9)
    decoded = list(tombstone_arrays.decode({"gone_reasons": reasons}, arrays))
    assert decoded == reference(items, 50.0, 1e9)
    if n > 1:
        assert 0 < len(decoded) < n  # some were past their time and left out
        # compact: our own ids as 16 bytes each, not 32 four-byte characters
        ours = sum(isinstance(k, bytes) and u > 50.0 for k, (_, _, u) in items)
        assert (
            arrays["gone.keys"].nbytes < 16 * ours + sum(len(d[0]) for d in decoded if "client" in d[0]) + 1
        )


def test_format_2_arrays_are_still_read() -> None:
    items = tombs(50)
    ref = reference(items, 0.0, 10.0)
    old = {
        "gone.ids": np.array([r[0] for r in ref], dtype=np.str_),
        "gone.reason": np.array([r[1] for r in ref], dtype=np.str_),
        "gone.owner": np.array([r[2] for r in ref], dtype=np.int64),
        "gone.until": np.array([r[3] for r in ref], dtype=np.float64),
    }
    assert list(tombstone_arrays.decode({}, old)) == ref
    assert list(tombstone_arrays.decode({}, {})) == []  # format 1 files may have none


def test_lengths_that_do_not_add_up_are_refused() -> None:
    reasons, arrays = encoded(tombs(20), now=0.0, wall_offset=0.0)
    arrays["gone.key_len"] = arrays["gone.key_len"][:-1].copy()
    with pytest.raises(ValueError, match="do not add up"):
        list(tombstone_arrays.decode({"gone_reasons": reasons}, arrays))


def _ended_store_file(tmp_path: Path) -> tuple[Path, list[str]]:
    store = make_store()
    ids = []
    for n in range(6):
        session_id = f"s{n}" if n % 2 else os.urandom(16).hex()  # client-chosen and ours
        store.create_now(KEY, "alice", session_id=session_id)
        asyncio.run(store.delete(session_id, "alice"))
        ids.append(session_id)
    path = tmp_path / "s.snapshot"
    store.save(path)
    return path, ids


def test_a_restored_store_still_answers_410_for_ended_ids(tmp_path: Path) -> None:
    path, ids = _ended_store_file(tmp_path)
    restored = restore(path)
    for session_id in ids:
        with pytest.raises(SessionDeleted):
            asyncio.run(restored.lookup(session_id, "alice"))
        with pytest.raises(SessionNotFound):  # only the owner is told why
            asyncio.run(restored.lookup(session_id, "bob"))


def test_a_format_2_file_restores_its_tombstones(tmp_path: Path) -> None:
    path, ids = _ended_store_file(tmp_path)
    header, arrays = read_snapshot(path)
    reasons = header.pop("gone_reasons")
    old = list(tombstone_arrays.decode({"gone_reasons": reasons}, arrays))
    for name in [a for a in arrays if a.startswith("gone.")]:
        del arrays[name]
    arrays["gone.ids"] = np.array([t[0] for t in old], dtype=np.str_)
    arrays["gone.reason"] = np.array(["evicted"] * len(old), dtype=np.str_)
    arrays["gone.owner"] = np.array([t[2] for t in old], dtype=np.int64)
    arrays["gone.until"] = np.array([t[3] for t in old], dtype=np.float64)
    write_snapshot(path, {**header, "format": 2}, arrays)
    assert read_snapshot(path)[0]["format"] == 2
    restored = restore(path)
    for session_id in ids:
        with pytest.raises(SessionEvicted):
            asyncio.run(restored.lookup(session_id, "alice"))


def test_free_heap_memory_is_handed_back_where_the_c_library_can() -> None:
    if platform.libc_ver()[0] == "glibc":
        assert _malloc_trim() is not None
        block = np.ones(64 << 20, np.uint8)  # its own mapping, freed at once; the call must not fail
        del block
    assert isinstance(release_free_memory(), bool)
