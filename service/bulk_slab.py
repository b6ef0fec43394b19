"""Bulk ingest's batch lane on the memory store, as arrays: no record, job or result object per step.

    steps (the lane: distinct sessions, their turns held)
      -> store.rows_of: (partition, row) per session id, one dict look-up each      (unknown, expired,
                                                                                      another owner's: rest)
      -> per partition, predictor.decode_many: x [B, T(, F)] per event count T       (not plain: rest)
      -> the slab's seq [B]: a step whose `seq` does not match is left to the rest   (replay or 409)
      -> gather [L, B, H] (np.take), ONE ONNX Runtime call on the batcher's thread (Batcher.run_prepared)
      -> predictor.encode_many_json: the answers' JSON from the batch's arrays
      -> commit_rows: check-and-set per row, state / seq / stored answers in one vectorized write

What this lane leaves (the rest) goes the general way (`BulkSteps._batch_lane`: a record per step,
`decode`, `check_seq`, `Batcher.run_now`), which words every error and every replay as the per-session
route does; a step of the lane itself never fails here but for a failed inference. A row that changed
while its batch ran (expired, evicted: the turn keeps every request of its session out) is run again
by `step_locked`, as the general lane does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from service.errors import InferenceFailed, ServiceError
from service.predictors.base import DecodedMany, Predictor
from service.runner import ModelRunner
from service.stepping import answers_json
from service.store import MemoryStore, StoredAnswer

if TYPE_CHECKING:
    from service.bulk import Answered, Failed, Progress, Step
    from service.sessions import SessionManager
    from service.stepping import Served


class SlabLane:
    def __init__(self, manager: SessionManager, store: MemoryStore) -> None:
        self.manager = manager
        self.store = store

    async def run(
        self,
        owner: str | None,
        lane: list[Step],
        ok: Answered,
        failed: Failed,
        progress: Progress | None = None,
    ) -> list[Step]:
        """Run the lane's steps that need no record; returns the others, for the general lane."""
        parts, rows = self.store.rows_of([session_id for _, session_id, _ in lane], owner)
        rest: list[Step] = []
        if len(lane) and parts.min() == parts.max() >= 0:  # the common case: one model version
            by_part = {int(parts[0]): np.arange(len(lane))}
        else:
            by_part = {part: np.flatnonzero(parts == part) for part in np.unique(parts[parts >= 0]).tolist()}
            rest.extend(lane[j] for j in np.flatnonzero(parts < 0).tolist())
        batches = []
        for part, members in by_part.items():
            p, at = self.store.partition(part), rows[members]
            served = self.manager.served_now(p.key)
            steps = [lane[j] for j in members.tolist()]
            if served is None:  # a version this process has not served yet: the general lane knows why
                rest.extend(steps)
                continue
            # each row's incarnation and seq as of now, before any await: the write checks them
            gens, seqs = p.gen[at], p.seq[at]
            groups, left = served.predictor.decode_many([payload for _, _, payload in steps])
            rest.extend(steps[n] for n in left)
            for group in groups:
                index = np.asarray(group.index, np.intp)
                batch = _Batch(served, part, [steps[n] for n in group.index], group)
                batch.rows, batch.gens, batch.seqs = at[index], gens[index], seqs[index]
                rest.extend(batch.drop_misfits())
                if batch.steps:
                    batches.append(batch)
        for batch in batches:
            await self._run(owner, batch, ok, failed, progress)
        return rest

    async def _run(
        self, owner: str | None, batch: _Batch, ok: Answered, failed: Failed, progress: Progress | None
    ) -> None:
        served, group, steps = batch.served, batch.group, batch.steps
        p, events = self.store.partition(batch.part), group.events
        if progress is not None:
            progress.starting(served, [i for i, _, _ in steps])
        state = p.gather(batch.rows)  # [L, B, H] per tensor
        try:
            output = await served.batcher.run_prepared(
                ModelRunner.prepared(group.x, group.params, state), len(steps), events
            )
        except InferenceFailed as exc:
            output = exc
        if progress is not None:
            await progress.returned()
        if isinstance(output, InferenceFailed):
            for i, session_id, _ in steps:
                failed(i, session_id, output)
            return
        outs, new_state = output
        before = batch.seqs.tolist()
        answers, bodies = _answers(served.predictor, group, outs, before)
        committed = p.commit_rows(
            batch.rows, batch.gens, batch.seqs, new_state, events, answers, self.store.clock()
        )
        again = [] if committed.all_applied else np.flatnonzero(committed.status).tolist()
        served.events.inc(events * (len(steps) - len(again)))
        skip = set(again)
        for j, ((i, session_id, _), answer) in enumerate(zip(steps, bodies, strict=True)):
            if j not in skip:
                ok(i, session_id, answer)
        for j in again:  # its row changed while the batch ran (ended, evicted): the usual path says how
            i, session_id, payload = steps[j]
            try:
                ok(i, session_id, await self.manager.step_locked(session_id, owner, payload))
            except ServiceError as exc:
                failed(i, session_id, exc)


def _answers(
    predictor: Predictor, group: DecodedMany, outs: list[np.ndarray], before: list[int]
) -> tuple[list[StoredAnswer | None], list[bytes]]:
    """Each step's answer to store (steps with `seq`, for replays) and its events answer (JSON)."""
    events, seqs = group.events, zip(group.seqs, group.fingerprints, strict=True)
    encoded = predictor.encode_many_json(group, outs, before)
    written = answers_json([b + events for b in before], encoded)
    if group.seqs.count(None) == len(written):  # no step gave a seq: nothing to keep for replays
        return [None] * len(written), written
    stored = [
        None if seq is None else StoredAnswer(seq, fp, body)
        for (seq, fp), body in zip(seqs, written, strict=True)
    ]
    return stored, written


class _Batch:
    """One call's steps: one partition, one event count."""

    def __init__(self, served: Served, part: int, steps: list[Step], group: DecodedMany) -> None:
        self.served, self.part, self.steps, self.group = served, part, steps, group
        self.rows = self.gens = self.seqs = np.empty(0, np.int64)

    def drop_misfits(self) -> list[Step]:
        """Keep the steps whose `seq` (if any) is their session's; returns the others (replays and
        conflicts, for the general lane)."""
        now = self.seqs.tolist()
        fits = [seq is None or seq == at for seq, at in zip(self.group.seqs, now, strict=True)]
        if all(fits):
            return []
        keep = [j for j, fit in enumerate(fits) if fit]
        misfits = [step for step, fit in zip(self.steps, fits, strict=True) if not fit]
        self.steps, self.group = [self.steps[j] for j in keep], self.group.take(keep)
        self.rows, self.gens, self.seqs = self.rows[keep], self.gens[keep], self.seqs[keep]
        return misfits
