"""`python -m training lm|sensor|export ...`: train + export + verify + write an artifact, in one go.

Bad input (missing file, empty corpus, non-numeric CSV, ...) ends with one line on stderr and exit
status 2; the same entry point runs unchanged under `torchrun --nproc_per_node N`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from service.manifest import ArtifactError
from training.config import TrainConfig, add_train_arguments, config_from_args
from training.data.errors import DataError

EXIT_BAD_INPUT = 2
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # as service.manifest.Manifest requires


def _add_model_arguments(
    parser: argparse.ArgumentParser, cell: str, hidden: int, layers: int, dropout: float
) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--cell", choices=("rnn", "gru", "lstm"), default=cell, help="recurrent cell (%(default)s)"
    )
    g.add_argument("--layers", type=int, default=layers, help="stacked recurrent layers (%(default)s)")
    g.add_argument("--hidden", type=int, default=hidden, help="hidden units per layer (%(default)s)")
    g.add_argument("--dense", type=int, default=None, help="width of an optional dense layer before the head")
    g.add_argument("--dropout", type=float, default=dropout, help="dropout probability (%(default)s)")
    regularisers = [
        ("--dropout-embedding", "lm: probability of dropping a word's whole embedding"),
        ("--dropout-input", "locked (per-sequence) dropout on the recurrent core's input"),
        ("--dropout-hidden", "locked dropout between stacked layers"),
        ("--dropout-output", "locked dropout on the recurrent core's output"),
        ("--weight-drop", "DropConnect probability on the hidden-to-hidden weights"),
    ]
    for flag, help_text in regularisers:  # training only: none of them is in the exported graph
        g.add_argument(flag, type=float, default=0.0, help=f"{help_text} (%(default)s)")


def _add_output_arguments(parser: argparse.ArgumentParser, name: str | None) -> None:
    g = parser.add_argument_group("artifact")
    g.add_argument("--out", type=Path, default=Path("models"), help="models directory (%(default)s)")
    g.add_argument("--name", default=name, help="model name (%(default)s)")
    g.add_argument("--version", default="1", help="model version (%(default)s)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing models/<name>/<version>")


def build_parser(recipe: str | None = None) -> argparse.ArgumentParser:
    """The CLI; with `recipe` (an lm preset of training.recipes) its values are the lm defaults."""
    from training import options
    from training.recipes import RECIPES

    # `rnnserve train ...` runs this module; the parser needs no torch, so --help works without it
    parser = argparse.ArgumentParser(prog="rnnserve train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tasks: list[tuple[str, str, TrainConfig, tuple[str, int, int, float]]] = [
        (
            "lm",
            "train a word-level next-word model on a text corpus",
            options.LM_DEFAULTS,
            ("lstm", 200, 2, 0.2),
        ),
        (
            "sensor",
            "train a multivariate next-reading model with a Gaussian head and anomaly calibration",
            options.SENSOR_DEFAULTS,
            ("lstm", 64, 1, 0.0),
        ),
    ]
    for task, help_text, defaults, (cell, hidden, layers, dropout) in tasks:
        p = sub.add_parser(task, help=help_text, description=help_text)
        (options.add_lm_arguments if task == "lm" else options.add_sensor_arguments)(p)
        _add_model_arguments(p, cell, hidden, layers, dropout)
        add_train_arguments(p, defaults)
        _add_output_arguments(p, task)
        if task == "lm":
            p.add_argument(
                "--recipe",
                choices=sorted(RECIPES),
                default=None,
                help="preset of sizes, regularisation and schedule (see README); explicit flags win",
            )
            if recipe in RECIPES:  # an unknown name is left to --recipe's choices to refuse
                p.set_defaults(**RECIPES[recipe])
    p = sub.add_parser(
        "export",
        help="export a finished run's checkpoint to an artifact again",
        description="export a finished run's checkpoint (best.pt) to models/<name>/<version>/",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint file written by a training run (best.pt)")
    _add_output_arguments(p, None)
    return parser


def _run(args: argparse.Namespace) -> int:
    from training.distributed import init_distributed, shutdown
    from training.run import Destination, export_checkpoint, set_threads, train_and_publish
    from training.tasks import lm, sensor

    for flag, value in (("--name", args.name), ("--version", args.version)):
        if value is not None and not _NAME.fullmatch(value):
            raise DataError(
                f"{flag} {value!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
    if args.command == "export":
        from training import checkpoint

        name = args.name or str(checkpoint.load(args.checkpoint).spec.task)
        target = export_checkpoint(args.checkpoint, Destination(args.out, name, args.version, args.overwrite))
        print(f"wrote {target}")
        return 0
    target = args.out / args.name / args.version
    if target.exists() and not args.overwrite:  # say so now, not after hours of training
        raise FileExistsError(f"{target} exists; choose another --version or pass --overwrite")
    cfg = config_from_args(args, args.name)
    set_threads(cfg.threads)
    ctx = init_distributed()
    try:
        prepared = (lm if args.command == "lm" else sensor).prepare(args, cfg, ctx)
        train_and_publish(prepared, cfg, ctx, Destination(args.out, args.name, args.version, args.overwrite))
    finally:
        shutdown(ctx)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with a --recipe's values as the defaults so that flags beside it still win."""
    prescan = argparse.ArgumentParser(add_help=False)
    prescan.add_argument("--recipe")
    recipe = prescan.parse_known_args(argv)[0].recipe
    return build_parser(recipe).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from training.export import ExportMismatch  # torch from here on: parsing (and --help) needs none
    from training.tbptt import TrainingDiverged

    try:
        return _run(args)
    except (DataError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ExportMismatch, ArtifactError) as exc:
        print(f"error: export failed: {exc}", file=sys.stderr)
        return 1
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
