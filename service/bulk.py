"""Bulk ingest: many sessions' steps in one request (`POST /v1/steps`, `WS /v1/stream`). No HTTP here.

    {"steps": [{"session_id", "seq"?, ...that session's events body...}, ...]}
        -> {"results": [...]}: one per step, in order: the events answer with its `session_id`
           ({"session_id", "seq", "outputs"}) or {"session_id", "error": {"code", "message", "details"}}

Each step keeps the rules of `POST /v1/sessions/{id}/events` (exactly-once by `seq`, one request at a
time per session, in arrival order) and fails alone. Two lanes:

- the batch lane: the first step of each session that no other request is running. Its turn is taken
  at once, its session looked up and its body decoded; the lane's steps of one model version and event
  count then run as ONE batched ONNX Runtime call (`Batcher.run_now`, beside the queue, whatever their
  number), one store read and one write.
- the queue lane: a session's second step in the request, or a session another request is running:
  the per-session route's own path, queued on the session's turn in request order (after this
  request's earlier step of it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from service import stepping
from service.bulk_slab import SlabLane
from service.error_handlers import error_json
from service.errors import BadRequest, InvalidInput, PayloadTooLarge, ServiceError
from service.predictors.base import Decoded
from service.schemas import is_text
from service.store import MemoryStore, SessionRecord
from service.turns import Turns

if TYPE_CHECKING:
    from service.sessions import SessionManager
    from service.stepping import Served

# a step answered: (position, session id, its events answer's JSON)
Answered = Callable[[int, str, bytes], None]
# a step failed: (position, session id, error)
Failed = Callable[[int, str, ServiceError], None]


class Progress(Protocol):
    """What a caller of `run_lane` follows of its calls (the step lane: queue delays, and when the next
    batch may start its own call)."""

    def starting(self, served: Served, positions: Sequence[int]) -> None:
        """The steps at these positions go into an ONNX Runtime call of this version now."""

    async def returned(self) -> None:
        """A call has returned; its steps' answers and writes follow."""


Step = tuple[int, str, dict[str, Any]]  # (position, session id, events body)
_ENVELOPE = 'the body must be a JSON object {"steps": [...]}'


def steps_of(body: object, limit: int) -> list[Any]:
    """The steps of a bulk body; BadRequest / InvalidInput for the envelope, PayloadTooLarge above `limit`."""
    if not isinstance(body, dict):
        raise BadRequest(_ENVELOPE)
    extra = sorted(set(body) - {"steps"})
    if extra:
        raise InvalidInput(f"unknown field(s) {', '.join(extra)}: {_ENVELOPE}", fields=extra)
    steps = body.get("steps")
    if not isinstance(steps, list):
        raise InvalidInput(f"`steps` must be a list: {_ENVELOPE}", field="steps")
    if len(steps) > limit:
        raise PayloadTooLarge(
            f"{len(steps)} steps in one request; the limit is {limit} (RNNSERVE_MAX_STEPS_PER_REQUEST)",
            steps=len(steps),
            limit=limit,
        )
    return steps


def _ok(session_id: str, answer: bytes) -> bytes:
    return b'{"session_id":' + orjson.dumps(session_id) + b"," + answer[1:]


def _bad_step(i: int, step: object) -> InvalidInput:
    """Why step i names no session: not an object, no `session_id` string, or one that is not text (a
    lone surrogate or a control character: no session has such an id, and the answer could not echo it)."""
    if not isinstance(step, dict):
        what = f"not {type(step).__name__}"
    elif isinstance(step.get("session_id"), str) and step["session_id"]:
        what = "this `session_id` holds a lone surrogate or a control character"
    else:
        what = "an object"
    return InvalidInput(f"step {i}: each step is an object with a `session_id` string ({what})", index=i)


def _events_body(step: dict[str, Any]) -> dict[str, Any]:
    """A step's events body: the step without its session id."""
    payload = step.copy()
    del payload["session_id"]
    return payload


def _failed(session_id: str | None, error: ServiceError) -> bytes:
    return b'{"session_id":' + orjson.dumps(session_id) + b"," + error_json(error).encode()[1:]


