"""Hypothesis against both WebSocket routes of a real server: `WS /v1/sessions/{id}/stream` and the bulk
`WS /v1/stream`.

Each example drives real sessions with good frames, certainly-bad frames (fuzz_support: malformed
JSON, wrong types, surrogates and control characters, huge and negative integers, NaN, deep nesting,
binary noise, futures seqs, unknown sessions), retries and oversized frames, and checks:
- a bad frame (or bulk step) is answered with the route's error shape and a 4xx code it may carry, and
  the stream stays open (an oversized frame closes it with 1009, as documented);
- nothing bad moves a session: every good answer equals the reference's for a fresh session fed only
  the good events, and the session's info (seq, idle TTL) is what the last applied step left;
- a retry of the last step answers the stored answer; the server stays up and logs no traceback.
Bounded for CI by FUZZ_EXAMPLES (examples per test).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from e2e_support import MAX_BODY, MAX_STEPS, Reference, ServerProcess, auth, check_lm, check_sensor
from fuzz_support import (
    BAD_REQUEST,
    BAD_TEXT,
    GARBAGE,
    INVALID,
    SEQ_CONFLICT,
    Bad,
    answer_options,
    bad_body,
    dumps,
    good_body,
    not_str,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
LM, SENSOR = "lm-gru", "sensor-gru"
CLOSE_TOO_BIG = 1009


@dataclass
class Session:
    """A real session and its model: the events it consumed and its last answer to a step with a seq
    (a retry of that step must get it back; None after a step without seq)."""

    id: str
    reference: Reference
    events: list[Any] = field(default_factory=list)
    last: tuple[dict[str, Any], Any] | None = None  # (the step's body, its answer)
    info: dict[str, Any] = field(default_factory=dict)  # GET after the last applied step

    @property
    def seq(self) -> int:
        return len(self.events)


@pytest.fixture(scope="module")
def http(hostile_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_server.url, headers=auth(), timeout=30) as client:
        yield client


def new_session(http: httpx.Client, references: dict[str, Reference], model: str) -> Session:
    created = http.post("/v1/sessions", json={"model": model})
    assert created.status_code == 201, created.text
    session = Session(created.json()["session_id"], references[model])
    session.info = http.get(f"/v1/sessions/{session.id}").json()
    return session


def ws_connect(server: ServerProcess, path: str) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + path
    return connect(url, additional_headers=auth(), proxy=None, open_timeout=30, max_size=None)


def applied(session: Session, body: dict[str, Any], events: list[Any], answer: dict[str, Any]) -> None:
    """Check a good step's answer against the reference of all good events so far; record it."""
    session.events = session.events + events
    assert answer["seq"] == session.seq, answer
    outputs, reference = answer["outputs"], session.reference
    if reference.manifest.task == "lm":
        top_k, special = answer_options(body)
        check_lm(outputs, reference.lm(session.events, top_k, special)[-len(events) :])
    else:
        check_sensor(outputs, reference.sensor(session.events)[-len(events) :], reference.manifest)
        stamps = body.get("timestamps", [None] * len(events))
        assert [o["timestamp"] for o in outputs] == stamps
    session.last = (body, answer) if "seq" in body else None


def refused(error: Any, bad: Bad, session: Session | None, seq: int | None = None) -> None:
    """The route's error shape, with a 4xx code the bad input may carry; a seq conflict names the seq
    the session is at (`seq`, default the session's now)."""
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, error
    assert error["code"] in bad.codes and isinstance(error["message"], str) and error["message"], error
    event(f"refused: {error['code']}")  # the run's statistics (--hypothesis-show-statistics) count the kinds
    if error["code"] == SEQ_CONFLICT and session is not None:
        assert error["details"]["expected_seq"] == (session.seq if seq is None else seq), error


def unchanged(http: httpx.Client, session: Session) -> None:
    """The session is as its last applied step left it: seq, and no touch (idle TTL) since."""
    assert http.get(f"/v1/sessions/{session.id}").json() == session.info


