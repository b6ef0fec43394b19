"""Hypothesis against the KServe V2 gRPC service of a real server (ModelInfer and ModelStreamInfer),
with the protocol's own messages (service/grpc_proto), sent as bytes so that garbage can be sent too.

Each example runs one V2 sequence (an integer or any UTF-8 string id): a start, then good requests,
identical retries, and requests made certainly bad in one way (wrong datatype, shape or size, raw
contents of the wrong length, ids out of the vocabulary, NaN and huge readings, bad sequence ids, seqs
and parameters, unknown model, version, input or output, protobuf garbage), some also carrying
`sequence_start` or `sequence_end`. Checked:
- a bad request answers a refusal (never INTERNAL or UNKNOWN) with a message and the
  `rnnserve-error-code` of its kind; in a stream, that request's `[code] message` and the stream goes on;
- nothing bad moves the sequence: each good answer equals the reference's for a fresh sequence fed
  only the good events, and a retry answers the stored answer (the `seq` extension).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from e2e_support import KEYS, Reference, ServerProcess, check_lm, check_sensor
from fuzz_support import BAD_REQUEST, BAD_TEXT, INVALID, NON_FINITE, SEQ_CONFLICT
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.grpc_proto import kserve_v2_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
LM, SENSOR = "lm-gru", "sensor-gru"
METADATA = (("authorization", f"Bearer {KEYS[0]}"),)
SERVICE = "/inference.GRPCInferenceService"
STATUS = {  # the error code (trailer rnnserve-error-code) -> the gRPC status it must come with
    BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    "model_not_found": grpc.StatusCode.NOT_FOUND,
    SEQ_CONFLICT: grpc.StatusCode.ABORTED,
}
REFUSED = frozenset({BAD_REQUEST, INVALID})
DTYPES = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4", "FP64": "<f8"}
CONTENTS = {
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


@dataclass
class Sequence:
    """A V2 sequence and its model: the events it consumed."""

    id: int | str
    reference: Reference
    events: list[Any] = field(default_factory=list)


@dataclass
class Call:
    """One request and what must come back: `events` applied from `before` events, a refusal with one
    of `codes`, or (`replay`) the response to an earlier request."""

    request: bytes
    before: int = 0
    events: list[Any] | None = None
    options: tuple[int, bool] = (5, True)
    codes: frozenset[str] = frozenset()
    replay: int | None = None  # the index of the call whose answer a retry gets


@pytest.fixture(scope="module")
def channel(hostile_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(hostile_server.grpc_address) as opened:
        yield opened


def param(target: Any, value: Any) -> None:
    """Set an InferParameter from a Python value (the kind follows the type: the wire has five)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value >= 2**63:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value


# ---- good requests ------------------------------------------------------------------------------------

SEQUENCE_IDS = st.one_of(
    st.integers(1, 2**64 - 1),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30),
)


def good_request(draw: Any, sequence: Sequence, start: bool) -> tuple[pb.ModelInferRequest, Call]:
    """The sequence's next request, with any datatype, encoding, top_k and id."""
    reference = sequence.reference
    lm = reference.manifest.task == "lm"
    request = pb.ModelInferRequest(model_name=LM if lm else SENSOR, id=draw(st.text(max_size=8)))
    param(request.parameters["sequence_id"], sequence.id)
    if start:
        param(request.parameters["sequence_start"], True)
    if draw(st.booleans()):
        param(request.parameters["seq"], len(sequence.events))
    options = (5, True)
    if lm:
        words = draw(st.lists(st.sampled_from(reference.vocab[2:]), min_size=1, max_size=3))
        options = (draw(st.integers(0, 20)), draw(st.booleans()))
        param(request.parameters["top_k"], options[0])
        param(request.parameters["include_special"], options[1])
        if draw(st.booleans()):
            text = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
            text.contents.bytes_contents.append(" ".join(words).encode())
            return request, Call(b"", len(sequence.events), words, options)
        values = np.array([reference.vocab.index(w) for w in words])
        datatype, shape = draw(st.sampled_from(["INT64", "INT32"])), [1, len(words)]
        events: list[Any] = words
    else:
        spec = reference.manifest.sensor
        assert spec is not None
        readings = draw(st.lists(st.lists(st.floats(-4, 4), min_size=3, max_size=3), min_size=1, max_size=3))
        datatype, shape = draw(st.sampled_from(["FP32", "FP64"])), [1, len(readings), 3]
        values = np.asarray(spec.mean) + np.asarray(readings) * np.asarray(spec.std)
        values = values.astype(DTYPES[datatype])  # the reference reads what the wire carries
        events = values.astype(np.float64).tolist()
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if draw(st.booleans()):
        request.raw_input_contents.append(values.astype(DTYPES[datatype]).tobytes())
    else:
        getattr(tensor.contents, CONTENTS[datatype]).extend(values.reshape(-1).tolist())
    return request, Call(b"", len(sequence.events), events, options)


# ---- certainly-bad requests ---------------------------------------------------------------------------


