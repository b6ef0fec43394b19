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
- input `x`: lm INT64 (or INT32) token ids [1, T]; sensor FP32 (or FP64) raw readings [1, T, F]. JSON
  `data` (flat, row-major, or nested) or binary tensor data (Triton's `binary_tensor_data` extension:
  `Inference-Header-Content-Length` and `parameters.binary_data_size`). One sequence per request.
- outputs (JSON data; a null where the API v1 answer has null, e.g. the first event's score):
  lm:     TOKEN_LOGPROB FP32 [1, T], TOPK_IDS INT64 [1, T, k], TOPK_PROBS FP32 [1, T, k]
          (k: request parameter `top_k`, default 5; `<unk>` and `<eos>` included unless the
          parameter `include_special` is false)
  sensor: PREDICTED_MEAN FP32 [1, T, F], PREDICTED_STD FP32 [1, T, F], SCORE FP32 [1, T],
          PROBABILITY FP32 [1, T], IS_ANOMALY BOOL [1, T]
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

import numpy as np

from service import schemas
from service.error_handlers import json_object
from service.errors import (
    BadRequest,
    InvalidInput,
    ModelNotFound,
    ServiceError,
    SessionGone,
    SessionNotFound,
)
from service.sessions import SessionManager

_NUMPY_DTYPES = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4", "FP64": "<f8"}
_INPUT_DTYPES = {"lm": ("INT64", "INT32"), "sensor": ("FP32", "FP64")}
OUTPUTS: dict[str, dict[str, tuple[str, int]]] = {  # name -> (datatype, rank)
    "lm": {"TOKEN_LOGPROB": ("FP32", 2), "TOPK_IDS": ("INT64", 3), "TOPK_PROBS": ("FP32", 3)},
    "sensor": {
        "PREDICTED_MEAN": ("FP32", 3),
        "PREDICTED_STD": ("FP32", 3),
        "SCORE": ("FP32", 2),
        "PROBABILITY": ("FP32", 2),
        "IS_ANOMALY": ("BOOL", 2),
    },
}
DEFAULT_TOP_K = 5
_SEQUENCE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [item for part in data for item in _flatten(part)]
    return [data]


def decode_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tail (empty without the binary extension)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length} does not fit the body")
    head, tail = (body[:header_length], body[header_length:]) if header_length else (body, b"")
    return json_object(head, "the inference request"), tail


def decode_input(request: dict[str, Any], tail: bytes, task: str) -> np.ndarray:
    """The `x` tensor of a request, checked for name, datatype, shape and size."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("give exactly one input tensor, `x`")
    spec = inputs[0]
    name, datatype, raw_shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if name != "x":
        raise BadRequest(f"unknown input {name!r}; the model's input is `x`")
    if datatype not in _INPUT_DTYPES[task]:
        accepted = " or ".join(_INPUT_DTYPES[task])
        raise InvalidInput(f"input x of a {task} model takes {accepted}, not {datatype}")
    rank = 2 if task == "lm" else 3
    shape: list[int] = []
    if isinstance(raw_shape, list) and all(isinstance(d, int) and d >= 0 for d in raw_shape):
        shape = [int(d) for d in raw_shape]
    if len(shape) != rank:
        raise InvalidInput(f"input x of a {task} model has shape {'[1, T]' if rank == 2 else '[1, T, F]'}")
    if shape[0] != 1:
        raise InvalidInput("one sequence per request: the first dimension of x must be 1", shape=shape)
    dtype = np.dtype(_NUMPY_DTYPES[datatype])
    binary_size = (spec.get("parameters") or {}).get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size != len(tail):
            raise BadRequest(f"binary_data_size {binary_size} does not match the {len(tail)} binary bytes")
        values = np.frombuffer(tail, dtype=dtype)
    else:
        try:
            values = np.asarray(_flatten(spec.get("data")), dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"input x: data is not {datatype} ({exc})") from None
    if values.size != math.prod(shape):
        raise InvalidInput(f"input x: shape {shape} needs {math.prod(shape)} values, got {values.size}")
    return values.reshape(shape)


def sequence_params(request: dict[str, Any]) -> tuple[int | str | None, bool, bool]:
    """(sequence id or None, start, end); a request without an id is a one-shot sequence."""
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("`parameters` must be an object")
    sequence_id = params.get("sequence_id")
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str | None):
        raise BadRequest("sequence_id must be an unsigned integer or a string")
    if isinstance(sequence_id, int) and sequence_id < 0:
        raise BadRequest("sequence_id must be an unsigned integer or a string")
    if sequence_id in (0, "", None):
        return None, True, True
    if isinstance(sequence_id, str) and not _SEQUENCE_ID.match(sequence_id):
        raise BadRequest("a string sequence_id is 1 to 64 letters, digits and _ . : -")
    return sequence_id, bool(params.get("sequence_start", False)), bool(params.get("sequence_end", False))


def _tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def encode_outputs(
    step: schemas.StepResponse, task: str, vocab_index: dict[str, int], wanted: list[str]
) -> list[dict[str, Any]]:
    """The step's per-event outputs as V2 tensors, in the order asked for."""
    t = len(step.outputs)
    tensors: dict[str, dict[str, Any]] = {}
    if task == "lm":
        lm = [o for o in step.outputs if isinstance(o, schemas.LmOutput)]
        k = len(lm[0].next) if lm else 0
        tensors["TOKEN_LOGPROB"] = _tensor("TOKEN_LOGPROB", "FP32", [1, t], [o.logprob for o in lm])
        tensors["TOPK_IDS"] = _tensor(
            "TOPK_IDS", "INT64", [1, t, k], [vocab_index[n.token] for o in lm for n in o.next]
        )
        tensors["TOPK_PROBS"] = _tensor("TOPK_PROBS", "FP32", [1, t, k], [n.prob for o in lm for n in o.next])
    else:
        sensor = [o for o in step.outputs if isinstance(o, schemas.SensorOutput)]
        f = len(sensor[0].predicted_mean) if sensor else 0
        tensors["PREDICTED_MEAN"] = _tensor(
            "PREDICTED_MEAN", "FP32", [1, t, f], [v for o in sensor for v in o.predicted_mean]
        )
        tensors["PREDICTED_STD"] = _tensor(
            "PREDICTED_STD", "FP32", [1, t, f], [v for o in sensor for v in o.predicted_std]
        )
        tensors["SCORE"] = _tensor("SCORE", "FP32", [1, t], [o.score for o in sensor])
        tensors["PROBABILITY"] = _tensor("PROBABILITY", "FP32", [1, t], [o.probability for o in sensor])
        tensors["IS_ANOMALY"] = _tensor("IS_ANOMALY", "BOOL", [1, t], [o.is_anomaly for o in sensor])
    return [tensors[name] for name in wanted]


