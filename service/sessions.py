"""The serving core's facade: what the HTTP, WebSocket and KServe layers call. No HTTP in here.

    registry (ONNX Runtime sessions) -> store (memory slabs | Redis) -> batcher (+ runner hooks) -> predictors

`owner` is the caller's API key identity, or None when auth is off; a session of another owner is
reported as not found. Every failure is a `service.errors.ServiceError` with its status and code.

Exactly-once steps (`seq`, replays, 409) and their check-and-set across replicas: stepping.py, whose
pieces `step_locked` and bulk ingest (bulk.py) share. Requests for one session are applied one at a
time in arrival order (`Turns`) within this process.

KServe V2 with Triton's sequence extension (client-chosen `sequence_id`): use `sequence_session_id` to
map (sequence_id, owner) to this manager's session id (owners never collide); v2_sequence.py starts
sequences itself (`serve_new`, `turn`, the store's replacing create), steps them with `step` and ends
them with `end=True`. Plain REST clients get server-chosen 128-bit ids from `create`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import numpy as np

from service import schemas, stepping
from service.bulk import BulkSteps
from service.errors import (
    BadRequest,
    InvalidInput,
    ModelNotFound,
    NotReady,
    SequenceConflict,
    SessionGone,
    SessionNotFound,
    ShuttingDown,
)
from service.housekeeping import Housekeeping
from service.metrics import Metrics
from service.model_control import ModelControl
from service.predictors import LmPredictor
from service.predictors.base import validate
from service.registry import LoadedModel, Registry
from service.runner import StepJob, StepResult
from service.serving import ServedVersions
from service.settings import Settings
from service.step_lane import StepLane
from service.stepping import Served
from service.store import MemoryStore, SessionRecord, SessionStore
from service.store.transfer import decode_snapshot, encode_snapshot
from service.turns import Turns

log = logging.getLogger(__name__)

# An unsequenced step that lost a check-and-set race (another replica wrote the session between its
# read and its write) runs again on the new state, this many times in all before answering 409.
_ATTEMPTS = 3


def _iso(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SessionManager:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        store: SessionStore | None = None,
    ) -> None:
        """`store`: the session store to use instead of the one `settings.store` names."""
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.registry = Registry(settings)
        self.store: SessionStore
        if store is not None:
            self.store = store
        elif settings.store == "redis":
            from service.store.redis_store import RedisStore

            self.store = RedisStore(settings, metrics)
        else:
            self.store = MemoryStore(settings, metrics, clock)
        self.versions = ServedVersions(settings, metrics, self.registry, self.store, clock)
        self._turns = Turns()
        self._bulk = BulkSteps(self, self._turns)
        calls_ahead = 1 if isinstance(self.store, MemoryStore) else 2  # see service.step_lane
        self._lane = StepLane(self._bulk, self._turns, settings, metrics, clock, calls_ahead)
        self._ready = False
        self._stopping = False
        self._housekeeping = Housekeeping(settings, metrics, self.store)
        self.control = ModelControl(self)

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load and verify every model, start a batcher per version, connect the store; the memory
        store reloads the snapshot file (store=redis reads none: Redis keeps the sessions itself)."""
        models = await asyncio.to_thread(self.registry.load_all)
        for model in models:
            self.versions.serve(model)
        self._lane.start()
        await self.store.open()
        self._housekeeping.restore(self.registry.all())
        self._housekeeping.start()
        self.control.start()
        self._ready = True

    async def stop(self) -> None:
        """Refuse new work (ShuttingDown), finish queued and in-flight batches; the memory store writes
        the snapshot file (store=redis writes nothing: the sessions are in Redis already)."""
        if self._stopping:
            return
        self._stopping, self._ready = True, False
        await self.control.stop()
        await self._housekeeping.stop()
        drain = self.settings.shutdown_drain_s
        deadline = time.monotonic() + drain  # real time: a test's fake clock must not stall shutdown
        # requests already admitted finish first: with a networked store they may still be looking up
        # their session, on their way to the batcher
        while len(self._turns) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        await self._lane.stop(max(0.0, deadline - time.monotonic()))
        remaining = max(0.0, deadline - time.monotonic())
        await asyncio.gather(*(s.batcher.stop(remaining) for s in self.versions))
        self._housekeeping.save_final()
        await self.store.close()

    @property
    def ready(self) -> bool:
        return self._ready

    async def check_store(self) -> None:
        """StoreUnavailable (503 `store_unavailable`) unless the session store answers now. For
        readiness probes: with store=redis the service stays up while Redis is away (every request
        that needs it answers 503 on its own) and recovers by itself when it is back."""
        await self.store.ping()

    def check_open(self) -> None:
        if self._stopping:
            raise ShuttingDown("the server is shutting down")
        if not self._ready:
            raise NotReady("the server is starting: models are loading")

    async def load_model(self, name: str, version: str) -> schemas.ModelInfo:
        """Load a new version while serving (ArtifactRefused if it does not verify); returns its info."""
        self.check_open()
        return await self.control.load(name, version)

    async def sweep(self) -> int:
        """Expire idle sessions now (the sweeper does it periodically); returns how many expired."""
        return await self.store.sweep()

    # ---- models and sessions -----------------------------------------------------------------------

    def models(self) -> schemas.ModelList:
        return self.registry.models()

    def _info(self, record: SessionRecord) -> schemas.SessionInfo:
        name, _, version = record.model_key.partition("/")
        return schemas.SessionInfo(
            session_id=record.session_id,
            model=name,
            version=version,
            seq=record.seq,
            created_at=_iso(record.created_at),
            last_used_at=_iso(record.last_used_at),
            expires_at=_iso(record.expires_at),
        )

    async def create(
        self, body: schemas.CreateSession, owner: str | None, session_id: str | None = None
    ) -> schemas.SessionInfo:
        """A new session on `body.model` (default version unless given), optionally restored from a
        snapshot. `session_id` lets a protocol choose the id (KServe: v2_sequence.py); an id in
        use is a BadRequest, an ended id may be reused."""
        self.check_open()
        state: list[np.ndarray] | None = None
        seq = 0
        snapshot = body.snapshot
        if snapshot is not None:
            if snapshot.model != body.model or (
                body.version is not None and body.version != snapshot.version
            ):
                raise InvalidInput(
                    f"the snapshot is of {snapshot.model}/{snapshot.version}, not {body.model}"
                    f"{'/' + body.version if body.version else ''}"
                )
            try:
                model = self.registry.get(snapshot.model, snapshot.version)
            except ModelNotFound as exc:
                raise InvalidInput(
                    f"the snapshot's model version {snapshot.model}/{snapshot.version} is not loaded"
                ) from exc
            state, seq = decode_snapshot(snapshot, model), snapshot.seq
        else:
            model = self.registry.get(body.model, body.version)
        self.serve_new(model)
        record = await self.store.create(model.key, owner, session_id=session_id, seq=seq, state=state)
        return self._info(record)

    def serve_new(self, model: LoadedModel) -> Served:
        """The served version for a new session of `model`; refused while it is being unloaded."""
        return self.versions.serve_new(model)

    @staticmethod
    def sequence_session_id(sequence_id: str | int, owner: str | None) -> str:
        """The session id for a KServe/Triton `sequence_id` of `owner` (ids of two owners never meet)."""
        scope = "open" if owner is None else hashlib.blake2b(owner.encode(), digest_size=6).hexdigest()
        return f"seq-{scope}-{sequence_id}"

    @contextlib.asynccontextmanager
    async def turn(self, session_id: str) -> AsyncIterator[None]:
        """Hold the session's turn: no other request of this process runs on it meanwhile."""
        await self._turns.acquire(session_id)
        try:
            yield
        finally:
            self._turns.release(session_id)

    async def get(self, session_id: str, owner: str | None) -> schemas.SessionInfo:
        self.check_open()
        return self._info(await self.store.lookup(session_id, owner, touch=False))

    async def delete(self, session_id: str, owner: str | None) -> None:
        self.check_open()
        await self._turns.acquire(session_id)
        try:
            await self.store.delete(session_id, owner)
        finally:
            self._turns.release(session_id)

    async def reset(self, session_id: str, owner: str | None) -> schemas.SessionInfo:
        self.check_open()
        await self._turns.acquire(session_id)
        try:
            # no touch: a reset refused here (its version not served) leaves the idle TTL as it was;
            # store.reset marks the session used
            record = await self.store.lookup(session_id, owner, touch=False)
            self.versions.for_record(record)
            return self._info(await self.store.reset(record))
        finally:
            self._turns.release(session_id)

    async def export_state(self, session_id: str, owner: str | None) -> schemas.Snapshot:
        self.check_open()
        record = await self.store.lookup(session_id, owner, touch=False)
        model = self.versions.for_record(record).model
        seq, state = await self.store.read_state(record)
        return encode_snapshot(model, seq, state)

    def served_now(self, model_key: str) -> Served | None:
        """The version `model_key` if this process serves it already (no loading, no error)."""
        return self.versions.get(model_key)

    def served_for(self, record: SessionRecord) -> Served:
        """The served version of a session (see `ServedVersions.for_record`)."""
        return self.versions.for_record(record)

    # ---- steps -------------------------------------------------------------------------------------

    def check_events(self, model: LoadedModel, payload: dict[str, Any]) -> None:
        """Refuse now what `step` would refuse for this payload on any session of `model`, so that a
        protocol can validate a request before it moves anything (KServe's sequence_start)."""
        self.versions.serve(model).predictor.decode(payload)

    async def step(
        self, session_id: str, owner: str | None, payload: dict[str, Any], end: bool = False
    ) -> schemas.StepResponse:
        """Apply one request's events (all in one ONNX Runtime call) and answer one output per event;
        `end`: then end the session (V2's sequence_end), in the same turn, only if the step succeeded."""
        return schemas.StepResponse.model_validate_json(await self.step_json(session_id, owner, payload, end))

    async def steps_json(self, owner: str | None, body: object) -> bytes:
        """Bulk ingest (`service.bulk`): many sessions' steps, answered as `{"results": [...]}` JSON."""
        return await self._bulk.run(owner, body)

    async def step_json(
        self, session_id: str, owner: str | None, payload: dict[str, Any], end: bool = False
    ) -> bytes:
        """`step`, answered as the JSON body of a `schemas.StepResponse` (what the transports send).
        Steps run in the step lane (service.step_lane), batched across sessions; one that ends its
        session (V2's sequence_end) runs through the batcher's queue, the delete in the same turn."""
        self.check_open()
        if not self._turns.try_acquire(session_id):  # as acquire, without a coroutine when it is free
            await self._turns.acquire(session_id)
        if not end:
            return await self._lane.step(session_id, owner, payload)  # the lane releases the turn
        try:
            body = await self.step_locked(session_id, owner, payload)
            # no other request and no shutdown check between the step and the end
            with contextlib.suppress(SessionNotFound, SessionGone):  # expired meanwhile
                await self.store.delete(session_id, owner)
            return body
        finally:
            self._turns.release(session_id)

    async def step_locked(self, session_id: str, owner: str | None, payload: dict[str, Any]) -> bytes:
        """`step_json` for a caller that holds the session's turn."""
        for _ in range(_ATTEMPTS):
            # no touch: only an applied step restarts the idle TTL (the commit marks it used)
            record = await self.store.lookup(session_id, owner, touch=False)
            served = self.served_for(record)
            decoded = served.predictor.decode(payload)
            early = stepping.check_seq(served, decoded, record)
            if early is not None:
                return (
                    early
                    if isinstance(early, bytes)
                    else await stepping.replay_stored(self.store, served, decoded, record)
                )
            job = stepping.job(served, decoded, record)
            result = await served.batcher.submit(job, decoded.events)
            done = await stepping.settle(self.store, served, decoded, record, result, owner)
            if done is not None:
                return done
        served.conflicts.inc()
        raise SequenceConflict(
            f"session {session_id} kept changing under this request ({_ATTEMPTS} attempts); "
            "nothing was applied",
            expected_seq=result.seq,
        )

    async def generate(
        self, session_id: str, owner: str | None, payload: dict[str, Any]
    ) -> schemas.GenerateResponse:
        """Sample a continuation (lm only); the session advances only with `commit: true`."""
        self.check_open()
        await self._turns.acquire(session_id)
        try:
            record = await self.store.lookup(session_id, owner, touch=False)
            served = self.versions.for_record(record)
            predictor = served.predictor
            if not isinstance(predictor, LmPredictor):
                raise BadRequest(
                    f"generate needs an lm model; {record.model_key} is a {served.model.task} model"
                )
            request = validate(schemas.GenerateRequest, payload)
            predictor.check_generate(request)
            batcher = served.batcher

            async def step(x: np.ndarray, state: list[np.ndarray]) -> StepResult:
                return await batcher.submit(StepJob(x, None, state=state), 1)

            seq, start = await self.store.read_state(record)
            ids, state = await predictor.generate(request, start, step)
            if request.commit and ids:
                # check-and-set against the seq the start state had: another replica may step meanwhile
                seq = (await self.store.write_state(replace(record, seq=seq), state, seq + len(ids))).seq
                served.events.inc(len(ids))
            else:  # a generation that moved nothing still used the session: restart its idle TTL
                await self.store.lookup(session_id, owner)
            tokens, text = predictor.join(ids)
            return schemas.GenerateResponse(tokens=tokens, text=text, seq=seq)
        finally:
            self._turns.release(session_id)
