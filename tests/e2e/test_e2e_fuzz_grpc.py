"""Hypothesis against the KServe V2 gRPC service of a real server (ModelInfer and ModelStreamInfer),
with the protocol's own messages (service/grpc_proto), sent as bytes so that garbage can be sent too.

Each example runs one V2 sequence (an integer or any UTF-8 string id): a start, then good requests,
identical retries, and requests made certainly bad in one way (wrong datatype, shape or size, raw
contents of the wrong length, ids out of the vocabulary, NaN and huge readings, bad sequence ids, seqs
and parameters, unknown model, version, input or output, protobuf garbage), some also carrying
`sequence_start` or `sequence_end` (the requests: grpc_fuzz_requests.py). Checked:
- a bad request answers a refusal (never INTERNAL or UNKNOWN) with a message and the
  `rnnserve-error-code` of its kind; in a stream, that request's `[code] message` and the stream goes on;
- nothing bad moves the sequence: each good answer equals the reference's for a fresh sequence fed
  only the good events, and a retry answers the stored answer (the `seq` extension).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from e2e_support import KEYS, Reference, ServerProcess, check_lm, check_sensor
from fuzz_support import BAD_REQUEST, INVALID, SEQ_CONFLICT
from grpc_fuzz_requests import LM, SENSOR, SEQUENCE_IDS, Call, Sequence, bad_requests, good_request
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.grpc_proto import kserve_v2_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
METADATA = (("authorization", f"Bearer {KEYS[0]}"),)
SERVICE = "/inference.GRPCInferenceService"
STATUS = {  # the error code (trailer rnnserve-error-code) -> the gRPC status it must come with
    BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    "model_not_found": grpc.StatusCode.NOT_FOUND,
    SEQ_CONFLICT: grpc.StatusCode.ABORTED,
}


@pytest.fixture(scope="module")
def channel(hostile_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(hostile_server.grpc_address) as opened:
        yield opened


# ---- the test ---------------------------------------------------------------------------------------

GARBAGE = frozenset({BAD_REQUEST, INVALID, "model_not_found"})  # bytes that parse may name no model


@FUZZ
@given(data=st.data(), model=st.sampled_from([LM, SENSOR]), stream=st.booleans())
def test_v2_sequence(
    channel: grpc.Channel, references: dict[str, Reference], data: Any, model: str, stream: bool
) -> None:
    sequence = Sequence(data.draw(SEQUENCE_IDS, label="sequence_id"), references[model])
    calls: list[Call] = []
    last: int | None = None  # the call a retry repeats: the last applied one, when it had a seq

    def good(start: bool) -> None:
        nonlocal last
        request, call = good_request(data.draw, sequence, start)
        call.request = request.SerializeToString()
        sequence.events = sequence.events + (call.events or [])
        last = len(calls) if "seq" in request.parameters else None
        calls.append(call)

    good(True)
    for _ in range(data.draw(st.integers(1, 8), label="requests")):
        action = data.draw(st.sampled_from(["good", "bad", "bad", "bad", "retry", "garbage"]))
        if action == "good" or (action == "retry" and last is None):
            good(False)
        elif action == "retry":
            assert last is not None
            calls.append(Call(calls[last].request, replay=last))
        elif action == "garbage":
            calls.append(Call(data.draw(st.binary(max_size=40)), codes=GARBAGE))
        else:
            base, _ = good_request(data.draw, sequence, False)
            bad, codes = data.draw(bad_requests(base, sequence))
            calls.append(Call(bad.SerializeToString(), before=len(sequence.events), codes=codes))
    good(False)  # the sequence goes on from where its good requests left it
    outcomes = (streamed if stream else unary)(channel, [call.request for call in calls])
    for call, outcome in zip(calls, outcomes, strict=True):
        if call.codes:
            refused(call, outcome)
        elif call.replay is not None:
            assert outcome == outcomes[call.replay]
        else:
            assert isinstance(outcome, pb.ModelInferResponse), outcome
            check_answer(
                sequence.reference, sequence.events[: call.before + len(call.events or [])], call, outcome
            )


Outcome = pb.ModelInferResponse | tuple[grpc.StatusCode | None, str, dict[str, str]]


def unary(channel: grpc.Channel, requests: list[bytes]) -> list[Outcome]:
    infer = channel.unary_unary(f"{SERVICE}/ModelInfer")
    outcomes: list[Outcome] = []
    for request in requests:
        try:
            outcomes.append(pb.ModelInferResponse.FromString(infer(request, metadata=METADATA, timeout=30)))
        except grpc.RpcError as error:
            trailers = dict(error.trailing_metadata() or ())
            outcomes.append((error.code(), error.details() or "", trailers))
    return outcomes


def streamed(channel: grpc.Channel, requests: list[bytes]) -> list[Outcome]:
    """All requests on one ModelStreamInfer stream: one answer each, in order."""
    infer = channel.stream_stream(f"{SERVICE}/ModelStreamInfer")
    outcomes: list[Outcome] = []
    for raw in infer(iter(requests), metadata=METADATA, timeout=60):
        answer = pb.ModelStreamInferResponse.FromString(raw)
        outcomes.append((None, answer.error_message, {}) if answer.error_message else answer.infer_response)
    return outcomes


def refused(call: Call, outcome: Outcome) -> None:
    """A refusal of one of the call's kinds: on a unary call the status of its code (never INTERNAL or
    UNKNOWN) and the code in the trailers; in a stream the answer's `[code] message`."""
    assert isinstance(outcome, tuple), outcome
    status, message, trailers = outcome
    if status is None:
        code, _, message = message.partition("] ")
        code = code.removeprefix("[")
    else:
        code = trailers.get("rnnserve-error-code", "")
        assert status == STATUS.get(code), (status, code, message)
        if code == SEQ_CONFLICT:  # the seq the sequence is at; a start expects 0 (a new sequence)
            start = pb.ModelInferRequest.FromString(call.request).parameters["sequence_start"].bool_param
            assert trailers["rnnserve-expected-seq"] == str(0 if start else call.before)
    assert code in call.codes and message, (code, message)
    event(f"refused: {code}")  # the run's statistics (--hypothesis-show-statistics) count the kinds


