"""Exactly-once steps through HTTP: replays, duplicates, gaps and concurrent retries."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from e2e_support import Reference, ServerProcess, auth, check_lm, check_sensor, metric_samples

pytestmark = pytest.mark.e2e

MODEL = "lm-gru"


def _counter(server: ServerProcess, name: str) -> float:
    return sum(
        v
        for k, v in metric_samples(httpx.get(f"{server.url}/metrics").text, name).items()
        if f'model="{MODEL}"' in k
    )


def test_replays_duplicates_and_gaps(
    server: ServerProcess, client: httpx.Client, references: dict[str, Reference]
) -> None:
    replays_before = _counter(server, "rnnserve_replays_total")
    conflicts_before = _counter(server, "rnnserve_seq_conflicts_total")
    session = client.post("/v1/sessions", json={"model": MODEL}).json()["session_id"]
    events = f"/v1/sessions/{session}/events"
    outputs: list[dict[str, Any]] = []

    first = client.post(events, json={"seq": 0, "tokens": ["w1", "w2"], "top_k": 3})
    assert first.status_code == 200 and first.json()["seq"] == 2
    outputs += first.json()["outputs"]

    # the same request again (a retry after a lost response): the stored answer, state not advanced
    replay = client.post(events, json={"seq": 0, "tokens": ["w1", "w2"], "top_k": 3})
    assert replay.status_code == 200 and replay.json() == first.json()
    assert client.get(f"/v1/sessions/{session}").json()["seq"] == 2

    # the same seq with other events, a stale seq, a gap: 409 with the position the server is at
    for seq, tokens in ((0, ["w3"]), (1, ["w2"]), (5, ["w3"])):
        conflict = client.post(events, json={"seq": seq, "tokens": tokens, "top_k": 3})
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["error"]["code"] == "seq_conflict"
        assert conflict.json()["error"]["details"]["expected_seq"] == 2

    # concurrent duplicates of one request (a client retrying on a timeout): applied once
    async def duplicates() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=auth(), timeout=30) as c:
            body = {"seq": 2, "tokens": ["w3", "w4"], "top_k": 3}
            return await asyncio.gather(*(c.post(events, json=body) for _ in range(5)))

    answers = asyncio.run(duplicates())
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    assert all(r.json() == answers[0].json() for r in answers)
    assert answers[0].json()["seq"] == 4
    outputs += answers[0].json()["outputs"]

    # without seq the events are simply applied next
    plain = client.post(events, json={"tokens": ["w5"], "top_k": 3})
    assert plain.status_code == 200 and plain.json()["seq"] == 5
    outputs += plain.json()["outputs"]
    check_lm(outputs, references[MODEL].lm(["w1", "w2", "w3", "w4", "w5"], 3))

    assert _counter(server, "rnnserve_replays_total") >= replays_before + 5
    assert _counter(server, "rnnserve_seq_conflicts_total") == conflicts_before + 3


def test_reset_and_state_snapshot_round_trip(client: httpx.Client, references: dict[str, Reference]) -> None:
    model = "sensor-lstm"
    reference = references[model]
    readings = [[20.0 + i, 1000.0 - i, 0.5 + 0.01 * i] for i in range(6)]
    session = client.post("/v1/sessions", json={"model": model}).json()["session_id"]
    client.post(f"/v1/sessions/{session}/events", json={"readings": readings[:3]}).raise_for_status()

    snapshot = client.get(f"/v1/sessions/{session}/state")
    assert snapshot.status_code == 200
    assert snapshot.json()["seq"] == 3 and snapshot.json()["model"] == model
    restored = client.post("/v1/sessions", json={"model": model, "snapshot": snapshot.json()})
    assert restored.status_code == 201, restored.text
    assert restored.json()["seq"] == 3
    assert restored.headers["location"] == f"/v1/sessions/{restored.json()['session_id']}"
    rest = client.post(
        f"/v1/sessions/{restored.json()['session_id']}/events", json={"readings": readings[3:]}
    )
    whole = reference.sensor(readings)
    check_sensor(rest.json()["outputs"], whole[3:], reference.manifest)

    tampered = {**snapshot.json(), "seq": 4}
    refused = client.post("/v1/sessions", json={"model": model, "snapshot": tampered})
    assert refused.status_code in (400, 422), refused.text

    reset = client.post(f"/v1/sessions/{session}/reset")
    assert reset.status_code == 200 and reset.json()["seq"] == 0
    again = client.post(f"/v1/sessions/{session}/events", json={"readings": readings})
    check_sensor(again.json()["outputs"], whole, reference.manifest)
