"""Triton's own clients send a sensor's readings with their times (the optional V2 input TIMESTAMP), and
the answers equal API v1's for the same readings and `timestamps` on a twin session: the times reach the
session's daily profile exactly as they do over API v1."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from e2e_support import Reference, ServerProcess, close
from triton_support import bearer
from v1_twin import long_sensor_stream, rest_twin

pytestmark = pytest.mark.e2e

SENSOR = "sensor-lstm"
START = 1_795_000_000  # Unix seconds; readings an hour apart run through every hour of the day
FIELDS = {
    "PROBABILITY": "probability",
    "LIKELIHOOD": "likelihood",
    "SURPRISE": "surprise",
    "SCORE": "score",
    "ALARM": "alarm",
}


def times(datatype: str, chunks: np.ndarray) -> list[list[Any]]:
    """One time per reading, an hour apart, per chunk: Unix seconds, or ISO 8601 text (BYTES)."""
    size = chunks.shape[1]
    seconds = [[START + 3600 * (c * size + i) for i in range(size)] for c in range(len(chunks))]
    if datatype == "FP64":
        return seconds
    return [[str(np.datetime_as_string(np.datetime64(s, "s"))) for s in chunk] for chunk in seconds]


def client_for(module: Any, server: ServerProcess) -> Any:
    if module is thttp:
        return thttp.InferenceServerClient(server.url.removeprefix("http://"))
    return tgrpc.InferenceServerClient(server.grpc_address)


def v2_answers(
    module: Any,
    server: ServerProcess,
    chunks: np.ndarray,
    stamps: list[list[Any]],
    datatype: str,
    binary: bool,
) -> Any:
    """Each output over the whole stream, sent chunk by chunk as one sequence through `module`'s client,
    the times as TIMESTAMP of `datatype`."""
    client = client_for(module, server)
    got: dict[str, list[float]] = {name: [] for name in FIELDS}
    try:
        for n, (chunk, chunk_stamps) in enumerate(zip(chunks, stamps, strict=True)):
            x = module.InferInput("x", [1, *chunk.shape], "FP32")
            stamp = module.InferInput("TIMESTAMP", [1, len(chunk_stamps)], datatype)
            values = np.asarray([chunk_stamps], np.float64 if datatype == "FP64" else np.object_)
            if module is thttp:
                x.set_data_from_numpy(chunk[None], binary_data=binary)
                stamp.set_data_from_numpy(values, binary_data=binary)
            else:
                x.set_data_from_numpy(chunk[None])
                stamp.set_data_from_numpy(values)
            result = client.infer(
                SENSOR,
                [x, stamp],
                sequence_id=f"timed-{module.__name__}-{datatype}-{binary}",
                sequence_start=n == 0,
                headers=bearer(),
            )
            for name in FIELDS:
                got[name] += result.as_numpy(name)[0].tolist()
    finally:
        client.close()
    return got


@pytest.mark.parametrize(
    ("module", "datatype", "binary"),
    [(thttp, "FP64", True), (thttp, "BYTES", False), (tgrpc, "FP64", True), (tgrpc, "BYTES", True)],
    ids=["http-fp64-binary", "http-bytes-json", "grpc-fp64", "grpc-bytes"],
)
def test_triton_clients_send_times_as_api_v1_does(
    server: ServerProcess, references: dict[str, Reference], module: Any, datatype: str, binary: bool
) -> None:
    chunks = long_sensor_stream(references[SENSOR], 11, chunks=5, size=60)
    stamps = times(datatype, chunks)
    got = v2_answers(module, server, chunks, stamps, datatype, binary)
    with httpx.Client(base_url=server.url, headers=bearer(), timeout=30) as rest:
        timed = rest_twin(rest, SENSOR, chunks, stamps)
        untimed = rest_twin(rest, SENSOR, chunks)
    for name, field in FIELDS.items():
        want = [0.0 if a[field] is None else a[field] for a in timed]
        assert len(got[name]) == len(want), name
        assert all(close(g, w) for g, w in zip(got[name], want, strict=True)), name
    # the times made a difference, so the equality above is not that of two untimed streams
    assert any(a["probability"] != b["probability"] for a, b in zip(timed, untimed, strict=True))


def test_the_sensor_config_declares_an_optional_timestamp(server: ServerProcess) -> None:
    for module in (thttp, tgrpc):
        client = client_for(module, server)
        try:
            config = client.get_model_config(SENSOR, headers=bearer())
        finally:
            client.close()
        inputs = (
            config["input"]
            if module is thttp
            else [
                {
                    "name": i.name,
                    "data_type": tgrpc.model_config_pb2.DataType.Name(i.data_type),
                    "dims": list(i.dims),
                    "optional": i.optional,
                }
                for i in config.config.input
            ]
        )
        assert inputs[1] == {"name": "TIMESTAMP", "data_type": "TYPE_FP64", "dims": [-1], "optional": True}
        assert inputs[0]["name"] == "x" and not inputs[0].get("optional", False)
