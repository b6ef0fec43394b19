"""Property: any interleaving of good, bad, duplicate, out-of-order and concurrent step requests leaves
a session exactly where a simple reference model of it says, on both session stores.

The reference (`RefSession`) knows only the exactly-once rule: a request with the session's `seq`
(or none) applies its events; the same request as the last applied sequenced one answers that stored
answer; any other `seq` is a 409 naming the session's seq; an invalid request is a 4xx. Nothing but an
applied request moves anything: seq, state, stored answer or idle TTL. The final state is checked
against ONNX Runtime run directly on the events the reference says were applied, in order.

Concurrent requests are sent together (`asyncio.gather`); requests for one session are applied in
arrival order, which is the order they were sent in here, so the reference walks them in that order.
Bounded for CI: a fixed number of examples per model and store, no deadline per example.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from manager_support import FakeClock, Reference

from service import schemas
from service.errors import SequenceConflict, ServiceError
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings

pytestmark = pytest.mark.integration

MAX_EVENTS = 8
EXAMPLES = 25

# payloads no model takes, by task; each is sent with or without the session's own seq
BAD: dict[str, list[dict[str, Any]]] = {
    "lm": [
        {"text": "w1 \ud800"},
        {"tokens": ["w1", "\udfff"]},
        {"tokens": ["w1\x00"]},
        {"tokens": ["w1"], "top_k": -1},
        {"tokens": ["w1"], "top_k": 1.5},
        {"tokens": "w1"},
        {"tokens": [1]},
        {"tokens": ["w1"], "text": "w1"},
        {"tokens": ["w1"] * (MAX_EVENTS + 1)},
        {"tokens": ["w1"], "tokenz": 1},
    ],
    "sensor": [
        {"readings": [[20.0, float("nan"), 0.5]]},
        {"readings": [[float("inf"), 1000.0, 0.5]]},
        {"readings": [[1e300, 1000.0, 0.5]]},
        {"readings": [[20.0, 1000.0]]},
        {"readings": [["a", 1000.0, 0.5]]},
        {"readings": [[20.0, 1000.0, 0.5]], "timestamps": [1.0, 2.0]},
        {"readings": [[20.0, 1000.0, 0.5]], "timestamps": ["\ud800"]},
        {"readings": [[20.0, 1000.0, 0.5]], "timestamps": [float("nan")]},
        {"readings": [[20.0, 1000.0, 0.5]] * (MAX_EVENTS + 1)},
        {"readings": [[20.0, 1000.0, 0.5]], "reading": 1},
    ],
}
BAD_SEQS: list[Any] = [-1, "0", 1.0, True]


@dataclass
class RefSession:
    seq: int = 0
    applied: list[list[Any]] = field(default_factory=list)  # the events of each applied request
    last: tuple[int, str, dict[str, Any]] | None = None  # stored answer: seq, payload key, response


def key_of(payload: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in payload.items() if k != "seq"}, sort_keys=True)


# An abstract request, made concrete against the reference when it is sent:
#   ("good", events, sequenced, extra)   valid events, with the session's seq or without one
#   ("dup",)                             the last sequenced request sent, again
#   ("stale", events, offset)            valid events with seq = the session's + offset (offset != 0)
#   ("bad", index, sequenced)            BAD[task][index], with the session's seq or without one
#   ("badseq", index)                    valid events with BAD_SEQS[index]
Op = tuple[Any, ...]


def ops(task: str, words: list[str]) -> st.SearchStrategy[Op]:
    event: st.SearchStrategy[Any]
    extras: dict[str, st.SearchStrategy[Any]]
    if task == "lm":
        event, extras = st.sampled_from(words), {"top_k": st.integers(0, 4)}
    else:
        event = st.tuples(st.floats(10, 30), st.floats(980, 1020), st.floats(0.2, 0.8)).map(list)
        extras = {"timestamps": st.just("auto")}
    events = st.lists(event, min_size=0, max_size=4)
    extra = st.fixed_dictionaries({}, optional=extras)
    return st.one_of(
        st.tuples(st.just("good"), events, st.booleans(), extra),
        st.tuples(st.just("dup")),
        st.tuples(st.just("stale"), events, st.integers(-3, 3).filter(lambda o: o != 0)),
        st.tuples(st.just("bad"), st.integers(0, len(BAD[task]) - 1), st.booleans()),
        st.tuples(st.just("badseq"), st.integers(0, len(BAD_SEQS) - 1)),
    )


def scripts(task: str, words: list[str]) -> st.SearchStrategy[list[list[Op]]]:
    """A script: steps, each one request or a burst of 2 to 4 sent concurrently."""
    op = ops(task, words)
    return st.lists(st.lists(op, min_size=1, max_size=4), min_size=1, max_size=12)


class Runner:
    def __init__(self, manager: SessionManager, reference: Reference, clock: FakeClock) -> None:
        self.manager, self.reference, self.clock = manager, reference, clock
        self.task = reference.task

    def payload(self, op: Op, ref: RefSession, last_sent: dict[str, Any] | None) -> dict[str, Any]:
        kind = op[0]
        field_name = "tokens" if self.task == "lm" else "readings"
        if kind == "dup":
            return dict(last_sent) if last_sent is not None else {field_name: [], "seq": ref.seq}
        if kind == "bad":
            bad = dict(BAD[self.task][op[1]])
            return {**bad, "seq": ref.seq} if op[2] else bad
        if kind == "badseq":
            return {field_name: [], "seq": BAD_SEQS[op[1]]}
        body: dict[str, Any] = {field_name: op[1]}
        if kind == "stale":
            body["seq"] = ref.seq + op[2]
            return body
        if op[2]:
            body["seq"] = ref.seq
        extra = dict(op[3])
        if extra.get("timestamps") == "auto":
            extra["timestamps"] = [float(i) for i in range(len(op[1]))]
        return {**body, **extra}

    @staticmethod
    def valid(op: Op, payload: dict[str, Any]) -> bool:
        if op[0] in ("bad", "badseq"):
            return False
        seq = payload.get("seq")
        return seq is None or seq >= 0

    def expect(self, ref: RefSession, op: Op, payload: dict[str, Any], outcome: Any) -> bool:
        """Check one answer against the reference and advance it; True when it applied."""
        if not self.valid(op, payload):
            assert isinstance(outcome, ServiceError) and 400 <= outcome.status < 500, (payload, outcome)
            assert not isinstance(outcome, SequenceConflict) or payload.get("seq") is not None
            return False
        events = payload["tokens" if self.task == "lm" else "readings"]
        seq = payload.get("seq")
        if seq is not None and seq != ref.seq:
            if ref.last is not None and ref.last[:2] == (seq, key_of(payload)):
                assert isinstance(outcome, schemas.StepResponse), (payload, outcome)
                assert outcome.model_dump() == ref.last[2]  # the stored answer, replayed
            else:
                assert isinstance(outcome, SequenceConflict), (payload, outcome)
                assert outcome.expected_seq == ref.seq
            return False
        assert isinstance(outcome, schemas.StepResponse), (payload, outcome)
        if not events:  # nothing to apply: answered, nothing stored
            assert outcome.seq == ref.seq and outcome.outputs == []
            return False
        ref.seq += len(events)
        ref.applied.append(events)
        assert outcome.seq == ref.seq and len(outcome.outputs) == len(events)
        ref.last = (seq, key_of(payload), outcome.model_dump()) if seq is not None else None
        return True

    async def send(self, sid: str, payload: dict[str, Any]) -> Any:
        try:
            return await self.manager.step(sid, None, payload)
        except ServiceError as error:
            return error

    async def run(self, script: list[list[Op]]) -> None:
        model = f"{self.task}-gru" if self.task == "lm" else f"{self.task}-lstm"
        sid = (await self.manager.create(schemas.CreateSession(model=model), None)).session_id
        ref = RefSession()
        last_sent: dict[str, Any] | None = None
        for burst in script:
            self.clock.now += 1.0  # a touch (memory store) moves last_used_at by a second
            before = await self.manager.get(sid, None)
            payloads = []
            for op in burst:  # all made against the state before the burst: they race
                payload = self.payload(op, ref, last_sent)
                payloads.append(payload)
                if payload.get("seq") is not None and self.valid(op, payload):
                    last_sent = payload
            outcomes = await asyncio.gather(*(self.send(sid, p) for p in payloads))
            applied = [self.expect(ref, op, p, o) for op, p, o in zip(burst, payloads, outcomes, strict=True)]
            after = await self.manager.get(sid, None)
            assert after.seq == ref.seq
            if not any(applied):
                assert after.last_used_at == before.last_used_at, burst
        state = (await self.manager.export_state(sid, None)).state
        layers, hidden = self.reference.manifest.state_shape
        got = np.frombuffer(__import__("base64").b64decode(state), "<f4").reshape(-1, layers, hidden)
        want = np.stack([s[:, 0] for s in self.reference.run_chunks(ref.applied)])
        # the graph's recurrent state comes first; a task may keep more state after it (sensor: the
        # running statistics of its scores), which the graph alone does not predict
        np.testing.assert_allclose(got[: len(want)], want, atol=1e-5)
        await self.manager.delete(sid, None)


@pytest.mark.parametrize("task", ["lm", "sensor"])
def test_interleavings_match_the_reference(
    task: str, make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    reference = references["lm-gru" if task == "lm" else "sensor-lstm"]
    words = [*reference.vocab[2:12], "never-seen"]
    clock = FakeClock()
    manager = SessionManager(make_settings(max_events_per_request=MAX_EVENTS), Metrics(), clock)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(manager.start())
    runner = Runner(manager, reference, clock)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(scripts(task, words))
    def check(script: list[list[Op]]) -> None:
        loop.run_until_complete(runner.run(script))

    try:
        check()
    finally:
        loop.run_until_complete(manager.stop())
        loop.close()
