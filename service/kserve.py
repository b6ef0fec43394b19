"""The KServe V2 inference protocol with Triton's sequence extension, on the session manager.

An existing Triton client drives the server unchanged: one request carries the next events of one
sequence, and the sequence's state lives on the server between requests.

    POST /v2/models/{name}[/versions/{version}]/infer
    {"parameters": {"sequence_id": 7, "sequence_start": true, "sequence_end": false, "top_k"?: 5},
     "inputs": [{"name": "x", "datatype": "INT64", "shape": [1, T], "data": [...]}],
     "outputs"?: [{"name": "TOPK_IDS"}, ...]}

- `sequence_id` (unsigned int or string; 0 or "" or absent: a one-shot request on a fresh state) names
  a server session of the caller's key and the model (`SessionManager.sequence_session_id`), so the
  sequence survives a restart with the session snapshot: `sequence_start` creates it (a running
  sequence of the same id is replaced), later requests step it, `sequence_end` deletes it after the
  step. A request without `sequence_start` for an unknown id is refused (400), as Triton does; one for
  a sequence that ended answers 410.
- input `x`: lm INT64 (or INT32) token ids [1, T]; sensor FP32 (or FP64) raw readings [1, T, F]; or, for
  lm, `TEXT` BYTES [1]: one string, split into words as API v1's `text`. JSON `data` (flat, row-major,
  or nested) or binary tensor data (Triton's `binary_tensor_data` extension; with several inputs, their
  binary data follow one another in input order). One sequence per request (batch size 1, Triton's
  rule for sequence models: the server batches many sequences' steps itself).
- optional sensor input `TIMESTAMP` [1, T], one per reading, API v1's `timestamps` (the readings' hour
  of the day feeds the session's daily profile): FP64 (or INT64) Unix seconds, hour taken in UTC, or
  BYTES ISO 8601 text, hour as written.
- outputs (service/v2_tensors.py renders them as JSON data or binary data, as the request asks):
  lm:     TOKEN_LOGPROB FP32 [1, T], TOPK_IDS INT64 [1, T, k], TOPK_PROBS FP32 [1, T, k],
          TOKEN_IDS INT64 [1, T] (the ids read, <unk> for unknown words), TOPK_TOKENS BYTES [1, T, k]
          (k: request parameter `top_k`, default 5; `<unk>` and `<eos>` included unless the
          parameter `include_special` is false)
  sensor: PREDICTED_MEAN FP32 [1, T, F], PREDICTED_STD FP32 [1, T, F], SCORE FP32 [1, T],
          PROBABILITY FP32 [1, T], IS_ANOMALY BOOL [1, T], LIKELIHOOD FP32 [1, T],
          SURPRISE FP32 [1, T], ALARM FP32 [1, T] (API v1's score, probability, is_anomaly,
          likelihood, surprise, alarm)
  The first event of a sequence predicts nothing (API v1 answers null): TOKEN_LOGPROB, SCORE,
  PROBABILITY, LIKELIHOOD, SURPRISE and ALARM carry 0.0 there and IS_ANOMALY false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service import schemas, v2_sequence
from service.errors import BadRequest, InvalidInput, ModelNotFound
from service.predictors.base import check_event_count
from service.registry import LoadedModel
from service.sessions import SessionManager
from service.v2_tensors import Tensor, decode_values

_INPUT_DTYPES = {"lm": ("INT64", "INT32"), "sensor": ("FP32", "FP64")}
TEXT_INPUT = "TEXT"  # lm: one BYTES element of text, read as API v1's `text`
TIMESTAMP_INPUT = "TIMESTAMP"  # sensor, optional: each reading's time, read as API v1's `timestamps`
_TIMESTAMP_DTYPES = ("FP64", "INT64", "BYTES")
OUTPUTS: dict[str, dict[str, tuple[str, int]]] = {  # name -> (datatype, rank)
    "lm": {
        "TOKEN_LOGPROB": ("FP32", 2),
        "TOPK_IDS": ("INT64", 3),
        "TOPK_PROBS": ("FP32", 3),
        "TOKEN_IDS": ("INT64", 2),
        "TOPK_TOKENS": ("BYTES", 3),
    },
    "sensor": {
        "PREDICTED_MEAN": ("FP32", 3),
        "PREDICTED_STD": ("FP32", 3),
        "SCORE": ("FP32", 2),
        "PROBABILITY": ("FP32", 2),
        "IS_ANOMALY": ("BOOL", 2),
        "LIKELIHOOD": ("FP32", 2),
        "SURPRISE": ("FP32", 2),
        "ALARM": ("FP32", 2),
    },
}
DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class InferResult:
    """One inference's answer, before a transport renders it: the header fields and the tensors, each
    with whether it goes as binary data (HTTP; gRPC always sends raw contents)."""

    header: dict[str, Any]
    outputs: list[tuple[Tensor, bool]]


Timestamps = list[float] | list[str]


def decode_inputs(
    request: dict[str, Any], tail: bytes, task: str, max_events: int
) -> tuple[np.ndarray | str, Timestamps | None]:
    """The request's inputs: `x` (checked for datatype, shape and size) or an lm's TEXT string, and a
    sensor's optional TIMESTAMP values (one per reading), or None.

    The number of events (x's second dimension) is checked against `max_events` before any value is
    read: a shape such as [1, 2^31, 0] holds no values, so its size matches empty data, and decoding it
    would build billions of empty readings."""
    inputs = request.get("inputs")
    names = "`x` or `TEXT`" if task == "lm" else "`x` (and optionally `TIMESTAMP`)"
    if (
        not isinstance(inputs, list)
        or not 1 <= len(inputs) <= 2
        or not all(isinstance(i, dict) for i in inputs)
    ):
        raise BadRequest(f"give the input tensor {names}")
    known = {"x", TEXT_INPUT} if task == "lm" else {"x", TIMESTAMP_INPUT}
    given = [spec.get("name") for spec in inputs]
    for name in given:
        if name not in known:
            raise BadRequest(f"unknown input {name!r}; the model's input is {names}")
    if len(set(given)) != len(given) or sum(name in ("x", TEXT_INPUT) for name in given) != 1:
        raise BadRequest(f"give the input tensor {names}, each once")
    parts = dict(zip(given, _binary_parts(inputs, tail), strict=True))
    specs = dict(zip(given, inputs, strict=True))
    if TEXT_INPUT in specs:
        return _decode_text(specs[TEXT_INPUT], parts[TEXT_INPUT]), None
    x = _decode_x(specs["x"], parts["x"], task, max_events)
    if TIMESTAMP_INPUT not in specs:
        return x, None
    return x, _decode_timestamps(specs[TIMESTAMP_INPUT], parts[TIMESTAMP_INPUT], x.shape[1])


def _shape(spec: dict[str, Any]) -> list[int]:
    raw_shape = spec.get("shape")
    if isinstance(raw_shape, list) and all(type(d) is int and d >= 0 for d in raw_shape):
        return [int(d) for d in raw_shape]
    return []


def _binary_parts(inputs: list[dict[str, Any]], tail: bytes) -> list[bytes | None]:
    """Each input's binary tensor data (None: it sends JSON `data`): the tail holds them one after the
    other, in input order, each `parameters.binary_data_size` bytes long."""
    parts: list[bytes | None] = []
    offset = 0
    for spec in inputs:
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is None:
            parts.append(None)
            continue
        if type(size) is not int or not 0 <= size <= len(tail) - offset:
            raise BadRequest(
                f"binary_data_size {size} does not fit the {len(tail) - offset} binary bytes left"
            )
        parts.append(tail[offset : offset + size])
        offset += size
    if offset != len(tail):
        raise BadRequest(f"binary_data_size says {offset} bytes, the request carries {len(tail)}")
    return parts


def _decode_text(spec: dict[str, Any], raw: bytes | None) -> str:
    shape = _shape(spec)
    if spec.get("datatype") != "BYTES" or shape not in ([1], [1, 1]):
        raise InvalidInput("input TEXT is BYTES of shape [1] (or [1, 1]): one string", shape=shape)
    (text,) = _utf8(
        decode_values("BYTES", shape, spec.get("data"), raw, "input TEXT").reshape(-1)[:1], "TEXT"
    )
    return text


def _utf8(items: np.ndarray, name: str) -> list[str]:
    """BYTES elements as text; InvalidInput naming the input if one is not UTF-8."""
    try:
        return [bytes(item).decode("utf-8") for item in items]
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name} is not UTF-8 text") from None


def _decode_x(spec: dict[str, Any], raw: bytes | None, task: str, max_events: int) -> np.ndarray:
    datatype, shape = spec.get("datatype"), _shape(spec)
    if datatype not in _INPUT_DTYPES[task]:
        accepted = " or ".join(_INPUT_DTYPES[task])
        raise InvalidInput(f"input x of a {task} model takes {accepted}, not {datatype}")
    rank = 2 if task == "lm" else 3
    if len(shape) != rank:
        raise InvalidInput(f"input x of a {task} model has shape {'[1, T]' if rank == 2 else '[1, T, F]'}")
    if shape[0] != 1:
        raise InvalidInput(
            "one sequence per request (Triton's rule for sequence models): the first dimension of x "
            "must be 1; the server batches the steps of many sequences itself",
            shape=shape,
        )
    check_event_count(shape[1], max_events)
    return decode_values(datatype, shape, spec.get("data"), raw, "input x")


def _decode_timestamps(spec: dict[str, Any], raw: bytes | None, events: int) -> Timestamps:
    datatype, shape = spec.get("datatype"), _shape(spec)
    if datatype not in _TIMESTAMP_DTYPES:
        raise InvalidInput(f"input TIMESTAMP takes {', '.join(_TIMESTAMP_DTYPES)}, not {datatype}")
    if shape != [1, events]:
        raise InvalidInput(
            f"input TIMESTAMP has shape [1, T], one per reading of x: [1, {events}]", shape=shape
        )
    values = decode_values(datatype, shape, spec.get("data"), raw, "input TIMESTAMP").reshape(-1)
    # the values are API v1's `timestamps` from here on: its schema refuses what it refuses there
    # (non-finite seconds, text with control characters), before anything moves
    if datatype == "BYTES":
        return _utf8(values, "TIMESTAMP")
    stamps: list[float] = values.astype(np.float64).tolist()
    return stamps


def _fp32(values: list[float | None]) -> np.ndarray:
    """FP32 values; the first event of a sequence has no prediction to compare with (API v1 answers
    null): V2 carries 0.0 there, as the README says, since JSON has no NaN and strict clients refuse
    null."""
    return np.array([0.0 if v is None else v for v in values], dtype=np.float32)


def encode_outputs(step: schemas.StepResponse, task: str, vocab_index: dict[str, int]) -> dict[str, Tensor]:
    """The step's per-event outputs as V2 tensors, by name."""
    t = len(step.outputs)
    arrays: dict[str, np.ndarray] = {}
    if task == "lm":
        lm = [o for o in step.outputs if isinstance(o, schemas.LmOutput)]
        k = len(lm[0].next) if lm else 0
        arrays["TOKEN_LOGPROB"] = _fp32([o.logprob for o in lm]).reshape(1, t)
        arrays["TOPK_IDS"] = np.array(
            [vocab_index[n.token] for o in lm for n in o.next], dtype=np.int64
        ).reshape(1, t, k)
        arrays["TOPK_PROBS"] = _fp32([n.prob for o in lm for n in o.next]).reshape(1, t, k)
        arrays["TOKEN_IDS"] = np.array([o.token_id for o in lm], dtype=np.int64).reshape(1, t)
        arrays["TOPK_TOKENS"] = np.array(
            [n.token.encode("utf-8") for o in lm for n in o.next] or [], dtype=object
        ).reshape(1, t, k)
    else:
        sensor = [o for o in step.outputs if isinstance(o, schemas.SensorOutput)]
        f = len(sensor[0].predicted_mean) if sensor else 0
        arrays["PREDICTED_MEAN"] = _fp32([v for o in sensor for v in o.predicted_mean]).reshape(1, t, f)
        arrays["PREDICTED_STD"] = _fp32([v for o in sensor for v in o.predicted_std]).reshape(1, t, f)
        arrays["SCORE"] = _fp32([o.score for o in sensor]).reshape(1, t)
        arrays["PROBABILITY"] = _fp32([o.probability for o in sensor]).reshape(1, t)
        arrays["IS_ANOMALY"] = np.array([bool(o.is_anomaly) for o in sensor], dtype=bool).reshape(1, t)
        arrays["LIKELIHOOD"] = _fp32([o.likelihood for o in sensor]).reshape(1, t)
        arrays["SURPRISE"] = _fp32([o.surprise for o in sensor]).reshape(1, t)
        arrays["ALARM"] = _fp32([o.alarm for o in sensor]).reshape(1, t)
    return {name: Tensor(name, OUTPUTS[task][name][0], array) for name, array in arrays.items()}


def _binary_flag(params: Any, where: str, default: bool) -> bool:
    if params is None:
        return default
    if not isinstance(params, dict):
        raise BadRequest(f"{where} `parameters` must be an object")
    flag = params.get("binary_data", default)
    if not isinstance(flag, bool):
        raise BadRequest(f"{where} parameter binary_data must be true or false")
    return flag


def requested_outputs(request: dict[str, Any], task: str) -> list[tuple[str, bool]]:
    """(name, as binary data) of each output asked for, in order; every output when none is named.

    Binary or JSON as Triton decides: an output's own `binary_data` parameter, else the request's
    `binary_data_output` parameter, else JSON."""
    params = request.get("parameters") or {}
    everything = params.get("binary_data_output", False) if isinstance(params, dict) else False
    if not isinstance(everything, bool):
        raise BadRequest("parameter binary_data_output must be true or false")
    asked = request.get("outputs")
    if asked is None:
        return [(name, everything) for name in OUTPUTS[task]]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise BadRequest("`outputs` must be a list of objects with a `name`")
    names = [o.get("name") for o in asked]
    unknown = [n for n in names if n not in OUTPUTS[task]]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; a {task} model has {sorted(OUTPUTS[task])}")
    return [
        (str(o["name"]), _binary_flag(o.get("parameters"), f"output {o['name']}", everything)) for o in asked
    ]


def _lm_payload(model: LoadedModel, x: np.ndarray | str, parameters: dict[str, Any]) -> dict[str, Any]:
    # a V2 client reads ids: the model's own top-k, specials included, unless it asks otherwise
    options = {
        "top_k": parameters.get("top_k", DEFAULT_TOP_K),
        "include_special": parameters.get("include_special", True),
    }
    if isinstance(x, str):
        return {"text": x, **options}
    vocab = model.vocab or []
    ids = x[0].tolist()
    bad = [i for i in ids if not 0 <= i < len(vocab)]
    if bad:
        raise InvalidInput(f"token ids must lie in [0, {len(vocab)})", ids=bad[:10])
    return {"tokens": [vocab[i] for i in ids], **options}


async def infer(
    manager: SessionManager,
    owner: str | None,
    name: str,
    version: str | None,
    request: dict[str, Any],
    tail: bytes = b"",
) -> InferResult:
    """One V2 inference request, whatever its transport: `request` is the JSON header (gRPC builds the
    same shape), `tail` the binary tensor data. Decode, step the sequence's session, encode."""
    model = manager.registry.get(name, version)
    request_id = request_id_of(request)
    params = v2_sequence.sequence_params(request.get("parameters"))
    x, stamps = decode_inputs(request, tail, model.task, manager.settings.max_events_per_request)
    wanted = requested_outputs(request, model.task)
    top_k = (request.get("parameters") or {}).get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise BadRequest(f"parameter top_k must be a non-negative integer, not {top_k!r}")
    payload: dict[str, Any]
    if model.task == "lm":
        payload = _lm_payload(model, x, request.get("parameters") or {})
    else:
        assert isinstance(x, np.ndarray)
        payload = {"readings": x[0].astype(np.float64).tolist()}
        if stamps is not None:
            payload["timestamps"] = stamps
    step = await v2_sequence.step_sequence(manager, owner, model, params, payload)
    tensors = encode_outputs(step, model.task, model.vocab_index)
    sequence = {"sequence_id": params.sequence_id, "seq": step.seq} if params.sequence_id is not None else {}
    header = {
        "model_name": model.name,
        "model_version": model.version,
        **({"id": request_id} if request_id is not None else {}),
        "parameters": sequence,
    }
    return InferResult(header, [(tensors[n], binary) for n, binary in wanted])


def request_id_of(request: dict[str, Any]) -> str | None:
    """The request's `id` (a string the answer echoes), checked before anything is applied."""
    request_id = request.get("id")
    if request_id is None:
        return None
    if not isinstance(request_id, str):
        raise BadRequest(f"`id` must be a string, not {type(request_id).__name__}")
    try:
        request_id.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("`id` must be UTF-8 text: it holds a lone surrogate") from None
    return request_id


def model_metadata(manager: SessionManager, name: str, version: str | None) -> dict[str, Any]:
    infos = [m for m in manager.models().models if m.name == name]
    if not infos:
        raise ModelNotFound(f"no model named {name!r}", model=name)
    if version is not None and version not in {m.version for m in infos}:
        raise ModelNotFound(f"model {name!r} has no version {version!r}", model=name, version=version)
    info = next(m for m in infos if (m.version == version if version is not None else m.default))
    features = len(info.features or [])
    x_shape = [1, -1] if info.task == "lm" else [1, -1, features]
    return {
        "name": name,
        "versions": [m.version for m in infos],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "x", "datatype": _INPUT_DTYPES[info.task][0], "shape": x_shape},
            {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [1]}
            if info.task == "lm"
            else {"name": TIMESTAMP_INPUT, "datatype": "FP64", "shape": [1, -1]},
        ],
        "outputs": [
            {"name": out, "datatype": datatype, "shape": [1, -1] if rank == 2 else [1, -1, features or -1]}
            for out, (datatype, rank) in OUTPUTS[info.task].items()
        ],
        "parameters": {
            "task": info.task,
            "cell": info.cell,
            "sequence": True,
            "default_version": info.default,
        },
    }
