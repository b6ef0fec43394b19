"""The hostile-client cases of issue 10 against the real server, on every transport: each answers a 4xx
in its route's error shape and leaves the session (seq, idle TTL) as it was. Bodies are sent as raw
bytes: a JSON client would refuse to encode a lone surrogate itself."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from e2e_support import KEYS, MAX_BODY, MAX_EVENTS, ServerProcess, auth
from test_e2e_websocket import open_stream
from websockets.sync.client import connect

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}
DEEP = 900

BAD_LM_BODIES = [
    b'{"text": "w1 \\ud800"}',
    b'{"text": "w1 \\ud800", "seq": 1}',
    b'{"tokens": ["w1", "\\udfff"]}',
    b'{"text": "w1\\u0000w2"}',
    b'{"tokens": ["w1"], "top_k": -1}',
    b'{"tokens": ["w2"], "seq": 0}',  # 409: the session is at 1
    b'{"tokens": ["w1"], "seq": "1"}',
    b'{"tokens": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    b"[" * 5000 + b"]" * 5000,  # deeper than the JSON parser recurses
    b'{"tokens": ["w1"], "seq": ' + b"9" * 5000 + b"}",  # more digits than Python reads (was 1011 / 500)
]
BAD_GENERATE_BODIES = [
    b'{"seed": -1}',
    b'{"seed": 1e400}',
    b'{"temperature": NaN}',
    b'{"max_tokens": 99999999999999999999999}',
]


def session_at_one(client: httpx.Client) -> tuple[str, dict[str, object]]:
    session = client.post("/v1/sessions", json={"model": "lm-gru"}).json()["session_id"]
    assert client.post(f"/v1/sessions/{session}/events", json={"tokens": ["w1"], "seq": 0}).status_code == 200
    info = client.get(f"/v1/sessions/{session}").json()
    time.sleep(0.01)  # so that a touch would show in last_used_at
    return session, info


def unmoved(client: httpx.Client, session: str, before: dict[str, object], after_what: object) -> None:
    """The session as the store holds it (seq; created, last used and expiry times to the millisecond)
    is exactly `before`: checked after each request, so that a failure names the one that moved it."""
    now = client.get(f"/v1/sessions/{session}").json()
    assert now == before, (after_what, before, now)


def test_rest_refuses_bad_bodies_and_moves_nothing(client: httpx.Client) -> None:
    session, before = session_at_one(client)
    for body in BAD_LM_BODIES:
        response = client.post(f"/v1/sessions/{session}/events", content=body, headers=JSON)
        assert 400 <= response.status_code < 500, (body[:60], response.text)
        assert set(response.json()["error"]) == {"code", "message", "details"}
        unmoved(client, session, before, body[:60])
    for body in BAD_GENERATE_BODIES:
        response = client.post(f"/v1/sessions/{session}/generate", content=body, headers=JSON)
        assert response.status_code == 422, (body, response.text)
        unmoved(client, session, before, body)
    surrogate = client.post(f"/v1/sessions/{session}/events", content=BAD_LM_BODIES[0], headers=JSON).json()
    assert "\\ud800" in surrogate["error"]["message"]  # the value as the client wrote it
    unmoved(client, session, before, BAD_LM_BODIES[0])


def test_refusals_by_key_size_or_model_and_reads_move_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Requests refused before their body is looked at (no key, another key's session, too large),
    refused by the session's model, and requests that only read (info, state, a replay, a stream
    opened and closed) leave the session's seq and idle TTL as they were."""
    session, before = session_at_one(client)
    path = f"/v1/sessions/{session}"
    step = {"tokens": ["w2"], "seq": 1}
    cases: list[tuple[str, str, dict[str, str], object, int]] = [
        ("POST", f"{path}/events", {}, step, 401),
        ("POST", f"{path}/events", {"Authorization": "Bearer wrong"}, step, 401),
        ("POST", f"{path}/events", auth(KEYS[1]), step, 404),
        ("POST", f"{path}/generate", auth(KEYS[1]), {"max_tokens": 1}, 404),
        ("POST", f"{path}/reset", auth(KEYS[1]), None, 404),
        ("DELETE", path, auth(KEYS[1]), None, 404),
        ("GET", f"{path}/state", auth(KEYS[1]), None, 404),
        ("POST", f"{path}/events", auth(), {"tokens": ["w2"] * (MAX_EVENTS + 1), "seq": 1}, 422),
        ("POST", f"{path}/events", auth(), {"tokens": ["w2" * MAX_BODY], "seq": 1}, 413),
        ("POST", f"{path}/events", auth(), {"readings": [[1.0, 2.0, 3.0]], "seq": 1}, 422),
        ("POST", f"{path}/generate", auth(), {"max_tokens": 51}, 422),
        ("GET", path, auth(), None, 200),
        ("GET", f"{path}/state", auth(), None, 200),
        ("POST", f"{path}/events", auth(), {"tokens": ["w1"], "seq": 0}, 200),  # a replay applies nothing
    ]
    for method, url, headers, body, status in cases:
        response = httpx.request(method, f"{server.url}{url}", headers=headers, json=body, timeout=30)
        assert response.status_code == status, (method, url, response.text)
        unmoved(client, session, before, (method, url, status))
    bulk = client.post("/v1/steps", json={"steps": [{"session_id": session, "tokens": ["w2"], "seq": 5}]})
    assert bulk.json()["results"][0]["error"]["code"] == "seq_conflict", bulk.text
    unmoved(client, session, before, "bulk step at a wrong seq")
    with open_stream(server, session, key=KEYS[1]) as ws:  # another key's session: refused at connect
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "session_not_found"
    with open_stream(server, session):
        pass  # opened (the session is looked up) and closed without a message
    unmoved(client, session, before, "streams opened")


