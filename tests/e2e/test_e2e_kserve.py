"""KServe V2 with Triton's sequence extension, as a Triton HTTP client speaks it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from e2e_support import Reference, ServerProcess, auth, close
from v1_twin import V1_FIELDS, check_v1_fields, long_sensor_stream, rest_twin

pytestmark = pytest.mark.e2e


def infer(
    client: httpx.Client, model: str, x: np.ndarray, binary: bool = False, **params: Any
) -> httpx.Response:
    """A V2 request the way tritonclient builds it: JSON data, or the binary tensor extension."""
    datatype = {"int64": "INT64", "float32": "FP32"}[str(x.dtype)]
    tensor: dict[str, Any] = {"name": "x", "shape": list(x.shape), "datatype": datatype}
    if not binary:
        tensor["data"] = x.tolist()  # nested; flat works too
        return client.post(f"/v2/models/{model}/infer", json={"inputs": [tensor], "parameters": params})
    raw = x.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [tensor], "parameters": params}).encode()
    return client.post(
        f"/v2/models/{model}/infer",
        content=head + raw,
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        },
    )


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    dtypes = {"FP32": np.float32, "INT64": np.int64, "BOOL": bool, "BYTES": object}
    return {
        o["name"]: np.array(o["data"], dtypes[o["datatype"]]).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


def v2_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["code"] == code, body


def test_health_and_metadata(server: ServerProcess, client: httpx.Client) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert "sequence" in httpx.get(f"{server.url}/v2").json()["extensions"]
    meta = client.get("/v2/models/lm-gru").json()
    assert meta["name"] == "lm-gru" and meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "x", "datatype": "INT64", "shape": [1, -1]},
        {"name": "TEXT", "datatype": "BYTES", "shape": [1]},
    ]
    sensor = client.get("/v2/models/sensor-rnn/versions/1").json()
    assert sensor["inputs"][0]["shape"] == [1, -1, 3] and "SCORE" in {o["name"] for o in sensor["outputs"]}
    for name in V1_FIELDS:  # as SCORE: one FP32 per reading
        assert {"name": name, "datatype": "FP32", "shape": [1, -1]} in sensor["outputs"]
    assert client.get("/v2/models/lm-gru/ready").status_code == 200
    v2_error(client.get("/v2/models/no-such-model"), 404, "model_not_found")
    v2_error(client.get("/v2/models/lm-gru/versions/9/ready"), 404, "model_not_found")
    v2_error(httpx.get(f"{server.url}/v2/models/lm-gru"), 401, "unauthorized")


def test_lm_sequence_start_continue_end(client: httpx.Client, references: dict[str, Reference]) -> None:
    ids = np.array([[3, 9, 0, 17, 22, 5]], np.int64)
    parts = [
        infer(client, "lm-gru", ids[:, :3], sequence_id=77, sequence_start=True, top_k=4),
        infer(client, "lm-gru", ids[:, 3:5], binary=True, sequence_id=77, top_k=4),
        infer(client, "lm-gru", ids[:, 5:], sequence_id=77, sequence_end=True, top_k=4),
    ]
    assert [p.json()["parameters"]["seq"] for p in parts] == [3, 5, 6]
    got = [outputs(p) for p in parts]
    logprob = np.concatenate([g["TOKEN_LOGPROB"][0] for g in got])
    top_ids = np.concatenate([g["TOPK_IDS"][0] for g in got])
    top_probs = np.concatenate([g["TOPK_PROBS"][0] for g in got])
    reference = references["lm-gru"]
    expected = reference.lm([reference.vocab[i] for i in ids[0]], 4, include_special=True)
    assert logprob[0] == 0.0  # the first event predicts nothing: 0.0, never a JSON null
    for t, want in enumerate(expected):
        if t:
            assert close(float(logprob[t]), want["logprob"]), t
        assert [reference.vocab[i] for i in top_ids[t]] == [tok for tok, _ in want["next"]], t
        assert all(close(float(p), w) for p, (_, w) in zip(top_probs[t], want["next"], strict=True)), t
    # the sequence ended: its id answers 410; an id never started answers 400, as Triton does
    v2_error(infer(client, "lm-gru", ids[:, :1], sequence_id=77), 410, "session_deleted")
    v2_error(infer(client, "lm-gru", ids[:, :1], sequence_id=78), 400, "bad_request")


def test_sensor_sequences_one_shot_and_string_ids(
    client: httpx.Client, references: dict[str, Reference]
) -> None:
    reference = references["sensor-gru"]
    readings = np.array([[[20.0, 1000.0, 0.5], [24.0, 1003.0, 0.45], [19.0, 990.0, 0.7]]], np.float32)
    expected = reference.sensor(readings[0].astype(np.float64).tolist())
    one_shot = outputs(infer(client, "sensor-gru", readings, binary=True))
    assert one_shot["SCORE"][0, 0] == 0.0 and one_shot["PROBABILITY"][0, 0] == 0.0
    for t in (1, 2):
        assert close(float(one_shot["SCORE"][0, t]), expected[t]["score"])
        assert close(float(one_shot["PROBABILITY"][0, t]), expected[t]["probability"])
    # a string sequence id, two requests, only the outputs asked for
    first = infer(client, "sensor-gru", readings[:, :2], sequence_id="pump-7", sequence_start=True)
    client_outputs = [{"name": "SCORE"}, {"name": "IS_ANOMALY"}]
    second = client.post(
        "/v2/models/sensor-gru/infer",
        json={
            "id": "req-2",
            "parameters": {"sequence_id": "pump-7", "sequence_end": True},
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 1, 3], "data": readings[0, 2].tolist()}
            ],
            "outputs": client_outputs,
        },
    )
    assert outputs(first)["SCORE"].shape == (1, 2)
    assert second.json()["id"] == "req-2"
    assert [o["name"] for o in second.json()["outputs"]] == ["SCORE", "IS_ANOMALY"]
    assert close(float(outputs(second)["SCORE"][0, 0]), expected[2]["score"])


def test_sensor_likelihood_surprise_and_alarm_equal_api_v1(
    client: httpx.Client, references: dict[str, Reference]
) -> None:
    """A sequence that asks for exactly LIKELIHOOD, SURPRISE and ALARM gets exactly those, equal to what
    API v1 answers for the same readings on a twin session, past the likelihood's warm-up."""
    chunks = long_sensor_stream(references["sensor-gru"], seed=11, chunks=5, size=60)
    asked = [{"name": "SURPRISE"}, {"name": "LIKELIHOOD"}, {"name": "ALARM"}]
    answers = []
    for i, chunk in enumerate(chunks):
        body = {
            "parameters": {"sequence_id": "twin-v1", "sequence_start": i == 0, "sequence_end": i == 4},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, *chunk.shape], "data": chunk.tolist()}],
            "outputs": asked,
        }
        answers.append(client.post("/v2/models/sensor-gru/infer", json=body))
        assert [o["name"] for o in answers[-1].json()["outputs"]] == ["SURPRISE", "LIKELIHOOD", "ALARM"]
    got = {n: np.concatenate([outputs(a)[n] for a in answers], axis=1) for n in V1_FIELDS}
    check_v1_fields(got, rest_twin(client, "sensor-gru", chunks))


