"""V2 outputs that carry API v1's per-reading fields, checked against API v1 itself: the same readings
on a twin session through `POST /v1/sessions/{id}/events`, a path with no V2 code on it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
from e2e_support import Reference, close

from service.anomaly import WARMUP

V1_FIELDS = {"LIKELIHOOD": "likelihood", "SURPRISE": "surprise", "ALARM": "alarm"}  # V2 output -> v1 field


def long_sensor_stream(reference: Reference, seed: int, chunks: int, size: int) -> np.ndarray:
    """[chunks, size, F] float32 readings around the training statistics, long enough (give more than
    WARMUP in all) for the anomaly likelihood to leave 0.5, ending in a level shift of 6 std."""
    spec = reference.manifest.sensor
    assert spec is not None and chunks * size > WARMUP + 10
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    readings = mean + std * np.random.default_rng(seed).normal(0, 1.0, (chunks * size, len(mean)))
    readings[-5:] = mean + 6 * std
    return readings.reshape(chunks, size, len(mean)).astype(np.float32)


def rest_twin(
    client: httpx.Client, model: str, chunks: np.ndarray, timestamps: Sequence[Sequence[Any]] | None = None
) -> list[dict[str, Any]]:
    """API v1's per-reading answers for the same readings (and `timestamps`, one list per chunk) on a
    fresh session, one request per chunk: the reference for V2's outputs that carry API v1 fields (no V2
    code on this path)."""
    created = client.post("/v1/sessions", json={"model": model})
    assert created.status_code == 201, created.text
    session = created.json()["session_id"]
    answers: list[dict[str, Any]] = []
    for n, chunk in enumerate(chunks):
        body = {"seq": len(answers), "readings": chunk.astype(np.float64).tolist()}
        if timestamps is not None:
            body["timestamps"] = list(timestamps[n])
        stepped = client.post(f"/v1/sessions/{session}/events", json=body)
        assert stepped.status_code == 200, stepped.text
        answers += stepped.json()["outputs"]
    assert client.delete(f"/v1/sessions/{session}").status_code == 204
    return answers


def check_v1_fields(got: dict[str, np.ndarray], rest: list[dict[str, Any]]) -> None:
    """V2's LIKELIHOOD, SURPRISE and ALARM (FP32 [1, T]) equal API v1's fields of those names for the same
    readings, with 0.0 where API v1 answers null (the sequence's first reading)."""
    assert rest[0]["likelihood"] is None and rest[0]["surprise"] is None
    for name, field in V1_FIELDS.items():
        values = got[name]
        assert values.shape == (1, len(rest)) and values.dtype == np.float32, (name, values.shape)
        assert values[0, 0] == 0.0, name  # never a JSON null
        for t in range(1, len(rest)):
            assert close(float(values[0, t]), rest[t][field]), (name, t, values[0, t], rest[t][field])
    # the stream outlasted the warm-up, and the level shift at its end is unusual for it
    assert max(a["likelihood"] for a in rest[1:]) > 0.9, [a["likelihood"] for a in rest[-5:]]
