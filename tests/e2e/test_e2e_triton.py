"""Triton conformance: the server driven only through Triton's own clients, `tritonclient.http` and
`tritonclient.grpc` (bidirectional stream included), as a Triton user would, with no workaround.

Every number the server answers is checked against ONNX Runtime run in this process on the same
artifact (`Reference`, no service code): whole-sequence runs from the zero state, so a sequence split
over several requests, transports and interleavings must give the same outputs as one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from e2e_support import Reference, ServerProcess, close
from triton_support import LM_OUTPUTS, bearer, check_lm, joined, lm_input, output_names, sensor_input
from tritonclient.utils import InferenceServerException
from v1_twin import V1_FIELDS, check_v1_fields, long_sensor_stream, rest_twin

pytestmark = pytest.mark.e2e

LM, SENSOR = "lm-gru", "sensor-lstm"


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server: ServerProcess) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(server.grpc_address)
    yield client
    client.close()


def test_health_metadata_and_config(
    http: thttp.InferenceServerClient, grpc: tgrpc.InferenceServerClient, references: dict[str, Reference]
) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    for client in (http, grpc):
        assert client.is_model_ready(LM, headers=bearer())
    assert not grpc.is_model_ready("no-such-model", headers=bearer())
    extensions = set(http.get_server_metadata()["extensions"])
    assert {"sequence", "binary_tensor_data", "model_configuration", "statistics"} <= extensions
    assert set(grpc.get_server_metadata().extensions) == extensions

    meta = http.get_model_metadata(SENSOR, headers=bearer())
    grpc_meta = grpc.get_model_metadata(SENSOR, headers=bearer(), as_json=True)
    features = len(references[SENSOR].manifest.sensor.features)  # type: ignore[union-attr]
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [1, -1, features]},
        {"name": "TIMESTAMP", "datatype": "FP64", "shape": [1, -1]},
    ]
    assert [(i["name"], i["datatype"]) for i in grpc_meta["inputs"]] == [("x", "FP32"), ("TIMESTAMP", "FP64")]
    assert [o["name"] for o in grpc_meta["outputs"]] == [o["name"] for o in meta["outputs"]]

    for name in (LM, SENSOR):
        manifest = references[name].manifest
        config = http.get_model_config(name, headers=bearer())
        grpc_config = grpc.get_model_config(name, headers=bearer()).config
        layers, hidden = manifest.state_shape
        states = config["sequence_batching"]["state"]
        assert [(s["input_name"], s["output_name"]) for s in states] == [
            (s.input, s.output) for s in manifest.onnx.states
        ]
        assert all(s["dims"] == [layers, hidden] and s["initial_state"][0]["zero_data"] for s in states)
        assert config["max_batch_size"] >= 1 and config["platform"] == "onnxruntime_onnx"
        assert grpc_config.max_batch_size == config["max_batch_size"]
        assert [s.input_name for s in grpc_config.sequence_batching.state] == [
            s.input for s in manifest.onnx.states
        ]
        assert [(o.name, o.data_type) for o in grpc_config.output] == [
            (o["name"], tgrpc.model_config_pb2.DataType.Value(o["data_type"])) for o in config["output"]
        ]
    sensor_outputs = {o["name"]: o for o in http.get_model_config(SENSOR, headers=bearer())["output"]}
    for name in V1_FIELDS:  # as SCORE: one FP32 per reading
        assert sensor_outputs[name] == {"name": name, "data_type": "TYPE_FP32", "dims": [-1]}
        assert {"name": name, "datatype": "FP32", "shape": [1, -1]} in meta["outputs"]
    lm_inputs = http.get_model_config(LM, headers=bearer())["input"]
    assert [(i["name"], i["data_type"]) for i in lm_inputs] == [("x", "TYPE_INT64"), ("TEXT", "TYPE_STRING")]


@pytest.mark.parametrize("binary", [True, False])
def test_lm_sequence_over_http(
    http: thttp.InferenceServerClient, references: dict[str, Reference], binary: bool
) -> None:
    """start / continue / end with an integer id; inputs and outputs binary or JSON."""
    ids = [3, 9, 0, 17, 22, 5, 30]
    outputs = [thttp.InferRequestedOutput(n, binary_data=binary) for n in LM_OUTPUTS]
    sid = 4100 + binary
    parts = [ids[:3], ids[3:6], ids[6:]]
    results = [
        http.infer(
            LM,
            [lm_input(thttp, part, binary)],
            outputs=outputs,
            sequence_id=sid,
            sequence_start=i == 0,
            sequence_end=i == 2,
            parameters={"top_k": 4},
            headers=bearer(),
        )
        for i, part in enumerate(parts)
    ]
    assert [r.get_response()["parameters"]["seq"] for r in results] == [3, 6, 7]
    check_lm(joined(results, LM_OUTPUTS), references[LM], ids, 4)
    with pytest.raises(InferenceServerException, match="was deleted"):  # the sequence ended
        http.infer(LM, [lm_input(thttp, [1])], sequence_id=sid, headers=bearer())


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_interleaved_sensor_sequences(
    http: thttp.InferenceServerClient,
    grpc: tgrpc.InferenceServerClient,
    client: httpx.Client,
    references: dict[str, Reference],
    transport: str,
) -> None:
    """Two sensor sequences (a string id and an integer id) stepped in turn, 60 readings a request, past
    the likelihood's warm-up, asking for all outputs but PREDICTED_STD (HTTP: binary and JSON data in
    turn). LIKELIHOOD and SURPRISE equal API v1's answers on twin sessions."""
    module, triton = (thttp, http) if transport == "http" else (tgrpc, grpc)
    reference = references[SENSOR]
    spec = reference.manifest.sensor
    assert spec is not None
    readings = {
        sid: long_sensor_stream(reference, seed, chunks=5, size=60)
        for seed, sid in enumerate((f"pump-{transport}", 8101 + (transport == "grpc")))
    }
    names = ["SCORE", "PROBABILITY", "PREDICTED_MEAN", "IS_ANOMALY", *V1_FIELDS]
    got: dict[Any, list[Any]] = {sid: [] for sid in readings}
    for t in range(5):
        for sid, chunks in readings.items():
            asked = [
                module.InferRequestedOutput(n, **({"binary_data": t % 2 == 0} if module is thttp else {}))
                for n in names
            ]
            got[sid].append(
                triton.infer(
                    SENSOR,
                    [sensor_input(module, chunks[t])],
                    outputs=asked,
                    sequence_id=sid,
                    sequence_start=t == 0,
                    sequence_end=t == 4,
                    headers=bearer(),
                )
            )
            assert output_names(got[sid][-1]) == names  # exactly those asked for, in order
    for sid, chunks in readings.items():
        values = chunks.reshape(-1, chunks.shape[-1])
        expected = reference.sensor(values.astype(np.float64).tolist())
        out = joined(got[sid], names)
        assert out["SCORE"][0, 0] == 0.0 and not out["IS_ANOMALY"][0, 0]
        for t in range(1, len(values)):
            assert close(float(out["SCORE"][0, t]), expected[t]["score"]), (sid, t)
            if expected[t]["probability"] is not None:  # the reference knows it during the warm-up
                assert close(float(out["PROBABILITY"][0, t]), expected[t]["probability"]), (sid, t)
        mean = (out["PREDICTED_MEAN"][0] - np.asarray(spec.mean)) / np.asarray(spec.std)
        assert np.allclose(mean, [e["mean"] for e in expected], rtol=1e-4, atol=1e-4)
        check_v1_fields(out, rest_twin(client, SENSOR, chunks))
        answer = got[sid][-1].get_response()
        seq = answer["parameters"]["seq"] if transport == "http" else answer.parameters["seq"].int64_param
        assert seq == len(values)


