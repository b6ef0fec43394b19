"""The session store's interface, backend-neutral, and the records it hands out.

A store keeps, per session: the recurrent state, the count of events consumed (`seq`), created /
last-used times, the owner (API key) and the answer to the last applied step request that carried a
`seq` (its seq, payload fingerprint and stored response, for exactly-once replays).

Steps go through the store as read -> run -> check-and-set, so that a networked backend shared by
several replicas can keep the exactly-once rule (design.md, "Exactly-once steps") without locks:

    lookup(id, owner)                    the session's record: seq, incarnation (`gen`), model
    gather(part, records)                one batch's states [L, B, H] in one read, and per session
                                         READY, or CONFLICT / GONE if it changed since its lookup
    (the runner runs ONNX Runtime and builds each job's answer)
    commit(part, records, state, ...)    one write for the whole batch: per session, the new state,
                                         seq and answer are applied only if the session is still the
                                         incarnation and seq its record saw (APPLIED), else nothing
                                         (CONFLICT with the current seq and stored answer, or GONE)

The memory backend (memory.py) keeps every state in a local slab and does gather/commit as vectorized
numpy on the event loop without awaiting anything; the Redis backend (redis_store.py) does each in one
round trip (one Lua script call).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.errors import BadRequest, CapacityExceeded, SequenceConflict, ServiceError

if TYPE_CHECKING:
    from service.registry import LoadedModel

# Client-chosen ids (the KServe sequence extension's sequence_id) must look like this.
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,256}$")

SessionKey = bytes | str


def session_key(session_id: str) -> SessionKey:
    """The dict key of an id: 16 raw bytes for our own 128-bit hex ids (49 bytes of Python object
    instead of 81), the string itself for a client-chosen id."""
    if len(session_id) == 32 and session_id == session_id.lower():
        try:
            raw = bytes.fromhex(session_id)
        except ValueError:
            return session_id
        if len(raw) == 16:  # fromhex skips spaces: only an exact 32-digit id is one of ours
            return raw
    return session_id


def session_keys(session_ids: Sequence[str]) -> list[SessionKey]:
    """`session_key` of each id; in one pass over their text when all are our own ids (bulk ingest's
    1,000 ids: a third of the time)."""
    if set(map(len, session_ids)) == {32}:
        joined = "".join(session_ids)
        try:
            raw = bytes.fromhex(joined) if joined == joined.lower() else b""
        except ValueError:
            raw = b""
        if len(raw) == 16 * len(session_ids):  # (fromhex skips spaces: then it is shorter)
            return [raw[n : n + 16] for n in range(0, len(raw), 16)]
    return [session_key(s) for s in session_ids]


def key_to_id(key: SessionKey) -> str:
    return key.hex() if isinstance(key, bytes) else key


def check_session_id(session_id: str) -> None:
    if not SESSION_ID_PATTERN.match(session_id):
        raise BadRequest(
            "a session id is 1 to 256 characters of letters, digits and _ . : -", session_id=session_id[:200]
        )


def at_capacity(model_key: str, max_sessions: int, free_in_s: float) -> CapacityExceeded:
    """A create refused at `max_sessions` (capacity_policy=reject); Retry-After: when the least recently
    used session will expire (`free_in_s`), between 1 s and an hour."""
    return CapacityExceeded(
        f"model {model_key} is at its limit of {max_sessions} sessions",
        retry_after_s=max(1, min(3600, math.ceil(free_in_s))),
        model=model_key,
        max_sessions=max_sessions,
    )


def moved_on(session_id: str, current: int) -> SequenceConflict:
    """A write refused because the session is no longer at the seq its record saw: it is at `current`."""
    return SequenceConflict(f"session {session_id} moved on to seq {current}", expected_seq=current)


@dataclass(slots=True)
class SessionRecord:
    """A session as one lookup saw it (a copy: treat it as read-only). `gen` is the incarnation: it
    changes whenever the id is ended and reused (memory: whenever its slab row is freed), so that a late
    write meant for an earlier incarnation is dropped. `part`/`row` address a local slab row (memory
    backend; -1 elsewhere); `part` is -1 too for a session of a model version this process does not
    serve."""

    session_id: str
    model_key: str  # "name/version"
    part: int
    row: int
    gen: int
    seq: int
    created_at: float  # wall clock, seconds since the epoch
    last_used_at: float  # wall clock
    expires_at: float  # wall clock


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The last applied step request that carried `seq`: its seq, payload fingerprint and response."""

    seq: int
    fingerprint: int
    response: bytes


@dataclass(frozen=True, slots=True)
class Saved:
    """What one periodic snapshot wrote and what it cost."""

    count: int  # sessions written
    stall_s: float = 0.0  # the longest single step the copy held the event loop
    loop_s: float = 0.0  # all of the copy's steps on the event loop together
    loop_cpu_s: float = 0.0  # their CPU time
    stall_cpu_s: float = 0.0  # the CPU time of the longest step: the stall where a core is free
    write_s: float = 0.0  # converting, checksumming and writing the file, in a thread
    write_cpu_s: float = 0.0  # CPU time of that thread (the rest of write_s is waiting for the disk)


class Status(enum.IntEnum):
    """What a batch read or write found for one session."""

    READY = 0  # gather: as its record saw it
    APPLIED = 0  # commit: written (an alias of READY)
    CONFLICT = 1  # its seq moved on since the lookup (another request, maybe on another replica)
    GONE = 2  # ended (or ended and recreated) since the lookup


