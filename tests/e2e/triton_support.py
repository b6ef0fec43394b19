"""Helpers for driving the server through Triton's own clients (`tritonclient.http` and `.grpc`, one
`module` or the other): auth headers, model inputs, outputs joined over a sequence's requests, and the
lm's outputs checked against the ONNX Runtime reference (test_e2e_triton.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.http as thttp
from e2e_support import KEYS, Reference, close


def bearer() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient.http adds Inference-Header-Content-Length to the
    dict it is given, which would then go with the next request."""
    return {"authorization": f"Bearer {KEYS[0]}"}


def lm_input(module: Any, ids: list[int], binary: bool = True) -> Any:
    x = module.InferInput("x", [1, len(ids)], "INT64")
    if module is thttp:
        x.set_data_from_numpy(np.asarray([ids], np.int64), binary_data=binary)
    else:
        x.set_data_from_numpy(np.asarray([ids], np.int64))
    return x


def sensor_input(module: Any, readings: np.ndarray) -> Any:
    x = module.InferInput("x", [1, *readings.shape], "FP32")
    x.set_data_from_numpy(readings[None].astype(np.float32))
    return x


def check_lm(got: dict[str, np.ndarray], reference: Reference, ids: list[int], top_k: int) -> None:
    """Concatenated outputs of one sequence against one whole-sequence ONNX Runtime call."""
    expected = reference.lm([reference.vocab[i] for i in ids], top_k, include_special=True)
    assert got["TOKEN_LOGPROB"].shape == (1, len(ids)) and got["TOKEN_LOGPROB"].dtype == np.float32
    assert got["TOKEN_LOGPROB"][0, 0] == 0.0  # the first event predicts nothing: 0.0, never null
    for t, want in enumerate(expected):
        if t:
            assert close(float(got["TOKEN_LOGPROB"][0, t]), want["logprob"]), t
        words = [w for w, _ in want["next"]]
        assert [reference.vocab[i] for i in got["TOPK_IDS"][0, t]] == words, t
        # BYTES: bytes from binary data, str from JSON data (tritonclient keeps what it was sent)
        assert [w.decode() if isinstance(w, bytes) else w for w in got["TOPK_TOKENS"][0, t]] == words, t
        for p, (_, w) in zip(got["TOPK_PROBS"][0, t], want["next"], strict=True):
            assert close(float(p), w), t
    assert got["TOKEN_IDS"][0].tolist() == ids


def joined(results: list[Any], names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.concatenate([r.as_numpy(n) for r in results], axis=1) for n in names}


def output_names(result: Any) -> list[str]:
    answer = result.get_response()
    if isinstance(answer, dict):  # tritonclient.http
        return [o["name"] for o in answer["outputs"]]
    return [o.name for o in answer.outputs]


LM_OUTPUTS = ["TOKEN_LOGPROB", "TOPK_IDS", "TOPK_PROBS", "TOKEN_IDS", "TOPK_TOKENS"]
