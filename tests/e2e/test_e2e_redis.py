"""store=redis through HTTP: two real server processes (replicas) share sessions through one real
redis-server; duplicates sent to both apply once; Redis killed answers 503 `store_unavailable` with
Retry-After, and the stream goes on when it is back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    KEYS,
    Reference,
    ServerProcess,
    StartServer,
    auth,
    check,
    event_body,
    make_events,
    metric_samples,
)
from integration.service.redis_support import NO_REDIS, REDIS_SERVER, RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS)]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", durable=True)  # AOF fsync'ed per write: survives a SIGKILL
    yield server
    server.kill()


def _replicas(start_server: StartServer, redis_server: RedisServer) -> list[ServerProcess]:
    settings = {"store": "redis", "redis_url": redis_server.url, "api_keys": ",".join(KEYS)}
    return [start_server(**settings), start_server(**settings)]


def _replays(server: ServerProcess) -> float:
    return sum(metric_samples(httpx.get(f"{server.url}/metrics").text, "rnnserve_replays_total").values())


def test_two_replicas_share_sessions_and_apply_duplicates_once(
    start_server: StartServer, redis_server: RedisServer, references: dict[str, Reference]
) -> None:
    replicas = _replicas(start_server, redis_server)
    reference = references["lm-gru"]
    events = make_events(reference, random.Random(3), 8)
    created = httpx.post(f"{replicas[0].url}/v1/sessions", json={"model": "lm-gru"}, headers=auth())
    assert created.status_code == 201, created.text
    path = f"/v1/sessions/{created.json()['session_id']}/events"

    async def send_everywhere(body: dict[str, Any]) -> list[httpx.Response]:
        """The same request to both replicas, three times each, at once (a client retrying)."""
        async with httpx.AsyncClient(headers=auth(), timeout=30) as c:
            urls = [r.url + path for r in replicas] * 3
            return await asyncio.gather(*(c.post(url, json=body) for url in urls))

    outputs: list[dict[str, Any]] = []
    for seq in range(0, len(events), 2):
        answers = asyncio.run(send_everywhere(event_body(reference, seq, events[seq : seq + 2])))
        assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
        assert all(r.json() == answers[0].json() for r in answers)
        outputs += answers[0].json()["outputs"]
    check(reference, events, outputs)
    assert sum(_replays(r) for r in replicas) == 5 * len(events) // 2  # 5 of every 6 were replays
    info = httpx.get(replicas[1].url + path.removesuffix("/events"), headers=auth()).json()
    assert info["seq"] == len(events)


def test_redis_killed_answers_503_and_the_stream_goes_on(
    start_server: StartServer, redis_server: RedisServer, references: dict[str, Reference]
) -> None:
    replicas = _replicas(start_server, redis_server)
    reference = references["sensor-lstm"]
    events = make_events(reference, random.Random(5), 6)
    with httpx.Client(headers=auth(), timeout=30) as client:
        created = client.post(f"{replicas[0].url}/v1/sessions", json={"model": "sensor-lstm"})
        path = f"/v1/sessions/{created.json()['session_id']}/events"
        outputs: list[dict[str, Any]] = []
        for seq, event in enumerate(events):
            url = replicas[seq % 2].url + path
            if seq == 3:
                redis_server.kill()
                down = client.post(url, json=event_body(reference, seq, [event]))
                assert down.status_code == 503, down.text
                assert down.json()["error"]["code"] == "store_unavailable"
                assert int(down.headers["Retry-After"]) >= 1
                assert all(httpx.get(f"{r.url}/healthz").status_code == 200 for r in replicas)
                redis_server.start()
            response = client.post(url, json=event_body(reference, seq, [event]))
            assert response.status_code == 200, response.text
            outputs += response.json()["outputs"]
    check(reference, events, outputs)
