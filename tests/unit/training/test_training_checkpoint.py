"""Checkpoints round-trip everything a resume or a re-export needs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from service.manifest import Calibration, SensorSpec, Tokenizer, TrainingSummary
from training import checkpoint
from training.data.errors import DataError
from training.export import TaskData
from training.model import RecurrentNet

pytestmark = pytest.mark.unit


def test_round_trip_of_weights_task_data_and_summary(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet]
) -> None:
    model = tiny_lm()
    sensor = SensorSpec(features=["a"], mean=[1.0], std=[2.0], calibration=Calibration(center=3.0, scale=0.5))
    data = TaskData(
        vocab=["<unk>", "<eos>", "x"], tokenizer=Tokenizer(pattern=r"\w+", lowercase=True), sensor=sensor
    )
    summary = TrainingSummary(
        data_fingerprint="f" * 64, epochs=3, metrics={"valid_ppl": 12.5}, wall_time_s=1.0,
        libraries={"torch": torch.__version__}, seed=7,
    )  # fmt: skip
    path = tmp_path / "x.pt"
    checkpoint.save(path, checkpoint.Checkpoint(
        spec=model.spec, model_state=model.state_dict(), progress={"epoch": 3, "rng": torch.get_rng_state()},
        task_data=checkpoint.task_data_to_dict(data), summary=summary.model_dump(mode="json"),
    ))  # fmt: skip
    back = checkpoint.load(path)
    assert back.spec == model.spec
    rebuilt = back.build_model()
    assert all(
        torch.equal(a, b)
        for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values(), strict=True)
    )
    task_data, summary_back = checkpoint.finished_parts(back, path)
    assert task_data == data and summary_back == summary
    assert back.progress["epoch"] == 3 and back.progress["rng"].dtype == torch.uint8
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_unfinished_and_foreign_files_are_refused(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet]
) -> None:
    model = tiny_lm()
    path = tmp_path / "last.pt"
    checkpoint.save(path, checkpoint.Checkpoint(spec=model.spec, model_state=model.state_dict()))
    with pytest.raises(DataError, match="did not finish"):
        checkpoint.finished_parts(checkpoint.load(path), path)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not an rnnserve training checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
