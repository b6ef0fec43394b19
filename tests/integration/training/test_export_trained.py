"""Trained tiny models of every cell export to ONNX matching PyTorch (B 1 and 7); mismatches are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.data.streams import batchify
from training.data.synthetic import WEEK, generate
from training.distributed import DistContext
from training.export import ExportMismatch, export_onnx, verify_export
from training.model import Cell, ModelSpec, RecurrentNet, Task
from training.tasks.lm import lm_loss, token_streams
from training.tasks.sensor import fixed, pairs, sensor_loss
from training.tbptt import fit

pytestmark = pytest.mark.integration
CELLS: tuple[Cell, ...] = ("rnn", "gru", "lstm")


def _train(spec: ModelSpec, tmp_path: Path) -> RecurrentNet:
    torch.manual_seed(0)
    model = RecurrentNet(spec)
    cfg = TrainConfig(
        epochs=2, batch_size=4, bptt=8, lr=1e-2, threads=1, progress=False, checkpoint_dir=tmp_path / "ckpt"
    )
    if spec.task == "lm":
        ids = torch.randint(0, spec.vocab_size, (400,), generator=torch.Generator().manual_seed(1))
        train, valid, loss = token_streams(ids[:300], 4), token_streams(ids[300:], 2), lm_loss
    else:
        series = generate(WEEK, seed=1, per_kind=0)
        mean, std = np.nanmean(series.values[:500], 0), np.nanstd(series.values[:500], 0)
        x, y, m = pairs(series, fixed(mean, std))
        train, valid, loss = (
            batchify(x[:600], y[:600], m[:600], 4),
            batchify(x[600:], y[600:], m[600:], 2),
            sensor_loss,
        )
    before = [p.detach().clone() for p in model.parameters()]
    result = fit(model, train, valid, loss, cfg, DistContext(), {})
    assert result.epochs == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # it trained
    return model.eval()


def _spec(task: Task, cell: Cell) -> ModelSpec:
    if task == "lm":  # a dense layer and tied embeddings on one of them
        return ModelSpec(
            task="lm",
            cell=cell,
            input_size=10,
            hidden=16,
            layers=2,
            vocab_size=30,
            dense=10 if cell == "gru" else None,
            tied=cell == "gru",
            dropout=0.1,
        )
    return ModelSpec(
        task="sensor",
        cell=cell,
        input_size=4,
        hidden=12,
        layers=1 if cell == "rnn" else 2,
        dense=8 if cell == "lstm" else None,
    )


@pytest.mark.parametrize("task", ["lm", "sensor"])
@pytest.mark.parametrize("cell", CELLS)
def test_trained_model_exports_and_verifies(task: Task, cell: Cell, tmp_path: Path) -> None:
    model = _train(_spec(task, cell), tmp_path)
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    report = verify_export(model, path, batch_sizes=(1, 7))
    print(
        f"{task}/{cell}: max |onnx - torch| {report.max_abs_diff_vs_torch:.2e}, "
        f"steps vs chunk {report.max_abs_diff_step_vs_chunk:.2e}"
    )
    assert report.max_abs_diff_vs_torch <= 1e-5 and report.max_abs_diff_step_vs_chunk <= 1e-5
    assert report.checks > 0
    # the same graph against a model whose weights moved must be refused
    with torch.no_grad():
        model.head.bias[0] += 1e-3  # one output moves (a shift of all logits would cancel in log_softmax)
    with pytest.raises(ExportMismatch):
        verify_export(model, path, batch_sizes=(1, 7))
