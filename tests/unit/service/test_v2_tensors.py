"""V2 tensor encoding: JSON data and binary data say the same thing, BYTES as Triton serializes them."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from service.errors import InvalidInput
from service.v2_tensors import Tensor, decode_http, decode_values, http_body, split_bytes

pytestmark = pytest.mark.unit


def test_bytes_round_trip_and_triton_layout() -> None:
    items = [b"the", b"", "naïve".encode()]
    raw = Tensor("T", "BYTES", np.array(items, dtype=object)).raw()
    # Triton's layout, written out by hand: 4-byte little-endian length, then the bytes
    assert raw == b"".join(struct.pack("<I", len(i)) + i for i in items)
    assert split_bytes(raw, "t") == items
    assert decode_values("BYTES", [3], None, raw, "t").tolist() == items
    assert decode_values("BYTES", [1, 3], ["the", "", "naïve"], None, "t").reshape(-1).tolist() == items
    with pytest.raises(InvalidInput, match="runs past"):
        split_bytes(struct.pack("<I", 9) + b"abc", "t")
    with pytest.raises(InvalidInput, match="4-byte length"):
        split_bytes(b"\x01\x00", "t")


def test_numbers_from_json_and_binary_agree() -> None:
    values = np.array([[[1.5, -2.0], [3.25, 0.0]]], np.float32)
    from_json = decode_values("FP32", [1, 2, 2], values.tolist(), None, "x")
    from_raw = decode_values("FP32", [1, 2, 2], None, values.tobytes(), "x")
    assert np.array_equal(from_json, values) and np.array_equal(from_raw, values)
    with pytest.raises(InvalidInput, match="whole number"):
        decode_values("FP32", [1, 1], None, b"\x00" * 5, "x")
    with pytest.raises(InvalidInput, match="needs 4 values"):
        decode_values("FP32", [1, 4], [1.0], None, "x")
    with pytest.raises(InvalidInput, match="not INT64"):
        decode_values("INT64", [1], [True], None, "x")
    with pytest.raises(InvalidInput, match="nests deeper"):
        deep: list[object] = [1]
        for _ in range(40):
            deep = [deep]
        decode_values("INT64", [1], deep, None, "x")


def test_http_body_binary_and_json_outputs() -> None:
    logprob = Tensor("TOKEN_LOGPROB", "FP32", np.array([[0.0, -0.5]], np.float32))
    words = Tensor("TOPK_TOKENS", "BYTES", np.array([[[b"a"], [b"bc"]]], dtype=object))
    body, length = http_body({"model_name": "m"}, [(logprob, True), (words, False)])
    assert length is not None
    head = json.loads(body[:length])
    assert head["outputs"][0] == {
        "name": "TOKEN_LOGPROB",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert head["outputs"][1]["data"] == ["a", "bc"]
    assert np.array_equal(np.frombuffer(body[length:], np.float32), logprob.array.reshape(-1))
    only_json, none = http_body({}, [(logprob, False)])
    assert none is None and json.loads(only_json)["outputs"][0]["data"] == [0.0, -0.5]
    parsed, tail = decode_http(body, length)
    assert parsed["model_name"] == "m" and tail == body[length:]
