"""The gRPC messages on the wire are the KServe V2 / Triton protocol's: what our kserve_v2.proto writes,
tritonclient's own generated modules read back field for field, and what tritonclient writes, we read.
And the committed generated module is what ./scripts/gen-grpc makes from the .proto today."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from google.protobuf import json_format
from tritonclient.grpc import _utils as tgrpc_utils
from tritonclient.grpc import model_config_pb2, service_pb2

from service import kserve, triton_config
from service.grpc_proto import kserve_v2_pb2 as pb
from service.grpc_server import request_to_v2, result_to_response
from service.registry import load_artifact
from service.settings import Settings
from service.v2_tensors import Tensor

pytestmark = pytest.mark.unit
PROTO_DIR = Path(__file__).parents[3] / "service" / "grpc_proto"


def as_dict(message: Any) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return found


@pytest.mark.parametrize("name", ["lm-lstm", "sensor-gru"])
def test_model_config_reads_back_in_tritonclient(tiny_models_dir: Path, name: str) -> None:
    model = load_artifact(tiny_models_dir / name / "1", Settings(models_dir=tiny_models_dir))
    config = triton_config.model_config(model, Settings(), "1")
    ours = json_format.ParseDict(config, pb.ModelConfig())
    theirs = model_config_pb2.ModelConfig.FromString(ours.SerializeToString())
    assert as_dict(theirs) == as_dict(ours)
    assert theirs.sequence_batching.state[0].input_name == model.manifest.onnx.states[0].input
    sensor = name.startswith("sensor")
    assert theirs.input[0].data_type == (
        model_config_pb2.TYPE_FP32 if sensor else model_config_pb2.TYPE_INT64
    )


def test_infer_request_from_tritonclient() -> None:
    x = tgrpc.InferInput("x", [1, 3], "INT64")
    x.set_data_from_numpy(np.array([[4, 5, 6]], np.int64))
    request = tgrpc_utils._get_inference_request(
        model_name="lm",
        inputs=[x],
        model_version="",
        request_id="r1",
        outputs=[tgrpc.InferRequestedOutput("TOPK_IDS")],
        sequence_id="s-1",
        sequence_start=True,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters={"top_k": 3},
    )
    ours = pb.ModelInferRequest.FromString(request.SerializeToString())
    body, tail = request_to_v2(ours)
    assert body["id"] == "r1" and body["outputs"] == [{"name": "TOPK_IDS"}]
    assert {k: body["parameters"][k] for k in ("sequence_id", "sequence_start", "top_k")} == {
        "sequence_id": "s-1",
        "sequence_start": True,
        "top_k": 3,
    }
    assert body["inputs"][0]["parameters"] == {"binary_data_size": 24}
    decoded = kserve.decode_inputs(body, tail, "lm", 64)[0]
    assert isinstance(decoded, np.ndarray) and decoded.tolist() == [[4, 5, 6]]


def test_infer_response_reads_back_in_tritonclient() -> None:
    tensors = [
        Tensor("TOKEN_LOGPROB", "FP32", np.array([[0.0, -1.5]], np.float32)),
        Tensor("TOPK_TOKENS", "BYTES", np.array([[[b"the", b"a"], [b"", "é".encode()]]], dtype=object)),
        Tensor("IS_ANOMALY", "BOOL", np.array([[False, True]])),
    ]
    header = {"model_name": "m", "model_version": "1", "id": "x", "parameters": {"sequence_id": 7, "seq": 2}}
    response = result_to_response(kserve.InferResult(header, [(t, False) for t in tensors]))
    theirs = service_pb2.ModelInferResponse.FromString(response.SerializeToString())
    result = tgrpc.InferResult(theirs)
    for tensor in tensors:
        assert np.array_equal(result.as_numpy(tensor.name), tensor.array), tensor.name
    assert theirs.parameters["seq"].int64_param == 2 and theirs.id == "x"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools is not installed")
def test_committed_module_is_generated_from_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(PROTO_DIR / "kserve_v2.proto"),
        ],
        check=True,
    )
    for generated in ("kserve_v2_pb2.py", "kserve_v2_pb2.pyi"):
        assert (tmp_path / generated).read_text() == (PROTO_DIR / generated).read_text(), (
            f"{generated} is stale: run ./scripts/gen-grpc"
        )


def test_infer_request_with_typed_contents() -> None:
    """Clients other than tritonclient may send `contents` instead of raw bytes: the same tensors."""
    request = pb.ModelInferRequest(model_name="sensor")
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 2, 2])
    x.contents.fp32_contents.extend([1.5, -2.0, 3.25, 0.0])
    request.parameters["sequence_id"].uint64_param = 1 << 63
    body, tail = request_to_v2(request)
    assert body["parameters"] == {"sequence_id": 1 << 63} and tail == b""
    decoded = kserve.decode_inputs(body, tail, "sensor", 64)[0]
    assert isinstance(decoded, np.ndarray)
    assert decoded.tolist() == [[[1.5, -2.0], [3.25, 0.0]]]

    text = pb.ModelInferRequest(model_name="lm")
    t = text.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"the cat")
    assert kserve.decode_inputs(*request_to_v2(text), "lm", 64)[0] == "the cat"
