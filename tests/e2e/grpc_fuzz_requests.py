"""Hypothesis strategies for the gRPC fuzzer (test_e2e_fuzz_grpc.py): the KServe V2 requests of one
sequence, as the protocol's own messages (service/grpc_proto): good ones, with any datatype, encoding,
top_k and id, and ones made certainly bad in one way, each with the error codes it may be refused with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from e2e_support import Reference
from fuzz_support import BAD_REQUEST, BAD_TEXT, INVALID, NON_FINITE, SEQ_CONFLICT
from hypothesis import strategies as st

from service.grpc_proto import kserve_v2_pb2 as pb
from service.grpc_server import set_parameter

LM, SENSOR = "lm-gru", "sensor-gru"
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
    set_parameter(request.parameters["sequence_id"], sequence.id)
    if start:
        set_parameter(request.parameters["sequence_start"], True)
    if draw(st.booleans()):
        set_parameter(request.parameters["seq"], len(sequence.events))
    options = (5, True)
    if lm:
        words = draw(st.lists(st.sampled_from(reference.vocab[2:]), min_size=1, max_size=3))
        options = (draw(st.integers(0, 20)), draw(st.booleans()))
        set_parameter(request.parameters["top_k"], options[0])
        set_parameter(request.parameters["include_special"], options[1])
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
        return lambda bad, value: set_parameter(bad.parameters[name], value)

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
        set_parameter(bad.parameters[flag], True)
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