def check_answer(
    reference: Reference, events: list[Any], call: Call, response: pb.ModelInferResponse
) -> None:
    """The answer to the last `len(call.events)` of `events` equals the reference's for a fresh sequence."""
    assert call.events is not None
    count, first = len(call.events), len(events) - len(call.events)
    assert response.parameters["seq"].int64_param == len(events)
    out = {
        o.name: np.frombuffer(raw, {"BOOL": "?", "INT64": "<i8", "FP32": "<f4"}[o.datatype]).reshape(o.shape)[
            0
        ]
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        if o.datatype != "BYTES"  # TOPK_TOKENS: the words of TOPK_IDS, which are checked
    }
    if reference.manifest.task == "lm":
        vocab = reference.vocab
        outputs = [
            {
                "token": vocab[int(out["TOKEN_IDS"][t])],
                "token_id": int(out["TOKEN_IDS"][t]),
                "unknown": False,
                "logprob": None if first + t == 0 else float(out["TOKEN_LOGPROB"][t]),
                "next": [
                    {"token": vocab[i], "prob": float(p)}
                    for i, p in zip(out["TOPK_IDS"][t], out["TOPK_PROBS"][t], strict=True)
                ],
            }
            for t in range(count)
        ]
        check_lm(outputs, reference.lm(events, *call.options)[first:])
    else:
        none = first == 0  # the sequence's first reading has nothing to be scored against
        outputs = [
            {
                "score": None if none and t == 0 else float(out["SCORE"][t]),
                "probability": None if none and t == 0 else float(out["PROBABILITY"][t]),
                "is_anomaly": None if none and t == 0 else bool(out["IS_ANOMALY"][t]),
                "surprise": None if none and t == 0 else float(out["SURPRISE"][t]),
                "likelihood": None if none and t == 0 else float(out["LIKELIHOOD"][t]),
                "alarm": None if none and t == 0 else float(out["ALARM"][t]),
                "predicted_mean": out["PREDICTED_MEAN"][t].astype(np.float64),
                "predicted_std": out["PREDICTED_STD"][t].astype(np.float64),
            }
            for t in range(count)
        ]
        check_sensor(outputs, reference.sensor(events)[first:], reference.manifest)


# ---- regressions the fuzzing found --------------------------------------------------------------------


def test_protobuf_garbage_is_invalid_argument(channel: grpc.Channel) -> None:
    """grpcio answers a request its deserializer refuses with UNKNOWN: the service parses it itself."""
    for method in ("ModelInfer", "ModelReady", "ModelMetadata"):
        with pytest.raises(grpc.RpcError) as refused_call:
            channel.unary_unary(f"{SERVICE}/{method}")(b"\xff\xff\xff", metadata=METADATA, timeout=30)
        assert refused_call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    good = pb.ModelInferRequest(model_name=LM)
    good.inputs.add(name="x", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(2)
    answers = streamed(channel, [b"\xff\xff\xff", good.SerializeToString()])
    assert isinstance(answers[0], tuple) and answers[0][1].startswith("[bad_request] "), answers[0]
    assert isinstance(answers[1], pb.ModelInferResponse)  # the stream went on


def test_an_empty_tensor_with_a_huge_event_count_is_refused(channel: grpc.Channel) -> None:
    """Shape [1, 2^31, 0] holds no values, so empty data matched it, and the server hung building 2^31
    empty readings: the event count is checked first."""
    request = pb.ModelInferRequest(model_name=SENSOR, raw_input_contents=[b""])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2**31, 0])
    (outcome,) = unary(channel, [request.SerializeToString()])
    assert isinstance(outcome, tuple) and outcome[0] == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert "events in one request" in outcome[1]
