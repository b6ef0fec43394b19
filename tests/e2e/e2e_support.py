"""What the end-to-end tests share: a real server process, and an independent reference.

`ServerProcess` runs `python -m service serve` in its own process with RNNSERVE_* settings, on port 0
(the kernel picks a free port; the server prints the URL it bound, so there is no window in which
another process can take the port), and stops it with SIGTERM, as an orchestrator would (or kills it
with SIGKILL, as a crash would).

`Reference` computes what the server must answer with nothing but the artifact's manifest and one
whole-sequence `onnxruntime.InferenceSession` call from the zero state: no service code.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from sensor_reference import warmup_probability

from service.anomaly import CAP, WARMUP
from service.manifest import Manifest, read_manifest

TOLERANCE = 1e-5
KEYS = ("key-alpha", "key-beta")
# Limits of the shared server, small enough that tests can reach them with small requests.
MAX_EVENTS = 64
MAX_BODY = 16384
MAX_TOP_K = 20
MAX_STEPS = 32  # steps in one bulk request
TOP_K = 5  # what the streaming tests ask for
_BANNER = re.compile(r"rnnserve listening on (http://\S+)")
_GRPC_BANNER = re.compile(r"rnnserve gRPC \(KServe V2\) listening on (\S+)")


def auth(key: str = KEYS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class ServerProcess:
    """`python -m service serve --port 0 --models-dir ...` with the given RNNSERVE_* settings."""

    def __init__(
        self,
        models_dir: Path | None,
        workdir: Path,
        environ: dict[str, str | None] | None = None,
        log_dir: Path | None = None,
        **settings: str,
    ) -> None:
        """`models_dir` None: the server's default; `environ`: more variables (None removes one);
        `log_dir`: where the log goes (default `workdir`, also the server's current directory)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = (log_dir or workdir) / f"server-{time.monotonic_ns()}.log"
        env: dict[str, str | None] = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
        env.update({"RNNSERVE_SNAPSHOT_PATH": str(workdir / "sessions.snapshot")})
        env["RNNSERVE_GRPC_PORT"] = "0"  # never Triton's 8001: servers of parallel tests would collide
        env.update({f"RNNSERVE_{k.upper()}": v for k, v in settings.items()})
        env.update(environ or {})
        models = [] if models_dir is None else ["--models-dir", str(models_dir)]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", "0", *models],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in env.items() if v is not None},
            cwd=workdir,
        )
        self.url = self._wait_for_banner()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _wait_for_banner(self, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = _BANNER.search(self.log())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"the server did not start within {timeout_s}s:\n{self.log()}")

    @property
    def grpc_address(self) -> str:
        """`host:port` of the server's gRPC service (printed right after the HTTP banner)."""
        found = _GRPC_BANNER.search(self.log())
        if found is None:
            raise RuntimeError(f"the server announced no gRPC port:\n{self.log()}")
        return found.group(1)

    def wait_ready(self, timeout_s: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/readyz").status_code == 200:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"the server was not ready within {timeout_s}s:\n{self.log()}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, as an orchestrator sends it; the exit status (0 after a graceful shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def kill(self) -> int:
        """SIGKILL, as the OOM killer or a crash ends it: no shutdown, no last snapshot."""
        self.process.kill()
        self.process.wait()
        self._log.close()
        return self.process.returncode


StartServer = Callable[..., ServerProcess]


# ---- the reference ---------------------------------------------------------------------------------


@dataclass
class Reference:
    """Expected per-event outputs of one session that consumed `events` from the zero state."""

    manifest: Manifest
    session: ort.InferenceSession
    vocab: list[str]

    @classmethod
    def load(cls, artifact_dir: Path) -> Reference:
        manifest = read_manifest(artifact_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            str(artifact_dir / manifest.onnx.file), options, providers=["CPUExecutionProvider"]
        )
        vocab: list[str] = []
        if manifest.lm is not None:
            vocab = (artifact_dir / manifest.lm.vocab_file).read_text(encoding="utf-8").splitlines()
        return cls(manifest, session, vocab)

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        layers, hidden = self.manifest.state_shape
        feed: dict[str, np.ndarray] = {"x": x}
        for state in self.manifest.onnx.states:
            feed[state.input] = np.zeros((layers, 1, hidden), np.float32)  # [L, B=1, H]
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed), strict=True))

    def lm(self, tokens: list[str], top_k: int, include_special: bool = False) -> list[dict[str, Any]]:
        """`next`: the top_k of the full distribution, `<unk>` and `<eos>` left out unless included."""
        assert self.manifest.lm is not None
        index = {t: i for i, t in enumerate(self.vocab)}
        unk = index[self.manifest.lm.unk_token]
        specials = set() if include_special else {unk, index[self.manifest.lm.eos_token]}
        ids = [index.get(t, unk) for t in tokens]
        log_probs = self._run(np.asarray([ids], np.int64))["log_probs"][0].astype(np.float64)  # [T, V]
        expected = []
        for t, token_id in enumerate(ids):
            ranked = np.argsort(-log_probs[t], kind="stable")
            order = [i for i in ranked if i not in specials][:top_k]
            expected.append(
                {
                    "token": tokens[t],
                    "token_id": token_id,
                    "unknown": tokens[t] not in index,
                    "logprob": None if t == 0 else float(log_probs[t - 1, token_id]),
                    "next": [(self.vocab[i], float(np.exp(log_probs[t, i]))) for i in order],
                }
            )
        return expected

    def sensor(self, readings: list[list[float]]) -> list[dict[str, Any]]:
        spec = self.manifest.sensor
        assert spec is not None
        mu, sigma = np.asarray(spec.mean), np.asarray(spec.std)
        raw = np.asarray(readings, np.float64)
        if spec.normalization == "online":
            x, centre, scale = online_normalized(raw)
        else:
            x = ((raw - mu) / sigma).astype(np.float32)  # [T, F] normalized
            centre, scale = np.zeros_like(raw), np.ones_like(raw)  # check_sensor compares in these units
        out = self._run(x[None])
        mean, log_var = out["mean"][0].astype(np.float64), out["log_var"][0].astype(np.float64)
        served_mean = mean * scale + centre  # [T, F]: reading t+1 in the units check_sensor compares in
        served_std = np.exp(0.5 * log_var) * scale
        expected = []
        for t in range(len(readings)):
            score = probability = surprise = likelihood = None
            if t > 0:
                # README: the squared standardised prediction error, mean over features, capped at CAP
                z2 = (x[t] - mean[t - 1]) ** 2 / np.exp(log_var[t - 1])
                surprise = float(np.mean(np.minimum(z2, CAP)))
                likelihood = 0.5 if t <= WARMUP else None  # 0.5 while the session learns its surprises
                score = float(
                    0.5
                    * np.sum(
                        np.log(2 * np.pi)
                        + log_var[t - 1]
                        + (x[t] - mean[t - 1]) ** 2 / np.exp(log_var[t - 1])
                    )
                )
                # the likelihood is 0.5 while the session learns its own score distribution (the first
                # WARMUP scored readings), which is all these short streams see: a = -log10(1 - 0.5);
                # a model trained on its sensor's history (fixed) also has its calibration's logistic
                probability = warmup_probability(score, spec) if t <= WARMUP else None
            expected.append(
                {
                    "score": score,
                    "probability": probability,
                    "surprise": surprise,
                    "likelihood": likelihood,
                    "mean": served_mean[t],  # normalized units
                    "std": served_std[t],
                }
            )
        return expected