def test_grpc_bidirectional_stream(
    grpc: tgrpc.InferenceServerClient, references: dict[str, Reference]
) -> None:
    """A sequence streamed over ModelStreamInfer; a bad request in the middle answers an error on the
    stream, changes nothing, and the stream goes on."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc.start_stream(callback=lambda result, error: answers.put((result, error)), headers=bearer())
    ids = [4, 8, 15, 16, 23, 4, 2]
    try:
        for i, part in enumerate([ids[:2], ids[2:5], None, ids[5:]]):
            if part is None:  # an unknown model: an error on the stream
                grpc.async_stream_infer("no-such-model", [lm_input(tgrpc, [1])], request_id="bad")
                continue
            grpc.async_stream_infer(
                LM,
                [lm_input(tgrpc, part)],
                request_id=f"r{i}",
                sequence_id="stream-1",
                sequence_start=i == 0,
                sequence_end=i == 3,
                parameters={"top_k": 3},
            )
        received = [answers.get(timeout=30) for _ in range(4)]
    finally:
        grpc.stop_stream()
    errors = [error for _, error in received if error is not None]
    assert len(errors) == 1 and "no-such-model" in str(errors[0])
    results = [result for result, error in received if error is None]
    assert [r.get_response().id for r in results] == ["r0", "r1", "r3"]  # in order
    check_lm(joined(results, LM_OUTPUTS), references[LM], ids, 3)


def test_text_input_both_transports(
    http: thttp.InferenceServerClient, grpc: tgrpc.InferenceServerClient, references: dict[str, Reference]
) -> None:
    """lm takes text as a BYTES tensor and answers the words it read and the top-k words."""
    reference = references[LM]
    words = ["w3", "w7", "not-a-word", "w12"]
    unk = reference.vocab.index("<unk>")
    expected_ids = [reference.vocab.index(w) if w in reference.vocab else unk for w in words]
    for module, client in ((thttp, http), (tgrpc, grpc)):
        text = module.InferInput("TEXT", [1], "BYTES")
        text.set_data_from_numpy(np.array([" ".join(words).encode()], dtype=object))
        result = client.infer(LM, [text], parameters={"top_k": 2}, headers=bearer())
        assert result.as_numpy("TOKEN_IDS")[0].tolist() == expected_ids
        check_lm({n: result.as_numpy(n) for n in LM_OUTPUTS}, reference, expected_ids, 2)


def test_errors_and_auth(http: thttp.InferenceServerClient, grpc: tgrpc.InferenceServerClient) -> None:
    cases: list[tuple[str, list[int] | None, dict[str, Any], str, str]] = [
        # model, ids ([2 rows] when None), infer kwargs, HTTP status, gRPC status
        ("no-such-model", [1], {}, "404", "StatusCode.NOT_FOUND"),
        (LM, None, {}, "422", "StatusCode.INVALID_ARGUMENT"),  # a batch of 2 sequences
        (LM, [10_000], {}, "422", "StatusCode.INVALID_ARGUMENT"),  # id out of the vocabulary
        (LM, [1], {"sequence_id": 999_999}, "400", "StatusCode.INVALID_ARGUMENT"),  # never started
    ]
    for model, ids, kwargs, http_status, grpc_status in cases:
        for module, client, status in ((thttp, http, http_status), (tgrpc, grpc, grpc_status)):
            if ids is None:
                x = module.InferInput("x", [2, 1], "INT64")
                x.set_data_from_numpy(np.array([[1], [2]], np.int64))
            else:
                x = lm_input(module, ids)
            with pytest.raises(InferenceServerException) as caught:
                client.infer(model, [x], headers=bearer(), **kwargs)
            assert caught.value.status() == status, (model, ids, caught.value)
    for client, status in ((http, "401"), (grpc, "StatusCode.UNAUTHENTICATED")):
        with pytest.raises(InferenceServerException) as caught:
            client.infer(LM, [lm_input(thttp if client is http else tgrpc, [1])])
        assert caught.value.status() == status
        with pytest.raises(InferenceServerException):
            client.get_model_config(LM, headers={"authorization": "Bearer wrong"})


def test_statistics_count_the_steps(
    http: thttp.InferenceServerClient, grpc: tgrpc.InferenceServerClient
) -> None:
    model = "lm-rnn"  # no other test steps it

    def count() -> int:
        stats = http.get_inference_statistics(model, headers=bearer())["model_stats"]
        grpc_stats = grpc.get_inference_statistics(model, headers=bearer()).model_stats
        assert [s["name"] for s in stats] == [s.name for s in grpc_stats] == [model]
        assert int(grpc_stats[0].inference_count) == stats[0]["inference_count"]
        return int(stats[0]["inference_count"])

    before = count()
    for _ in range(3):
        http.infer(model, [lm_input(thttp, [1, 2])], headers=bearer())
    grpc.infer(model, [lm_input(tgrpc, [1])], headers=bearer())
    assert count() == before + 4  # one sequence step per request
    stats = http.get_inference_statistics(model, headers=bearer())["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == before + 4 and stats["compute_infer"]["ns"] > 0
    all_models = http.get_inference_statistics(headers=bearer())["model_stats"]
    assert model in {s["name"] for s in all_models}


def test_asyncio_clients_and_one_sequence_across_transports(
    server: ServerProcess, references: dict[str, Reference]
) -> None:
    """tritonclient's asyncio clients: a sequence started over HTTP goes on over a gRPC stream (one
    session manager behind both), and ends there."""
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    ids = [6, 1, 28, 3, 11]

    async def run() -> list[Any]:
        http_client = http_aio.InferenceServerClient(server.url.removeprefix("http://"))
        grpc_client = grpc_aio.InferenceServerClient(server.grpc_address)
        try:
            first = await http_client.infer(
                LM, [lm_input(thttp, ids[:2])], sequence_id=4242, sequence_start=True, headers=bearer()
            )

            async def requests() -> Any:
                for i, part in enumerate([ids[2:4], ids[4:]]):
                    yield {
                        "model_name": LM,
                        "inputs": [lm_input(tgrpc, part)],
                        "sequence_id": 4242,
                        "sequence_end": i == 1,
                    }

            results = [first]
            async for result, error in grpc_client.stream_infer(requests(), headers=bearer()):
                assert error is None, error
                results.append(result)
            return results
        finally:
            await http_client.close()
            await grpc_client.close()

    results = asyncio.run(run())
    check_lm(joined(results, LM_OUTPUTS), references[LM], ids, 5)


def test_unsupported_extensions_answer_clearly(
    http: thttp.InferenceServerClient, grpc: tgrpc.InferenceServerClient
) -> None:
    for call in (http.get_trace_settings, http.get_log_settings, http.get_system_shared_memory_status):
        with pytest.raises(InferenceServerException, match="does not implement") as caught:
            call(headers=bearer())
        assert caught.value.status() == "400"
    for call in (grpc.get_trace_settings, grpc.get_log_settings, grpc.get_model_repository_index):
        with pytest.raises(InferenceServerException) as caught:
            call(headers=bearer())
        assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()  # a stream without a valid key
    grpc.start_stream(
        callback=lambda result, error: answers.put((result, error)), headers={"authorization": "Bearer no"}
    )
    try:
        # the server may refuse the stream before this request is sent: the client then says so here,
        # and the refusal reaches the callback either way
        with contextlib.suppress(InferenceServerException):
            grpc.async_stream_infer(LM, [lm_input(tgrpc, [1])])
        _, error = answers.get(timeout=30)
    finally:
        grpc.stop_stream()
    assert error is not None and "StatusCode.UNAUTHENTICATED" in str(error.status())


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_exactly_once_extension_with_the_real_clients(
    http: thttp.InferenceServerClient,
    grpc: tgrpc.InferenceServerClient,
    references: dict[str, Reference],
    transport: str,
) -> None:
    """`parameters.seq`: a retry of the same step answers the stored outputs and moves nothing; a wrong
    `seq` is refused (409 / ABORTED-class status) naming the expected value; the sequence then goes on
    as if neither had been sent, against one whole-sequence ONNX Runtime call."""
    module: Any = thttp if transport == "http" else tgrpc
    client: Any = http if transport == "http" else grpc
    sid = f"exactly-once-{transport}"
    ids = [4, 11, 7, 2]

    def step(part: list[int], seq: int, start: bool = False) -> Any:
        outputs = [module.InferRequestedOutput(n) for n in LM_OUTPUTS]
        return client.infer(
            LM,
            [lm_input(module, part)],
            outputs=outputs,
            sequence_id=sid,
            sequence_start=start,
            parameters={"top_k": 4, "seq": seq},
            headers=bearer(),
        )

    first = step(ids[:2], 0, start=True)
    retried = step(ids[:2], 0, start=True)  # a client retry of the same request
    for name in LM_OUTPUTS:
        assert np.array_equal(first.as_numpy(name), retried.as_numpy(name)), name
    with pytest.raises(InferenceServerException) as caught:
        step(ids[2:], 5)  # the client's count is wrong
    assert "2" in str(caught.value), caught.value  # the message names the expected seq
    if transport == "http":
        assert caught.value.status() == "409"
    else:
        assert caught.value.status() in ("StatusCode.ABORTED", "StatusCode.FAILED_PRECONDITION")
    second = step(ids[2:], 2)
    check_lm(joined([first, second], LM_OUTPUTS), references[LM], ids, 4)
