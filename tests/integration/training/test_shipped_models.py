"""The committed default models: their reported figures hold when recomputed from the artifact alone.

Each test opens `models/<name>/<version>/` the way a user without this project would: a bare ONNX Runtime
session, the manifest as the only guide (file, sha256, input/output names, state shapes, tokenizer,
normalization, calibration). Perplexity and anomaly F1 are then recomputed with numpy and compared with
what training wrote into the manifest (and the README quotes), so a stale or mislabelled artifact fails.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from bare_artifact import open_bare, zero_states

from training.calibration import Scored, detect
from training.data.synthetic import ANOMALY_TYPES, WEEK, carry_forward, generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODELS = Path(__file__).resolve().parents[3] / "models"
WIKITEXT = MODELS.parents[1] / "shared" / "data" / "wikitext-2"
CHUNK = 512  # time steps per ONNX Runtime call; the state carries across calls, so any length is exact


def _shipped(name: str) -> Path:
    """The newest version of a shipped model, checked against the size bound for committed models."""
    artifact = max((MODELS / name).iterdir(), key=lambda p: int(p.name))
    assert sum(f.stat().st_size for f in artifact.iterdir()) < 15 * 2**20, "shipped models stay under 15 MB"
    return artifact


def _chunks(
    manifest: dict[str, Any], session: ort.InferenceSession, x: np.ndarray
) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Run x [B, N, ...] from zero states CHUNK steps per call: (time slice, outputs of that call)."""
    states = zero_states(manifest, x.shape[0])
    names = [o.name for o in session.get_outputs()]
    for start in range(0, x.shape[1], CHUNK):
        window = slice(start, start + CHUNK)
        out = dict(zip(names, session.run(None, {"x": x[:, window], **states}), strict=True))
        yield window, out
        states = {s["input"]: out[s["output"]] for s in manifest["onnx"]["states"]}


@pytest.mark.skipif(not WIKITEXT.is_dir(), reason=f"WikiText-2 is not at {WIKITEXT} (README: Test data)")
@pytest.mark.parametrize("split", ["valid", "test"])
def test_lm_perplexity_in_the_manifest_is_what_the_artifact_scores(split: str) -> None:
    artifact = _shipped("lm")
    manifest, session = open_bare(artifact, threads=2)
    lm = manifest["lm"]
    vocab = (artifact / lm["vocab_file"]).read_text(encoding="utf-8").splitlines()
    assert len(vocab) == lm["vocab_size"] and vocab[:2] == [lm["unk_token"], lm["eos_token"]]
    index = {word: i for i, word in enumerate(vocab)}
    pattern = re.compile(lm["tokenizer"]["pattern"])
    text = (WIKITEXT / f"wiki.{split}.tokens").read_text(encoding="utf-8")
    tokens = [t for line in text.splitlines() for t in (*pattern.findall(line), lm["eos_token"])]
    ids = np.array([index.get(t, 0) for t in tokens], dtype=np.int64)
    # 10 contiguous streams (as the training job evaluates), the last one padded and masked
    streams, n = 10, ids.size - 1
    length = math.ceil(n / streams)
    x = np.zeros((streams, length), dtype=np.int64)
    y = np.zeros_like(x)
    mask = np.zeros(x.shape, dtype=bool)
    for b in range(streams):
        part = slice(b * length, min(n, (b + 1) * length))
        k = part.stop - part.start
        x[b, :k], y[b, :k], mask[b, :k] = ids[part], ids[part.start + 1 : part.stop + 1], True
    nll = 0.0
    for window, out in _chunks(manifest, session, x):  # [10, CHUNK, V] at a time: bounded memory
        picked = np.take_along_axis(out["log_probs"], y[:, window, None], axis=-1)[..., 0]
        nll -= float(picked[mask[:, window]].astype(np.float64).sum())
    ppl = math.exp(nll / mask.sum())
    reported = manifest["training"]["metrics"][f"{split}_ppl"]
    print(f"{split} perplexity from the artifact: {ppl:.3f} (manifest: {reported:.3f})")
    assert ppl == pytest.approx(reported, rel=1e-4)


def test_sensor_detection_figures_in_the_manifest_are_what_the_artifact_scores() -> None:
    manifest, session = open_bare(_shipped("sensor"), threads=2)
    sensor, data = manifest["sensor"], manifest["training"]["config"]["data"]
    assert data["source"] == "synthetic"
    weeks, eval_weeks = int(data["synthetic_weeks"] * WEEK), int(data.get("synthetic_eval_weeks", 12) * WEEK)
    mean, std = np.array(sensor["mean"]), np.array(sensor["std"])
    streams = []
    for i, kind in enumerate(ANOMALY_TYPES):  # the held-out test streams the training job reported on
        series = generate(
            eval_weeks, seed=200 + i, plant_seed=data["plant_seed"], offset=weeks + eval_weeks,
            kinds=(kind,), per_kind=data["synthetic_events"],
        )  # fmt: skip
        z = (series.values - mean) / std  # [N, F]
        x = carry_forward(z)[None].astype(np.float32)  # [1, N, F], missing readings filled as served
        outs = [out for _, out in _chunks(manifest, session, x)]
        mu = np.concatenate([o["mean"][0] for o in outs])[:-1]  # predictions of readings 1..N-1
        log_var = np.concatenate([o["log_var"][0] for o in outs])[:-1]
        nll = 0.5 * (np.log(2 * np.pi) + log_var + (z[1:] - mu) ** 2 / np.exp(log_var)).sum(-1)
        streams.append(Scored(np.concatenate([[np.nan], nll]), series.events))  # NaN: missing -> no score
    result = detect(streams, sensor["calibration"]["center"])
    metrics = manifest["training"]["metrics"]
    for kind in (*ANOMALY_TYPES, "all"):
        got = result[kind]
        print(f"{kind:12s} precision {got.precision:.3f} recall {got.recall:.3f} f1 {got.f1:.3f}")
        assert got.f1 == pytest.approx(metrics[f"test_{kind}_f1"], abs=1e-4), kind
        assert got.tp + got.fn == metrics[f"test_{kind}_events"]
    # the bar for the shipped detector
    assert result["spike"].f1 >= 0.9 and result["level_shift"].f1 >= 0.9
