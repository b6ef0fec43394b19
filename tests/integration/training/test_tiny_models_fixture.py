"""The committed tiny models (used where torch is missing) still equal a fresh build: same manifests
(but the build time and hashes), same answers from ONNX Runtime on the same inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tiny_models import COMMITTED, build_tiny_models

pytestmark = pytest.mark.integration

REGENERATE = "the committed tiny models are stale: run `python tests/tiny_models.py`"


def _manifest(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((path / "manifest.json").read_text())
    manifest.pop("created_at", None)
    manifest["onnx"].pop("sha256", None)  # the bytes may differ; the answers below may not
    return manifest


def _answers(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    return list(session.run(None, feed))


def test_committed_tiny_models_equal_a_fresh_build(tmp_path: Path) -> None:
    fresh = build_tiny_models(tmp_path)
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in COMMITTED.iterdir()), REGENERATE
    rng = np.random.default_rng(0)
    for name in names:
        new, old = fresh / name / "1", COMMITTED / name / "1"
        manifest, committed = _manifest(new), _manifest(old)
        # the export checks' differences measure float noise, which moves with the machine's kernels and
        # threads (1.294e-07 on one CI machine, 1.306e-07 on another): the same checks, within noise
        noise, committed_noise = manifest["training"].pop("metrics"), committed["training"].pop("metrics")
        assert noise.keys() == committed_noise.keys(), (name, REGENERATE)
        assert all(abs(noise[k] - committed_noise[k]) <= 1e-6 for k in noise), (name, noise, committed_noise)
        assert manifest == committed, (name, REGENERATE)
        assert sorted(p.name for p in new.iterdir()) == sorted(p.name for p in old.iterdir()), REGENERATE
        onnx = manifest["onnx"]
        layers, hidden = onnx["states"][0]["shape"][0], onnx["states"][0]["shape"][2]
        x_spec = onnx["inputs"][0]
        if x_spec["dtype"] == "int64":
            x = rng.integers(0, manifest["lm"]["vocab_size"], (2, 5)).astype(np.int64)
        else:
            x = rng.standard_normal((2, 5, len(manifest["sensor"]["features"]))).astype(np.float32)
        feed = {"x": x}
        for state in onnx["states"]:
            feed[state["input"]] = rng.standard_normal((layers, 2, hidden)).astype(np.float32)
        for a, b in zip(_answers(new, feed), _answers(old, feed), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{name}: {REGENERATE}")
