"""The pieces of a step, shared by `SessionManager.step_locked` and bulk ingest (bulk.py): check the
seq, build the batcher's job, settle its result (replay or 409).

Exactly-once steps: a step body may carry `seq`, the count of events the client believes the session
has consumed. seq == count: applied. The same request (same seq, same payload) as the last applied one:
its stored response is returned and nothing is applied (metric `replays`). Anything else: 409
SequenceConflict with `expected_seq`. Without `seq`, the request is applied as it comes.

Across processes (store=redis, several replicas) the rule holds by check-and-set: a step is looked up,
run in a batch, and written back only if the session is still at the seq its lookup saw (runner.py).
The answer is stored in the same atomic write, so when two replicas race on one request the loser
finds the winner's answer and replays it (same payload) or answers 409 (another payload); an
unsequenced request that lost such a race is run again on the new state. Never both, never neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import orjson
from prometheus_client import Counter

from service.batcher import Batcher
from service.errors import SequenceConflict, SessionDeleted
from service.predictors import Predictor
from service.predictors.base import Decoded
from service.predictors.jsonout import fill
from service.registry import LoadedModel
from service.runner import StepJob, StepResult
from service.store import SessionRecord, SessionStore, Status, StoredAnswer


@dataclass(eq=False)
class Served:
    """One served model version and what its requests use (metric children looked up once)."""

    model: LoadedModel
    part: int
    predictor: Predictor
    batcher: Batcher[StepJob, StepResult]
    events: Counter
    replays: Counter
    conflicts: Counter


def check_seq(served: Served, decoded: Decoded, record: SessionRecord) -> bytes | bool | None:
    """Before running: None to run the job; the answer (bytes) when there is nothing to apply; True
    when the seq does not fit (the caller answers `replay_stored`: replay or 409)."""
    if decoded.seq is not None and decoded.seq != record.seq:
        return True
    if decoded.events == 0:
        return b'{"seq":%d,"outputs":[]}' % record.seq
    return None


async def replay_stored(
    store: SessionStore, served: Served, decoded: Decoded, record: SessionRecord
) -> bytes:
    answer = await store.last_answer(record)
    return _replay_or_conflict(served, decoded, record.seq, answer)


def job(served: Served, decoded: Decoded, record: SessionRecord) -> StepJob:
    return StepJob(decoded.x, record, param=decoded.param, answer=_answer_hook(served, decoded, record.seq))


async def run_fresh(served: Served, decoded: Decoded) -> tuple[bytes, list[np.ndarray], StoredAnswer | None]:
    """The request's events run on a fresh (zero) state, writing nothing: (the response, the state
    after them, the answer to store). For a session that is made only once its first step has
    succeeded (V2's sequence_start), so that a request that fails leaves everything as it was."""
    model = served.model
    layers, hidden = model.manifest.state_shape
    zero = [np.zeros((layers, hidden), np.float32) for _ in range(model.state_count)]
    if decoded.events == 0:
        return b'{"seq":0,"outputs":[]}', zero, None
    result = await served.batcher.submit(
        StepJob(decoded.x, None, state=zero, param=decoded.param), decoded.events
    )
    assert result.state is not None  # a job that brings its state gets the new one back
    result.seq = decoded.events
    body, answer = _answer_hook(served, decoded, 0)(result)
    return body, result.state, answer


async def settle(
    store: SessionStore,
    served: Served,
    decoded: Decoded,
    record: SessionRecord,
    result: StepResult,
    owner: str | None,
) -> bytes | None:
    """A job's answer; None when it must run again (the session moved on under an unsequenced
    request: another replica wrote it between the lookup and the write)."""
    if result.error is not None:
        raise result.error
    if result.status == Status.APPLIED:
        served.events.inc(decoded.events)
        body: bytes = result.response
        return body
    if result.status == Status.GONE:
        await _raise_gone(store, record.session_id, owner)
    if decoded.seq is not None:  # CONFLICT
        answer = result.answer or await store.last_answer(record)
        return _replay_or_conflict(served, decoded, result.seq, answer)
    return None


def answer_body(seq: int, outputs: list[dict[str, Any]]) -> bytes:
    """The JSON answer of a step: the session's seq after it and one output per event."""
    return orjson.dumps({"seq": seq, "outputs": outputs})


def answers_json(seqs: Iterable[int], outputs: Iterable[bytes]) -> list[bytes]:
    """`answer_body` of each step's seq and outputs already encoded (a JSON array): the same bytes."""
    return fill(b'{"seq":%d,"outputs":%s}', zip(seqs, outputs, strict=True))


def _answer_hook(
    served: Served, decoded: Decoded, seq_before: int
) -> Callable[[StepResult], tuple[bytes, StoredAnswer | None]]:
    """Builds the response in the batch, before the write, so that the answer for replays is
    stored atomically with the state it belongs to."""

    def answer(result: StepResult) -> tuple[bytes, StoredAnswer | None]:
        # straight from the predictor's plain values to JSON: no model objects on the hot path
        body = answer_body(result.seq, served.predictor.encode(decoded, result, seq_before))
        if decoded.seq is None:
            return body, None
        return body, StoredAnswer(decoded.seq, decoded.fingerprint, body)

    return answer


def _replay_or_conflict(served: Served, decoded: Decoded, current: int, answer: StoredAnswer | None) -> bytes:
    """A sequenced request that does not fit the session's seq: the stored response if it is the
    last applied request again (same seq, same payload), else 409."""
    if answer is not None and (answer.seq, answer.fingerprint) == (decoded.seq, decoded.fingerprint):
        served.replays.inc()
        return answer.response
    served.conflicts.inc()
    raise SequenceConflict(
        f"seq {decoded.seq} does not match the session's {current}",
        expected_seq=current,
        got_seq=decoded.seq,
    )


async def _raise_gone(store: SessionStore, session_id: str, owner: str | None) -> NoReturn:
    """The session ended while its batch ran (nothing was applied): raise why."""
    await store.lookup(session_id, owner, touch=False)  # raises the tombstone's reason
    raise SessionDeleted(f"session {session_id} ended while its request ran", session_id=session_id)
