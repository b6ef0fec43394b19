"""The sensor's V2 outputs carry API v1's per-reading answer field for field: nulls (a sequence's first
reading) become 0.0 and false, never a JSON null, and a request gets exactly the outputs it names."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from service import kserve, schemas
from service.errors import BadRequest
from service.v2_tensors import http_body

pytestmark = pytest.mark.unit

# what API v1 answers for two readings of a new session, written out by hand
ANSWERS: list[dict[str, Any]] = [
    {
        "score": None,
        "probability": None,
        "is_anomaly": None,
        "likelihood": None,
        "surprise": None,
        "alarm": None,
    },
    {
        "score": 4.25,
        "probability": 0.5,
        "is_anomaly": True,
        "likelihood": 0.99999,
        "surprise": 37.5,
        "alarm": 0.25,
    },
]


def step() -> schemas.StepResponse:
    outputs = [{**a, "predicted_mean": [1.0, 2.0], "predicted_std": [0.5, 0.25]} for a in ANSWERS]
    return schemas.StepResponse.model_validate({"seq": 2, "outputs": outputs})


def test_every_v1_field_has_its_output() -> None:
    tensors = kserve.encode_outputs(step(), "sensor", {})
    assert list(tensors) == list(kserve.OUTPUTS["sensor"])
    for name, field in (
        ("SCORE", "score"),
        ("PROBABILITY", "probability"),
        ("LIKELIHOOD", "likelihood"),
        ("SURPRISE", "surprise"),
        ("ALARM", "alarm"),
    ):
        tensor = tensors[name]
        assert (tensor.datatype, tensor.shape) == ("FP32", [1, 2]), name
        want = np.array([[0.0, ANSWERS[1][field]]], np.float32)
        assert tensor.array.dtype == np.float32 and np.array_equal(tensor.array, want), name
    assert tensors["IS_ANOMALY"].array.tolist() == [[False, True]]
    assert tensors["PREDICTED_STD"].array.tolist() == [[[0.5, 0.25], [0.5, 0.25]]]


def test_named_outputs_are_exactly_those_and_json_has_no_null() -> None:
    asked = {"outputs": [{"name": "SURPRISE"}, {"name": "LIKELIHOOD", "parameters": {"binary_data": True}}]}
    wanted = kserve.requested_outputs(asked, "sensor")
    assert wanted == [("SURPRISE", False), ("LIKELIHOOD", True)]
    tensors = kserve.encode_outputs(step(), "sensor", {})
    body, json_length = http_body({"model_name": "m"}, [(tensors[n], b) for n, b in wanted])
    header = json.loads(body[:json_length] if json_length is not None else body)
    assert [o["name"] for o in header["outputs"]] == ["SURPRISE", "LIKELIHOOD"]
    assert header["outputs"][0]["data"] == [0.0, 37.5]  # JSON data: 0.0 where API v1 has null
    assert np.frombuffer(body[json_length:], "<f4").tolist() == [0.0, np.float32(0.99999)]
    with pytest.raises(BadRequest, match="unknown output"):
        kserve.requested_outputs({"outputs": [{"name": "likelihood"}]}, "sensor")
