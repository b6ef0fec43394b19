"""The training command's options, without torch: `rnnserve train lm|sensor --help` works on a serving
install, and the tasks (training/tasks/, which need torch) take their defaults and flags from here."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.data.synthetic import EVAL_WEEKS

# A data option of a task: (flag, type, default, help); options with a default show it in --help.
Option = tuple[str, Callable[[str], Any], Any, str]


def add_options(group: argparse._ArgumentGroup, options: list[Option]) -> None:
    for flag, kind, default, help_text in options:
        suffix = " (%(default)s)" if default is not None else ""
        group.add_argument(flag, type=kind, default=default, help=help_text + suffix)


# ---- lm ----

LM_DEFAULTS = TrainConfig(epochs=20, batch_size=20, bptt=35, lr=2e-3, clip=0.25, patience=2)

_LM_OPTIONS: list[Option] = [
    ("--data", Path, None, "directory with wiki.{train,valid,test}.tokens or {train,valid,test}.txt "
                           "(default: ../shared/data/wikitext-2 beside the repository)"),
    ("--train", Path, None, "training text file (with --valid and --test)"),
    ("--valid", Path, None, "validation text file"),
    ("--test", Path, None, "test text file"),
    ("--corpus", Path, None, "one UTF-8 text file, split into train/valid/test by lines"),
    ("--valid-fraction", float, 0.05, "with --corpus"),
    ("--test-fraction", float, 0.05, "with --corpus"),
    ("--max-vocab", int, 10000, "vocabulary size cap including <unk> and <eos>, 0 for none"),
    ("--min-count", int, 1, "words seen fewer times in training become <unk>"),
    ("--tokenizer", str, "wikitext", "'wikitext', 'whitespace' or a regular expression for re.findall"),
    ("--embedding", int, None, "embedding size (default: hidden size)"),
]  # fmt: skip


def add_lm_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("lm data")
    add_options(g, _LM_OPTIONS)
    g.add_argument("--lowercase", action="store_true", help="lower-case text before tokenizing")
    g.add_argument("--tied", action=argparse.BooleanOptionalAction, default=True,
                   help="tie the output layer to the embedding (halves a big-vocabulary model)")  # fmt: skip


# ---- sensor ----

SENSOR_DEFAULTS = TrainConfig(
    epochs=60, batch_size=8, bptt=48, lr=3e-3, weight_decay=1e-4, clip=1.0, patience=6, min_delta=1e-3
)

_SENSOR_OPTIONS: list[Option] = [
    ("--csv", Path, None, "one CSV file, split in time into train/valid/test"),
    ("--train-csv", Path, None, "training CSV (with --valid-csv and --test-csv)"),
    ("--valid-csv", Path, None, "validation CSV (labelled anomalies calibrate the threshold)"),
    ("--test-csv", Path, None, "test CSV"),
    ("--valid-fraction", float, 0.15, "with --csv"),
    ("--test-fraction", float, 0.15, "with --csv"),
    ("--timestamp-column", str, None, "timestamp column name (default: the first column)"),
    ("--label-column", str, "label", "optional column of anomaly labels: empty/0 normal, 1 or a type name"),
    ("--contamination", float, 0.01, "share of validation readings flagged when validation has no labels"),
    ("--synthetic-weeks", float, 26, "synthetic training weeks"),
    ("--synthetic-eval-weeks", float, EVAL_WEEKS,
     "weeks per synthetic validation/test stream, one per anomaly type"),
    ("--synthetic-events", int, 20, "anomalies per synthetic validation/test stream"),
    ("--synthetic-train-anomalies", int, 0, "anomalies of each type in the synthetic training weeks"),
    ("--plant-seed", int, 0, "seed of the synthetic plant"),
    ("--fleet", int, 0, "train a one-feature fleet model (online normalization) on every sensor of this "
     "many synthetic plants; 0: a model of the data's own features"),
]  # fmt: skip


def add_sensor_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sensor data (default: the built-in synthetic plant)")
    add_options(group, _SENSOR_OPTIONS)
