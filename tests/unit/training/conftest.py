"""Small real inputs for the training unit tests: tiny models and a quiet training config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from training.config import TrainConfig
from training.model import Cell, ModelSpec, RecurrentNet


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models run fastest on one thread, and the machine is shared."""
    torch.set_num_threads(1)


def _tiny_lm(cell: Cell = "lstm", vocab: int = 20, dropout: float = 0.0, seed: int = 0) -> RecurrentNet:
    torch.manual_seed(seed)
    return RecurrentNet(
        ModelSpec(task="lm", cell=cell, input_size=8, hidden=12, layers=2, vocab_size=vocab, dropout=dropout)
    )


def _quiet_config(tmp_path: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        epochs=2, batch_size=4, bptt=6, lr=1e-2, threads=1, progress=False, checkpoint_dir=tmp_path / "ckpt"
    )
    return TrainConfig(**{**base.__dict__, **changes})


@pytest.fixture
def tiny_lm() -> Callable[..., RecurrentNet]:
    """Factory of a seeded 2-layer lm (vocabulary 20, embedding 8, hidden 12)."""
    return _tiny_lm


@pytest.fixture
def quiet_config() -> Callable[..., TrainConfig]:
    """Factory of a small TrainConfig without progress bar: quiet_config(directory, **changes)."""
    return _quiet_config
