"""Shared fixtures: tiny real models built with the project's own model and export code.

Every cell type for both tasks, exported and verified by `training.export.write_artifact`, once per
test session. Weights are random (seeded): serving correctness does not depend on training quality,
and the training tests train their own models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from skip_summary import write_summary

if TYPE_CHECKING:
    from training.model import Cell

TINY_VOCAB = ["<unk>", "<eos>", *(f"w{i}" for i in range(38))]
TINY_FEATURES = ["temperature", "pressure", "vibration"]
CELLS: tuple[Cell, ...] = ("rnn", "gru", "lstm")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with `lm-<cell>/1` and `sensor-<cell>/1` for every cell type."""
    import torch

    from service.manifest import Calibration, SensorSpec, TrainingSummary
    from training.export import TaskData, write_artifact
    from training.model import ModelSpec, RecurrentNet

    root = tmp_path_factory.mktemp("models")
    summary = TrainingSummary(
        data_fingerprint="tiny-random", epochs=0, metrics={}, wall_time_s=0.0, libraries={}, seed=0
    )
    sensor = SensorSpec(
        features=TINY_FEATURES,
        mean=[20.0, 1000.0, 0.5],
        std=[5.0, 10.0, 0.1],
        calibration=Calibration(center=6.0, scale=1.5),
    )
    for i, cell in enumerate(CELLS):
        torch.manual_seed(i)
        lm = RecurrentNet(
            ModelSpec(
                task="lm",
                cell=cell,
                input_size=12,
                hidden=16,
                layers=2,
                vocab_size=len(TINY_VOCAB),
                dense=12 if cell == "gru" else None,
                tied=cell == "gru",
            )
        )
        write_artifact(lm, root, f"lm-{cell}", "1", TaskData(vocab=TINY_VOCAB), summary)
        net = RecurrentNet(
            ModelSpec(
                task="sensor",
                cell=cell,
                input_size=len(TINY_FEATURES),
                hidden=16,
                layers=1 if cell == "rnn" else 2,
            )
        )
        write_artifact(net, root, f"sensor-{cell}", "1", TaskData(sensor=sensor), summary)
    return root


def publish_version(source: Path, root: Path, name: str, version: str) -> Path:
    """Publish `source` (an artifact directory) as `root/name/version` the way the README says:
    copy into a hidden directory, rename the manifest, then one atomic rename into place."""
    import json
    import shutil

    staging = root / name / f".{version}.tmp"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    (staging / "manifest.json").write_text(json.dumps(manifest))
    final = root / name / version
    staging.rename(final)
    return final


@pytest.fixture
def publish() -> Callable[[Path, Path, str, str], Path]:
    return publish_version


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_summary(terminalreporter)
