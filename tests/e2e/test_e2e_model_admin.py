"""Models managed on a running server: a version published into the models directory is picked up by
the watcher, made the default and unloaded through the admin routes and Triton's repository API,
while a session of the old version keeps streaming on its own version (checked against that version's
graph, run directly) and a session of an unloaded version answers 410 `session_unloaded`."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import KEYS, Reference, StartServer, auth, check, event_body, make_events, metric_samples

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": "Bearer admin-secret"}


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def lm_versions(client: httpx.Client) -> dict[str, tuple[bool, str]]:
    models = client.get("/v1/models").json()["models"]
    return {m["version"]: (m["default"], m["state"]) for m in models if m["name"] == "lm"}


def test_load_default_unload_while_old_sessions_stream(
    start_server: StartServer,
    tiny_models_dir: Path,
    tmp_path: Path,
    publish: Callable[[Path, Path, str, str], Path],
) -> None:
    models = tmp_path / "models"
    publish(tiny_models_dir / "lm-gru" / "1", models, "lm", "1")
    refs = {"1": Reference.load(models / "lm" / "1"), "2": Reference.load(tiny_models_dir / "lm-lstm" / "1")}
    server = start_server(
        models_dir=models, api_keys=KEYS[0], admin_keys="admin-secret", watch_models_s="0.1"
    )
    events = make_events(refs["1"], random.Random(3), 8)
    with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as client:

        def step(session: str, version: str, seq: int, chunk: list[Any]) -> list[dict[str, Any]]:
            response = client.post(
                f"/v1/sessions/{session}/events", json=event_body(refs[version], seq, chunk)
            )
            assert response.status_code == 200, response.text
            outputs: list[dict[str, Any]] = response.json()["outputs"]
            return outputs

        old = client.post("/v1/sessions", json={"model": "lm"}).json()
        assert old["version"] == "1"
        outputs = step(old["session_id"], "1", 0, events[:2])

        # the watcher serves a version published into the directory
        publish(tiny_models_dir / "lm-lstm" / "1", models, "lm", "2")
        wait_for(lambda: "2" in lm_versions(client))
        assert lm_versions(client) == {"1": (False, "ready"), "2": (True, "ready")}
        new = client.post("/v1/sessions", json={"model": "lm"}).json()
        assert new["version"] == "2"
        check(refs["2"], events, step(new["session_id"], "2", 0, events))
        outputs += step(old["session_id"], "1", 2, events[2:4])

        # the admin routes take the admin key only
        default = client.put("/v1/admin/models/lm/default", json={"version": "1"})
        assert default.status_code == 401, default.text
        default = client.put("/v1/admin/models/lm/default", json={"version": "1"}, headers=ADMIN)
        assert default.status_code == 200 and default.json()["default"] is True, default.text
        assert lm_versions(client) == {"1": (True, "ready"), "2": (False, "ready")}
        pinned = client.post("/v1/sessions", json={"model": "lm"}).json()
        assert pinned["version"] == "1"
        client.put("/v1/admin/models/lm/default", json={"version": "2"}, headers=ADMIN).raise_for_status()

        # unload version 1 (drain): its sessions go on, on version 1
        unload = client.post("/v1/admin/models/lm/versions/1/unload", headers=ADMIN)
        assert unload.status_code == 200 and unload.json()["state"] == "draining", unload.text
        outputs += step(old["session_id"], "1", 4, events[4:])
        check(refs["1"], events, outputs)
        refused = client.post("/v1/sessions", json={"model": "lm", "version": "1"})
        assert refused.status_code == 404 and "being unloaded" in refused.json()["error"]["message"]
        index = httpx.post(f"{server.url}/v2/repository/index", headers=ADMIN).json()
        assert {(e["name"], e["version"]): e["state"] for e in index} == {
            ("lm", "1"): "UNLOADING",
            ("lm", "2"): "READY",
        }
        metrics = metric_samples(client.get("/metrics").text, "rnnserve_model_versions")
        assert metrics == {
            '{model="lm",state="draining",version="1"}': 1.0,
            '{model="lm",state="default",version="2"}': 1.0,
        }
        # its last sessions end: it unloads
        for session in (old["session_id"], pinned["session_id"]):
            assert client.delete(f"/v1/sessions/{session}").status_code == 204
        wait_for(lambda: "1" not in lm_versions(client))
        ready = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True}, headers=ADMIN).json()
        assert ready == [{"name": "lm", "version": "2", "state": "READY", "reason": ""}]

        # Triton's load brings every version of the directory back; unload with policy end: 410
        assert httpx.post(f"{server.url}/v2/repository/models/lm/load", headers=ADMIN).status_code == 200
        assert lm_versions(client) == {"1": (False, "ready"), "2": (True, "ready")}
        ended = client.post("/v1/admin/models/lm/versions/2/unload?policy=end", headers=ADMIN)
        assert ended.status_code == 200 and ended.json()["state"] == "unloaded", ended.text
        gone = client.post(f"/v1/sessions/{new['session_id']}/events", json={"tokens": ["w1"], "seq": 8})
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "session_unloaded", gone.text
        assert lm_versions(client) == {"1": (True, "ready")}


def test_model_management_is_refused_without_an_admin_key(start_server: StartServer) -> None:
    server = start_server(api_keys=KEYS[0], watch_models_s="0")
    for method, path in (
        ("GET", "/v1/admin/models"),
        ("POST", "/v1/admin/models/lm-gru/versions/1/unload"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/lm-gru/unload"),
    ):
        response = httpx.request(method, f"{server.url}{path}", headers=auth())
        assert response.status_code == 403, (path, response.text)
        assert "RNNSERVE_ADMIN_KEYS" in response.text
    assert httpx.get(f"{server.url}/v1/models", headers=auth()).json()["models"]  # nothing unloaded


BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    ("POST", "/v1/admin/models/lm-gru/versions/9/load", None, 404),
    ("POST", "/v1/admin/models/..x/versions/1/load", None, 400),
    ("POST", "/v1/admin/models/nope/versions/1/unload", None, 404),
    ("POST", "/v1/admin/models/lm-gru/versions/1/unload?policy=later", None, 422),
    ("PUT", "/v1/admin/models/lm-gru/default", {"version": "7"}, 404),
    ("PUT", "/v1/admin/models/lm-gru/default", {"v": "1"}, 422),
    ("POST", "/v2/repository/models/nope/load", None, 404),
    ("POST", "/v2/repository/models/lm-gru/load", {"parameters": {"config": "{}"}}, 400),
    ("POST", "/v2/repository/models/lm-gru/unload", [], 400),
    ("POST", "/v2/repository/index", {"ready": "yes"}, 400),
]


def test_bad_management_requests_change_nothing(start_server: StartServer) -> None:
    server = start_server(watch_models_s="0")  # auth off: management open
    before = httpx.get(f"{server.url}/v1/models").json()
    for method, path, body, status in BAD_REQUESTS:
        response = httpx.request(method, f"{server.url}{path}", json=body)
        assert response.status_code == status, (path, response.text)
        assert "error" in response.json(), path
    assert httpx.get(f"{server.url}/v1/models").json() == before


def test_tritonclient_manages_the_repository(start_server: StartServer) -> None:
    """Triton's own HTTP client drives index, unload and load unchanged (auth off: no admin key needed)."""
    import tritonclient.http as triton

    server = start_server(watch_models_s="0", unload_policy="end")
    client = triton.InferenceServerClient(httpx.URL(server.url).netloc.decode())
    index = {(m["name"], m["version"]): m["state"] for m in client.get_model_repository_index()}
    assert index[("lm-gru", "1")] == "READY"
    assert client.is_model_ready("lm-gru")
    client.unload_model("lm-gru", unload_dependents=True)
    assert not client.is_model_ready("lm-gru")
    index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
    assert index[("lm-gru", "1")]["state"] == "UNAVAILABLE" and index[("lm-gru", "1")]["reason"] == "unloaded"
    client.load_model("lm-gru")
    assert client.is_model_ready("lm-gru")
    client.close()