def bad_requests(
    request: pb.ModelInferRequest, sequence: Sequence
) -> st.SearchStrategy[tuple[Any, frozenset[str]]]:
    """(a mutation of `request`, the codes it may be refused with): one thing certainly wrong."""
    x = request.inputs[0]
    seq = len(sequence.events)

    def with_(
        change: Callable[[pb.ModelInferRequest, Any], None], codes: frozenset[str] = REFUSED
    ) -> Callable[[Any], Any]:
        def make(value: Any) -> tuple[pb.ModelInferRequest, frozenset[str]]:
            bad = pb.ModelInferRequest()
            bad.CopyFrom(request)
            change(bad, value)
            return bad, codes

        return make

    def set_param(name: str) -> Callable[[pb.ModelInferRequest, Any], None]:
        return lambda bad, value: param(bad.parameters[name], value)

    def shape(bad: pb.ModelInferRequest, dims: list[int]) -> None:
        del bad.inputs[0].shape[:]
        bad.inputs[0].shape.extend(dims)

    def raw(bad: pb.ModelInferRequest, data: bytes) -> None:
        del bad.raw_input_contents[:]
        bad.raw_input_contents.append(data)

    int64 = st.integers(-(2**63), 2**63 - 1)
    text = x.name == "TEXT"
    # raw data of any other size than x's values (TEXT: shorter than one element's 4-byte length)
    size = math.prod(x.shape) * np.dtype(DTYPES.get(x.datatype, "u1")).itemsize
    raw_data = st.binary(max_size=3) if text else st.binary(max_size=40).filter(lambda b: len(b) != size)
    shapes = st.lists(int64, max_size=4).filter(lambda s: s != list(x.shape) and not (text and s == [1, 1]))
    not_int = st.one_of(st.booleans(), st.floats(), st.text(max_size=8))
    not_bool = st.one_of(int64, st.floats(), st.text(max_size=8))
    choices = [
        st.text(max_size=8)
        .filter(lambda d: d != x.datatype)
        .map(with_(lambda b, d: setattr(b.inputs[0], "datatype", d))),
        shapes.map(with_(shape)),
        raw_data.map(with_(raw)),
        st.binary(max_size=8).map(with_(lambda b, extra: b.raw_input_contents.extend([extra, extra]))),
        st.integers(0, 1).map(with_(lambda b, n: b.inputs.add(name="x") if n else b.ClearField("inputs"))),
        st.text(max_size=8)
        .filter(lambda n: n != x.name)
        .map(with_(lambda b, n: setattr(b.inputs[0], "name", n))),
        st.text(max_size=8)
        .filter(lambda n: n not in (LM, SENSOR))
        .map(with_(lambda b, n: setattr(b, "model_name", n), frozenset({"model_not_found"}))),
        st.text(min_size=1, max_size=4)
        .filter(lambda v: v != "1")
        .map(with_(lambda b, v: setattr(b, "model_version", v), frozenset({"model_not_found"}))),
        st.text(min_size=1, max_size=8).map(with_(lambda b, n: b.outputs.add(name=n + "?"))),
        st.one_of(
            st.integers(-(2**63), -1), st.floats(), st.booleans(), st.text(min_size=1025, max_size=1100)
        ).map(with_(set_param("sequence_id"))),
        st.one_of(st.integers(-(2**63), -1), not_int).map(with_(set_param("seq"))),
        st.integers(seq + 1, 2**64 - 1).map(with_(set_param("seq"), frozenset({SEQ_CONFLICT}))),
        st.one_of(st.integers(-(2**63), -1), not_int).map(with_(set_param("top_k"))),
        st.sampled_from(["sequence_start", "sequence_end", "binary_data_output"]).flatmap(
            lambda name: not_bool.map(with_(set_param(name)))
        ),
    ]
    if text:
        bad_utf8 = st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b)
        bad_text = BAD_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))
        choices.append(
            st.one_of(bad_utf8, bad_text).map(
                with_(lambda b, t: b.inputs[0].contents.bytes_contents.__setitem__(0, t))
            )
        )
    elif sequence.reference.manifest.task == "lm":
        vocab = len(sequence.reference.vocab)
        out = st.one_of(st.integers(-(2**31), -1), st.integers(vocab, 2**31 - 1))
        choices.append(out.map(with_(lambda b, v: _set_value(b, v))))
        choices.append(not_bool.map(with_(set_param("include_special"))))
    else:
        spec = sequence.reference.manifest.sensor
        assert spec is not None
        # past float32 once normalized by the narrowest feature, and still a float32 on the wire
        low = 3.5e38 * min(spec.std) + max(map(abs, spec.mean))
        top = float(np.finfo(np.float32).max)
        low32 = np.nextafter(np.float32(min(low, top)), top)  # the bounds must be float32 values too
        huge = st.floats(float(low32), float(top), width=32) if low < top else st.nothing()
        values = st.one_of(NON_FINITE.map(float), huge, huge.map(lambda v: -v))
        choices.append(values.map(with_(lambda b, v: _set_value(b, v, feature=int(np.argmin(spec.std))))))
    bad = st.one_of(choices)
    # a bad request that also starts or ends the sequence must neither reset nor end it
    flag = st.sampled_from([None, "sequence_start", "sequence_end"])
    return st.tuples(bad, flag).map(lambda pair: _flagged(pair[0][0], pair[0][1], pair[1]))


def _flagged(
    bad: pb.ModelInferRequest, codes: frozenset[str], flag: str | None
) -> tuple[Any, frozenset[str]]:
    if flag is not None and flag not in bad.parameters:
        param(bad.parameters[flag], True)
        if flag == "sequence_start":  # the seq of a running sequence does not fit a start
            codes = codes | {SEQ_CONFLICT}
    return bad, codes


def _set_value(bad: pb.ModelInferRequest, value: float, feature: int = 0) -> None:
    """Put `value` in the input x (raw or contents) at `feature` of the last event."""
    x = bad.inputs[0]
    if bad.raw_input_contents:
        array = np.frombuffer(bad.raw_input_contents[0], DTYPES[x.datatype]).copy()
        array[-x.shape[-1] + feature if len(x.shape) == 3 else -1] = value
        bad.raw_input_contents[0] = array.tobytes()
    else:
        contents = getattr(x.contents, CONTENTS[x.datatype])
        contents[-x.shape[-1] + feature if len(x.shape) == 3 else -1] = value


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