def requested_outputs(request: dict[str, Any], task: str) -> list[str]:
    asked = request.get("outputs")
    if asked is None:
        return list(OUTPUTS[task])
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise BadRequest("`outputs` must be a list of objects with a `name`")
    names = [o.get("name") for o in asked]
    unknown = [n for n in names if n not in OUTPUTS[task]]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; a {task} model has {sorted(OUTPUTS[task])}")
    return [str(n) for n in names]


async def infer(
    manager: SessionManager,
    owner: str | None,
    name: str,
    version: str | None,
    body: bytes,
    header_length: int | None,
) -> dict[str, Any]:
    """One V2 inference request: decode, step the sequence's session, encode."""
    model = manager.registry.get(name, version)
    request, tail = decode_body(body, header_length)
    sequence_id, start, end = sequence_params(request)
    x = decode_input(request, tail, model.task)
    wanted = requested_outputs(request, model.task)
    payload: dict[str, Any]
    if model.task == "lm":
        vocab = model.vocab or []
        ids = x[0].tolist()
        bad = [i for i in ids if not 0 <= i < len(vocab)]
        if bad:
            raise InvalidInput(f"token ids must lie in [0, {len(vocab)})", ids=bad[:10])
        parameters = request.get("parameters") or {}
        # a V2 client reads ids: the model's own top-k, specials included, unless it asks otherwise
        payload = {
            "tokens": [vocab[i] for i in ids],
            "top_k": parameters.get("top_k", DEFAULT_TOP_K),
            "include_special": parameters.get("include_special", True),
        }
    else:
        payload = {"readings": x[0].astype(np.float64).tolist()}
    if sequence_id is None:
        created = await manager.create(schemas.CreateSession(model=name, version=version), owner)
        session_id = created.session_id
    else:
        scoped = f"{name}:{sequence_id}"  # Triton's sequence ids are per model
        if start:
            session_id = (await manager.start_sequence(name, version, scoped, owner)).session_id
        else:
            session_id = manager.sequence_session_id(scoped, owner)
    try:
        step = await manager.step(session_id, owner, payload)
    except SessionNotFound:
        raise BadRequest(
            f"sequence {sequence_id!r} of model {name!r} is not running: its first request "
            "must set sequence_start",
            sequence_id=sequence_id,
        ) from None
    except SessionGone as gone:  # say which sequence, not which internal session id
        reason = gone.code.removeprefix("session_")
        raise type(gone)(
            f"sequence {sequence_id!r} of model {name!r} was {reason}", sequence_id=sequence_id
        ) from None
    finally:
        if end:
            with contextlib.suppress(ServiceError):  # already ended
                await manager.delete(session_id, owner)
    return {
        "model_name": model.name,
        "model_version": model.version,
        **({"id": request["id"]} if isinstance(request.get("id"), str) else {}),
        "parameters": {"sequence_id": sequence_id, "seq": step.seq} if sequence_id is not None else {},
        "outputs": encode_outputs(step, model.task, model.vocab_index, wanted),
    }


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
        "inputs": [{"name": "x", "datatype": _INPUT_DTYPES[info.task][0], "shape": x_shape}],
        "outputs": [
            {"name": out, "datatype": datatype, "shape": [1, -1] if rank == 2 else [1, -1, -1]}
            for out, (datatype, rank) in OUTPUTS[info.task].items()
        ],
        "parameters": {
            "task": info.task,
            "cell": info.cell,
            "sequence": True,
            "default_version": info.default,
        },
    }
