"""Triton's sequence protocol on the session manager, whatever the V2 transport (HTTP or gRPC).

A V2 request names its sequence in `parameters` (Triton's sequence extension, plus one field of ours):

- `sequence_id`: an unsigned 64-bit integer (1 to 2^64 - 1) or a string of 1 to `MAX_STRING_ID_BYTES`
  bytes of UTF-8; 0, "" or absent: a one-shot request on a fresh state. As in Triton, the integer 8100
  and the string "8100" are two different sequences. Ids are per model and per API key.
- `sequence_start` / `sequence_end` (booleans): start a sequence (a running one of that id is replaced)
  / end it after this request. A request without `sequence_start` for an id that is not running is
  refused (400), as Triton does; one for a sequence that ended answers 410.
- `seq` (this server's extension, optional): the number of events the client believes the sequence
  has consumed, with API v1's meaning. The right value applies the request; the same request again
  (same seq, same inputs: a retry) answers the stored answer and applies nothing; any other value
  answers 409 with `expected_seq`. With `sequence_start`, seq is 0. Without `seq`, a request is
  applied as it comes (Triton's behaviour): a retry is applied twice.

A request that fails changes nothing: the payload is validated before a sequence is started, replaced
or stepped; `sequence_start` runs its events on a fresh state first, and only once they have run and
their answer is built does the new session take the id, ending a running one in the same store step
(`_start`): a start refused on the way (capacity, inference, the store) leaves
the running sequence, its seq, stored answer and idle TTL as they were. `sequence_end` ends the
sequence in the step's own turn, only after the step succeeded. One-shot requests (no id) run on a
fresh state and keep no session at all. One limit: the retry of a request that ended its sequence
answers 410 (the sequence is gone; that request was applied).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

from service import schemas, stepping
from service.errors import BadRequest, SequenceConflict, SessionGone, SessionNotFound
from service.registry import LoadedModel
from service.sessions import SessionManager

MAX_STRING_ID_BYTES = 1024
_MAX_INT_ID = 2**64 - 1


@dataclass(frozen=True, slots=True)
class SequenceParams:
    """A request's sequence parameters, checked. `sequence_id` None: a one-shot request."""

    sequence_id: int | str | None
    start: bool
    end: bool
    seq: int | None

    def key(self, model: str) -> str:
        """The sequence's name among the caller's sessions: per model, integer and string ids apart,
        strings hashed so that any UTF-8 fits the store's id alphabet and length."""
        if isinstance(self.sequence_id, int):
            return f"{model}:i{self.sequence_id}"
        assert self.sequence_id is not None
        digest = hashlib.blake2b(self.sequence_id.encode("utf-8"), digest_size=16).hexdigest()
        return f"{model}:s{digest}"


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {name} must be true or false, not {value!r}")
    return value


def _sequence_id(value: Any) -> int | str | None:
    if isinstance(value, bool) or not isinstance(value, int | str | None):
        raise BadRequest(
            f"sequence_id must be an unsigned 64-bit integer or a string, not {type(value).__name__}"
        )
    if value is None or value == 0 or value == "":
        return None
    if isinstance(value, int):
        if not 0 < value <= _MAX_INT_ID:
            raise BadRequest(
                f"sequence_id {value} is out of range: an integer id is 1 to 2^64 - 1 (0: no sequence)",
                sequence_id=str(value),
            )
        return value
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("a string sequence_id must be UTF-8 text: it holds a lone surrogate") from None
    if size > MAX_STRING_ID_BYTES:
        raise BadRequest(f"a string sequence_id is at most {MAX_STRING_ID_BYTES} bytes of UTF-8, not {size}")
    return value