class BulkSteps:
    """Runs bulk bodies against a session manager (`service.sessions.SessionManager`)."""

    def __init__(self, manager: SessionManager, turns: Turns) -> None:
        self.manager = manager
        self.turns = turns
        store = manager.store
        self.slab = SlabLane(manager, store) if isinstance(store, MemoryStore) else None

    @staticmethod
    def _answered(results: list[bytes]) -> Answered:
        def answered(i: int, session_id: str, answer: bytes) -> None:
            results[i] = _ok(session_id, answer)

        return answered

    @staticmethod
    def _refused(results: list[bytes]) -> Failed:
        def refused(i: int, session_id: str, error: ServiceError) -> None:
            results[i] = _failed(session_id, error)

        return refused

    async def run(self, owner: str | None, body: object) -> bytes:
        """The JSON answer `{"results": [...]}` of one bulk body."""
        manager = self.manager
        manager.check_open()
        steps = steps_of(body, manager.settings.max_steps_per_request)
        results: list[bytes] = [b""] * len(steps)
        batch, queued = self._lanes(steps, results)
        # the queue lane starts now, in request order, so that its steps wait on their sessions' turns
        # behind the batch lane's (a task's first step runs before any later-created task's)
        tasks = [
            asyncio.create_task(self._queued(owner, session_id, payload)) for _, session_id, payload in queued
        ]
        try:
            await self.run_lane(owner, batch, self._answered(results), self._refused(results))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        finally:
            self.turns.release_all([session_id for _, session_id, _ in batch])
        for (i, _, _), task in zip(queued, tasks, strict=True):
            results[i] = await task
        return b'{"results":[' + b",".join(results) + b"]}"

    def _lanes(self, steps: list[Any], results: list[bytes]) -> tuple[list[Step], list[Step]]:
        """The steps split into the batch lane (their turns taken here) and the queue lane, each as
        (position, session id, events body); a step that names no session fails here, in `results`."""
        ids: list[Any] = [step.get("session_id") if type(step) is dict else None for step in steps]
        distinct = set(ids) if set(map(type, ids)) <= {str} else set()  # (a list is not hashable)
        # the common case: each step names a distinct session, all free: their turns taken at once
        if (
            len(distinct) == len(ids)
            and "" not in distinct
            and is_text("".join(ids))
            and self.turns.try_acquire_all(ids)
        ):
            return list(zip(range(len(ids)), ids, map(_events_body, steps), strict=True)), []
        batch: list[Step] = []
        queued: list[Step] = []
        seen: set[str] = set()
        for i, (step, session_id) in enumerate(zip(steps, ids, strict=True)):
            if type(session_id) is not str or not session_id or not is_text(session_id):
                results[i] = _failed(None, _bad_step(i, step))
                continue
            if session_id not in seen and self.turns.try_acquire(session_id):
                batch.append((i, session_id, _events_body(step)))
            else:
                queued.append((i, session_id, _events_body(step)))
            seen.add(session_id)
        return batch, queued

    async def _queued(self, owner: str | None, session_id: str, payload: dict[str, Any]) -> bytes:
        try:
            return _ok(session_id, await self.manager.step_json(session_id, owner, payload))
        except ServiceError as exc:
            return _failed(session_id, exc)

    async def run_lane(
        self,
        owner: str | None,
        lane: list[Step],
        ok: Answered,
        failed: Failed,
        progress: Progress | None = None,
    ) -> None:
        """Steps of distinct sessions whose turns the caller holds: look up, decode, then one call per
        (version, events); each step ends in one `ok` or one `failed`. Also the step lane's flush
        (service.step_lane), which follows the calls through `progress`."""
        manager = self.manager
        if self.slab is not None:
            lane = await self.slab.run(owner, lane, ok, failed, progress)
        # no touch: only applied steps restart a session's idle TTL (their commit marks it used)
        ids = [session_id for _, session_id, _ in lane]
        records = await manager.store.lookup_many(ids, owner, touch=False) if ids else []
        groups: dict[tuple[str, int], list[tuple[int, Served, Decoded, SessionRecord, dict[str, Any]]]] = {}
        for (i, session_id, payload), record in zip(lane, records, strict=True):
            try:
                if isinstance(record, ServiceError):
                    raise record
                served = manager.served_for(record)
                decoded = served.predictor.decode(payload)
                early = stepping.check_seq(served, decoded, record)
                if early is True:
                    ok(i, session_id, await stepping.replay_stored(manager.store, served, decoded, record))
                elif isinstance(early, bytes):
                    ok(i, session_id, early)
                else:
                    groups.setdefault((record.model_key, decoded.events), []).append(
                        (i, served, decoded, record, payload)
                    )
            except ServiceError as exc:
                failed(i, session_id, exc)
        await asyncio.gather(
            *(self._run_group(owner, members, ok, failed, progress) for members in groups.values())
        )

    async def _run_group(
        self,
        owner: str | None,
        members: Sequence[tuple[int, Served, Decoded, SessionRecord, dict[str, Any]]],
        ok: Answered,
        failed: Failed,
        progress: Progress | None,
    ) -> None:
        manager = self.manager
        served = members[0][1]
        jobs = [stepping.job(s, decoded, record) for _, s, decoded, record, _ in members]
        if progress is not None:
            progress.starting(served, [i for i, *_ in members])
        outcomes = await served.batcher.run_now(jobs, members[0][2].events)
        if progress is not None:
            await progress.returned()
        for (i, _, decoded, record, payload), outcome in zip(members, outcomes, strict=True):
            session_id = record.session_id
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                answer = await stepping.settle(manager.store, served, decoded, record, outcome, owner)
                if answer is None:  # the session moved on under it (another replica): the usual path
                    answer = await manager.step_locked(session_id, owner, payload)
                ok(i, session_id, answer)
            except ServiceError as exc:
                failed(i, session_id, exc)
