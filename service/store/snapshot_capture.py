"""A consistent copy of the memory store's sessions and tombstones, taken without stalling the loop.

A snapshot is taken in two phases:

    capture (event loop)    copy slab rows chunk by chunk (numpy copies of a few MB each, ~1-2 ms),
                            yielding to the loop between chunks, then the tombstones (one dict copy)
    to_arrays (a thread)    ids to strings, answers concatenated, expiries in wall time: the arrays
                            that snapshot_file.py writes, checksums and renames into place

Each chunk is copied in one synchronous step, so every session's state, seq and stored answer are
copied together: a session is saved as it was between two batches, never half-updated. Different
chunks are copied at different moments (a batch may run between them), which is harmless: each
session is restored to a state it really had, at most one snapshot interval old. A client-chosen id
that was ended and started again between two chunks may be copied twice; the later copy is the newer
incarnation (it was live when copied, after the first copy was taken), and `to_arrays` keeps only it.

`capture_now` takes the whole copy in one step (shutdown: nothing else runs any more).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from service.store import tombstone_arrays
from service.store.base import SessionKey, key_to_id
from service.store.pieces import Pieces
from service.store.slab import NO_ANSWER, Partition

if TYPE_CHECKING:
    from service.store.memory import MemoryStore

# One step on the event loop copies at most this much state, and this many rows (each row also costs
# a few list and dict look-ups in Python): about 1-2 ms either way.
CHUNK_BYTES = 4 << 20
CHUNK_ROWS = 8192


_COLUMNS = ("seq", "created", "last_used", "owner", "answer_seq", "answer_fp")


@dataclass
class _Chunk:
    states: list[np.ndarray]  # [L, n, H] each
    seq: np.ndarray
    created: np.ndarray
    last_used: np.ndarray  # monotonic
    owner: np.ndarray
    answer_seq: np.ndarray
    answer_fp: np.ndarray
    keys: list[SessionKey]
    answers: list[bytes | None]


@dataclass
class _PartCopy:
    key: str
    sha256: str
    state_count: int
    layers: int
    hidden: int
    chunks: list[_Chunk] = field(default_factory=list)


@dataclass
class Capture:
    """What one snapshot saves, copied out of the store; `stall_s` is the longest single step the
    copy held the event loop, `loop_s` all of them together (wall clock), `loop_cpu_s` their CPU time
    (less than `loop_s` where the machine is shared and the process waits for a core), `stall_cpu_s`
    the CPU time of the longest step (the stall on a machine with a core to spare)."""

    wall_offset: float
    ttl: float
    saved_at: float  # wall clock
    owners: list[str | None]
    parts: list[_PartCopy]
    # the tombstones: keys, and (reason, owner index, until) in the same order
    tombstones: tuple[list[SessionKey], list[tuple[str, int, float]]] = field(
        default_factory=lambda: ([], [])
    )
    stall_s: float = 0.0
    loop_s: float = 0.0
    loop_cpu_s: float = 0.0
    stall_cpu_s: float = 0.0


def _copy_rows(p: Partition, start: int, stop: int) -> _Chunk:
    rows = np.flatnonzero(p.owner[start:stop] >= 0) + start
    row_list = rows.tolist()
    answer_seq = p.answer_seq[rows]
    ids, answers = p.ids, p.answers
    return _Chunk(
        states=p.gather(rows),
        seq=p.seq[rows],
        created=p.created[rows],
        last_used=p.last_used[rows],
        owner=p.owner[rows],
        answer_seq=answer_seq,
        answer_fp=p.answer_fp[rows],
        keys=_keys(ids, row_list),
        answers=[
            answers.get(r) if a != NO_ANSWER else None
            for r, a in zip(row_list, answer_seq.tolist(), strict=True)
        ],
    )


def _keys(ids: list[SessionKey | None], rows: list[int]) -> list[SessionKey]:
    keys = [ids[r] for r in rows]
    if None in keys:  # a live row always has its id: anything else is a bug, not a snapshot
        raise RuntimeError("a live slab row has no session id")
    return cast("list[SessionKey]", keys)


def _rows_per_chunk(p: Partition, chunk_bytes: int, chunk_rows: int) -> int:
    return max(1, min(chunk_rows, chunk_bytes // max(1, 4 * p.state_floats)))


def _begin(store: MemoryStore) -> Capture:
    return Capture(
        wall_offset=store.wall_offset,
        ttl=store.ttl,
        saved_at=store.wall_offset + store.clock(),
        owners=[],
        parts=[_PartCopy(p.key, p.sha256, p.state_count, p.layers, p.hidden) for p in store.partitions],
    )


def _finish(store: MemoryStore, capture: Capture) -> None:
    # the owner table only grows, so taken last it covers every owner index copied before
    capture.tombstones = store.tombstone_copy()
    capture.owners = list(store.owners)


def capture_now(store: MemoryStore) -> Capture:
    """The whole copy in one step."""
    t0, cpu0 = time.perf_counter(), time.thread_time()
    capture = _begin(store)
    for copy, p in zip(capture.parts, store.partitions, strict=False):
        copy.chunks.append(_copy_rows(p, 0, p.capacity))
    _finish(store, capture)
    capture.stall_s = capture.loop_s = time.perf_counter() - t0
    capture.loop_cpu_s = capture.stall_cpu_s = time.thread_time() - cpu0
    return capture


async def capture(
    store: MemoryStore, chunk_bytes: int = CHUNK_BYTES, chunk_rows: int = CHUNK_ROWS
) -> Capture:
    """The copy in steps of at most `chunk_bytes` of state and `chunk_rows` rows, yielding to the event
    loop between them. Partitions attached after it began are left to the next snapshot."""
    t0, cpu0 = time.perf_counter(), time.thread_time()
    capture = _begin(store)
    steps, cpus = [time.perf_counter() - t0], [time.thread_time() - cpu0]
    for copy, p in zip(capture.parts, store.partitions, strict=False):
        start, step = 0, _rows_per_chunk(p, chunk_bytes, chunk_rows)
        while start < p.capacity:  # the slab may grow meanwhile: its new rows are copied too
            await asyncio.sleep(0)
            t, c = time.perf_counter(), time.thread_time()
            copy.chunks.append(_copy_rows(p, start, min(start + step, p.capacity)))
            steps.append(time.perf_counter() - t)
            cpus.append(time.thread_time() - c)
            start += step
    await asyncio.sleep(0)
    t, c = time.perf_counter(), time.thread_time()
    _finish(store, capture)
    steps.append(time.perf_counter() - t)
    cpus.append(time.thread_time() - c)
    capture.stall_s, capture.loop_s = max(steps), sum(steps)
    capture.stall_cpu_s, capture.loop_cpu_s = max(cpus), sum(cpus)
    return capture


def _latest_only(capture: Capture) -> None:
    """Of an id copied twice, keep the later copy (the newer incarnation): filter the chunks in place."""
    seen: set[SessionKey] = set()
    for part in reversed(capture.parts):
        for c in reversed(part.chunks):
            keep = np.ones(len(c.keys), bool)
            for j in range(len(c.keys) - 1, -1, -1):
                if c.keys[j] in seen:
                    keep[j] = False
                seen.add(c.keys[j])
            if not keep.all():
                c.states = [s[:, keep] for s in c.states]
                for name in _COLUMNS:
                    setattr(c, name, getattr(c, name)[keep])
                c.keys = [k for k, good in zip(c.keys, keep.tolist(), strict=True) if good]
                c.answers = [a for a, good in zip(c.answers, keep.tolist(), strict=True) if good]


def _state_pieces(part: _PartCopy, k: int) -> Pieces:
    """State tensor k of a partition's chunks, [L, n, H]: per layer, each chunk's [n_c, H] rows."""
    chunks = part.chunks
    n = sum(len(c.keys) for c in chunks)
    parts = [np.ascontiguousarray(c.states[k][layer]) for layer in range(part.layers) for c in chunks]
    return Pieces(np.dtype(np.float32), (part.layers, n, part.hidden), parts)


def _merge(part: _PartCopy) -> _Chunk:
    """A partition's chunks as one, but for the state tensors (see `_state_pieces`)."""
    c = part.chunks

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(x, name) for x in c])

    return _Chunk(
        states=[],
        seq=cat("seq"),
        created=cat("created"),
        last_used=cat("last_used"),
        owner=cat("owner"),
        answer_seq=cat("answer_seq"),
        answer_fp=cat("answer_fp"),
        keys=[k for x in c for k in x.keys],
        answers=[a for x in c for a in x.answers],
    )


