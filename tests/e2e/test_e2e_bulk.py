"""Bulk ingest end to end: `POST /v1/steps` and `WS /v1/stream` answer exactly what the per-session
route answers for the same events, keep exactly-once per step, and fail a bad step alone."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
from e2e_support import (
    KEYS,
    MAX_STEPS,
    Reference,
    ServerProcess,
    auth,
    check,
    event_body,
    make_events,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.e2e

MODELS = ("lm-lstm", "sensor-gru")


def new_sessions(client: httpx.Client, model: str, count: int) -> list[str]:
    return [client.post("/v1/sessions", json={"model": model}).json()["session_id"] for _ in range(count)]


def bulk(client: httpx.Client, steps: list[Any]) -> list[dict[str, Any]]:
    response = client.post("/v1/steps", json={"steps": steps})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(steps)
    return results


def seq_of(client: httpx.Client, session: str) -> int:
    seq: int = client.get(f"/v1/sessions/{session}").json()["seq"]
    return seq


@pytest.mark.parametrize("model", MODELS)
def test_bulk_answers_equal_the_per_session_route(
    client: httpx.Client, references: dict[str, Reference], model: str
) -> None:
    """Four sessions streamed through bulk requests (a session twice in one request, one event or
    three per step) and four twins through the per-session route: identical answers, and the
    reference's."""
    ref, rng = references[model], random.Random(11)
    streams = [make_events(ref, rng, 7) for _ in range(4)]
    bulked, single = new_sessions(client, model, 4), new_sessions(client, model, 4)
    cuts = [(0, 1), (1, 4), (4, 5), (5, 7)]  # events [a, b) per step: 1, 3, 1, 2
    rounds = [[0, 1], [2, 3]]  # cuts per bulk request: every session's two steps in one request
    got: list[list[dict[str, Any]]] = [[] for _ in streams]
    for cut_ids in rounds:
        # every session's steps of this round, in a shuffled interleaving that keeps each one's order
        deck = [s for s in range(len(streams)) for _ in cut_ids]
        rng.shuffle(deck)
        taken = [0] * len(streams)
        steps, owners, ends = [], [], []
        for s in deck:
            a, b = cuts[cut_ids[taken[s]]]
            taken[s] += 1
            steps.append({"session_id": bulked[s], **event_body(ref, a, streams[s][a:b])})
            owners.append(s)
            ends.append(b)
        for step, s, end, result in zip(steps, owners, ends, bulk(client, steps), strict=True):
            assert "error" not in result, result
            assert result["session_id"] == step["session_id"]
            assert result["seq"] == end
            got[s].extend(result["outputs"])
    for s, events in enumerate(streams):
        want = []
        for a, b in cuts:
            answer = client.post(f"/v1/sessions/{single[s]}/events", json=event_body(ref, a, events[a:b]))
            assert answer.status_code == 200, answer.text
            want.extend(answer.json()["outputs"])
        assert got[s] == want  # exactly the per-session route's answers
        check(ref, events, got[s])  # and the reference's
        assert seq_of(client, bulked[s]) == len(events)


def test_bulk_steps_are_exactly_once(client: httpx.Client, references: dict[str, Reference]) -> None:
    ref, rng = references["sensor-gru"], random.Random(5)
    sessions = new_sessions(client, "sensor-gru", 3)
    events = [make_events(ref, rng, 2) for _ in sessions]
    steps = [{"session_id": s, **event_body(ref, 0, e)} for s, e in zip(sessions, events, strict=True)]
    first = bulk(client, steps)
    again = bulk(client, steps)  # a retry of the whole request: every step replays its stored answer
    assert again == first
    assert [seq_of(client, s) for s in sessions] == [2, 2, 2]
    # a stale seq with another payload conflicts alone; the step beside it applies
    other = {"session_id": sessions[0], **event_body(ref, 0, make_events(ref, rng, 1))}
    nxt = {"session_id": sessions[1], **event_body(ref, 2, make_events(ref, rng, 1))}
    conflict, applied = bulk(client, [other, nxt])
    assert conflict["error"]["code"] == "seq_conflict" and conflict["error"]["details"]["expected_seq"] == 2
    assert conflict["session_id"] == sessions[0] and applied["seq"] == 3
    assert [seq_of(client, s) for s in sessions] == [2, 3, 2]


