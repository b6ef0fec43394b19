"""The Redis session store (store=redis): every session lives in Redis, so any replica serves any session.

Keys, hash fields and the encoding of states and script replies: redis_layout.py; the Lua scripts:
redis_scripts.py; lookups, many ids per script call: redis_lookups.py.

Round trips: a batch of B sessions: read 1 (GATHER: B states and seqs, packed into three bulk
strings, so that the client parses 3 values rather than 3B) and write 1 (COMMIT: the check-and-set of
every session, its new state, seq and answer); the lookups of the requests that arrived together: 1
(LOOKUP of many, one packed string back); create, delete, reset, export, a replay's answer: 1 each.
Every write is idempotent when sent twice (a redis-py retry after a lost reply): create by its
incarnation, a batch write by its token.

Failures (redis_client.py): any connection error or timeout (Redis down, restarting, loading, out of
memory) raises StoreUnavailable (503, Retry-After) for that request alone; the pool reconnects on the
next call, and the scripts are loaded again if Redis lost them (EVALSHA, then SCRIPT LOAD on
NOSCRIPT). Nothing is reset or retried behind the caller's back beyond one immediate reconnect. Redis
persists by itself (RDB/AOF, its own configuration): the manager writes no snapshot file for this
store and reads none. A Redis restarted without persistence has lost its sessions: their ids answer
404, never a fresh state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import redis.asyncio as aioredis

from service.errors import BadRequest, ServiceError, StoreUnavailable
from service.metrics import Metrics
from service.settings import Settings
from service.store import redis_scripts
from service.store.base import (
    Committed,
    Gathered,
    Saved,
    SessionRecord,
    StoredAnswer,
    at_capacity,
    check_session_id,
    moved_on,
)
from service.store.redis_client import Availability, connect, where
from service.store.redis_layout import (
    PREFIX,
    Keys,
    Partition,
    commit_meta,
    decode_commit,
    decode_gather,
    decode_record,
    owner_code,
    refusal,
    text,
)
from service.store.redis_lookups import RedisLookups
from service.store.session_metrics import count_ended, set_live

if TYPE_CHECKING:
    from service.registry import LoadedModel

log = logging.getLogger(__name__)


class RedisStore:
    persistent = True  # Redis keeps the sessions: no snapshot file at stop, none read at start

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        client: aioredis.Redis | None = None,
        prefix: str = PREFIX,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ttl_ms = max(1, math.ceil(settings.session_ttl_s * 1000))
        self.gone_ms = math.ceil(settings.gone_retention_s * 1000)
        self.keys = Keys(prefix)
        self.client = client if client is not None else connect(settings.redis_url)
        self.availability = Availability(where(self.client))
        register = self.client.register_script
        self._lookup = register(redis_scripts.LOOKUP)
        self._create = register(redis_scripts.CREATE)
        self._delete = register(redis_scripts.DELETE)
        self._write = register(redis_scripts.WRITE)
        self._gather = register(redis_scripts.GATHER)
        self._commit = register(redis_scripts.COMMIT)
        self._sweep = register(redis_scripts.SWEEP)
        self._lookups = RedisLookups(
            self.client, self._lookup, self.keys, self.ttl_ms, self.gone_ms, self._guard, self._record
        )
        self._parts: list[Partition] = []
        self._part_by_key: dict[str, int] = {}

    # ---- availability --------------------------------------------------------------------------------

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return self.availability.guard()

    @property
    def available(self) -> bool:
        """False from a failed call until the next call that succeeds."""
        return self.availability.up

    async def ping(self) -> None:
        """StoreUnavailable unless Redis answers."""
        with self._guard():
            await self.client.ping()

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Check Redis (7.0 or later: the scripts declare their flags); one that is down at start is
        logged, and requests answer 503 until it is up."""
        try:
            with self._guard():
                info = await self.client.info("server")
        except StoreUnavailable:
            log.error(
                "session store: Redis at %s is down at start; requests answer 503 until it is up",
                self.availability.where,
            )
            return
        version = str(info.get("redis_version", "0"))
        if int(version.split(".")[0]) < 7:
            where = self.availability.where
            raise RuntimeError(f"store=redis needs Redis 7.0 or later; the one at {where} is {version}")

    async def close(self) -> None:
        """Close the client and its connections (a client given to the constructor too)."""
        await self.client.aclose(close_connection_pool=True)

    def attach(self, model: LoadedModel) -> int:
        layers, hidden = model.manifest.state_shape
        return self.attach_spec(model.key, model.state_count, layers, hidden)

    def attach_spec(self, key: str, state_count: int, layers: int, hidden: int) -> int:
        existing = self._part_by_key.get(key)
        if existing is not None:
            return existing
        name, _, version = key.partition("/")
        self._parts.append(Partition(key, name, version, state_count, layers, hidden, self.keys.z + key))
        self._part_by_key[key] = len(self._parts) - 1
        return len(self._parts) - 1

    def partition_of(self, model_key: str) -> int | None:
        return self._part_by_key.get(model_key)

    # ---- records -------------------------------------------------------------------------------------

    def _record(self, session_id: str, fields: Sequence[Any]) -> SessionRecord:
        """From a script's {m, i, q, c, u}."""
        return decode_record(session_id, fields, self._part_by_key, self.ttl_ms)

    def _ended_count(self, part: Partition | None, reason: str, count: int) -> None:
        if part is not None:  # None: a version this process does not serve
            count_ended(self.metrics, part.key, reason, count)

    def _gauges(self, part: Partition, live: int) -> None:
        set_live(self.metrics, part.key, live, live * part.nbytes)

    # ---- lifecycle of sessions -----------------------------------------------------------------------

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
        part = self._parts[self._part_by_key[model_key]]
        chosen = session_id is not None
        if session_id is not None:
            check_session_id(session_id)
        blob = part.state_bytes(state)
        s = self.settings
        for _ in range(3):  # a server-chosen 128-bit id is in use: practically never
            sid = session_id if session_id is not None else secrets.token_hex(16)
            gen = secrets.randbits(62) | 1
            with self._guard():
                reply = await self._create(
                    keys=[self.keys.session(sid), self.keys.tomb(sid), part.zkey],
                    args=[
                        model_key,
                        owner_code(owner),
                        gen,
                        seq,
                        blob,
                        self.ttl_ms,
                        self.gone_ms,
                        s.max_sessions,
                        s.capacity_policy,
                        self.keys.s,
                        self.keys.g,
                        sid,
                        1 if replace else 0,
                        self.keys.z,
                        *(
                            (-1, 0, b"")
                            if answer is None
                            else (answer.seq, answer.fingerprint, answer.response)
                        ),
                    ],
                )
            kind = text(reply[0])
            if kind == "ok":
                self._ended_count(part, "expired", int(reply[3]))
                self._ended_count(part, "evicted", int(reply[4]))
                self._gauges(part, int(reply[5]))
                replaced = text(reply[6])
                if replaced:
                    index = self._part_by_key.get(replaced)
                    self._ended_count(self._parts[index] if index is not None else None, "deleted", 1)
                return self._record(sid, [model_key, gen, seq, reply[1], reply[2]])
            if kind == "full":
                self._ended_count(part, "expired", int(reply[3]))
                oldest, now = int(reply[1]), int(reply[2])
                raise at_capacity(model_key, s.max_sessions, (oldest + self.ttl_ms - now) / 1000)
            if chosen:
                raise BadRequest(f"session id {sid} is in use", session_id=sid)
        raise BadRequest("could not pick a free session id")

    async def lookup(self, session_id: str, owner: str | None, *, touch: bool = True) -> SessionRecord:
        """Lookups made together (many requests at once) share one round trip (redis_lookups.py)."""
        return await self._lookups.one(session_id, owner, touch)

    async def lookup_many(
        self, session_ids: Sequence[str], owner: str | None, *, touch: bool = True
    ) -> list[SessionRecord | ServiceError]:
        return await self._lookups.many(session_ids, owner, touch)

    async def delete(self, session_id: str, owner: str | None) -> SessionRecord:
        with self._guard():
            reply = await self._delete(
                keys=[self.keys.session(session_id), self.keys.tomb(session_id)],
                args=[owner_code(owner), self.gone_ms, self.keys.z, session_id],
            )
        if text(reply[0]) != "ok":
            raise refusal(session_id, reply)
        record = self._record(session_id, reply[1:])
        part = self._parts[record.part] if record.part >= 0 else None
        self._ended_count(part, "deleted", 1)
        return record

    async def _write_one(
        self, record: SessionRecord, expect: int | None, seq: int, blob: bytes
    ) -> SessionRecord:
        with self._guard():
            reply = await self._write(
                keys=[self.keys.session(record.session_id), self.keys.tomb(record.session_id)],
                args=[
                    record.gen,
                    "" if expect is None else expect,
                    seq,
                    blob,
                    self.ttl_ms,
                    self.gone_ms,
                    self.keys.z,
                    record.session_id,
                ],
            )
        kind = text(reply[0])
        if kind == "gone":
            await self._lookups.ended(record)
        if kind == "conflict":
            raise moved_on(record.session_id, int(reply[1]))
        return self._record(record.session_id, reply[1:])

    async def reset(self, record: SessionRecord) -> SessionRecord:
        return await self._write_one(record, None, 0, bytes(self._part_of(record).nbytes))

    async def write_state(
        self, record: SessionRecord, state: Sequence[np.ndarray], seq: int
    ) -> SessionRecord:
        return await self._write_one(record, record.seq, seq, self._part_of(record).state_bytes(state))

    def _part_of(self, record: SessionRecord) -> Partition:
        return self._parts[self._part_by_key[record.model_key]]

    async def read_state(self, record: SessionRecord) -> tuple[int, list[np.ndarray]]:
        with self._guard():
            fields: list[Any] = await self.client.hmget(self.keys.session(record.session_id), ["i", "q", "x"])
        gen, seq, blob = fields
        if gen is None or int(gen) != record.gen:
            await self._lookups.ended(record)
        return int(seq), self._part_of(record).state_tensors(bytes(blob))

    async def last_answer(self, record: SessionRecord) -> StoredAnswer | None:
        with self._guard():
            fields: list[Any] = await self.client.hmget(
                self.keys.session(record.session_id), ["i", "a", "f", "r"]
            )
        gen, seq, fp, response = fields
        if gen is None or int(gen) != record.gen:
            await self._lookups.ended(record)
        if seq is None or int(seq) < 0 or response is None:
            return None
        return StoredAnswer(int(seq), int(fp), bytes(response))

    # ---- the batcher's read and write ----------------------------------------------------------------

    async def gather(self, part: int, records: Sequence[SessionRecord]) -> Gathered:
        p = self._parts[part]
        with self._guard():
            reply = await self._gather(
                keys=[self.keys.session(r.session_id) for r in records],
                args=[p.nbytes, " ".join(f"{r.gen} {r.seq}" for r in records)],
            )
        return decode_gather(p, reply, len(records))

    async def commit(
        self,
        part: int,
        records: Sequence[SessionRecord],
        state: Sequence[np.ndarray],
        events: int,
        answers: Sequence[StoredAnswer | None],
    ) -> Committed:
        p = self._parts[part]
        meta, responses = commit_meta(records, events, secrets.token_hex(8), answers)
        ids = [r.session_id for r in records]
        with self._guard():
            reply = await self._commit(
                keys=[*map(self.keys.session, ids), *map(self.keys.tomb, ids), p.zkey],
                args=[
                    self.ttl_ms,
                    self.gone_ms,
                    p.nbytes,
                    len(self.keys.s),
                    meta,
                    p.batch_bytes(state),
                    responses,
                ],
            )
        return decode_commit(reply, len(records))

    # ---- housekeeping --------------------------------------------------------------------------------

    async def _prune(self, parts: Sequence[Partition]) -> list[tuple[int, int]]:
        """(expired, live) per partition, after forgetting the ids whose hash Redis expired."""
        if not parts:
            return []
        with self._guard():
            reply = await self._sweep(keys=[p.zkey for p in parts], args=[self.ttl_ms])
        counts = [(int(reply[2 * i]), int(reply[2 * i + 1])) for i in range(len(parts))]
        for p, (expired, live) in zip(parts, counts, strict=True):
            self._ended_count(p, "expired", expired)
            self._gauges(p, live)
        return counts

    async def sweep(self) -> int:
        """Redis expires idle sessions by itself; this forgets their ids in the capacity sets, counts
        them and refreshes the gauges. Returns how many this call found expired."""
        return sum(expired for expired, _ in await self._prune(self._parts))

    async def live_sessions(self, model_key: str) -> int:
        index = self._part_by_key.get(model_key)
        if index is None:
            return 0
        return (await self._prune([self._parts[index]]))[0][1]

    async def end_all(self, model_key: str, reason: str) -> int:
        """Ends nothing: the sessions in Redis belong to every replica, and other replicas may still
        serve that version. This replica answers 410 `session_unloaded` for them (the manager checks
        the version) and Redis expires them after session_ttl_s idle."""
        return 0

    def save(self, path: Path) -> int:
        """Nothing to write: Redis persists the sessions by itself (its RDB/AOF configuration)."""
        return 0

    async def save_async(self, path: Path) -> Saved:
        """Nothing to write (see `save`)."""
        return Saved(0)

    def load(self, path: Path, models: Sequence[LoadedModel]) -> int:
        """Nothing to read: the sessions are in Redis."""
        return 0
