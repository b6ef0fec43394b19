"""Every error status of the design's table, through HTTP, in the one error shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_support import KEYS, MAX_BODY, MAX_EVENTS, ServerProcess, StartServer, auth

pytestmark = pytest.mark.e2e


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    details: dict[str, object] = body["error"]["details"]
    return details


@pytest.fixture
def lm_session(client: httpx.Client) -> str:
    return str(client.post("/v1/sessions", json={"model": "lm-rnn"}).json()["session_id"])


@pytest.fixture
def sensor_session(client: httpx.Client) -> str:
    return str(client.post("/v1/sessions", json={"model": "sensor-rnn"}).json()["session_id"])


def test_400_malformed_bodies(client: httpx.Client, lm_session: str) -> None:
    events = f"/v1/sessions/{lm_session}/events"
    headers = {"Content-Type": "application/json"}
    error_of(client.post(events, content=b'{"tokens": [', headers=headers), 400, "bad_request")
    error_of(client.post(events, content=b'["w1"]', headers=headers), 400, "bad_request")
    error_of(client.post(events, content=b"", headers=headers), 400, "bad_request")
    error_of(
        client.post(
            "/v1/sessions",
            content=b"model=lm-rnn",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        400,
        "bad_request",
    )
    error_of(
        client.post(f"/v1/sessions/{lm_session}/generate", content=b"{", headers=headers), 400, "bad_request"
    )


def test_401_without_or_with_a_wrong_key(server: ServerProcess) -> None:
    for headers in (
        {},
        auth("not-a-key"),
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": "Bearer"},
    ):
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        error_of(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    error_of(httpx.post(f"{server.url}/v1/sessions", json={"model": "lm-rnn"}), 401, "unauthorized")
    assert httpx.get(f"{server.url}/v1/models", headers=auth(KEYS[1])).status_code == 200
    # probes and scrapes carry no key
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_404_unknown_model_session_route_and_other_keys_session(
    server: ServerProcess, client: httpx.Client, lm_session: str
) -> None:
    error_of(client.post("/v1/sessions", json={"model": "no-such-model"}), 404, "model_not_found")
    error_of(client.post("/v1/sessions", json={"model": "lm-rnn", "version": "99"}), 404, "model_not_found")
    unknown = "0123456789abcdef0123456789abcdef"
    error_of(client.get(f"/v1/sessions/{unknown}"), 404, "session_not_found")
    error_of(client.post(f"/v1/sessions/{unknown}/events", json={"tokens": ["w1"]}), 404, "session_not_found")
    error_of(client.get("/v1/no-such-route"), 404, "not_found")
    error_of(client.put("/v1/models"), 405, "method_not_allowed")
    # the session exists, but for another key it does not
    with httpx.Client(base_url=server.url, headers=auth(KEYS[1])) as other:
        error_of(other.get(f"/v1/sessions/{lm_session}"), 404, "session_not_found")
        error_of(
            other.post(f"/v1/sessions/{lm_session}/events", json={"tokens": ["w1"]}), 404, "session_not_found"
        )
        error_of(other.delete(f"/v1/sessions/{lm_session}"), 404, "session_not_found")
    assert client.get(f"/v1/sessions/{lm_session}").status_code == 200


def test_409_seq_conflict_carries_expected_seq(client: httpx.Client, lm_session: str) -> None:
    details = error_of(
        client.post(f"/v1/sessions/{lm_session}/events", json={"seq": 3, "tokens": ["w1"]}),
        409,
        "seq_conflict",
    )
    assert details["expected_seq"] == 0


def test_410_deleted(client: httpx.Client, lm_session: str) -> None:
    deleted = client.delete(f"/v1/sessions/{lm_session}")
    assert deleted.status_code == 204 and deleted.content == b""
    error_of(client.get(f"/v1/sessions/{lm_session}"), 410, "session_deleted")
    error_of(
        client.post(f"/v1/sessions/{lm_session}/events", json={"tokens": ["w1"]}), 410, "session_deleted"
    )
    error_of(client.delete(f"/v1/sessions/{lm_session}"), 410, "session_deleted")


def test_413_body_too_large_declared_or_streamed(client: httpx.Client, lm_session: str) -> None:
    events = f"/v1/sessions/{lm_session}/events"
    big = b'{"tokens": [' + b'"w1",' * MAX_BODY + b'"w1"]}'
    details = error_of(
        client.post(events, content=big, headers={"Content-Type": "application/json"}),
        413,
        "payload_too_large",
    )
    assert details["limit_bytes"] == MAX_BODY

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as the bytes arrive
        yield b'{"tokens": ['
        for _ in range(MAX_BODY // 1000 + 1):
            yield b'"w1",' * 200
        yield b'"w1"]}'

    error_of(
        client.post(events, content=chunks(), headers={"Content-Type": "application/json"}),
        413,
        "payload_too_large",
    )
    # the session is untouched and the connection still serves
    assert client.get(f"/v1/sessions/{lm_session}").json()["seq"] == 0


def test_422_invalid_values(client: httpx.Client, lm_session: str, sensor_session: str) -> None:
    readings = f"/v1/sessions/{sensor_session}/events"
    headers = {"Content-Type": "application/json"}
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = b'{"readings": [[20.0, ' + literal + b", 0.5]]}"
        error_of(client.post(readings, content=body, headers=headers), 422, "invalid_input")
    error_of(client.post(readings, json={"readings": [[20.0, 1000.0]]}), 422, "invalid_input")
    error_of(
        client.post(readings, json={"readings": [[20.0, 1000.0, 0.5]] * (MAX_EVENTS + 1)}),
        422,
        "invalid_input",
    )
    tokens = f"/v1/sessions/{lm_session}/events"
    error_of(client.post(tokens, json={"tokens": ["w1"] * (MAX_EVENTS + 1)}), 422, "invalid_input")
    error_of(client.post(tokens, json={"token": ["w1"]}), 422, "invalid_input")
    error_of(client.post(tokens, json={"tokens": ["w1"], "top_k": -1}), 422, "invalid_input")
    error_of(
        client.post(f"/v1/sessions/{lm_session}/generate", json={"max_tokens": 51}), 422, "invalid_input"
    )
    error_of(
        client.post("/v1/sessions", json={"model": "lm-rnn", "snapshot": {"format": 1}}), 422, "invalid_input"
    )
    # nothing was applied by any of them
    assert client.get(f"/v1/sessions/{lm_session}").json()["seq"] == 0
    assert client.get(f"/v1/sessions/{sensor_session}").json()["seq"] == 0


def test_unknown_words_are_flagged_not_refused(client: httpx.Client, lm_session: str) -> None:
    response = client.post(f"/v1/sessions/{lm_session}/events", json={"text": "w1 never-seen w2"})
    assert response.status_code == 200
    assert [o["unknown"] for o in response.json()["outputs"]] == [False, True, False]


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    assert (
        client.get("/v1/models", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
    )
    made = client.get("/v1/models", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert made != "bad id with spaces" and len(made) == 32
    assert client.get("/v1/no-such-route").headers["x-request-id"]


def test_metrics_label_routes_by_template(
    server: ServerProcess, client: httpx.Client, lm_session: str
) -> None:
    client.post(f"/v1/sessions/{lm_session}/events", json={"tokens": ["w1"]}).raise_for_status()
    text = httpx.get(f"{server.url}/metrics").text
    assert 'route="/v1/sessions/{session_id}/events",status="200"' in text
    assert lm_session not in text
    assert "rnnserve_request_duration_seconds_bucket" in text


def test_429_when_full_with_the_reject_policy(start_server: StartServer) -> None:
    server = start_server(max_sessions="2", capacity_policy="reject")
    for _ in range(2):
        assert httpx.post(f"{server.url}/v1/sessions", json={"model": "lm-lstm"}).status_code == 201
    refused = httpx.post(f"{server.url}/v1/sessions", json={"model": "lm-lstm"})
    error_of(refused, 429, "capacity_exceeded")
    assert int(refused.headers["retry-after"]) >= 1
    # capacity is per model version
    assert httpx.post(f"{server.url}/v1/sessions", json={"model": "lm-gru"}).status_code == 201


def test_410_evicted_and_expired(start_server: StartServer) -> None:
    ttl = 1.5
    server = start_server(max_sessions="2", capacity_policy="evict", session_ttl_s=str(ttl))
    ids = [
        httpx.post(f"{server.url}/v1/sessions", json={"model": "sensor-gru"}).json()["session_id"]
        for _ in range(3)
    ]
    error_of(httpx.get(f"{server.url}/v1/sessions/{ids[0]}"), 410, "session_evicted")
    assert httpx.get(f"{server.url}/v1/sessions/{ids[2]}").status_code == 200
    deadline = time.monotonic() + ttl + 10
    while (response := httpx.get(f"{server.url}/v1/sessions/{ids[1]}")).status_code == 200:
        assert time.monotonic() < deadline, "the idle session never expired"
        time.sleep(0.2)
    error_of(response, 410, "session_expired")
    text = httpx.get(f"{server.url}/metrics").text
    assert 'rnnserve_sessions_ended_total{model="sensor-gru",reason="evicted"} 1.0' in text


def test_503_until_models_are_loaded(start_server: StartServer, tmp_path: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    server = start_server(models_dir=empty, ready=False)
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    error_of(httpx.get(f"{server.url}/readyz"), 503, "not_ready")
    v2 = httpx.get(f"{server.url}/v2/health/ready")
    assert v2.status_code == 503 and v2.json()["code"] == "not_ready" and isinstance(v2.json()["error"], str)
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
