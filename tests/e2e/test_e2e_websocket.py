"""The WebSocket stream end to end: replies in order, errors in the stream, auth at connect."""

from __future__ import annotations

import json
import random
import socket
import time
from typing import Any

import httpx
import pytest
from e2e_support import KEYS, Reference, ServerProcess, auth, check_lm, check_sensor
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.e2e


def ws_url(server: ServerProcess, session: str, query: str = "") -> str:
    return f"{server.url.replace('http://', 'ws://')}/v1/sessions/{session}/stream{query}"


def open_stream(
    server: ServerProcess, session: str, query: str = "", key: str | None = KEYS[0]
) -> ClientConnection:
    headers = auth(key) if key is not None else None
    return connect(ws_url(server, session, query), additional_headers=headers, proxy=None, open_timeout=30)


def replies(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [json.loads(ws.recv(timeout=30)) for _ in range(count)]


def refused_with(server: ServerProcess, session: str, code: int, error: str, **kwargs: Any) -> None:
    with open_stream(server, session, **kwargs) as ws:
        body = json.loads(ws.recv(timeout=30))
        assert body["error"]["code"] == error, body
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


def test_pipelined_events_are_answered_in_order(
    server: ServerProcess, client: httpx.Client, references: dict[str, Reference]
) -> None:
    rng = random.Random(3)
    tokens = [rng.choice(references["lm-lstm"].vocab) for _ in range(12)]
    session = client.post("/v1/sessions", json={"model": "lm-lstm"}).json()["session_id"]
    with open_stream(server, session) as ws:
        for seq, token in enumerate(tokens):  # all sent before any reply is read
            ws.send(json.dumps({"seq": seq, "tokens": [token], "top_k": 4}))
        answers = replies(ws, len(tokens))
    assert [a["seq"] for a in answers] == list(range(1, len(tokens) + 1))
    check_lm([a["outputs"][0] for a in answers], references["lm-lstm"].lm(tokens, 4))
    text = httpx.get(f"{server.url}/metrics").text
    counted = 'rnnserve_requests_total{method="WS",route="/v1/sessions/{session_id}/stream",status="200"}'
    assert counted in text


def test_sensor_stream_with_token_in_the_query(
    server: ServerProcess, client: httpx.Client, references: dict[str, Reference]
) -> None:
    readings = [[20.0 + i % 3, 1000.0 + i, 0.5 - 0.01 * i] for i in range(8)]
    session = client.post("/v1/sessions", json={"model": "sensor-lstm"}).json()["session_id"]
    with open_stream(server, session, query=f"?token={KEYS[0]}", key=None) as ws:
        ws.send(json.dumps({"readings": readings[:3]}))
        for reading in readings[3:]:
            ws.send(json.dumps({"readings": [reading]}).encode())  # binary frames are read as UTF-8 JSON
        answers = replies(ws, 6)
    outputs = [o for a in answers for o in a["outputs"]]
    check_sensor(outputs, references["sensor-lstm"].sensor(readings), references["sensor-lstm"].manifest)


def test_permessage_deflate_is_declined_unless_turned_on(
    server: ServerProcess, start_server: Any, references: dict[str, Reference]
) -> None:
    """A client that offers permessage-deflate (the websockets library does by default, as browsers
    do) gets plain frames: deflating answers of a few hundred bytes costs more server CPU than the
    service's own work (README, Configuration). RNNSERVE_WS_PER_MESSAGE_DEFLATE=true accepts the offer, and
    the stream answers the same either way."""
    on = start_server(api_keys=",".join(KEYS), ws_per_message_deflate="true")
    readings = [[20.0, 1000.0 + i, 0.5] for i in range(4)]
    negotiated = {}
    for name, target in (("default", server), ("on", on)):
        with httpx.Client(base_url=target.url, headers=auth(KEYS[0])) as http:
            session = http.post("/v1/sessions", json={"model": "sensor-lstm"}).json()["session_id"]
        with open_stream(target, session) as ws:  # compression="deflate": offered
            assert (
                ws.request is not None
                and "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
            )
            assert ws.response is not None
            negotiated[name] = ws.response.headers.get("Sec-WebSocket-Extensions")
            for reading in readings:
                ws.send(json.dumps({"readings": [reading]}))
            outputs = [o for a in replies(ws, len(readings)) for o in a["outputs"]]
        check_sensor(outputs, references["sensor-lstm"].sensor(readings), references["sensor-lstm"].manifest)
    assert negotiated["default"] is None
    assert negotiated["on"] is not None and negotiated["on"].startswith("permessage-deflate")


def test_bad_messages_are_answered_and_the_stream_goes_on(
    server: ServerProcess, client: httpx.Client
) -> None:
    session = client.post("/v1/sessions", json={"model": "lm-rnn"}).json()["session_id"]
    with open_stream(server, session) as ws:
        for message in (
            {"seq": 0, "tokens": ["w1"]},
            "{not json",
            "[1, 2]",
            {"seq": 0, "tokens": ["w2"]},
            {"tokens": ["w1"] * 1000},
            {"seq": 1, "tokens": ["w2"]},
        ):
            ws.send(message if isinstance(message, str) else json.dumps(message))
        codes = [a["error"]["code"] if "error" in a else a["seq"] for a in replies(ws, 6)]
    assert codes == [1, "bad_request", "bad_request", "seq_conflict", "invalid_input", 2]


def test_connect_is_refused_with_a_reason(server: ServerProcess, client: httpx.Client) -> None:
    session = client.post("/v1/sessions", json={"model": "lm-rnn"}).json()["session_id"]
    refused_with(server, session, 4401, "unauthorized", key=None)
    refused_with(server, session, 4401, "unauthorized", key="wrong-key")
    refused_with(server, session, 4401, "unauthorized", query="?token=wrong-key", key=None)
    refused_with(server, session, 4404, "session_not_found", key=KEYS[1])  # another key's session
    refused_with(server, "0123456789abcdef0123456789abcdef", 4404, "session_not_found")
    assert client.delete(f"/v1/sessions/{session}").status_code == 204
    refused_with(server, session, 4410, "session_deleted")


def test_a_client_that_leaves_mid_stream_ends_it_quietly(server: ServerProcess, client: httpx.Client) -> None:
    """The client pipelines many steps and drops its socket without a close: the server finds it gone
    when it sends an answer, ends that stream without an error logged, and the session holds exactly
    the steps it applied (a new stream goes on from its seq; the last applied step replays)."""
    session = client.post("/v1/sessions", json={"model": "lm-lstm"}).json()["session_id"]
    with open_stream(server, session) as ws:
        for seq in range(200):
            ws.send(json.dumps({"seq": seq, "tokens": ["w1"]}))
        ws.socket.shutdown(socket.SHUT_RDWR)  # no closing handshake: the answers have nowhere to go
    applied, settled = -1, 0
    while settled < 5:  # the steps already read keep running; wait until the seq stops moving
        time.sleep(0.1)
        seq = client.get(f"/v1/sessions/{session}").json()["seq"]
        applied, settled = seq, settled + 1 if seq == applied else 0
    assert 0 < applied < 200  # some steps ran, and the socket was gone before the last
    with open_stream(server, session) as again:
        again.send(json.dumps({"seq": applied - 1, "tokens": ["w1"]}))  # the last applied: a replay
        again.send(json.dumps({"seq": applied, "tokens": ["w1"]}))
        replay, step = replies(again, 2)
    assert replay["seq"] == applied and step["seq"] == applied + 1
    assert "unhandled error" not in server.log()
