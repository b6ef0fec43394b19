"""The embedded session store: slabs per model version (slab.py), one id -> row dict (session_ids.py).

Per idle session it holds one slab row, ~48 bytes of numpy metadata, a list slot and one dict entry
(the key is 16 raw bytes for our own ids); no Python object per session beyond that key and its row
number. Ended ids are remembered as bounded tombstones (tombstones.py) for `gone_retention_s` (at most
`max_sessions` per served version), so that they answer 410 with the reason instead of 404.

Everything runs on the event loop and awaits nothing: the async methods of the `SessionStore` protocol
are plain functions here, and a batch's gather / commit are one vectorized numpy pass each. The process
is the only writer, so a commit's check-and-set never fails in practice (requests for one session take
turns in the manager); it is checked all the same, cheaply, so that both backends keep the same rule.
Sessions and tombstones survive a restart through the snapshot file (snapshot_file.py), written at
shutdown and, to bound what a crash loses, periodically (`save_async`, which never stalls the loop for
more than a copy of a few MB).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from service.errors import (
    BadRequest,
    ServiceError,
    SessionGone,
    SessionNotFound,
    session_gone,
)
from service.metrics import Metrics
from service.registry import LoadedModel
from service.settings import Settings
from service.store.base import (
    Committed,
    Gathered,
    Saved,
    SessionKey,
    SessionRecord,
    StoredAnswer,
    at_capacity,
    check_session_id,
    moved_on,
    session_key,
)
from service.store.session_ids import SessionIds
from service.store.session_metrics import count_ended, set_live
from service.store.slab import Partition
from service.store.snapshot_file import load_sessions, save_sessions, save_sessions_async


class MemoryStore:
    persistent = False  # the manager writes the snapshot file at stop and reads it at start

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        initial_rows: int = 1024,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.wall_offset = time.time() - clock()  # wall time = wall_offset + monotonic time
        self.ttl = settings.session_ttl_s
        self._initial_rows = initial_rows
        self._parts: list[Partition] = []
        self._part_by_key: dict[str, int] = {}
        self.ids = SessionIds()  # live id -> (partition, row); owners; tombstones

    # ---- partitions --------------------------------------------------------------------------------

    def attach(self, model: LoadedModel) -> int:
        existing = self._part_by_key.get(model.key)
        if existing is not None:
            return existing
        layers, hidden = model.manifest.state_shape
        return self.attach_spec(model.key, model.state_count, layers, hidden, model.manifest.onnx.sha256)

    def attach_spec(self, key: str, state_count: int, layers: int, hidden: int, sha256: str = "") -> int:
        """`attach` by shape alone (tests and measurements use it without a graph)."""
        existing = self._part_by_key.get(key)
        if existing is not None:
            return existing
        part = Partition(
            key,
            state_count,
            layers,
            hidden,
            self.settings.max_sessions,
            sha256=sha256,
            initial_rows=self._initial_rows,
        )
        self._parts.append(part)
        self._part_by_key[key] = len(self._parts) - 1
        self._update_gauges(part)
        return len(self._parts) - 1

    def partition_of(self, model_key: str) -> int | None:
        return self._part_by_key.get(model_key)

    def partition(self, index: int) -> Partition:
        return self._parts[index]

    @property
    def partitions(self) -> list[Partition]:
        return self._parts

    @property
    def owners(self) -> list[str | None]:
        """The owner table: a row's `owner` column indexes it."""
        return self.ids.owners

    async def live_sessions(self, model_key: str) -> int:
        return self.live_now(model_key)

    def live_now(self, model_key: str) -> int:
        index = self._part_by_key.get(model_key)
        return 0 if index is None else self._parts[index].live

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self.ids)

    # ---- helpers -----------------------------------------------------------------------------------

    def _record(self, part: int, row: int) -> SessionRecord:
        return self._parts[part].record(part, row, self.wall_offset, self.ttl)

    def _update_gauges(self, p: Partition) -> None:
        set_live(self.metrics, p.key, p.live, p.state_nbytes)

    def _end(self, part: int, rows: np.ndarray, reason: str, now: float) -> None:
        """End sessions: tombstone their ids, free their rows, count them."""
        p = self._parts[part]
        if len(rows) == 0:
            return
        retention = self.settings.gone_retention_s
        keys = [p.ids[row] for row in rows.tolist()]
        self.ids.end(keys, p.owner[rows].tolist(), reason, now + retention if retention > 0 else None)
        p.release(rows)
        self._trim_tombstones(now)
        count_ended(self.metrics, p.key, reason, len(rows))
        self._update_gauges(p)

    def _trim_tombstones(self, now: float) -> None:
        self.ids.gone.trim(now, self.settings.max_sessions * max(1, len(self._parts)))

    def _locate(self, session_id: str, owner: str | None, now: float) -> tuple[int, int]:
        part, row, owner_index = self.ids.locate(session_id, owner, now)
        p = self._parts[part]
        if p.owner[row] != owner_index:
            raise SessionNotFound(f"no session {session_id}", session_id=session_id)
        if p.last_used[row] + self.ttl <= now:
            self._end(part, np.array([row]), "expired", now)
            raise session_gone(session_id, "expired")
        return part, row

    # ---- lifecycle ---------------------------------------------------------------------------------

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
        return self.create_now(
            model_key, owner, session_id=session_id, seq=seq, state=state, answer=answer, replace=replace
        )

    def create_now(
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
        """`create`, synchronously (this backend never waits): nothing else runs between ending the
        session it replaces and making the new one."""
        part = self._part_by_key[model_key]
        p = self._parts[part]
        now = self.clock()
        old: tuple[int, int] | None = None
        if session_id is not None:
            check_session_id(session_id)
            key = session_key(session_id)
            old = self._replaced(session_id, owner, now, replace)
        else:
            key = self.ids.new_key()
        if old is not None and old[0] == part:  # its row is room for the new one: ending it first
            self._end(part, np.array([old[1]]), "deleted", now)  # cannot leave the create refused
            old = None
        row = self._allocate(model_key, now)
        if old is not None:  # on another version: ended only now that the new one has its row
            self._end(old[0], np.array([old[1]]), "deleted", now)
        self.ids.gone.discard(key)
        p.init_row(
            row,
            key,
            self.ids.owner(owner),
            seq,
            self.wall_offset + now,
            now,
            None if state is None else list(state),
            answer,
        )
        self.ids.add(key, part, row)
        self._update_gauges(p)
        return self._record(part, row)

    def _replaced(
        self, session_id: str, owner: str | None, now: float, replace: bool
    ) -> tuple[int, int] | None:
        """(part, row) of the live session that a create under `session_id` replaces; None when the id
        is free; BadRequest when it is in use (by another owner, or without `replace`)."""
        if session_key(session_id) not in self.ids:
            return None
        if replace:
            try:
                return self._locate(session_id, owner, now)
            except SessionGone:  # it had expired: ended just now, the id is free
                return None
            except SessionNotFound:  # another owner's
                pass
        raise BadRequest(f"session id {session_id} is in use", session_id=session_id)

    def _allocate(self, model_key: str, now: float) -> int:
        """A free row of the version's partition: expired sessions end to make room, then (policy
        evict) the least recently used one; CapacityExceeded when none is left (policy reject)."""
        part = self._part_by_key[model_key]
        p = self._parts[part]
        row = p.allocate()
        if row is None:
            self._end(part, p.idle_rows(now - self.ttl), "expired", now)
            row = p.allocate()
        if row is None and self.settings.capacity_policy == "evict":
            victim = p.lru_row()
            if victim is not None:
                self._end(part, np.array([victim]), "evicted", now)
                row = p.allocate()
        if row is None:
            oldest = float(p.last_used[p.live_rows()].min()) if p.live else now
            raise at_capacity(model_key, p.max_rows, oldest + self.ttl - now)
        return row

    async def lookup(self, session_id: str, owner: str | None, *, touch: bool = True) -> SessionRecord:
        now = self.clock()
        part, row = self._locate(session_id, owner, now)
        if touch:
            self._parts[part].last_used[row] = now
        return self._record(part, row)

    async def lookup_many(
        self, session_ids: Sequence[str], owner: str | None, *, touch: bool = True
    ) -> list[SessionRecord | ServiceError]:
        now = self.clock()
        found: list[SessionRecord | ServiceError] = []
        for session_id in session_ids:
            try:
                part, row = self._locate(session_id, owner, now)
            except ServiceError as exc:
                found.append(exc)
                continue
            if touch:
                self._parts[part].last_used[row] = now
            found.append(self._record(part, row))
        return found

    async def delete(self, session_id: str, owner: str | None) -> SessionRecord:
        now = self.clock()
        part, row = self._locate(session_id, owner, now)
        record = self._record(part, row)
        self._end(part, np.array([row]), "deleted", now)
        return record

    def _current(self, record: SessionRecord) -> Partition:
        p = self._parts[record.part]
        if p.gen[record.row] != record.gen or p.owner[record.row] < 0:
            reason = self.ids.gone.reason(session_key(record.session_id)) or "deleted"
            raise session_gone(record.session_id, reason)
        return p

    async def reset(self, record: SessionRecord) -> SessionRecord:
        p = self._current(record)
        p.write_row(record.row, None, 0, self.clock())
        p.answers.pop(record.row, None)
        return self._record(record.part, record.row)

    async def read_state(self, record: SessionRecord) -> tuple[int, list[np.ndarray]]:
        p = self._current(record)
        return int(p.seq[record.row]), [s[:, record.row].copy() for s in p.states]

    async def write_state(
        self, record: SessionRecord, state: Sequence[np.ndarray], seq: int
    ) -> SessionRecord:
        p = self._current(record)
        current = int(p.seq[record.row])
        if current != record.seq:
            raise moved_on(record.session_id, current)
        p.write_row(record.row, state, seq, self.clock())
        return self._record(record.part, record.row)

    async def last_answer(self, record: SessionRecord) -> StoredAnswer | None:
        return self._current(record).answer(record.row)

    def rows_of(self, session_ids: Sequence[str], owner: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(partition, row) [B] of each id naming a live, unexpired session of `owner`; -1 (both) for
        any other id (unknown, ended, another owner's, expired: `lookup` says which, and ends an expired
        one). Bulk ingest's lookup, with no record per session; it touches nothing."""
        parts, rows = self.ids.locate_many(session_ids)
        owner_index, now = self.ids.owner_code(owner), self.clock()
        for part in np.unique(parts[parts >= 0]).tolist():
            at = np.flatnonzero(parts == part)
            p, r = self._parts[part], rows[at]
            parts[at[(p.owner[r] != owner_index) | (p.last_used[r] + self.ttl <= now)]] = -1
        rows[parts < 0] = -1
        return parts, rows

    # ---- the batcher's read and write: the slab's (slab.py) -----------------------------------------

    async def gather(self, part: int, records: Sequence[SessionRecord]) -> Gathered:
        return self._parts[part].gather_records(records)

    async def commit(
        self,
        part: int,
        records: Sequence[SessionRecord],
        state: Sequence[np.ndarray],
        events: int,
        answers: Sequence[StoredAnswer | None],
    ) -> Committed:
        return self._parts[part].commit(records, state, events, answers, self.clock())

    # ---- housekeeping ------------------------------------------------------------------------------

    async def sweep(self) -> int:
        now = self.clock()
        expired = 0
        for part, p in enumerate(self._parts):
            rows = p.idle_rows(now - self.ttl)
            self._end(part, rows, "expired", now)
            expired += len(rows)
        self._trim_tombstones(now)
        return expired

    def tombstone_copy(self) -> tuple[list[SessionKey], list[tuple[str, int, float]]]:
        """A copy of the tombstones: their keys, and their (reason, owner index, monotonic time it is
        forgotten) in the same order, taken in two C-level list copies (snapshots take it on the event
        loop); some may be past their time."""
        return self.ids.gone.copy()

    async def end_all(self, model_key: str, reason: str) -> int:
        index = self._part_by_key.get(model_key)
        if index is None:
            return 0
        rows = self._parts[index].live_rows()
        self._end(index, rows, reason, self.clock())
        return len(rows)

    def remember_ended(self, session_id: str, reason: str, owner: str | None, until_wall: float) -> None:
        """Restore a tombstone read from a snapshot file (a live session of that id keeps precedence)."""
        key = session_key(session_id)
        until = until_wall - self.wall_offset
        if key not in self.ids and until > self.clock():
            self.ids.gone.add(key, reason, self.ids.owner(owner), until)

    def save(self, path: Path) -> int:
        """Write every session to `path` atomically (see snapshot_file.py); returns the count."""
        return save_sessions(self, path)

    async def save_async(self, path: Path) -> Saved:
        """`save` without stalling the event loop (periodic snapshots; see snapshot_capture.py)."""
        return await save_sessions_async(self, path)

    def load(self, path: Path, models: Sequence[LoadedModel]) -> int:
        """Restore the sessions of a `save`d file, keeping their remaining TTL; returns the count."""
        return load_sessions(self, path, models)
