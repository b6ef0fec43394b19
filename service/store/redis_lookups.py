"""The Redis store's lookups: one LOOKUP script call answers many ids, each with its record or the
error a lookup of it raises (not found, gone and why); and why a session looked up earlier has ended
since (`ended`, when a later read or write of it finds another incarnation or none).

`one` is what a request calls: the lookups that arrive in one turn of the event loop share one round
trip (`Coalescer`, at most LOOKUPS_PER_CALL ids a call), so 256 requests arriving together cost one
call, not 256. `many` looks up a list of ids of one owner (bulk ingest) in calls of that size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from service.batcher import Coalescer
from service.errors import ServiceError, SessionDeleted, SessionGone, session_gone
from service.store.base import SessionRecord
from service.store.redis_layout import Keys, owner_code, refusal, split_lookups, text

LOOKUPS_PER_CALL = 512  # ids in one lookup script call, as the coalescer sends at most

Lookup = tuple[str, str | None, bool]  # (session id, owner, touch)


class RedisLookups:
    def __init__(
        self,
        client: aioredis.Redis,
        script: AsyncScript,
        keys: Keys,
        ttl_ms: int,
        gone_ms: int,
        guard: Callable[[], contextlib.AbstractContextManager[None]],
        record: Callable[[str, Sequence[Any]], SessionRecord],
    ) -> None:
        """`script`: LOOKUP, registered on `client`; `guard`: wraps each call (outages become
        StoreUnavailable); `record`: a record from a session id and the script's {m, i, q, c, u}."""
        self._client = client
        self._script = script
        self._keys = keys
        self._ttl_ms = ttl_ms
        self._gone_ms = gone_ms
        self._guard = guard
        self._record = record
        self._coalesced: Coalescer[Lookup, SessionRecord] = Coalescer(self._call, LOOKUPS_PER_CALL)

    async def one(self, session_id: str, owner: str | None, touch: bool) -> SessionRecord:
        return await self._coalesced((session_id, owner, touch))

    async def many(
        self, session_ids: Sequence[str], owner: str | None, touch: bool
    ) -> list[SessionRecord | ServiceError]:
        found: list[SessionRecord | ServiceError] = []
        for start in range(0, len(session_ids), LOOKUPS_PER_CALL):
            chunk = session_ids[start : start + LOOKUPS_PER_CALL]
            for result in await self._call([(session_id, owner, touch) for session_id in chunk]):
                if not isinstance(result, SessionRecord | ServiceError):
                    raise result
                found.append(result)
        return found

    async def ended(self, record: SessionRecord) -> NoReturn:
        """The incarnation of `record` is gone (its owner was checked when it was looked up): raise why."""
        with self._guard():
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hget(self._keys.session(record.session_id), "i")
                pipe.get(self._keys.tomb(record.session_id))
                gen, tomb = await pipe.execute()
        sid = record.session_id
        if gen is not None:  # ended, and the id reused since (a client-chosen id)
            raise SessionDeleted(f"session {sid} ended and its id was reused", session_id=sid)
        if tomb is None:
            raise SessionGone(f"session {sid} has ended", session_id=sid)
        raise session_gone(sid, text(tomb).partition("\n")[0])

    async def _call(self, lookups: list[Lookup]) -> list[SessionRecord | Exception]:
        """One script call: a record or the refusal per lookup, in order."""
        keys: list[str] = []
        args: list[Any] = [self._ttl_ms, self._gone_ms, self._keys.z]
        for session_id, owner, touch in lookups:
            keys += [self._keys.session(session_id), self._keys.tomb(session_id)]
            args += [owner_code(owner), 1 if touch else 0, session_id]
        with self._guard():
            reply = await self._script(keys=keys, args=args)
        results: list[SessionRecord | Exception] = []
        for (session_id, _, _), fields in zip(lookups, split_lookups(reply, len(lookups)), strict=True):
            if fields[0] == "ok":
                results.append(self._record(session_id, fields[1:]))
            else:
                results.append(refusal(session_id, fields))
        return results
