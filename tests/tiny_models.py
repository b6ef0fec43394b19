"""The tiny test models: every cell type for both tasks, built with the project's own model and export
code (random seeded weights: serving correctness does not depend on training quality).

The tests build them fresh where torch is installed. A copy is committed under tests/fixtures/tiny-models
for installs without torch (`pip install -e '.[dev]'` without `[train]`), and a training test checks
that the copy still equals a fresh build. After a change to the model or the export, write it again:

    python tests/tiny_models.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.model import Cell

COMMITTED = Path(__file__).resolve().parent / "fixtures" / "tiny-models"
TINY_VOCAB = ["<unk>", "<eos>", *(f"w{i}" for i in range(38))]
TINY_FEATURES = ["temperature", "pressure", "vibration"]
CELLS: tuple[Cell, ...] = ("rnn", "gru", "lstm")


def build_tiny_models(root: Path) -> Path:
    """Write `lm-<cell>/1` and `sensor-<cell>/1` for every cell type under root (needs torch)."""
    import torch

    from service.manifest import Calibration, SensorSpec, TrainingSummary
    from training.export import TaskData, write_artifact
    from training.model import ModelSpec, RecurrentNet

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


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    shutil.rmtree(COMMITTED, ignore_errors=True)
    build_tiny_models(COMMITTED)
    print(f"wrote {COMMITTED}")
