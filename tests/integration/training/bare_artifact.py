"""Open an artifact as a user without this project would: bare ONNX Runtime, the manifest as guide."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def open_bare(artifact: Path, threads: int = 1) -> tuple[dict[str, Any], ort.InferenceSession]:
    """(manifest, session), the graph's sha256 and input/output names checked against the manifest."""
    manifest: dict[str, Any] = json.loads((artifact / "manifest.json").read_text(encoding="utf-8"))
    onnx_bytes = (artifact / manifest["onnx"]["file"]).read_bytes()
    assert hashlib.sha256(onnx_bytes).hexdigest() == manifest["onnx"]["sha256"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i["name"] for i in manifest["onnx"]["inputs"]]
    assert [o.name for o in session.get_outputs()] == [o["name"] for o in manifest["onnx"]["outputs"]]
    return manifest, session


def zero_states(manifest: dict[str, Any], batch: int) -> dict[str, np.ndarray]:
    """Initial states from the manifest's declared shapes: [L, "B", H] with B filled in."""
    return {
        s["input"]: np.zeros([batch if d == "B" else d for d in s["shape"]], dtype=np.float32)
        for s in manifest["onnx"]["states"]
    }
