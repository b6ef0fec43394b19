"""The ceiling: ONNX Runtime in this process, no HTTP, no JSON, the same ONNX file and thread count.

One step = one `run` over B sessions with T events each, the state fed back as the next step's input,
exactly the graph call the server's batcher makes. Events/s = B * T * runs / seconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.models import Artifact

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def ort_session(art: Artifact, threads: int, providers: Sequence[str] = ("cpu",)) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(art.onnx_path), options, providers=[PROVIDERS[p] for p in providers])


def random_inputs(art: Artifact, batch: int, steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if art.task == "lm":
        assert art.manifest.lm is not None
        return rng.integers(2, art.manifest.lm.vocab_size, size=(batch, steps), dtype=np.int64)  # [B, T]
    return rng.standard_normal((batch, steps, art.features), dtype=np.float32)  # [B, T, F]


def zero_state(art: Artifact, batch: int) -> dict[str, np.ndarray]:
    layers, hidden = art.manifest.state_shape
    return {s.input: np.zeros((layers, batch, hidden), np.float32) for s in art.manifest.onnx.states}


@dataclass(frozen=True)
class LimitPoint:
    batch: int
    steps: int  # events per session per run (T)
    runs: int
    events_per_s: float
    run_ms_p50: float  # one ONNX Runtime call

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class Stepper:
    """`batch` sessions stepped `steps` events at a time, the state fed back: the server's graph call."""

    def __init__(self, session: ort.InferenceSession, art: Artifact, batch: int, steps: int = 1) -> None:
        self.session = session
        self.x = random_inputs(art, batch, steps)
        self.state = zero_state(art, batch)
        self.outputs = [o.name for o in session.get_outputs()]
        self.state_out = {s.output: s.input for s in art.manifest.onnx.states}

    def step(self) -> None:
        result = self.session.run(None, {"x": self.x, **self.state})
        self.state = {
            self.state_out[name]: value
            for name, value in zip(self.outputs, result, strict=True)
            if name in self.state_out
        }


def measure(
    session: ort.InferenceSession,
    art: Artifact,
    batch: int,
    seconds: float,
    steps: int = 1,
    min_runs: int = 3,
) -> LimitPoint:
    """Step `batch` sessions for about `seconds` (after one warm-up run), state fed back each run."""
    stepper = Stepper(session, art, batch, steps)
    stepper.step()  # warm-up: allocations, thread pool
    durations: list[float] = []
    start = time.perf_counter()
    while len(durations) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        stepper.step()
        durations.append(time.perf_counter() - t0)
    total = sum(durations)
    return LimitPoint(
        batch=batch,
        steps=steps,
        runs=len(durations),
        events_per_s=batch * steps * len(durations) / total,
        run_ms_p50=statistics.median(durations) * 1e3,
    )


def sweep(
    art: Artifact, threads: int, batches: Sequence[int], seconds: float, providers: Sequence[str] = ("cpu",)
) -> dict[str, Any]:
    """Events/s at each batch size; `best` is the batch size with the most events/s."""
    session = ort_session(art, threads, providers)
    points = [measure(session, art, b, seconds) for b in batches]
    best = max(points, key=lambda p: p.events_per_s)
    single = next((p for p in points if p.batch == 1), None) or measure(session, art, 1, seconds)
    return {
        "threads": threads,
        "providers": list(providers),
        "points": [p.to_dict() for p in points],
        "best_batch": best.batch,
        "best_events_per_s": best.events_per_s,
        "single_step_ms": single.run_ms_p50,
    }