@dataclass(slots=True)
class Gathered:
    """One batch's read: state tensors [L, B, H] (C-contiguous; rows of sessions not READY are
    unspecified), and per session its status and the seq the store holds (-1 when gone)."""

    state: list[np.ndarray]
    status: np.ndarray  # int8 [B], Status values
    seqs: np.ndarray  # int64 [B]
    all_ready: bool  # status is all READY (the common case, which skips every per-session check)


@dataclass(slots=True)
class Committed:
    """One batch's write: per session its status (APPLIED / CONFLICT / GONE) and seq (the new seq when
    applied, the seq the store holds on a conflict, -1 when gone); for conflicts, the stored answer."""

    status: np.ndarray  # int8 [B]
    seqs: np.ndarray  # int64 [B]
    all_applied: bool
    answers: dict[int, StoredAnswer] = field(default_factory=dict)  # batch index -> stored answer


class SessionStore(Protocol):
    """What the session manager needs from a backend. Ids are checked against the owner: a session
    of another owner is reported as not found (404), an ended one as gone (410) with the reason. A
    backend that cannot reach its storage raises StoreUnavailable (503) and keeps no broken state: the
    next call tries again."""

    persistent: bool
    """True when the backend keeps sessions across restarts by itself (Redis): the manager then writes
    no snapshot file at stop and reads none at start."""

    def attach(self, model: LoadedModel) -> int:
        """Serve a model version; returns its partition index (stable for the store's lifetime)."""
        ...

    def partition_of(self, model_key: str) -> int | None: ...

    async def open(self) -> None:
        """Connect (a backend that is down at start logs it and connects on first use)."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """StoreUnavailable (503) unless the backend answers now (readiness; memory: always)."""
        ...

    async def create(
        self,
        model_key: str,
        owner: str | None,
        *,
        session_id: str | None = None,
        seq: int = 0,
        state: Sequence[np.ndarray] | None = None,
        answer: StoredAnswer | None = None,
        replace: bool = False,
    ) -> SessionRecord:
        """A new session (zero state unless `state`, per state tensor [L, H]; `answer`: its stored
        answer); CapacityExceeded (429) at max_sessions with policy reject, LRU eviction with policy
        evict; BadRequest for an id in use. `replace`: a live session of the same owner under
        `session_id` ends (reason deleted) in the same atomic step, once the new one is sure to fit
        (its room counts when on the same version): a create that is refused leaves it as it was."""
        ...

    async def lookup(self, session_id: str, owner: str | None, *, touch: bool = True) -> SessionRecord:
        """The live session (touch: mark it used, restarting its TTL); SessionNotFound / SessionGone."""
        ...

    async def lookup_many(
        self, session_ids: Sequence[str], owner: str | None, *, touch: bool = True
    ) -> list[SessionRecord | ServiceError]:
        """`lookup` of each id, together: one record or the error `lookup` raises, per id."""
        ...

    async def delete(self, session_id: str, owner: str | None) -> SessionRecord: ...

    async def reset(self, record: SessionRecord) -> SessionRecord:
        """Zero state, seq 0, no stored answer; SessionGone if it ended since `record`."""
        ...

    async def read_state(self, record: SessionRecord) -> tuple[int, list[np.ndarray]]:
        """(seq, copies of the state tensors [L, H]) read together; SessionGone if it ended."""
        ...

    async def write_state(
        self, record: SessionRecord, state: Sequence[np.ndarray], seq: int
    ) -> SessionRecord:
        """Replace state and seq (generate with commit) if the session is still at `record.seq`:
        SequenceConflict if it moved on, SessionGone if it ended."""
        ...

    async def last_answer(self, record: SessionRecord) -> StoredAnswer | None: ...

    # ---- the batcher's read and write: one of each per batch ----------------------------------------

    async def gather(self, part: int, records: Sequence[SessionRecord]) -> Gathered:
        """The states of `records` (one partition), and whether each is still as its record saw it."""
        ...

    async def commit(
        self,
        part: int,
        records: Sequence[SessionRecord],
        state: Sequence[np.ndarray],
        events: int,
        answers: Sequence[StoredAnswer | None],
    ) -> Committed:
        """Check-and-set, per session: if it is still the incarnation and seq of its record, write the
        new state [L, B, H], seq + `events`, mark it used, and store its answer (None: drop the stored
        one). Sessions that fail the check are left untouched. Atomic per session, one write in all."""
        ...

    # ---- housekeeping ------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Expire idle sessions and forget old tombstones; returns how many sessions expired."""
        ...

    async def live_sessions(self, model_key: str) -> int: ...

    async def end_all(self, model_key: str, reason: str) -> int:
        """End every session of a model version this process stops serving (their ids answer 410
        with `reason`); returns how many ended. A store shared by replicas may leave them to the
        replicas that still serve the version (see its docstring)."""
        ...

    def save(self, path: Path) -> int:
        """Write every session to `path` atomically; returns the count (memory backend only)."""
        ...

    async def save_async(self, path: Path) -> Saved:
        """`save` without stalling the event loop: the copy is taken in short steps between batches and
        the file written in a thread (periodic snapshots; memory backend only)."""
        ...

    def load(self, path: Path, models: Sequence[LoadedModel]) -> int:
        """Read a file written by `save`; sessions of versions not served are refused (logged)."""
        ...
