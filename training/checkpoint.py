"""Checkpoints: everything needed to resume training or to export the model again.

A checkpoint is a plain dict saved with `torch.save` and read back with `weights_only=True` (tensors,
numbers, strings, lists and dicts only), written atomically so an interrupted save never leaves half a
file. `last.pt` is written after every epoch (to resume), `best.pt` whenever validation improves; when
training ends `best.pt` also receives the task data (vocabulary / sensor statistics and calibration) and
the training summary, which is what `python -m training export` needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.manifest import SensorSpec, Tokenizer, TrainingSummary
from training.data.errors import DataError
from training.export import TaskData
from training.model import ModelSpec, RecurrentNet

FORMAT = 1
BEST, LAST = "best.pt", "last.pt"


@dataclass
class Checkpoint:
    spec: ModelSpec
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None
    progress: dict[str, Any] = field(default_factory=dict)  # epoch, best, lr, history, rng (see tbptt)
    config: dict[str, Any] = field(default_factory=dict)
    task_data: dict[str, Any] = field(default_factory=dict)  # see task_data_to_dict
    summary: dict[str, Any] | None = None  # TrainingSummary as JSON, once training has finished

    def build_model(self) -> RecurrentNet:
        model = RecurrentNet(self.spec)
        model.load_state_dict(self.model_state)
        return model


def task_data_to_dict(data: TaskData) -> dict[str, Any]:
    return {
        "vocab": list(data.vocab) if data.vocab is not None else None,
        "tokenizer": data.tokenizer.model_dump(mode="json"),
        "sensor": data.sensor.model_dump(mode="json") if data.sensor is not None else None,
    }


def task_data_from_dict(raw: dict[str, Any]) -> TaskData:
    sensor = raw.get("sensor")
    return TaskData(
        vocab=raw.get("vocab"),
        tokenizer=Tokenizer.model_validate(raw.get("tokenizer") or {}),
        sensor=SensorSpec.model_validate(sensor) if sensor is not None else None,
    )


def save(path: Path, ckpt: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "spec": ckpt.spec.to_dict(),
        "model_state": ckpt.model_state,
        "optimizer_state": ckpt.optimizer_state,
        "progress": ckpt.progress,
        "config": ckpt.config,
        "task_data": ckpt.task_data,
        "summary": ckpt.summary,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: Path) -> Checkpoint:
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same to the user
        raise DataError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{path}: not an rnnserve training checkpoint (format {FORMAT})")
    return Checkpoint(
        spec=ModelSpec(**raw["spec"]),
        model_state=raw["model_state"],
        optimizer_state=raw.get("optimizer_state"),
        progress=raw.get("progress") or {},
        config=raw.get("config") or {},
        task_data=raw.get("task_data") or {},
        summary=raw.get("summary"),
    )


def finished_parts(ckpt: Checkpoint, path: Path) -> tuple[TaskData, TrainingSummary]:
    """Task data and summary of a finished run; a clear error for a checkpoint of an unfinished one."""
    if ckpt.summary is None or not ckpt.task_data:
        raise DataError(
            f"{path}: the run that wrote this checkpoint did not finish (no training summary); "
            "resume it with --resume first"
        )
    return task_data_from_dict(ckpt.task_data), TrainingSummary.model_validate(ckpt.summary)
