"""One model version's sessions in preallocated arrays: the state slab and per-row metadata.

    states[k]   float32 [L, N, H]   state tensor k (h, then c for LSTM) of every row
    seq         int64   [N]         events consumed
    created     float64 [N]         wall clock
    last_used   float64 [N]         monotonic clock
    owner       int32   [N]         index into the store's owner table; -1 marks a free row
    gen         uint32  [N]         bumped when a row is freed: a late write to a reused row is dropped
    answer_seq  int64   [N]         seq of the stored last answer, -1 for none
    answer_fp   uint64  [N]         fingerprint of that request
    ids         list    [N]         the row's session key (shared with the store's id -> row dict)

A batch gathers rows with `np.take` (one C-contiguous copy [L, B, H] per state tensor, what ONNX Runtime
takes as it is) and scatters the new state back with one fancy-index assignment per state tensor.

Growth: the arrays start small and double, capped at max_sessions, rather than being allocated at
max_sessions up front: at the default 100k sessions a 2-layer LSTM with H = 256 would pin 400 MB per
loaded version whether or not anyone uses it. Doubling costs an amortized O(1) copy per session, and it
happens on the event loop between batches, where nothing holds a view of the old arrays (gathers copy).

The memory store's batch read and write are the slab's (`gather_records`, `commit`), and so are one
row's record and write (`record`, `write_row`): a record is still current while its row holds the same
incarnation (`gen`, owner) at the same seq, checked for the whole batch in one vectorized pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.store.base import Committed, Gathered, SessionRecord, Status, StoredAnswer, key_to_id

NO_ANSWER = -1
_READY, _CONFLICT, _GONE = int(Status.READY), int(Status.CONFLICT), int(Status.GONE)  # plain ints: faster


class Partition:
    def __init__(
        self,
        key: str,
        state_count: int,
        layers: int,
        hidden: int,
        max_rows: int,
        sha256: str = "",
        initial_rows: int = 1024,
    ) -> None:
        self.key = key
        self.name = key.partition("/")[0]
        self.sha256 = sha256
        self.state_count, self.layers, self.hidden = state_count, layers, hidden
        self.max_rows = max_rows
        self.capacity = 0
        self.live = 0
        self.states: list[np.ndarray] = [
            np.zeros((layers, 0, hidden), np.float32) for _ in range(state_count)
        ]
        self.seq = np.zeros(0, np.int64)
        self.created = np.zeros(0, np.float64)
        self.last_used = np.zeros(0, np.float64)
        self.owner = np.zeros(0, np.int32)
        self.gen = np.zeros(0, np.uint32)
        self.answer_seq = np.zeros(0, np.int64)
        self.answer_fp = np.zeros(0, np.uint64)
        self.ids: list[bytes | str | None] = []
        self.answers: dict[int, bytes] = {}
        self._free = np.zeros(0, np.int32)  # stack of free rows, top at _n_free - 1
        self._n_free = 0
        self._grow(min(initial_rows, max_rows))

    @property
    def state_floats(self) -> int:
        return self.state_count * self.layers * self.hidden

    @property
    def state_nbytes(self) -> int:
        return sum(s.nbytes for s in self.states)

    def meta_nbytes(self) -> int:
        arrays = (
            self.seq,
            self.created,
            self.last_used,
            self.owner,
            self.gen,
            self.answer_seq,
            self.answer_fp,
            self._free,
        )
        return (
            sum(a.nbytes for a in arrays)
            + 8 * len(self.ids)
            + sum(len(b) + 33 for b in self.answers.values())
        )

    def _grow(self, rows: int) -> None:
        old = self.capacity
        if rows <= old:
            return

        def extend(a: np.ndarray, fill: float | int = 0) -> np.ndarray:
            out = np.full(rows, fill, a.dtype)
            out[:old] = a
            return out

        states = []
        for s in self.states:
            grown = np.zeros((self.layers, rows, self.hidden), np.float32)
            grown[:, :old] = s
            states.append(grown)
        self.states = states
        self.seq, self.created, self.last_used = (
            extend(self.seq),
            extend(self.created),
            extend(self.last_used),
        )
        self.owner, self.gen = extend(self.owner, -1), extend(self.gen)
        self.answer_seq, self.answer_fp = extend(self.answer_seq, NO_ANSWER), extend(self.answer_fp)
        self.ids.extend([None] * (rows - old))
        free = np.zeros(rows, np.int32)
        free[: self._n_free] = self._free[: self._n_free]
        # new rows go on the stack so that the lowest row is handed out first
        free[self._n_free : self._n_free + rows - old] = np.arange(rows - 1, old - 1, -1, dtype=np.int32)
        self._free, self._n_free = free, self._n_free + rows - old
        self.capacity = rows

    def allocate(self) -> int | None:
        """A free row (growing the arrays if needed), or None at max_rows."""
        if self._n_free == 0:
            if self.capacity >= self.max_rows:
                return None
            self._grow(min(max(2 * self.capacity, 1), self.max_rows))
        self._n_free -= 1
        self.live += 1
        return int(self._free[self._n_free])

    def init_row(
        self,
        row: int,
        key: bytes | str,
        owner: int,
        seq: int,
        created: float,
        now: float,
        state: list[np.ndarray] | None,
        answer: StoredAnswer | None = None,
    ) -> None:
        for k, s in enumerate(self.states):
            s[:, row] = 0.0 if state is None else state[k]
        self.ids[row] = key
        self.owner[row], self.seq[row], self.created[row], self.last_used[row] = owner, seq, created, now
        self.answer_seq[row] = NO_ANSWER
        if answer is not None:
            self.answer_seq[row], self.answer_fp[row] = answer.seq, answer.fingerprint
            self.answers[row] = answer.response

    def write_row(self, row: int, state: Sequence[np.ndarray] | None, seq: int, now: float) -> None:
        """Replace a row's state tensors [L, H] (None: zeros) and seq, used at `now` (monotonic); its
        stored answer no longer holds."""
        if state is None:
            for s in self.states:
                s[:, row] = 0.0
        else:
            for s, new in zip(self.states, state, strict=True):
                s[:, row] = new
        self.seq[row], self.last_used[row], self.answer_seq[row] = seq, now, NO_ANSWER

    def record(self, part: int, row: int, wall_offset: float, ttl: float) -> SessionRecord:
        """The session in `row` as a record; `part`: this partition's index in the store, `wall_offset`:
        wall clock minus monotonic, `ttl`: idle seconds before it expires."""
        key = self.ids[row]
        assert key is not None
        last_used = float(self.last_used[row])
        return SessionRecord(
            session_id=key_to_id(key),
            model_key=self.key,
            part=part,
            row=row,
            gen=int(self.gen[row]),
            seq=int(self.seq[row]),
            created_at=float(self.created[row]),
            last_used_at=wall_offset + last_used,
            expires_at=wall_offset + last_used + ttl,
        )

    def release(self, rows: np.ndarray) -> None:
        """Free rows (vectorized): owner -1, generation bumped, back on the free stack."""
        if len(rows) == 0:
            return
        self.owner[rows] = -1
        self.gen[rows] += np.uint32(1)
        self.answer_seq[rows] = NO_ANSWER
        for row in rows.tolist():
            self.ids[row] = None
            self.answers.pop(row, None)
        self._free[self._n_free : self._n_free + len(rows)] = rows
        self._n_free += len(rows)
        self.live -= len(rows)

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.owner >= 0)

    def idle_rows(self, cutoff: float) -> np.ndarray:
        """Live rows last used at or before `cutoff` (monotonic)."""
        return np.flatnonzero((self.owner >= 0) & (self.last_used <= cutoff))

    def lru_row(self) -> int | None:
        if self.live == 0:
            return None
        last_used = np.where(self.owner >= 0, self.last_used, np.inf)
        return int(np.argmin(last_used))

    def gather(self, rows: np.ndarray) -> list[np.ndarray]:
        return [np.take(s, rows, axis=1) for s in self.states]  # [L, B, H] each

    def scatter(self, rows: np.ndarray, state: list[np.ndarray]) -> None:
        for s, new in zip(self.states, state, strict=True):
            s[:, rows] = new

    def answer(self, row: int) -> StoredAnswer | None:
        """The row's stored answer, if any."""
        seq = int(self.answer_seq[row])
        response = self.answers.get(row)
        if seq == NO_ANSWER or response is None:
            return None
        return StoredAnswer(seq=seq, fingerprint=int(self.answer_fp[row]), response=response)

    def check(self, records: Sequence[SessionRecord]) -> tuple[np.ndarray, np.ndarray, bool]:
        """(rows, status per record, all ready): a record is READY while its row still holds the same
        incarnation at the same seq."""
        n = len(records)
        if n == 1:  # a batch of one (low load): numpy scalars are cheaper than tiny vectors
            r = records[0]
            live = bool(self.gen[r.row] == r.gen and self.owner[r.row] >= 0)
            code = _READY if live and self.seq[r.row] == r.seq else _CONFLICT if live else _GONE
            return np.array([r.row], np.intp), np.array([code], np.int8), code == _READY
        rows = np.fromiter((r.row for r in records), np.intp, n)
        gens = np.fromiter((r.gen for r in records), np.uint32, n)
        seqs = np.fromiter((r.seq for r in records), np.int64, n)
        status, all_ready = self.check_rows(rows, gens, seqs)
        return rows, status, all_ready

    def check_rows(self, rows: np.ndarray, gens: np.ndarray, seqs: np.ndarray) -> tuple[np.ndarray, bool]:
        """`check` of rows [B] seen at incarnations `gens` and seqs `seqs` [B]: (status, all ready)."""
        live = (self.gen[rows] == gens) & (self.owner[rows] >= 0)
        same = live & (self.seq[rows] == seqs)
        if same.all():
            return np.zeros(len(rows), np.int8), True
        status = np.where(live, np.int8(_CONFLICT), np.int8(_GONE)).astype(np.int8)
        status[same] = _READY
        return status, False

    def _seqs(self, rows: np.ndarray, status: np.ndarray, all_ready: bool) -> np.ndarray:
        return self.seq[rows] if all_ready else np.where(status != _GONE, self.seq[rows], -1)

    def gather_records(self, records: Sequence[SessionRecord]) -> Gathered:
        """The store's `gather`: the rows of `records`, and whether each is as its record saw it."""
        rows, status, all_ready = self.check(records)
        return Gathered(self.gather(rows), status, self._seqs(rows, status, all_ready), all_ready)

    def commit(
        self,
        records: Sequence[SessionRecord],
        state: Sequence[np.ndarray],
        events: int,
        answers: Sequence[StoredAnswer | None],
        now: float,
    ) -> Committed:
        """The store's `commit` (check-and-set per row; `now`: the monotonic time they are used at)."""
        rows, status, all_ready = self.check(records)
        return self._apply(rows, status, all_ready, state, events, answers, now)

    def commit_rows(
        self,
        rows: np.ndarray,
        gens: np.ndarray,
        seqs: np.ndarray,
        state: Sequence[np.ndarray],
        events: int,
        answers: Sequence[StoredAnswer | None],
        now: float,
    ) -> Committed:
        """`commit` of rows [B] seen at incarnations `gens` and seqs `seqs` (no records: bulk ingest)."""
        status, all_ready = self.check_rows(rows, gens, seqs)
        return self._apply(rows, status, all_ready, state, events, answers, now)

    def _apply(
        self,
        rows: np.ndarray,
        status: np.ndarray,
        all_ready: bool,
        state: Sequence[np.ndarray],
        events: int,
        answers: Sequence[StoredAnswer | None],
        now: float,
    ) -> Committed:
        row_list = rows.tolist()
        if all_ready:
            live, new_state = rows, list(state)
            stored = [(row, a) for row, a in zip(row_list, answers, strict=True) if a is not None]
        else:
            ok = status == _READY
            live, new_state = rows[ok], [s[:, ok] for s in state]
            stored = [
                (row, a)
                for row, a, good in zip(row_list, answers, ok.tolist(), strict=True)
                if a is not None and good
            ]
        self.scatter(live, new_state)
        self.seq[live] += events
        self.last_used[live] = now
        self.answer_seq[live] = NO_ANSWER
        if stored:
            at = np.fromiter((row for row, _ in stored), np.intp, len(stored))
            self.answer_seq[at] = np.fromiter((a.seq for _, a in stored), np.int64, len(stored))
            self.answer_fp[at] = np.fromiter((a.fingerprint for _, a in stored), np.uint64, len(stored))
            self.answers.update((row, a.response) for row, a in stored)
        committed = Committed(status, self._seqs(rows, status, all_ready), all_ready)
        if not all_ready:
            for i in np.flatnonzero(status == _CONFLICT).tolist():
                answer = self.answer(row_list[i])
                if answer is not None:
                    committed.answers[i] = answer
        return committed