def sequence_params(params: Any) -> SequenceParams:
    """A V2 request's `parameters` object (absent: None), checked: BadRequest for anything wrong."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest("`parameters` must be an object")
    seq = params.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
        raise BadRequest(f"parameter seq must be a non-negative integer, not {seq!r}")
    sequence_id = _sequence_id(params.get("sequence_id"))
    start, end = _flag(params, "sequence_start"), _flag(params, "sequence_end")
    if sequence_id is None:
        return SequenceParams(None, True, True, seq)
    return SequenceParams(sequence_id, start, end, seq)


async def step_sequence(
    manager: SessionManager,
    owner: str | None,
    model: LoadedModel,
    params: SequenceParams,
    payload: dict[str, Any],
) -> schemas.StepResponse:
    """Apply one V2 request's events (`payload`: an API v1 events body, with `seq` when given) to its
    sequence, with the semantics of the module docstring."""
    if params.seq is not None:
        payload = {**payload, "seq": params.seq}
    manager.check_events(model, payload)  # a bad payload is refused before any sequence moves
    if params.sequence_id is None:
        return await _start(manager, model, None, owner, payload)
    key = params.key(model.name)
    session_id = manager.sequence_session_id(key, owner)
    if params.start:
        if params.seq not in (None, 0):
            raise SequenceConflict(
                f"seq {params.seq} does not fit sequence_start: a started sequence has consumed 0 events",
                expected_seq=0,
                got_seq=params.seq,
            )
        if params.seq == 0:
            replayed = await _replay_start(manager, owner, model, session_id, payload)
            if replayed is not None:
                return replayed
        return await _start(manager, model, key, owner, payload, keep=not params.end)
    try:
        return await manager.step(session_id, owner, payload, end=params.end)
    except SessionNotFound:
        raise BadRequest(
            f"sequence {params.sequence_id!r} of model {model.name!r} is not running: its first request "
            "must set sequence_start",
            sequence_id=params.sequence_id,
        ) from None
    except SessionGone as gone:  # say which sequence, not which internal session id
        reason = gone.code.removeprefix("session_")
        raise type(gone)(
            f"sequence {params.sequence_id!r} of model {model.name!r} was {reason}",
            sequence_id=params.sequence_id,
        ) from None


async def _replay_start(
    manager: SessionManager, owner: str | None, model: LoadedModel, session_id: str, payload: dict[str, Any]
) -> schemas.StepResponse | None:
    """The stored answer when a `sequence_start` request with seq 0 is a retry of the one that started
    the running sequence (it has moved on, and its last answer is for this very request); else None."""
    try:
        info = await manager.get(session_id, owner)
    except (SessionNotFound, SessionGone):
        return None
    if info.version != model.version or info.seq == 0:
        return None
    try:
        return await manager.step(session_id, owner, payload)  # replays, or refuses with 409
    except SequenceConflict:
        return None  # another request at seq 0: a new sequence under the same id


async def _start(
    manager: SessionManager,
    model: LoadedModel,
    key: str | None,
    owner: str | None,
    payload: dict[str, Any],
    keep: bool = True,
) -> schemas.StepResponse:
    """`sequence_start` with the request's events: they run on a fresh state and their answer is built
    first; only then, in one store step, the new session takes the sequence's id and a live one there
    ends. `keep` False (sequence_end too) or `key` None (a one-shot request): no session is kept, a live
    one just ends. A request that fails on the way changes nothing."""
    manager.check_open()
    served = manager.serve_new(model)
    decoded = served.predictor.decode(payload)
    if key is None:
        response = schemas.StepResponse.model_validate_json((await stepping.run_fresh(served, decoded))[0])
        served.events.inc(decoded.events)
        return response
    session_id = manager.sequence_session_id(key, owner)
    async with manager.turn(session_id):
        body, state, answer = await stepping.run_fresh(served, decoded)
        response = schemas.StepResponse.model_validate_json(body)
        if keep:
            await manager.store.create(
                model.key,
                owner,
                session_id=session_id,
                seq=decoded.events,
                state=state,
                answer=answer,
                replace=True,
            )
        else:
            with contextlib.suppress(SessionNotFound, SessionGone):
                await manager.store.delete(session_id, owner)
    served.events.inc(decoded.events)
    return response