def close(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return math.isclose(got, want, rel_tol=TOLERANCE, abs_tol=TOLERANCE)


def check_lm(outputs: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(outputs) == len(expected)
    for t, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        where = f"event {t}"
        assert (got["token"], got["token_id"], got["unknown"]) == (
            want["token"],
            want["token_id"],
            want["unknown"],
        ), where
        assert close(got["logprob"], want["logprob"]), (where, got["logprob"], want["logprob"])
        assert [n["token"] for n in got["next"]] == [tok for tok, _ in want["next"]], where
        for n, (_, prob) in zip(got["next"], want["next"], strict=True):
            assert close(n["prob"], prob), (where, n, prob)


def online_normalized(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What an `online` model is fed, written out from the README's rule: reading t centred and scaled by
    the running mean and std of readings 0..t-1 (the first reading by itself), clipped to +-10; and the
    centre and scale the *next* reading gets, in which its prediction is served. [T, F] each."""
    from service.anomaly import CLIP, MEMORY, SCALE_FLOOR

    x, nxt_centre, nxt_scale = np.zeros_like(raw), np.zeros_like(raw), np.ones_like(raw)
    mean, var = raw[0].copy(), np.zeros(raw.shape[1])

    def scale_of() -> np.ndarray:
        out: np.ndarray = np.maximum(np.sqrt(var), SCALE_FLOOR * np.abs(mean) + 1e-9)
        return out

    for t in range(len(raw)):
        s = scale_of()
        x[t] = np.clip((raw[t] - mean) / s, -CLIP, CLIP)
        value = raw[t] if t == 0 else mean + x[t] * s
        w = 1.0 / min(t + 1, MEMORY)
        delta = value - mean
        mean, var = mean + w * delta, (1 - w) * (var + w * delta * delta)
        nxt_centre[t], nxt_scale[t] = mean, scale_of()
    return x.astype(np.float32), nxt_centre, nxt_scale


def check_sensor(outputs: list[dict[str, Any]], expected: list[dict[str, Any]], manifest: Manifest) -> None:
    spec = manifest.sensor
    assert spec is not None
    mu, sigma = np.asarray(spec.mean), np.asarray(spec.std)
    if spec.normalization == "online":  # the reference serves the prediction in reading units
        mu, sigma = np.zeros_like(mu), np.ones_like(sigma)
    assert len(outputs) == len(expected)
    for t, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        where = f"event {t}"
        assert close(got["score"], want["score"]), (where, got["score"], want["score"])
        if want["score"] is None:
            assert got["probability"] is None and got["is_anomaly"] is None, where
        else:
            if want["probability"] is not None:
                assert close(got["probability"], want["probability"]), where
            assert got["is_anomaly"] == (got["probability"] >= 0.5), where
        # the alarm is the probability, or 0 while resting after a raised alarm (service.anomaly's tests
        # follow its rest period reading by reading)
        if want["score"] is None:
            assert got["alarm"] is None, where
        else:
            assert got["alarm"] in (0.0, got["probability"]), (where, got["alarm"], got["probability"])
        assert close(got["surprise"], want["surprise"]), (where, got["surprise"], want["surprise"])
        if want["likelihood"] is not None or want["score"] is None:  # beyond the warm-up: the stream's own
            assert close(got["likelihood"], want["likelihood"]), (
                where,
                got["likelihood"],
                want["likelihood"],
            )
        # compared in normalized units, where the graph computes: 1e-5 of the graph's own numbers
        mean = (np.asarray(got["predicted_mean"]) - mu) / sigma
        std = np.asarray(got["predicted_std"]) / sigma
        assert np.allclose(mean, want["mean"], rtol=TOLERANCE, atol=TOLERANCE), (where, mean, want["mean"])
        assert np.allclose(std, want["std"], rtol=TOLERANCE, atol=TOLERANCE), (where, std, want["std"])


def metric_samples(text: str, name: str) -> dict[str, float]:
    """`{labels: value}` of one metric family's samples in Prometheus text, e.g. `name_count`."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            samples[key[len(name) :]] = float(value)
    return samples


# ---- streams of events ----------------------------------------------------------------------------


def make_events(reference: Reference, rng: random.Random, count: int) -> list[Any]:
    """Words (with an out-of-vocabulary one) for lm; readings around the training statistics for sensor."""
    spec = reference.manifest.sensor
    if spec is None:
        words = [*reference.vocab[2:], "out-of-vocabulary"]
        return [rng.choice(words) for _ in range(count)]
    return [
        [m + s * rng.gauss(0, 1.5) for m, s in zip(spec.mean, spec.std, strict=True)] for _ in range(count)
    ]


def event_body(reference: Reference, seq: int, events: list[Any], top_k: int = TOP_K) -> dict[str, Any]:
    if reference.manifest.task == "lm":
        return {"seq": seq, "tokens": events, "top_k": top_k}
    return {"seq": seq, "readings": events}


def check(reference: Reference, events: list[Any], outputs: list[dict[str, Any]], top_k: int = TOP_K) -> None:
    """The outputs of `events` streamed from the zero state equal the reference's (lm: top_k next words)."""
    if reference.manifest.task == "lm":
        check_lm(outputs, reference.lm(events, top_k))
    else:
        check_sensor(outputs, reference.sensor(events), reference.manifest)
