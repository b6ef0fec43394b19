"""A real server is killed with SIGKILL mid-stream (no shutdown, no last snapshot) and started again on
the same snapshot path. What it loses is bounded by the periodic snapshot: every step acknowledged
before the last snapshot was taken is there, each restored session holds exactly the state of the
steps up to its restored seq, ended ids still answer 410, and the clients go on by `seq` (a 409 says
where to resume) to the same outputs as an uninterrupted run."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from e2e_support import TOLERANCE, Reference, ServerProcess, StartServer, check, event_body, make_events

from service.store.snapshot_file import read_snapshot

pytestmark = pytest.mark.e2e

MODELS = ("lm-lstm", "lm-gru", "sensor-gru", "sensor-lstm")
EVENTS = 60
PACE_S = 0.05  # between a stream's steps: 60 steps take >= 3 s, so the kill (after 1 s) is mid-stream
INTERVAL = 0.25  # RNNSERVE_SNAPSHOT_INTERVAL_S of the test servers
# a snapshot is written within INTERVAL plus the time one takes (milliseconds here); the slack only
# absorbs a loaded machine's scheduling delays
SLACK_S = 3.0


def reference_state(reference: Reference, events: list[Any]) -> np.ndarray:
    """The state after `events` from the zero state, as GET /state encodes it (state tensors in
    manifest order, [L, H] each, concatenated)."""
    layers, hidden = reference.manifest.state_shape
    states = reference.manifest.onnx.states
    if not events:
        return np.zeros(len(states) * layers * hidden, np.float32)
    x = event_body(reference, 0, events)
    feed: dict[str, np.ndarray] = {}
    if reference.manifest.task == "lm":
        index = {t: i for i, t in enumerate(reference.vocab)}
        unk = index[reference.manifest.lm.unk_token] if reference.manifest.lm else 0
        feed["x"] = np.asarray([[index.get(t, unk) for t in x["tokens"]]], np.int64)
    else:
        spec = reference.manifest.sensor
        assert spec is not None
        feed["x"] = ((np.asarray(x["readings"]) - spec.mean) / np.asarray(spec.std)).astype(np.float32)[None]
    for state in states:
        feed[state.input] = np.zeros((layers, 1, hidden), np.float32)
    outputs = reference.session.run([s.output for s in states], feed)
    return np.concatenate([o[:, 0].ravel() for o in outputs])


def test_sigkill_mid_stream_loses_at_most_the_snapshot_window(
    start_server: StartServer, tiny_models_dir: Path, tmp_path: Path, references: dict[str, Reference]
) -> None:
    workdir = tmp_path / "crashing"  # both servers: the same RNNSERVE_SNAPSHOT_PATH in here
    first = ServerProcess(tiny_models_dir, workdir, snapshot_interval_s=str(INTERVAL)).wait_ready()
    current = {"url": first.url}
    rng = random.Random(17)
    plan = [(model, make_events(references[model], rng, EVENTS)) for model in MODELS]
    sessions = [
        httpx.post(f"{first.url}/v1/sessions", json={"model": m}).json()["session_id"] for m, _ in plan
    ]
    idle = httpx.post(f"{first.url}/v1/sessions", json={"model": "lm-rnn"}).json()["session_id"]
    ended = httpx.post(f"{first.url}/v1/sessions", json={"model": "lm-rnn"}).json()["session_id"]
    assert httpx.delete(f"{first.url}/v1/sessions/{ended}").status_code == 204
    acked: list[list[tuple[float, int]]] = [[] for _ in plan]  # per stream: (wall time answered, seq after)
    resumed: list[list[tuple[int, int]]] = [[] for _ in plan]  # per stream: (seq sent, seq the 409 expected)
    crash: dict[str, Any] = {}

    async def stream(i: int, session: str, reference: Reference, events: list[Any]) -> list[dict[str, Any]]:
        outputs: dict[int, dict[str, Any]] = {}
        seq = 0
        async with httpx.AsyncClient(timeout=30) as client:
            while seq < len(events):
                url = f"{current['url']}/v1/sessions/{session}/events"
                try:
                    response = await client.post(url, json=event_body(reference, seq, [events[seq]]))
                except httpx.TransportError:  # killed: retry the same request until a server answers
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code == 503:  # not ready yet
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code == 409:  # the crash lost steps: go on from where the server is
                    expected = response.json()["error"]["details"]["expected_seq"]
                    assert 0 <= expected < seq, response.text
                    resumed[i].append((seq, expected))
                    seq = expected
                    continue
                assert response.status_code == 200, response.text
                assert response.json()["seq"] == seq + 1
                outputs[seq] = response.json()["outputs"][0]  # a replay after the crash: the same answer
                seq += 1
                acked[i].append((time.time(), seq))
                await asyncio.sleep(PACE_S)
        return [outputs[t] for t in range(len(events))]

    def crash_and_restart() -> None:
        crash["killed_at"] = time.time()
        assert first.kill() == -9
        crash["acked"] = [a[-1][1] if a else 0 for a in acked]
        header, _ = read_snapshot(workdir / "sessions.snapshot")  # what the killed server left
        crash["saved_at"] = float(header["saved_at"])
        second = start_server(workdir=workdir, snapshot_interval_s=str(INTERVAL))
        # before any client reaches it: each session as restored
        crash["restored"] = []
        for (model, events), session in zip(plan, sessions, strict=True):
            got = httpx.get(f"{second.url}/v1/sessions/{session}/state")
            assert got.status_code == 200, got.text
            seq = got.json()["seq"]
            state = np.frombuffer(base64.b64decode(got.json()["state"]), "<f4")
            want = reference_state(references[model], events[:seq])
            # the graph's recurrent state first; a sensor session keeps its score statistics after it
            assert state.size >= want.size, (model, state.size)
            assert np.allclose(state[: want.size], want, rtol=TOLERANCE, atol=TOLERANCE), (model, seq)
            crash["restored"].append(seq)
        crash["idle"] = httpx.get(f"{second.url}/v1/sessions/{idle}").status_code
        crash["ended"] = httpx.get(f"{second.url}/v1/sessions/{ended}").json()
        current["url"] = second.url

    async def main() -> list[list[dict[str, Any]]]:
        streams = asyncio.gather(
            *(
                stream(i, s, references[m], e)
                for i, ((m, e), s) in enumerate(zip(plan, sessions, strict=True))
            )
        )
        started = time.monotonic()
        while (
            sum(len(a) for a in acked) < len(plan) * EVENTS // 4 or time.monotonic() - started < 4 * INTERVAL
        ):
            await asyncio.sleep(0.01)
        await asyncio.to_thread(crash_and_restart)
        return await streams

    results = asyncio.run(main())
    assert 0 < sum(crash["acked"]) < len(plan) * EVENTS, "the crash did not happen mid-stream"
    window = crash["killed_at"] - crash["saved_at"]
    assert 0 < window < INTERVAL + SLACK_S, window  # the file was a recent periodic snapshot
    for i, restored in enumerate(crash["restored"]):
        before_snapshot = max((seq for t, seq in acked[i] if t < crash["saved_at"]), default=0)
        assert before_snapshot <= restored <= crash["acked"][i] + 1, (i, before_snapshot, crash)
        assert all(expected == restored for _, expected in resumed[i]), (resumed[i], restored)
    assert crash["idle"] == 200
    assert crash["ended"]["error"]["code"] == "session_deleted"
    for (model, events), outputs in zip(plan, results, strict=True):
        check(references[model], events, outputs)
