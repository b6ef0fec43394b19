"""Options shared by every task's training run: the loop, the schedule, the machine, the output."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32  # parallel streams per process
    bptt: int = 35  # window length in steps
    lr: float = 2e-3
    weight_decay: float = 0.0
    clip: float = 0.25  # max global gradient norm; 0 turns clipping off
    lr_decay: float = 0.5  # multiply the learning rate by this when validation stalls
    min_delta: float = 1e-3  # smallest drop of the validation loss that counts as progress
    patience: int = 2  # stop after this many epochs in a row without progress
    optimizer: str = "adam"  # "adam" | "adamw" | "sgd"
    # Non-monotonically triggered averaging (NT-ASGD, Merity et al. 2017): once validation is worse than
    # the best of all epochs but the last `nonmono`, weights are averaged over every later step and the
    # average is what is validated, kept and exported. 0 never averages.
    nonmono: int = 0
    # AWD-LSTM's loop-level regularisers (training/awd.py): windows of drawn length with the step's
    # learning rate scaled by length / bptt, and the AR (alpha) / TAR (beta) penalties; 0 turns them off.
    variable_bptt: bool = False
    ar: float = 0.0
    tar: float = 0.0
    seed: int = 1234
    threads: int = 2  # torch intra-op threads per process
    budget_minutes: float | None = None  # wall-clock limit; stops cleanly, keeps the best model
    dry_run: bool = False  # a few windows per phase, end to end
    dry_run_windows: int = 3
    checkpoint_dir: Path = Path("checkpoints")
    resume: bool = False
    progress: bool = True

    def to_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


# The loop's numeric options: TrainConfig field -> (help text, validity check). Each becomes `--field-name`.
_OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "epochs": ("maximum number of epochs", lambda v: v >= 1),
    "batch_size": ("parallel streams per process", lambda v: v >= 1),
    "bptt": ("truncated BPTT window length in steps", lambda v: v >= 1),
    "lr": ("learning rate", lambda v: v > 0),
    "weight_decay": ("weight decay (L2 for adam and sgd, decoupled for adamw)", lambda v: v >= 0),
    "clip": ("gradient-norm clipping threshold, 0 for none", lambda v: v >= 0),
    "lr_decay": ("learning-rate factor applied when validation does not improve", lambda v: 0 < v <= 1),
    "min_delta": ("smallest validation-loss improvement that counts", lambda v: v >= 0),
    "patience": ("early stop after this many epochs without improvement", lambda v: v >= 1),
    "nonmono": (
        "average the weights (NT-ASGD) once validation is worse than the best but the last N epochs; "
        "0 for never",
        lambda v: v >= 0,
    ),
    "ar": ("activation regularisation (AR) weight on the last layer's dropped outputs", lambda v: v >= 0),
    "tar": ("temporal activation regularisation (TAR) weight on its step-to-step change", lambda v: v >= 0),
    "seed": ("random seed", lambda v: True),
    "threads": ("torch threads per process", lambda v: v >= 1),
    "budget_minutes": (
        "stop cleanly after this many minutes, keeping the best model",
        lambda v: v is None or v > 0,
    ),
}


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """The loop's options, with `defaults` (each task has its own) shown in --help."""
    g = parser.add_argument_group("training loop")
    for name, (help_text, _) in _OPTIONS.items():
        default = getattr(defaults, name)
        kind = float if name == "budget_minutes" else type(default)
        g.add_argument(_flag(name), type=kind, default=default, help=f"{help_text} (%(default)s)")
    g.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=defaults.optimizer, help="optimizer (%(default)s)"
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help=f"run {defaults.dry_run_windows} windows per phase and one epoch, end to end",
    )
    g.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where best.pt and last.pt go (default: checkpoints/<name>)",
    )
    g.add_argument(
        "--variable-bptt",
        action=argparse.BooleanOptionalAction,
        default=defaults.variable_bptt,
        help="AWD-LSTM's windows of random length around --bptt, lr scaled by length / bptt (%(default)s)",
    )
    g.add_argument("--resume", action="store_true", help="continue from <checkpoint-dir>/last.pt")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")


def config_from_args(args: argparse.Namespace, name: str) -> TrainConfig:
    from training.data.errors import DataError

    bad = [_flag(n) for n, (_, ok) in _OPTIONS.items() if not ok(getattr(args, n))]
    if bad:
        raise DataError(f"invalid value for {', '.join(bad)}")
    values = {n: getattr(args, n) for n in _OPTIONS}
    return TrainConfig(
        **{**values, "epochs": 1 if args.dry_run else args.epochs},
        optimizer=args.optimizer,
        variable_bptt=args.variable_bptt,
        dry_run=args.dry_run,
        checkpoint_dir=args.checkpoint_dir or Path("checkpoints") / name,
        resume=args.resume,
        progress=not args.no_progress,
    )