def test_websocket_answers_bad_messages_and_stays_open(server: ServerProcess, client: httpx.Client) -> None:
    session, before = session_at_one(client)
    with open_stream(server, session) as ws:
        for body in BAD_LM_BODIES:
            ws.send(body.decode())
            reply = json.loads(ws.recv(timeout=30))
            assert set(reply) == {"error"} and reply["error"]["code"] in (
                "bad_request",
                "invalid_input",
                "seq_conflict",
            ), (body[:60], reply)
        assert client.get(f"/v1/sessions/{session}").json() == before
        ws.send(json.dumps({"tokens": ["w2"], "seq": 1}))
        assert json.loads(ws.recv(timeout=30))["seq"] == 2


def v2(client: httpx.Client, body: bytes, header_length: int | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return client.post("/v2/models/lm-gru/infer", content=body, headers=headers)


def test_v2_refuses_hostile_requests_and_moves_no_sequence(client: httpx.Client) -> None:
    def x(data: str, **params: object) -> bytes:
        head = {"parameters": params, "inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 1]}]}
        return (
            json.dumps(head)
            .encode()
            .replace(b'"shape": [1, 1]', b'"shape": [1, 1], "data": ' + data.encode())
        )

    started = v2(client, x("[2]", sequence_id="hostile", sequence_start=True, seq=0))
    assert started.status_code == 200, started.text
    bad = [
        x("[" * DEEP + "2" + "]" * DEEP, sequence_id="hostile"),
        x("[2]", sequence_id=2**64),
        x("[2]", sequence_id="hostile", sequence_start=True, top_k=-1),
        x("[2]", sequence_id="hostile", sequence_end=True, top_k=-1),
        x("[2]", sequence_id="hostile", seq=5),
        x("[2]", sequence_id="hostile").replace(b"{", b'{"id": "\\ud800", ', 1),
        x("[" + "2" * 5000 + "]", sequence_id="hostile"),  # was 500: more digits than Python reads
        # was a hang: no values, so empty data matched, then 2^31 empty events were built
        x("[]", sequence_id="hostile").replace(b"[1, 1]", b"[1, 2147483648]"),
    ]
    for body in bad:
        response = v2(client, body)
        assert 400 <= response.status_code < 500, (body[:80], response.text)
        assert isinstance(response.json()["error"], str)
    head = json.dumps(
        {
            "parameters": {"sequence_id": "hostile"},
            "inputs": [
                {"name": "x", "datatype": "INT64", "shape": [1, 1], "parameters": {"binary_data_size": 7}}
            ],
        }
    ).encode()
    assert v2(client, head + b"\x02" * 7, len(head)).status_code == 422
    # the sequence is where the start left it: the next request at seq 1 applies
    going = v2(client, x("[3]", sequence_id="hostile", seq=1))
    assert going.status_code == 200 and going.json()["parameters"]["seq"] == 2, going.text
    assert v2(client, x("[3]", sequence_id="hostile", seq=1)).json() == going.json()  # a retry: replayed


def test_bulk_refuses_a_session_id_that_is_not_text(server: ServerProcess, client: httpx.Client) -> None:
    """A lone surrogate in a step's session_id failed the whole answer (500; the bulk WebSocket dropped
    without a close frame): the step alone is refused, and the others apply."""
    session, _ = session_at_one(client)
    body = (
        b'{"steps": [{"session_id": "\\ud800", "tokens": ["w1"]}, {"session_id": "%s", "seq": 1, '
        % (session.encode())
        + b'"tokens": ["w2"]}, {"session_id": "\\u0001", "tokens": ["w1"]}]}'
    )
    response = client.post("/v1/steps", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r.get("error", {}).get("code") for r in results] == ["invalid_input", None, "invalid_input"]
    assert results[1]["seq"] == 2
    with connect(
        f"{server.url.replace('http://', 'ws://')}/v1/stream", additional_headers=auth(), proxy=None
    ) as ws:
        ws.send(body.decode().replace('"seq": 1', '"seq": 2'))
        results = json.loads(ws.recv(timeout=30))["results"]
    assert [r.get("error", {}).get("code") for r in results] == ["invalid_input", None, "invalid_input"]
    assert results[1]["seq"] == 3