@FUZZ
@given(data=st.data(), model=st.sampled_from([LM, SENSOR]))
def test_session_stream(
    hostile_server: ServerProcess, http: httpx.Client, references: dict[str, Reference], data: Any, model: str
) -> None:
    session = new_session(http, references, model)
    path = f"/v1/sessions/{session.id}/stream"
    with contextlib.ExitStack() as connections:
        ws = connections.enter_context(ws_connect(hostile_server, path))
        for _ in range(data.draw(st.integers(1, 10), label="frames")):
            action = data.draw(st.sampled_from(["good", "bad", "bad", "garbage", "retry", "oversized"]))
            if action == "good" or (action == "retry" and session.last is None):
                seq = session.seq if data.draw(st.booleans(), label="with seq") else None
                body, events = good_body(data.draw, session.reference, seq)
                ws.send(dumps(body).encode() if data.draw(st.booleans(), label="binary") else dumps(body))
                applied(session, body, events, json.loads(ws.recv(timeout=30)))
                session.info = http.get(f"/v1/sessions/{session.id}").json()
            elif action == "retry":
                assert session.last is not None
                ws.send(dumps(session.last[0]))
                assert json.loads(ws.recv(timeout=30)) == session.last[1]
                session.info = http.get(f"/v1/sessions/{session.id}").json()
            elif action == "oversized":  # a good body, padded past the limit: closed unread
                ws.send(dumps(good_body(data.draw, session.reference, session.seq)[0]) + " " * MAX_BODY)
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOO_BIG
                ws = connections.enter_context(ws_connect(hostile_server, path))
            else:
                bad = data.draw(bad_body(session.reference, session.seq) if action == "bad" else GARBAGE)
                ws.send(bad.frame())
                reply = json.loads(ws.recv(timeout=30))
                assert set(reply) == {"error"}, reply
                refused(reply["error"], bad, session)
        unchanged(http, session)
        body, events = good_body(data.draw, session.reference, session.seq)  # the next good step fits
        ws.send(dumps(body))
        applied(session, body, events, json.loads(ws.recv(timeout=30)))
    http.delete(f"/v1/sessions/{session.id}")
    assert httpx.get(f"{hostile_server.url}/healthz").status_code == 200


@pytest.fixture(scope="module")
def deleted_session(http: httpx.Client) -> str:
    session_id: str = http.post("/v1/sessions", json={"model": LM}).json()["session_id"]
    assert http.delete(f"/v1/sessions/{session_id}").status_code == 204
    return session_id


SESSION_IDS = st.text(st.characters(categories=["L", "N"], include_characters="-_"), min_size=1, max_size=40)


@FUZZ
@given(session_id=SESSION_IDS)
def test_unknown_sessions_are_refused_at_connect(
    hostile_server: ServerProcess, deleted_session: str, session_id: str
) -> None:
    for sid, close, code in (
        (session_id, 4404, "session_not_found"),
        (deleted_session, 4410, "session_deleted"),
    ):
        with ws_connect(hostile_server, f"/v1/sessions/{quote(sid, safe='')}/stream") as ws:
            assert json.loads(ws.recv(timeout=30))["error"]["code"] == code
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == close


def bad_envelope(step: dict[str, Any]) -> st.SearchStrategy[Bad]:
    """A bulk message that is refused as a whole: garbage, no `steps` list, extra fields, too many steps."""
    too_many = st.integers(MAX_STEPS + 1, 2 * MAX_STEPS)
    return st.one_of(
        GARBAGE,
        not_str(nested=False)
        .filter(lambda v: not isinstance(v, list))
        .map(lambda v: Bad({"steps": v}, frozenset({INVALID}))),
        st.just(Bad({}, frozenset({INVALID}))),
        st.text(min_size=1, max_size=8)
        .filter(lambda k: k != "steps")
        .map(lambda k: Bad({"steps": [step], k: 1}, frozenset({INVALID}))),
        too_many.map(lambda n: Bad({"steps": [step] * n}, frozenset({"payload_too_large"}))),
    )


@dataclass
class Step:
    """One drawn bulk step and what its result must be: `events` applied (good), `bad` refused, or
    `replay` (a retry: the stored answer). `seq` is its session's seq when it runs."""

    session: Session | None
    seq: int
    body: dict[str, Any]
    events: list[Any] | None = None
    bad: Bad | None = None
    replay: Any = None