def to_arrays(capture: Capture) -> tuple[dict[str, Any], dict[str, np.ndarray | Pieces]]:
    """(header, arrays) in snapshot_file.py's layout; CPU work for a thread, off the event loop."""
    _latest_only(capture)
    header: dict[str, Any] = {"saved_at": capture.saved_at, "owners": capture.owners, "partitions": []}
    arrays: dict[str, np.ndarray | Pieces] = {}
    for i, part in enumerate(capture.parts):
        c = _merge(part)
        for k in range(part.state_count):
            arrays[f"p{i}.state{k}"] = _state_pieces(part, k)
        arrays[f"p{i}.ids"] = np.array([key_to_id(k) for k in c.keys], dtype=np.str_)
        arrays[f"p{i}.seq"] = c.seq
        arrays[f"p{i}.created"] = c.created
        arrays[f"p{i}.expires"] = capture.wall_offset + c.last_used + capture.ttl
        arrays[f"p{i}.owner"] = c.owner
        arrays[f"p{i}.answer_seq"] = c.answer_seq
        arrays[f"p{i}.answer_fp"] = c.answer_fp
        arrays[f"p{i}.answer_len"] = np.array([-1 if a is None else len(a) for a in c.answers], np.int64)
        arrays[f"p{i}.answers"] = np.frombuffer(b"".join(a for a in c.answers if a), np.uint8)
        header["partitions"].append(
            {
                "model": part.key,
                "sha256": part.sha256,
                "count": len(c.keys),
                "layers": part.layers,
                "hidden": part.hidden,
                "states": part.state_count,
            }
        )
    now = capture.saved_at - capture.wall_offset  # monotonic, as the tombstones' times are
    header["gone_reasons"], gone = tombstone_arrays.encode(*capture.tombstones, now, capture.wall_offset)
    arrays.update(gone)
    return header, arrays
