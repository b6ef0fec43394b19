"""Tasks: how a task turns its data into streams, what its loss is, and what it reports at the end."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.data.errors import DataError
from training.data.streams import Streams
from training.export import TaskData
from training.model import REGULARISERS, ModelSpec, RecurrentNet, Task
from training.tbptt import LossFn


def model_spec(args: argparse.Namespace, task: Task, input_size: int, vocab_size: int = 0) -> ModelSpec:
    """The CLI's model options as a spec; an impossible combination is bad input."""
    try:
        return ModelSpec(
            task=task, cell=args.cell, input_size=input_size, hidden=args.hidden, layers=args.layers,
            vocab_size=vocab_size, dense=args.dense, dropout=args.dropout,
            tied=bool(getattr(args, "tied", False)),
            **{name: getattr(args, name, 0.0) for name in REGULARISERS},
        )  # fmt: skip
    except ValueError as exc:
        raise DataError(str(exc)) from exc


@dataclass
class Prepared:
    """A task ready to train: model spec, laid-out streams, loss, and the end-of-training step."""

    spec: ModelSpec
    train: Streams  # batch_size * world_size streams
    valid: Streams  # eval streams * world_size
    loss_fn: LossFn
    describe: Callable[[float], str]  # mean loss -> what the progress bar shows
    fingerprint: str  # sha256 of the training data
    # The best model -> (final validation/test metrics, complete task data for the artifact)
    finish: Callable[[RecurrentNet], tuple[dict[str, float], TaskData]]
    data_config: dict[str, Any] = field(default_factory=dict)
    partial_task_data: dict[str, Any] = field(default_factory=dict)  # stored in checkpoints while training