def test_a_bad_step_fails_alone(client: httpx.Client, references: dict[str, Reference]) -> None:
    ref, rng = references["lm-lstm"], random.Random(9)
    good, untouched = new_sessions(client, "lm-lstm", 2)
    words = make_events(ref, rng, 2)
    other_key = httpx.post(
        f"{client.base_url}/v1/sessions", json={"model": "lm-lstm"}, headers=auth(KEYS[1])
    ).json()["session_id"]
    steps: list[Any] = [
        {"session_id": untouched, "tokens": "not a list"},  # 422
        {"session_id": good, **event_body(ref, 0, words)},
        {"session_id": "f" * 32, "tokens": ["a"]},  # 404: no such session
        {"session_id": other_key, "tokens": ["a"]},  # 404: another key's session
        {"tokens": ["a"]},  # no session_id
        "not an object",
        {"session_id": untouched, "tokens": ["a"], "top_k": -1},  # 422 again, queued behind the first
    ]
    results = bulk(client, steps)
    codes = [r.get("error", {}).get("code") for r in results]
    assert codes == [
        "invalid_input",
        None,
        "session_not_found",
        "session_not_found",
        "invalid_input",
        "invalid_input",
        "invalid_input",
    ], results
    assert [r["session_id"] for r in results] == [untouched, good, "f" * 32, other_key, None, None, untouched]
    check(ref, words, results[1]["outputs"])
    assert seq_of(client, untouched) == 0 and seq_of(client, good) == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([], 400),
        ({"steps": {}}, 422),
        ({"steps": [], "extra": 1}, 422),
        ({"steps": [{"session_id": "f" * 32, "tokens": ["a"]}] * (MAX_STEPS + 1)}, 413),
    ],
)
def test_bulk_envelope_errors(client: httpx.Client, body: Any, status: int) -> None:
    response = client.post("/v1/steps", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_bulk_needs_a_key(server: ServerProcess) -> None:
    assert httpx.post(f"{server.url}/v1/steps", json={"steps": []}).status_code == 401


def test_websocket_stream_answers_as_the_bulk_route(
    server: ServerProcess, client: httpx.Client, references: dict[str, Reference]
) -> None:
    ref, rng = references["sensor-gru"], random.Random(2)
    over_ws, over_http = new_sessions(client, "sensor-gru", 3), new_sessions(client, "sensor-gru", 3)
    events = [make_events(ref, rng, 3) for _ in over_ws]
    url = f"{server.url.replace('http://', 'ws://')}/v1/stream"
    with connect(url, additional_headers=auth(), proxy=None, open_timeout=30) as ws:
        replies = []
        for t in range(3):  # pipelined: every message sent before a reply is read
            ws.send(
                json.dumps(
                    {
                        "steps": [
                            {"session_id": s, **event_body(ref, t, e[t : t + 1])}
                            for s, e in zip(over_ws, events, strict=True)
                        ]
                    }
                )
            )
        ws.send("not json")
        ws.send(
            json.dumps(
                {"steps": [{"session_id": over_ws[0], **event_body(ref, 3, e[:1])} for e in events[:1]]}
            )
        )
        replies = [json.loads(ws.recv(timeout=30)) for _ in range(5)]
    assert replies[3]["error"]["code"] == "bad_request"  # the stream stayed open after it
    assert replies[4]["results"][0]["seq"] == 4
    for t in range(3):
        expected = bulk(
            client,
            [
                {"session_id": s, **event_body(ref, t, e[t : t + 1])}
                for s, e in zip(over_http, events, strict=True)
            ],
        )
        got = replies[t]["results"]
        assert [r["outputs"] for r in got] == [r["outputs"] for r in expected]
        assert [r["session_id"] for r in got] == over_ws
    with (
        connect(url, proxy=None, open_timeout=30) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "unauthorized"
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
