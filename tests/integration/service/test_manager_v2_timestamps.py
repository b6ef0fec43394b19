"""A sensor's optional V2 input TIMESTAMP (service/kserve.py) is API v1's `timestamps`: the same readings
and times through V2 (JSON data, binary data, FP64, INT64 or ISO text) and through API v1 leave the
same session state and answer the same outputs; bad TIMESTAMP tensors are 4xx and move nothing."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from manager_support import running

from service import kserve, schemas
from service.errors import ServiceError
from service.sessions import SessionManager
from service.settings import Settings
from service.v2_sequence import SequenceParams
from service.v2_tensors import decode_http, http_body

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

MODEL = "sensor-lstm"
START = 1_795_000_000  # Unix seconds; readings an hour apart run through every hour of the day
READINGS = 60


def stream(features: int) -> tuple[np.ndarray, list[int], list[str]]:
    """Readings [READINGS, F], their Unix seconds and the same times as ISO text (UTC)."""
    readings = np.random.default_rng(3).normal(0, 1, (READINGS, features)).astype(np.float32)
    seconds = [START + 3600 * i for i in range(READINGS)]
    iso = [str(np.datetime_as_string(np.datetime64(s, "s"))) for s in seconds]  # naive: its hour as written
    return readings, seconds, iso


Body = tuple[dict[str, Any], bytes]  # a V2 request's JSON header and its binary tail


def v2_request(x: np.ndarray, stamps: dict[str, Any] | None, binary: bool, **params: Any) -> Body:
    """x as JSON data; TIMESTAMP (if given: datatype, values) as JSON data or binary data."""
    inputs: list[dict[str, Any]] = [
        {"name": "x", "datatype": "FP32", "shape": [1, *x.shape], "data": x.astype(np.float64).tolist()}
    ]
    head, tail = {"parameters": params, "inputs": inputs}, b""
    if stamps is not None:
        tail = add_stamps(head, stamps["datatype"], stamps["values"], binary)
    return head, tail


def add_stamps(head: dict[str, Any], datatype: str, values: list[Any], binary: bool, **spec: Any) -> bytes:
    """Appends a TIMESTAMP input to `head`; returns its binary data (b"" when it goes as JSON)."""
    stamp: dict[str, Any] = {"name": "TIMESTAMP", "datatype": datatype, "shape": [1, len(values)], **spec}
    head["inputs"].append(stamp)
    if not binary:
        stamp["data"] = values
        return b""
    tail = raw(datatype, values)
    stamp["parameters"] = {"binary_data_size": len(tail)}
    return tail


def raw(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in (t.encode() for t in values))
    return np.asarray(values, {"FP64": "<f8", "INT64": "<i8"}[datatype]).tobytes()


async def infer(manager: SessionManager, body: Body, model: str = MODEL) -> dict[str, Any]:
    """The outputs, by name, of the request as the HTTP route reads it."""
    head = json.dumps(body[0]).encode()
    request, tail = decode_http(head + body[1], len(head) if body[1] else None)
    result = await kserve.infer(manager, None, model, None, request, tail)
    answer, _ = http_body(result.header, result.outputs)
    return {o["name"]: o["data"] for o in json.loads(answer)["outputs"]}


async def state_of(manager: SessionManager, sequence_id: str) -> tuple[int, str]:
    sid = manager.sequence_session_id(SequenceParams(sequence_id, False, False, None).key(MODEL), None)
    return (await manager.get(sid, None)).seq, (await manager.export_state(sid, None)).state


async def v1_twin(manager: SessionManager, readings: np.ndarray, stamps: list[Any] | None) -> tuple[Any, str]:
    """API v1's answers and final state for the same readings (in two requests, as V2 sends them)."""
    info = await manager.create(schemas.CreateSession(model=MODEL), None)
    outputs: list[Any] = []
    for part in (slice(0, READINGS // 2), slice(READINGS // 2, READINGS)):
        body: dict[str, Any] = {"readings": readings[part].astype(np.float64).tolist()}
        if stamps is not None:
            body["timestamps"] = stamps[part]
        outputs += (await manager.step(info.session_id, None, body)).outputs
    return outputs, (await manager.export_state(info.session_id, None)).state


@pytest.mark.parametrize(
    ("datatype", "binary"),
    [("FP64", False), ("FP64", True), ("INT64", True), ("BYTES", False), ("BYTES", True)],
)
async def test_timestamps_over_v2_equal_api_v1s(
    make_settings: Callable[..., Settings], datatype: str, binary: bool
) -> None:
    async with running(make_settings()) as manager:
        features = len(manager.registry.get(MODEL, None).manifest.sensor.mean)  # type: ignore[union-attr]
        readings, seconds, iso = stream(features)
        given: list[Any] = iso if datatype == "BYTES" else seconds
        answers: dict[str, list[Any]] = {}
        for part, start in ((slice(0, READINGS // 2), True), (slice(READINGS // 2, READINGS), False)):
            stamps = {"datatype": datatype, "values": given[part]}
            body = v2_request(readings[part], stamps, binary, sequence_id="t", sequence_start=start)
            for name, values in (await infer(manager, body)).items():
                answers.setdefault(name, []).extend(values)
        seq, state = await state_of(manager, "t")
        twin_outputs, twin_state = await v1_twin(manager, readings, given)
        _, untimed_state = await v1_twin(manager, readings, None)
    assert seq == READINGS and state == twin_state  # the same statistics, the daily profile included
    assert state != untimed_state  # the times reached the daily profile
    for name, field in (("PROBABILITY", "probability"), ("LIKELIHOOD", "likelihood"), ("SCORE", "score")):
        want = [0.0 if getattr(o, field) is None else getattr(o, field) for o in twin_outputs]
        assert np.array_equal(np.asarray(answers[name], np.float32), np.asarray(want, np.float32)), name


async def test_bad_timestamps_are_4xx_and_move_nothing(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings()) as manager:
        features = len(manager.registry.get(MODEL, None).manifest.sensor.mean)  # type: ignore[union-attr]
        readings, seconds, iso = stream(features)
        x = readings[:3]
        await infer(manager, v2_request(x, None, False, sequence_id="s", sequence_start=True))
        before = await state_of(manager, "s")

        def stamped(datatype: str, values: list[Any], binary: bool = False, **spec: Any) -> Body:
            head, _ = v2_request(x, None, False, sequence_id="s")
            return head, add_stamps(head, datatype, values, binary, **spec)

        non_utf8 = stamped("BYTES", iso[:3], binary=True)
        cut = stamped("FP64", seconds[:3], binary=True)
        alone, _ = v2_request(x, None, False, sequence_id="s")
        add_stamps(alone, "FP64", seconds[:3], False)
        del alone["inputs"][0]
        twice, _ = v2_request(x, None, False, sequence_id="s")
        twice["inputs"] *= 2
        bad = [
            (stamped("FP32", seconds[:3]), "invalid_input"),  # not a timestamp datatype
            (stamped("FP64", seconds[:2]), "invalid_input"),  # one per reading
            (stamped("FP64", seconds[:3], shape=[3]), "invalid_input"),
            (stamped("FP64", [seconds[0], float("nan"), seconds[2]], binary=True), "invalid_input"),
            (stamped("FP64", [seconds[0], float("inf"), seconds[2]], binary=True), "invalid_input"),
            (stamped("BYTES", ["\x01", iso[1], iso[2]]), "invalid_input"),  # a control character
            (stamped("FP64", ["soon", 1, 2]), "invalid_input"),
            ((non_utf8[0], non_utf8[1].replace(iso[2].encode()[:3], b"\xff\xfe\xfd")), "invalid_input"),
            ((cut[0], cut[1][:-1]), "bad_request"),  # binary sizes that do not add up
            ((alone, b""), "bad_request"),  # readings are needed
            ((twice, b""), "bad_request"),
        ]
        for body, code in bad:
            with pytest.raises(ServiceError) as info:
                await infer(manager, body)
            assert info.value.code == code, (body[0]["inputs"][-1], info.value.message)
            assert 400 <= info.value.status < 500
        assert await state_of(manager, "s") == before
        lm = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 1], "data": [2]}]}
        add_stamps(lm, "FP64", [1.0], False)
        with pytest.raises(ServiceError) as lm_info:  # an lm has no TIMESTAMP input
            await infer(manager, (lm, b""), "lm-gru")
        assert lm_info.value.code == "bad_request" and "TIMESTAMP" in lm_info.value.message