def draw_step(
    data: Any, sessions: list[Session], unknown: st.SearchStrategy[tuple[Any, frozenset[str]]]
) -> Step:
    """A step for one of `sessions` (advancing its model when good) or for a session that is not there."""
    session = data.draw(st.sampled_from(sessions))
    action = data.draw(st.sampled_from(["good", "bad", "unknown", "retry"]))
    if action == "unknown":
        session_id, codes = data.draw(unknown)
        body, _ = good_body(data.draw, session.reference, None)
        return Step(None, 0, {"session_id": session_id, **body}, bad=Bad(body, codes))
    if action == "bad":
        bad = data.draw(bad_body(session.reference, session.seq))
        return Step(session, session.seq, {**bad.body, "session_id": session.id}, bad=bad)
    if action == "retry" and session.last is not None:
        return Step(
            session, session.seq, {"session_id": session.id, **session.last[0]}, replay=session.last[1]
        )
    seq = session.seq if data.draw(st.booleans(), label="with seq") else None
    body, events = good_body(data.draw, session.reference, seq)
    step = Step(session, session.seq, {"session_id": session.id, **body}, events=events)
    session.events, session.last = session.events + events, None  # its answer is checked (and kept) below
    return step


@FUZZ
@given(data=st.data())
def test_bulk_stream(
    hostile_server: ServerProcess,
    http: httpx.Client,
    references: dict[str, Reference],
    deleted_session: str,
    data: Any,
) -> None:
    sessions = [new_session(http, references, LM), new_session(http, references, SENSOR)]
    unknown = st.one_of(
        SESSION_IDS.map(lambda s: (s, frozenset({"session_not_found"}))),
        st.just((deleted_session, frozenset({"session_deleted"}))),
        st.one_of(BAD_TEXT, not_str(nested=False), st.just("")).map(lambda s: (s, frozenset({INVALID}))),
    )
    with contextlib.ExitStack() as connections:
        ws = connections.enter_context(ws_connect(hostile_server, "/v1/stream"))
        for _ in range(data.draw(st.integers(1, 4), label="messages")):
            before = [(s.events, s.last) for s in sessions]
            if data.draw(st.integers(0, 4), label="envelope") == 0:
                whole: Bad | None = data.draw(bad_envelope({"session_id": sessions[0].id, "tokens": ["w1"]}))
                steps: list[Step] = []
            else:
                steps = [draw_step(data, sessions, unknown) for _ in range(data.draw(st.integers(1, 6)))]
                whole = unreadable({"steps": [step.body for step in steps]})
            frame = whole.frame() if whole is not None else dumps({"steps": [step.body for step in steps]})
            ws.send(frame)
            if len(frame.encode() if isinstance(frame, str) else frame) > MAX_BODY:  # hostile steps add up
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TOO_BIG
                ws = connections.enter_context(ws_connect(hostile_server, "/v1/stream"))
                whole = Bad(frame, frozenset())
            else:
                reply = json.loads(ws.recv(timeout=30))
            if whole is not None:  # refused as a whole: nothing applied
                if whole.codes:
                    assert set(reply) == {"error"}, reply
                    refused(reply["error"], whole, None)
                for session, (events, last) in zip(sessions, before, strict=True):
                    session.events, session.last = events, last
                continue
            assert "results" in reply and len(reply["results"]) == len(steps), reply
            for result, step in zip(reply["results"], steps, strict=True):
                check_step(http, result, step)
    for session in sessions:
        unchanged(http, session)
        http.delete(f"/v1/sessions/{session.id}")


def unreadable(body: dict[str, Any]) -> Bad | None:
    """The message as a whole when the server's JSON parser (Python's) cannot read it (a value too deep
    or with too many digits in one step): then it is refused whole, not step by step."""
    try:
        json.loads(dumps(body))
    except (ValueError, RecursionError):
        return Bad(body, frozenset({BAD_REQUEST}))
    return None


def check_step(http: httpx.Client, result: dict[str, Any], step: Step) -> None:
    session = step.session
    if step.bad is not None:
        assert set(result) == {"session_id", "error"}, result
        refused(result["error"], step.bad, session, step.seq)
        if session is not None:
            assert result["session_id"] == session.id
        return
    assert session is not None and result["session_id"] == session.id, result
    if step.replay is not None:
        assert result == step.replay
    else:
        assert step.events is not None
        done = session.events  # the model ran ahead while the steps were drawn: check this one in place
        session.events = done[: step.seq]
        applied(session, {k: v for k, v in step.body.items() if k != "session_id"}, step.events, result)
        session.events = done
    session.info = http.get(f"/v1/sessions/{session.id}").json()
