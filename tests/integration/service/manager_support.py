"""Helpers for the SessionManager tests (their conftest and modules import it): a started manager,
and a reference that runs the same ONNX graph directly with ONNX Runtime at batch size 1."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sensor_reference import warmup_probability

from service import anomaly, schemas
from service.manifest import read_manifest
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings
from service.store import SessionStore

LM_MODELS = ("lm-rnn", "lm-gru", "lm-lstm")
SENSOR_MODELS = ("sensor-rnn", "sensor-gru", "sensor-lstm")
ALL_MODELS = LM_MODELS + SENSOR_MODELS


class FakeClock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


class Reference:
    """The artifact's graph run directly: whole sequences or the same chunks, B = 1."""

    def __init__(self, models_dir: Path, name: str) -> None:
        path = models_dir / name / "1"
        self.manifest = read_manifest(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(path / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.task = self.manifest.task
        self.vocab = (path / "vocab.txt").read_text().split("\n")[:-1] if self.task == "lm" else []
        self.states = [(s.input, s.output) for s in self.manifest.onnx.states]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def zero_state(self) -> list[np.ndarray]:
        layers, hidden = self.manifest.state_shape
        return [np.zeros((layers, 1, hidden), np.float32) for _ in self.states]

    def encode(self, events: list[Any]) -> np.ndarray:
        """Events as the service feeds them: ids [1, T] or normalized readings [1, T, F]."""
        if self.task == "lm":
            index = {t: i for i, t in enumerate(self.vocab)}
            return np.array([[index.get(t, 0) for t in events]], np.int64)
        spec = self.manifest.sensor
        assert spec is not None
        raw = np.asarray(events, np.float64)
        x: np.ndarray = ((raw - np.asarray(spec.mean)) / np.asarray(spec.std)).astype(np.float32)[None]
        return x

    def run(
        self, events: list[Any], state: list[np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        feed = {"x": self.encode(events), **{i: s for (i, _), s in zip(self.states, state, strict=True)}}
        outs = dict(zip(self.output_names, self.session.run(None, feed), strict=True))
        return outs, [outs[o] for _, o in self.states]

    def run_chunks(self, chunks: list[list[Any]]) -> list[np.ndarray]:
        state = self.zero_state()
        for chunk in chunks:
            _, state = self.run(chunk, state)
        return state

    def events(self, rng: np.random.Generator, count: int) -> list[Any]:
        if self.task == "lm":
            words = [*self.vocab[2:], "never-seen"]
            return [words[i] for i in rng.integers(0, len(words), count)]
        spec = self.manifest.sensor
        assert spec is not None
        readings: list[Any] = (
            np.asarray(spec.mean) + rng.standard_normal((count, len(spec.mean))) * spec.std
        ).tolist()
        return readings


def body(task: str, events: list[Any], seq: int | None = None, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"tokens": events} if task == "lm" else {"readings": events}
    if seq is not None:
        payload["seq"] = seq
    return {**payload, **extra}


def stored_tensors(snapshot_state: str, reference: Reference) -> np.ndarray:
    """Every stored [L, H] tensor of an exported Snapshot's base64 field: the graph's, then a sensor
    session's statistics (service.anomaly)."""
    import base64

    layers, hidden = reference.manifest.state_shape
    return np.frombuffer(base64.b64decode(snapshot_state), "<f4").reshape(-1, layers, hidden)


def state_of(snapshot_state: str, reference: Reference) -> np.ndarray:
    """The graph's [S, L, H] state of an exported Snapshot's base64 field."""
    return stored_tensors(snapshot_state, reference)[: len(reference.states)]


def stats_of(snapshot_state: str, reference: Reference) -> np.ndarray:
    """A sensor session's statistics vector [K] from an exported Snapshot's base64 field."""
    from service.anomaly import stats_floats, unpack

    aux = stored_tensors(snapshot_state, reference)[len(reference.states) :]
    stats: np.ndarray = unpack(
        [t[:, None] for t in aux], stats_floats(reference.manifest.architecture.input_size)
    )
    first: np.ndarray = stats[0]
    return first


@asynccontextmanager
async def running(
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
    metrics: Metrics | None = None,
    store: SessionStore | None = None,
) -> AsyncIterator[SessionManager]:
    manager = SessionManager(settings, metrics or Metrics(), clock, store)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.stop()


TOL = 1e-5


def check_outputs(ref: Reference, events: list[Any], outputs: list[Any], fresh: bool = True) -> None:
    """Per-event outputs against one whole-sequence call from the zero state."""
    outs, _ = ref.run(events, ref.zero_state())
    if ref.task == "lm":
        log_probs = outs["log_probs"][0]  # [T, V]
        ids = ref.encode(events)[0]
        for t, out in enumerate(outputs):
            assert isinstance(out, schemas.LmOutput)
            assert (
                out.token == events[t]
                and out.token_id == ids[t]
                and out.unknown == (events[t] not in ref.vocab)
            )
            if t == 0 and fresh:
                assert out.logprob is None
            else:
                assert out.logprob == pytest.approx(float(log_probs[t - 1, ids[t]]), abs=TOL)
            assert ref.manifest.lm is not None  # without include_special, no <unk> or <eos> suggested
            specials = [
                ref.vocab.index(ref.manifest.lm.unk_token),
                ref.vocab.index(ref.manifest.lm.eos_token),
            ]
            others = np.delete(log_probs[t].astype(np.float64), specials)
            want = np.sort(np.exp(others))[::-1][: len(out.next)]
            assert [n.prob for n in out.next] == pytest.approx(want.tolist(), abs=TOL)
            for n in out.next:
                assert n.prob == pytest.approx(math.exp(log_probs[t, ref.vocab.index(n.token)]), abs=TOL)
        return
    spec = ref.manifest.sensor
    assert spec is not None
    mean, log_var = outs["mean"][0], outs["log_var"][0]  # [T, F]
    x = ref.encode(events)[0].astype(np.float64)
    for t, out in enumerate(outputs):
        assert isinstance(out, schemas.SensorOutput)
        assert out.predicted_mean == pytest.approx(
            (mean[t] * spec.std + np.asarray(spec.mean)).tolist(), abs=1e-4
        )
        assert out.predicted_std == pytest.approx((np.exp(0.5 * log_var[t]) * spec.std).tolist(), rel=TOL)
        if t == 0 and fresh:
            assert out.score is None and out.probability is None and out.is_anomaly is None
            assert out.alarm is None
            continue
        m, lv = mean[t - 1].astype(np.float64), log_var[t - 1].astype(np.float64)
        score = 0.5 * float(np.sum(math.log(2 * math.pi) + lv + (x[t] - m) ** 2 / np.exp(lv)))
        assert out.score == pytest.approx(score, abs=1e-4)
        surprise = float(np.mean(np.minimum((x[t] - m) ** 2 / np.exp(lv), anomaly.CAP)))
        assert out.surprise == pytest.approx(surprise, rel=1e-4, abs=1e-6)
        assert out.likelihood == 0.5  # these streams are shorter than the likelihood's warmup
        assert out.probability is not None
        assert out.probability == pytest.approx(warmup_probability(score, spec), abs=1e-4)
        assert out.is_anomaly == (out.probability >= 0.5)
        assert out.alarm in (0.0, out.probability)  # 0 while resting after a raised alarm
