"""`python -m training` end to end: artifacts that a bare ONNX Runtime session runs from the manifest."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bare_artifact import open_bare, zero_states

from training import checkpoint
from training.cli import main
from training.data.synthetic import ANOMALY_TYPES, WEEK, generate
from training.tasks.sensor import fixed, score

pytestmark = pytest.mark.integration
TRAIN_ARGS = ["--epochs", "2", "--batch-size", "4", "--bptt", "8", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def lm_run(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm-run")
    argv = ["lm", "--data", str(corpus_dir), "--max-vocab", "12", "--cell", "gru", "--layers", "1",
            "--hidden", "16", "--tied", "--out", str(root / "models"), "--checkpoint-dir", str(root / "ckpt"),
            *TRAIN_ARGS]  # fmt: skip
    assert main(argv) == 0
    return root


def test_lm_artifact_runs_in_a_bare_session_guided_by_the_manifest(lm_run: Path, corpus_dir: Path) -> None:
    artifact = lm_run / "models" / "lm" / "1"
    manifest, session = open_bare(artifact)
    assert manifest["task"] == "lm" and manifest["architecture"]["tied"] is True
    vocab = (artifact / manifest["lm"]["vocab_file"]).read_text(encoding="utf-8").splitlines()
    assert len(vocab) == manifest["lm"]["vocab_size"] == 12
    assert vocab[:2] == [manifest["lm"]["unk_token"], manifest["lm"]["eos_token"]]
    training = manifest["training"]
    assert training["data_fingerprint"] == hashlib.sha256((corpus_dir / "train.txt").read_bytes()).hexdigest()
    assert (
        training["epochs"] == 2
        and training["metrics"]["valid_ppl"] > 1
        and training["metrics"]["test_ppl"] > 1
    )
    assert set(training["libraries"]) >= {"torch", "onnxruntime"}
    # tokenize as the service will, run the graph, check the outputs are next-word distributions
    tokens = re.findall(manifest["lm"]["tokenizer"]["pattern"], "the big cat sat on a zebra.")
    assert tokens == ["the", "big", "cat", "sat", "on", "a", "zebra", "."]
    ids = np.array([[vocab.index(t) if t in vocab else 0 for t in tokens]], dtype=np.int64)
    names = [o.name for o in session.get_outputs()]
    assert names == [o["name"] for o in manifest["onnx"]["outputs"]]
    out = dict(zip(names, session.run(None, {"x": ids, **zero_states(manifest, 1)}), strict=True))
    assert out["log_probs"].shape == (1, len(tokens), 12)
    assert np.allclose(np.exp(out["log_probs"]).sum(-1), 1.0, atol=1e-5)
    # the same numbers as the trained PyTorch model in the run's checkpoint
    model = checkpoint.load(lm_run / "ckpt" / "best.pt").build_model().eval()
    with torch.no_grad():
        (log_probs,), _ = model(torch.from_numpy(ids), model.init_state(1))
    assert np.abs(log_probs.numpy() - out["log_probs"]).max() <= 1e-5
    # it learned something: "the" is followed by a noun or an adjective far more often than by "."
    after_the = out["log_probs"][0, 0]
    assert after_the[vocab.index("cat")] > after_the[vocab.index(".")]


def test_export_subcommand_rewrites_the_same_artifact(lm_run: Path) -> None:
    out = lm_run / "again"
    assert main(["export", str(lm_run / "ckpt" / "best.pt"), "--out", str(out), "--version", "7"]) == 0
    first = json.loads((lm_run / "models" / "lm" / "1" / "manifest.json").read_text(encoding="utf-8"))
    again = json.loads((out / "lm" / "7" / "manifest.json").read_text(encoding="utf-8"))
    assert again["version"] == "7"
    assert again["training"] == first["training"] and again["architecture"] == first["architecture"]
    assert (out / "lm" / "7" / "vocab.txt").read_bytes() == (
        lm_run / "models" / "lm" / "1" / "vocab.txt"
    ).read_bytes()


def test_sensor_artifact_scores_like_training_and_holds_the_calibration(tmp_path: Path) -> None:
    argv = ["sensor", "--synthetic-weeks", "2", "--synthetic-eval-weeks", "1", "--synthetic-events", "2",
            "--hidden", "12", "--out", str(tmp_path / "models"), "--checkpoint-dir", str(tmp_path / "ckpt"),
            *TRAIN_ARGS]  # fmt: skip
    assert main(argv) == 0
    manifest, session = open_bare(tmp_path / "models" / "sensor" / "1")
    sensor = manifest["sensor"]
    calibration = sensor["calibration"]
    assert sensor["features"] == ["temperature", "humidity", "power", "vibration"]
    metrics = manifest["training"]["metrics"]
    for kind in (*ANOMALY_TYPES, "all"):
        assert 0 <= metrics[f"test_{kind}_f1"] <= 1 and f"valid_{kind}_recall" in calibration["summary"]
    # Stream a held-out series one reading at a time, as the service does, and score each reading with
    # the manifest's formula under the prediction made one step earlier.
    series = generate(WEEK, seed=200, offset=3 * WEEK, kinds=("spike",), per_kind=2, missing_rate=0.0)
    mean, std = np.array(sensor["mean"]), np.array(sensor["std"])
    expected = score(
        checkpoint.load(tmp_path / "ckpt" / "best.pt").build_model(), [series], fixed(mean, std)
    )[0].scores
    state = zero_states(manifest, 1)
    names = [o.name for o in session.get_outputs()]
    prediction, got = None, []
    for reading in series.values[:200]:
        x = ((reading - mean) / std).astype(np.float32)[None, None, :]
        out = dict(zip(names, session.run(None, {"x": x, **state}), strict=True))
        if prediction is not None:
            mu, log_var = prediction
            got.append(0.5 * np.sum(np.log(2 * np.pi) + log_var + (x[0, 0] - mu) ** 2 / np.exp(log_var)))
        prediction = (out["mean"][0, 0], out["log_var"][0, 0])
        state = {s["input"]: out[s["output"]] for s in manifest["onnx"]["states"]}
    assert len(got) == 199
    assert np.allclose(got, expected[1 : len(got) + 1], atol=1e-3)
    flags = np.array(got) >= calibration["center"]
    probability = 1 / (1 + np.exp(-(np.array(got) - calibration["center"]) / calibration["scale"]))
    assert np.array_equal(flags, probability >= 0.5)


def test_dry_run_through_python_dash_m(corpus_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "lm", "--data", str(corpus_dir), "--dry-run", "--hidden", "8",
         "--layers", "1", "--threads", "1", "--no-progress", "--out", str(tmp_path / "m"),
         "--checkpoint-dir", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "stopped by dry_run" in result.stdout
    assert (tmp_path / "m" / "lm" / "1" / "manifest.json").is_file()


@pytest.mark.parametrize("labelled", [True, False])
def test_sensor_from_csv_with_and_without_labels(tmp_path: Path, labelled: bool) -> None:
    series = generate(2 * WEEK, seed=9, kinds=("spike", "level_shift"), per_kind=6)
    lines = ["time,t_room,rh,kw,mm_s" + (",label" if labelled else "")]
    for stamp, row, label in zip(series.timestamps, series.values, series.labels, strict=True):
        cells = ["" if np.isnan(v) else f"{v:.4f}" for v in row]
        tag = [series.kinds[label - 1] if label else "0"] if labelled else []
        lines.append(",".join([str(stamp), *cells, *tag]))
    csv_path = tmp_path / "plant.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["sensor", "--csv", str(csv_path), "--valid-fraction", "0.3", "--test-fraction", "0.3",
            "--hidden", "8", "--out", str(tmp_path / "models"), "--checkpoint-dir", str(tmp_path / "ckpt"),
            *TRAIN_ARGS]  # fmt: skip
    assert main(argv) == 0
    manifest, _ = open_bare(tmp_path / "models" / "sensor" / "1")
    assert manifest["sensor"]["features"] == ["t_room", "rh", "kw", "mm_s"]
    train_rows = series.values[: round(len(series.values) * 0.4)]
    assert np.allclose(manifest["sensor"]["mean"], np.nanmean(train_rows, axis=0), atol=1e-3)
    summary = manifest["sensor"]["calibration"]["summary"]
    if labelled:
        assert "valid_all_f1" in summary and "test_spike_recall" in manifest["training"]["metrics"]
    else:
        assert summary["method"].startswith("no labels")


@pytest.mark.parametrize("recipe", ["small", "medium", "awd"])
def test_each_recipe_trains_shrunk_and_exports_a_verified_artifact(
    recipe: str, corpus_dir: Path, tmp_path: Path
) -> None:
    from training.recipes import RECIPES

    argv = ["lm", "--recipe", recipe, "--data", str(corpus_dir), "--max-vocab", "12", "--hidden", "8",
            "--layers", "2", "--lr", "0.5" if recipe == "awd" else "0.01", "--out", str(tmp_path / "m"),
            "--checkpoint-dir", str(tmp_path / "c"), *TRAIN_ARGS]  # fmt: skip
    assert main(argv) == 0  # write_artifact refuses an export that ORT or stepping does not reproduce
    spec = checkpoint.load(tmp_path / "c" / checkpoint.BEST).spec
    assert spec.weight_drop == RECIPES[recipe]["weight_drop"] and spec.hidden == 8
    manifest = json.loads((tmp_path / "m" / "lm" / "1" / "manifest.json").read_text())
    assert manifest["training"]["config"]["train"]["optimizer"] == RECIPES[recipe]["optimizer"]


def test_sensor_trains_on_a_short_real_world_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """300 rows, a constant column, a repeated and a backward timestamp, missing cells, no test split."""
    rng = np.random.default_rng(4)
    lines = ["timestamp,value,status"]
    for i in range(300):
        stamp = f"2024-03-31 {i // 60:02d}:{i % 60:02d}:00"
        if i in (100, 101):
            stamp = "2024-03-31 01:40:00"  # a repeated hour at a clock change
        if i == 200:
            stamp = "2024-03-31 02:00:00"  # a clock going back
        value = (
            "" if i % 37 == 5 else ("NaN" if i == 150 else f"{10 + np.sin(i / 8) + rng.normal(0, 0.1):.4f}")
        )
        lines.append(f"{stamp},{value},1")
    csv_path = tmp_path / "real.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["sensor", "--csv", str(csv_path), "--test-fraction", "0", "--hidden", "8",
            "--out", str(tmp_path / "models"), "--checkpoint-dir", str(tmp_path / "ckpt"),
            *TRAIN_ARGS]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "repeated and 1 backward" in err and "status (nearly) constant" in err
    manifest, _ = open_bare(tmp_path / "models" / "sensor" / "1")
    assert manifest["sensor"]["features"] == ["value", "status"]
    assert manifest["sensor"]["std"][1] == pytest.approx(1e-3)  # floored at 0.1% of the level 1.0
    assert not any(k.startswith("test_") for k in manifest["training"]["metrics"])
