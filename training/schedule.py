"""The optimizer and the weight averaging of NT-ASGD (Merity et al. 2017, "Regularizing and Optimizing
LSTM Language Models", section 3).

NT-ASGD trains with plain SGD and, once validation stops improving in a non-monotone sense (worse than
the best of all epochs but the last `nonmono`), keeps the running mean of the weights over every later
step; that mean is what is validated, kept and exported, while SGD goes on updating the weights it
averages. torch's ASGD with `t0=0, lambd=0` computes the same mean inside the optimizer; torch's
AveragedModel keeps it beside any optimizer, which is what lets the same switch follow AdamW too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from training.config import TrainConfig
from training.model import RecurrentNet


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `cfg`, fused: one kernel over every tensor instead of several elementwise passes
    (Adam's step on the shipped lm took ~60 ms fused vs ~180 ms unfused on one loaded CPU thread)."""
    params = list(model.parameters())
    kind = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}.get(cfg.optimizer, torch.optim.Adam)
    optimizer: torch.optim.Optimizer = kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return optimizer


def averaging_due(previous_losses: list[float], loss: float, nonmono: int) -> bool:
    """AWD-LSTM's trigger: `loss` is worse than the best validation loss before the last `nonmono`."""
    return 0 < nonmono < len(previous_losses) and loss > min(previous_losses[:-nonmono])


class WeightAverage:
    """The running mean of `model`'s weights since `start()`; inactive (and free) until then."""

    def __init__(self, model: RecurrentNet) -> None:
        self.model = model
        self._averaged: AveragedModel | None = None

    @property
    def active(self) -> bool:
        return self._averaged is not None

    def start(self) -> None:
        if self._averaged is None:
            self._averaged = AveragedModel(self.model)  # a copy; its first update copies the weights

    def update(self) -> None:
        """After every optimizer step (a no-op until started)."""
        if self._averaged is not None:
            self._averaged.update_parameters(self.model)

    def current(self) -> RecurrentNet:
        """What to validate and keep: the average once started, else the model itself."""
        if self._averaged is None:
            return self.model
        module = self._averaged.module
        assert isinstance(module, RecurrentNet)
        return module

    def state_dict(self) -> dict[str, Any] | None:
        return None if self._averaged is None else self._averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.start()
            assert self._averaged is not None
            self._averaged.load_state_dict(state)
