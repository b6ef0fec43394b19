"""What Triton's tooling reads about a model: its configuration and its statistics, in Triton's shapes.

Both are computed on each call from the registry's current models and the app's metrics, so a model
version loaded or unloaded at run time shows at once. The same dicts answer over HTTP (JSON, the field
names of Triton's model_config.proto) and over gRPC (parsed into the protobuf messages).

The configuration says what a Triton user needs to drive a model unchanged:

- `max_batch_size`: the server's RNNSERVE_MAX_BATCH_SIZE (sessions per ONNX Runtime call). As with any
  Triton sequence model, each request carries batch size 1 and `dims` leave the batch dimension out.
- `sequence_batching`: the sequence batcher with the `oldest` strategy (steps of many sequences share
  one call) and implicit state: the recurrent state tensors the server keeps between requests,
  zero-initialised at `sequence_start`; `max_sequence_idle_microseconds` is the session TTL.
- `input` / `output`: the V2 tensors of service/kserve.py with Triton data types (`TYPE_STRING` is
  Triton's name for BYTES); lm's `x` and `TEXT` are both optional: a request gives exactly one; a
  sensor's `TIMESTAMP` is optional (FP64 declared; INT64 and BYTES are accepted too).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Histogram
from prometheus_client.metrics import MetricWrapperBase

from service.kserve import OUTPUTS, TEXT_INPUT, TIMESTAMP_INPUT
from service.metrics import Metrics
from service.registry import LoadedModel, version_key
from service.settings import Settings

_TRITON_TYPES = {"BOOL": "TYPE_BOOL", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def _dims(rank: int, features: int | None = None) -> list[int]:
    """Triton dims without the batch dimension: [T] or [T, k|F]; -1 where a request picks the size."""
    return [-1] if rank == 2 else [-1, features if features is not None else -1]


def model_config(model: LoadedModel, settings: Settings, default_version: str) -> dict[str, Any]:
    """Triton's model configuration (JSON field names of model_config.proto) of one model version."""
    arch = model.manifest.architecture
    layers, hidden = model.manifest.state_shape
    sensor = model.task == "sensor"
    inputs: list[dict[str, Any]] = [
        {
            "name": "x",
            "data_type": "TYPE_FP32" if sensor else "TYPE_INT64",
            "dims": _dims(3 if sensor else 2, arch.input_size if sensor else None),
            "optional": not sensor,
        }
    ]
    if sensor:
        inputs.append({"name": TIMESTAMP_INPUT, "data_type": "TYPE_FP64", "dims": [-1], "optional": True})
    else:
        inputs.append({"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [1], "optional": True})
    outputs = [
        {
            "name": name,
            "data_type": _TRITON_TYPES[datatype],
            "dims": _dims(rank, arch.input_size if sensor and rank == 3 else None),
        }
        for name, (datatype, rank) in OUTPUTS[model.task].items()
    ]
    states = [
        {
            "input_name": state.input,
            "output_name": state.output,
            "data_type": "TYPE_FP32",
            "dims": [layers, hidden],
            "initial_state": [
                {"name": "zero", "data_type": "TYPE_FP32", "dims": [layers, hidden], "zero_data": True}
            ],
        }
        for state in model.manifest.onnx.states
    ]
    parameters = {
        "task": model.task,
        "cell": arch.cell,
        "layers": str(layers),
        "hidden": str(hidden),
        "default_version": str(model.version == default_version).lower(),
    }
    if model.manifest.lm is not None:
        parameters["vocab_size"] = str(model.manifest.lm.vocab_size)
    if model.manifest.sensor is not None:
        parameters["features"] = ",".join(model.manifest.sensor.features)
    gpu = "cuda" in settings.providers
    return {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"all": {}},
        "max_batch_size": settings.max_batch_size,
        "input": inputs,
        "output": outputs,
        "instance_group": [{"name": model.name, "count": 1, "kind": "KIND_GPU" if gpu else "KIND_CPU"}],
        "sequence_batching": {
            "max_sequence_idle_microseconds": int(settings.session_ttl_s * 1_000_000),
            "oldest": {
                "max_candidate_sequences": settings.max_sessions,
                "max_queue_delay_microseconds": settings.max_queue_delay_us,
            },
            "state": states,
        },
        "parameters": {key: {"string_value": value} for key, value in parameters.items()},
        "model_transaction_policy": {"decoupled": False},
    }


# ---- statistics ------------------------------------------------------------------------------------


def _samples(metric: MetricWrapperBase, name: str, version: str) -> dict[str, float]:
    """A labelled metric's samples for one model version, by sample name suffix (`_count`, `_sum`, ...)."""
    found: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels.get("model") == name and sample.labels.get("version") == version:
                suffix = sample.name.removeprefix(family.name)
                if "le" not in sample.labels:
                    found[suffix or "_total"] = found.get(suffix or "_total", 0.0) + sample.value
    return found


def _duration(histogram: Histogram, name: str, version: str) -> dict[str, int]:
    samples = _samples(histogram, name, version)
    return {"count": int(samples.get("_count", 0)), "ns": int(samples.get("_sum", 0.0) * 1e9)}


def model_statistics(model: LoadedModel, metrics: Metrics) -> dict[str, Any]:
    """Triton's statistics of one model version, from the metrics the server keeps (Prometheus).

    - inference_count: session steps run (batch size 1 each, as Triton counts a sequence request);
      execution_count: ONNX Runtime calls.
    - success: steps that ran; its ns is their time queued (step lane or batcher) plus the run time of the
      calls (the metrics keep no per-request total); fail: ONNX Runtime calls that raised (each fails
      every step of its batch); queue: steps and their time queued for a call; compute_infer:
      ONNX Runtime calls and their run time. compute_input, compute_output, cache_hit and cache_miss stay
      0 (no separate input copy, no response cache), as do last_inference and batch_stats (not kept:
      the batch size histogram's buckets are not exact sizes).
    """
    name, version = model.name, model.version
    queue = _duration(metrics.queue_delay, name, version)
    infer = _duration(metrics.inference_time, name, version)
    sizes = _samples(metrics.batch_size, name, version)
    failed = int(_samples(metrics.batch_failures, name, version).get("_total", 0))
    stepped = int(sizes.get("_sum", 0))
    zero = {"count": 0, "ns": 0}
    return {
        "name": name,
        "version": version,
        "last_inference": 0,
        "inference_count": stepped,
        "execution_count": infer["count"],
        "inference_stats": {
            "success": {"count": stepped, "ns": queue["ns"] + infer["ns"]},
            "fail": {"count": failed, "ns": 0},
            "queue": queue,
            "compute_input": zero,
            "compute_infer": infer,
            "compute_output": zero,
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [],
    }


def statistics(models: list[LoadedModel], metrics: Metrics) -> dict[str, Any]:
    """`{"model_stats": [...]}` for the given model versions, ordered by name and version."""
    ordered = sorted(models, key=lambda m: (m.name, version_key(m.version)))
    return {"model_stats": [model_statistics(m, metrics) for m in ordered]}
