"""The registry: verification refuses bad artifacts with a clear reason, others still load."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.errors import ModelNotFound
from service.manifest import ArtifactError, sha256_file
from service.registry import Registry, version_key
from service.settings import Settings

pytestmark = pytest.mark.unit


def settings(models: Path, **overrides: Any) -> Settings:
    return Settings(models_dir=models, snapshot_path=None, intra_op_threads=1, **overrides)


def copy_model(src: Path, models: Path, name: str, version: str, as_name: str | None = None) -> Path:
    target = models / (as_name or name) / version
    shutil.copytree(src / name / "1", target)
    if as_name or version != "1":
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["name"], manifest["version"] = as_name or name, version
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_loads_every_tiny_model_with_its_info(tiny_models_dir: Path) -> None:
    registry = Registry(settings(tiny_models_dir))
    assert len(registry.load_all()) == 6
    infos = {m.name: m for m in registry.models().models}
    assert set(infos) == {f"{t}-{c}" for t in ("lm", "sensor") for c in ("rnn", "gru", "lstm")}
    lm = infos["lm-lstm"]
    assert (lm.task, lm.cell, lm.layers, lm.hidden, lm.vocab_size, lm.features, lm.default) == (
        "lm",
        "lstm",
        2,
        16,
        40,
        None,
        True,
    )
    assert infos["sensor-gru"].features == ["temperature", "pressure", "vibration"]
    assert registry.get("lm-lstm").state_floats == 2 * 2 * 16


def test_version_order_is_numeric_aware() -> None:
    assert sorted(["10", "9", "1.10", "1.2", "2"], key=version_key) == ["1.2", "1.10", "2", "9", "10"]


def test_default_is_the_highest_version_and_new_versions_load_while_serving(
    tiny_models_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    for version in ("2", "10"):
        copy_model(tiny_models_dir, models, "lm-gru", version)
    registry = Registry(settings(models))
    registry.load_all()
    assert registry.get("lm-gru").version == "10"
    copy_model(tiny_models_dir, models, "lm-gru", "11")
    assert registry.load("lm-gru", "11").version == "11"
    assert registry.default_version("lm-gru") == "11"
    assert [(m.version, m.default) for m in registry.models().models] == [
        ("2", False),
        ("10", False),
        ("11", True),
    ]
    with pytest.raises(ModelNotFound):
        registry.get("lm-gru", "3")
    with pytest.raises(ModelNotFound):
        registry.get("other")


def _corrupt_hash(d: Path) -> None:
    with (d / "model.onnx").open("ab") as f:
        f.write(b"\0")


def _graph_differs(d: Path) -> None:
    """A manifest that tells the truth about its file but not about the graph's tensors."""
    manifest = json.loads((d / "manifest.json").read_text())
    for spec in manifest["onnx"]["outputs"]:
        if spec["name"] == "log_probs":
            spec["name"] = "logits"
    (d / "manifest.json").write_text(json.dumps(manifest))


def _wrong_dtype(d: Path) -> None:
    """The manifest claims x is float32 [B, T, 12]: the contract check refuses it before ORT."""
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["onnx"]["inputs"][0] = {"name": "x", "dtype": "float32", "shape": ["B", "T", 12]}
    (d / "manifest.json").write_text(json.dumps(manifest))


def _graph_swapped(d: Path) -> None:
    """Another model's graph, with its hash recorded: the graph's real tensors betray it."""
    src = d.parent.parent.parent / "src" / "sensor-rnn" / "1" / "model.onnx"
    shutil.copy(src, d / "model.onnx")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["onnx"]["sha256"] = sha256_file(d / "model.onnx")
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt_hash, "sha256"),
        (_graph_differs, "needs outputs"),
        (_wrong_dtype, "contract"),
        (_graph_swapped, "graph"),
        (lambda d: (d / "manifest.json").write_text("{"), "not readable JSON"),
        (lambda d: (d / "vocab.txt").unlink(), "vocab.txt is missing"),
    ],
)
def test_a_refused_artifact_is_logged_and_skipped(
    tiny_models_dir: Path, tmp_path: Path, damage: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(tiny_models_dir, tmp_path / "src")
    models = tmp_path / "models"
    copy_model(tiny_models_dir, models, "lm-rnn", "1")
    damage(copy_model(tiny_models_dir, models, "lm-lstm", "1"))
    registry = Registry(settings(models))
    with caplog.at_level(logging.ERROR):
        loaded = registry.load_all()
    assert [m.key for m in loaded] == ["lm-rnn/1"]
    assert reason in registry.errors["lm-lstm/1"]
    assert "lm-lstm/1" in caplog.text
    with pytest.raises(ArtifactError, match=reason):
        registry.load("lm-lstm", "1")


def test_cuda_requested_but_absent_falls_back_to_cpu(
    tiny_models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: nothing to fall back from")
    registry = Registry(settings(tiny_models_dir, providers="cuda,cpu"))
    with caplog.at_level(logging.WARNING):
        model = registry.load("sensor-rnn", "1")
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider was requested" in caplog.text
