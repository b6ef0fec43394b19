"""A real server is stopped with SIGTERM mid-stream and started again on the same snapshot path: the
streams go on where they were, with the same outputs as an uninterrupted run."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import Reference, StartServer, check, event_body, make_events
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.e2e

MODELS = ("lm-lstm", "lm-rnn", "sensor-gru", "sensor-lstm")
EVENTS = 16


def test_sigterm_mid_stream_then_restart_loses_nothing(
    start_server: StartServer, tmp_path: Path, references: dict[str, Reference]
) -> None:
    workdir = tmp_path / "restarting"  # both servers: the same RNNSERVE_SNAPSHOT_PATH in here
    first = start_server(workdir=workdir)
    current = {"url": first.url}
    rng = random.Random(11)
    plan = [(model, make_events(references[model], rng, EVENTS)) for model in MODELS]
    sessions = [
        httpx.post(f"{first.url}/v1/sessions", json={"model": m}).json()["session_id"] for m, _ in plan
    ]
    idle = httpx.post(f"{first.url}/v1/sessions", json={"model": "lm-gru"}).json()["session_id"]
    done = 0
    restarted: dict[str, Any] = {}

    async def stream(model: str, session: str, events: list[Any]) -> list[dict[str, Any]]:
        nonlocal done
        reference = references[model]
        outputs: list[dict[str, Any]] = []
        async with httpx.AsyncClient(timeout=30) as client:
            for seq, event in enumerate(events):
                while True:  # retry until answered, across the restart
                    url = f"{current['url']}/v1/sessions/{session}/events"
                    try:
                        response = await client.post(url, json=event_body(reference, seq, [event]))
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                        continue
                    if response.status_code == 503:  # shutting down, or not ready yet
                        await asyncio.sleep(0.05)
                        continue
                    assert response.status_code == 200, response.text
                    break
                outputs.extend(response.json()["outputs"])
                done += 1
                await asyncio.sleep(0.01)
        return outputs

    def restart() -> None:
        assert first.stop() == 0, first.log()  # graceful: drained, snapshot written, exit 0
        with pytest.raises(ConnectionClosed) as closed:
            idle_stream.recv(timeout=10)
        restarted["ws_close"] = closed.value.rcvd.code if closed.value.rcvd else None
        restarted["done_at_stop"] = done
        current["url"] = start_server(workdir=workdir).url

    async def main() -> list[list[dict[str, Any]]]:
        streams = asyncio.gather(*(stream(m, s, e) for (m, e), s in zip(plan, sessions, strict=True)))
        while done < len(plan) * EVENTS // 3:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(restart)
        return await streams

    with connect(f"{first.url.replace('http', 'ws')}/v1/sessions/{idle}/stream", proxy=None) as idle_stream:
        results = asyncio.run(main())
    assert 0 < restarted["done_at_stop"] < len(plan) * EVENTS, "the restart did not happen mid-stream"
    assert restarted["ws_close"] in (1001, 1012), restarted  # going away / service restart
    for (model, events), outputs in zip(plan, results, strict=True):
        check(references[model], events, outputs)
    for session in [*sessions, idle]:
        assert httpx.get(f"{current['url']}/v1/sessions/{session}").status_code == 200