def test_bad_inference_requests(client: httpx.Client) -> None:
    ids = np.array([[1, 2]], np.int64)
    v2_error(
        client.post("/v2/models/lm-gru/infer", content=b"{", headers={"Content-Type": "application/json"}),
        400,
        "bad_request",
    )
    bad_name = {"inputs": [{"name": "y", "datatype": "INT64", "shape": [1, 1], "data": [1]}]}
    v2_error(client.post("/v2/models/lm-gru/infer", json=bad_name), 400, "bad_request")
    v2_error(infer(client, "lm-gru", np.array([[1], [2]], np.int64)), 422, "invalid_input")  # batch of 2
    v2_error(
        infer(client, "lm-gru", np.array([[1, 4000]], np.int64)), 422, "invalid_input"
    )  # id out of range
    v2_error(infer(client, "lm-gru", ids.astype(np.float32)), 422, "invalid_input")  # wrong datatype
    nan = np.array([[[20.0, np.nan, 0.5]]], np.float32)
    v2_error(infer(client, "sensor-gru", nan, binary=True), 422, "invalid_input")
    v2_error(infer(client, "sensor-gru", np.ones((1, 1, 2), np.float32)), 422, "invalid_input")  # 2 features
    unknown_output = {
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
        "outputs": [{"name": "LOGITS"}],
    }
    v2_error(client.post("/v2/models/lm-gru/infer", json=unknown_output), 400, "bad_request")
    v2_error(infer(client, "no-such-model", ids), 404, "model_not_found")
    v2_error(
        httpx.post(f"{client.base_url}/v2/models/lm-gru/infer", json=bad_name, headers=auth("wrong")),
        401,
        "unauthorized",
    )


def test_vocab_extensions_and_no_version_query(
    server: ServerProcess, client: httpx.Client, references: dict[str, Reference]
) -> None:
    vocab = client.get("/v2/models/lm-gru/vocab").json()
    assert vocab["vocab"] == references["lm-gru"].vocab and vocab["version"] == "1"
    assert client.get("/v2/models/lm-gru/versions/1/vocab").json() == vocab
    v2_error(client.get("/v2/models/sensor-gru/vocab"), 400, "bad_request")
    # Triton extensions this server does not implement: a 400 that says so, not a bare 404
    for method, path in [
        ("GET", "/v2/trace/setting"),
        ("POST", "/v2/models/lm-gru/trace/setting"),
        ("GET", "/v2/logging"),
        ("GET", "/v2/systemsharedmemory/status"),
        ("POST", "/v2/cudasharedmemory/region/r0/register"),
        ("POST", "/v2/models/lm-gru/generate"),
    ]:
        response = client.request(method, path)
        v2_error(response, 400, "extension_not_supported")
        assert "statistics" in response.json()["error"]
    # a version is a path segment only: no `version` query parameter on the unversioned routes
    schema = httpx.get(f"{server.url}/openapi.json").json()
    for path, item in schema["paths"].items():
        if path.startswith("/v2/") and "{version}" not in path:
            for operation in item.values():
                assert "version" not in {p["name"] for p in operation.get("parameters", [])}, path
    config = client.get("/v2/models/lm-gru/config", params={"version": "9"})
    assert config.status_code == 200 and config.json()["name"] == "lm-gru"
