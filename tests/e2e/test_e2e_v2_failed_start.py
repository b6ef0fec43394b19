"""A V2 `sequence_start` that the server refuses after validation leaves the running sequence of that
id exactly as it was (session, seq, state, stored answer, idle TTL), against a real server process.

The failures are genuine, no mocks: the sequence runs on version 1 of a model, and the start names
version 2, which is at its max_sessions (429), then being unloaded while a session keeps it draining
(404). Both requests are valid; each is refused only when the new sequence would be made. Before the
start was transactional, the running sequence was ended first and lost either way."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from e2e_support import Reference, StartServer, close

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": "Bearer admin-secret"}
V1, V2 = "/v2/models/lm/versions/1/infer", "/v2/models/lm/versions/2/infer"
# the sequence's own session (SessionManager.sequence_session_id: no API keys, model lm, integer id 7),
# read through the REST routes to compare everything the store holds for it
SESSION = "/v1/sessions/seq-open-lm:i7"


def infer(client: httpx.Client, route: str, ids: np.ndarray, **params: Any) -> httpx.Response:
    tensor = {"name": "x", "datatype": "INT64", "shape": list(ids.shape), "data": ids.tolist()}
    return client.post(route, json={"inputs": [tensor], "parameters": {"sequence_id": 7, **params}})


def logprobs(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    out = {o["name"]: o for o in response.json()["outputs"]}["TOKEN_LOGPROB"]
    return [float(v) for v in np.ravel(out["data"])]


def stored(client: httpx.Client) -> tuple[Any, Any]:
    """The sequence's session info (seq, created, last used, expiry to the millisecond) and state."""
    info = client.get(SESSION)
    assert info.status_code == 200, info.text
    return info.json(), client.get(f"{SESSION}/state").json()


def refused_with(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code, response.text


def test_a_refused_start_leaves_the_running_sequence_as_it_was(
    start_server: StartServer,
    tiny_models_dir: Path,
    tmp_path: Path,
    publish: Callable[[Path, Path, str, str], Path],
) -> None:
    models = tmp_path / "models"
    publish(tiny_models_dir / "lm-gru" / "1", models, "lm", "1")
    publish(tiny_models_dir / "lm-lstm" / "1", models, "lm", "2")
    reference = Reference.load(models / "lm" / "1")
    server = start_server(models_dir=models, max_sessions="1", admin_keys="admin-secret")
    ids = np.array([[3, 9, 0, 17, 22, 5]], np.int64)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert infer(client, V1, ids[:, :2], sequence_start=True, seq=0).status_code == 200
        last = infer(client, V1, ids[:, 2:4], seq=2)
        assert last.status_code == 200, last.text
        # version 2 holds its one session: a REST one
        assert client.post("/v1/sessions", json={"model": "lm", "version": "2"}).status_code == 201
        before = stored(client)
        time.sleep(0.01)  # a touch would show in last_used_at (milliseconds)

        refused_with(infer(client, V2, ids[:, :1], sequence_start=True), 429, "capacity_exceeded")
        assert stored(client) == before
        refused_with(infer(client, V2, ids[:, :1], sequence_start=True, seq=0), 429, "capacity_exceeded")
        assert stored(client) == before

        # version 2 drains: its session keeps it loaded, it takes no new sessions
        unload = client.post("/v1/admin/models/lm/versions/2/unload", headers=ADMIN)
        assert unload.status_code in (200, 202), unload.text
        for end in (False, True):
            refused = infer(client, V2, ids[:, :1], sequence_start=True, sequence_end=end)
            refused_with(refused, 404, "model_not_found")
            assert stored(client) == before

        # the stored answer is still the last request's (a retry replays it) and the sequence goes on
        # from where it was, as the graph run on the whole sequence says
        assert infer(client, V1, ids[:, 2:4], seq=2).json() == last.json()
        tail = infer(client, V1, ids[:, 4:], seq=4, sequence_end=True)
        expected = reference.lm([reference.vocab[i] for i in ids[0]], 5, include_special=True)
        for t, got in zip((4, 5), logprobs(tail), strict=True):
            assert close(got, expected[t]["logprob"]), (t, got, json.dumps(expected[t]))
        assert client.get(SESSION).status_code == 410  # sequence_end ended it
