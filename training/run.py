"""One training run end to end: train (TBPTT) -> final metrics -> checkpoint -> verified artifact."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.manifest import TrainingSummary
from training import checkpoint
from training.checkpoint import task_data_to_dict
from training.config import TrainConfig
from training.distributed import DistContext, barrier
from training.export import library_versions, write_artifact
from training.model import RecurrentNet
from training.tasks import Prepared
from training.tbptt import fit


@dataclass(frozen=True)
class Destination:
    models_dir: Path
    name: str
    version: str
    overwrite: bool = False


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # settable once per process, before any parallel work
        torch.set_num_interop_threads(1)


def train_and_publish(
    prepared: Prepared, cfg: TrainConfig, ctx: DistContext, dest: Destination
) -> Path | None:
    """Train, then (rank 0) evaluate, checkpoint and write `models/<name>/<version>/`; returns that path."""
    started = time.monotonic()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = RecurrentNet(prepared.spec)
    params = sum(p.numel() for p in model.parameters())
    if ctx.is_main:
        print(
            f"model: {prepared.spec.cell} {prepared.spec.layers}x{prepared.spec.hidden}, {params:,} params; "
            f"{prepared.train.batch} streams x {prepared.train.length:,} steps, bptt {cfg.bptt}, "
            f"{ctx.world_size} process(es) x {cfg.threads} thread(s)",
            flush=True,
        )
    config: dict[str, Any] = {
        "train": cfg.to_dict(),
        "data": prepared.data_config,
        "model": prepared.spec.to_dict(),
        "world_size": ctx.world_size,
    }
    result = fit(
        model,
        prepared.train,
        prepared.valid,
        prepared.loss_fn,
        cfg,
        ctx,
        {"config": config, "task_data": prepared.partial_task_data},
        prepared.describe,
    )
    if not ctx.is_main:
        barrier(ctx)
        return None
    model.eval()
    metrics, task_data = prepared.finish(model)
    metrics["best_valid_loss_during_training"] = result.best_loss
    summary = TrainingSummary(
        data_fingerprint=prepared.fingerprint,
        epochs=result.epochs,
        metrics=metrics,
        wall_time_s=round(time.monotonic() - started + result.earlier_seconds, 1),
        libraries=library_versions(),
        seed=cfg.seed,
        config={**config, "stopped": result.stopped, "history": result.history},
    )
    best_path = cfg.checkpoint_dir / checkpoint.BEST
    final = checkpoint.Checkpoint(
        spec=model.spec,
        model_state=model.state_dict(),
        config=config,
        task_data=task_data_to_dict(task_data),
        summary=summary.model_dump(mode="json"),
        progress={"epoch": result.epochs, "best_loss": result.best_loss, "history": result.history},
    )
    checkpoint.save(best_path, final)
    target = write_artifact(
        model, dest.models_dir, dest.name, dest.version, task_data, summary, dest.overwrite
    )
    print(
        f"wrote {target} (checkpoint {best_path}); stopped by {result.stopped} after {result.epochs} epochs, "
        f"{summary.wall_time_s:.0f}s",
        flush=True,
    )
    barrier(ctx)
    return target


def export_checkpoint(path: Path, dest: Destination) -> Path:
    """Write the artifact of a finished run's checkpoint again (export + verify + manifest)."""
    ckpt = checkpoint.load(path)
    task_data, summary = checkpoint.finished_parts(ckpt, path)
    model = ckpt.build_model().eval()
    return write_artifact(model, dest.models_dir, dest.name, dest.version, task_data, summary, dest.overwrite)
