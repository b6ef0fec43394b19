"""Training speed: the training job's TBPTT loop vs the plain PyTorch loop a user would write.

Both train the same model (the lm artifact's architecture, same initial weights) on the same token
streams, with the lm task's default batch and bptt, the same optimizer algorithm (Adam, the job's
learning rate), gradient clipping and thread count. The plain loop is pytorch/examples'
word_language_model `train()`: detach, forward, NLL, backward, clip, step, with `torch.optim.Adam` as a
user writes it; the job uses its own optimizer (training.schedule.make_optimizer: the same Adam,
fused). Each loop is warmed up by one window, then the two alternate in slices (A B A B) so that drift
on a shared machine hits both alike; a slice runs whole windows, at least one. Events = (stream, time
step) pairs trained on.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from benchmarks.baseline_app import build_model
from benchmarks.config import SuiteConfig
from benchmarks.models import Artifact

Loop = Any  # (model, optimizer, streams, seconds) -> (events, seconds)


def _plain_loop(
    model: Any, optimizer: torch.optim.Optimizer, streams: Any, bptt: int, clip: float, seconds: float
) -> tuple[int, float]:
    """word_language_model's loop over whole windows until `seconds` have passed."""
    model.train()
    state = model.init_state(streams.batch)  # [L, B, H] each
    events, start = 0, time.perf_counter()
    for x, y, _ in streams.windows(bptt):
        state = tuple(s.detach() for s in state)
        (log_probs,), state = model(x, state)  # [B, T, V]
        loss = nn.functional.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        events += x.numel()
        if time.perf_counter() - start >= seconds:
            break
    return events, time.perf_counter() - start


def run(cfg: SuiteConfig, art: Artifact) -> dict[str, Any]:
    try:
        from training.data.streams import Streams, batchify
        from training.distributed import DistContext
        from training.options import LM_DEFAULTS as DEFAULTS
        from training.schedule import make_optimizer
        from training.tasks.lm import lm_loss
        from training.tbptt import train_epoch
    except ImportError as exc:
        return {"skipped": f"the training job is not importable: {exc}"}
    assert art.manifest.lm is not None, "the training comparison needs the lm artifact"
    train_cfg = replace(DEFAULTS, progress=False)
    batch, bptt = train_cfg.batch_size, train_cfg.bptt
    torch.set_num_threads(train_cfg.threads)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, art.manifest.lm.vocab_size, (batch * bptt * 400 + 1,), generator=gen)
    streams = batchify(ids[:-1], ids[1:], torch.ones(ids.numel() - 1), batch)  # [B, 400 * bptt]
    warm = Streams(streams.inputs[:, :bptt], streams.targets[:, :bptt], streams.mask[:, :bptt])  # one window

    def job(model: Any, optimizer: torch.optim.Optimizer, data: Any, seconds: float) -> tuple[int, float]:
        stats = train_epoch(
            model, optimizer, data, lm_loss, train_cfg, DistContext(), deadline=time.monotonic() + seconds
        )
        return stats.events, stats.seconds

    def plain(model: Any, optimizer: torch.optim.Optimizer, data: Any, seconds: float) -> tuple[int, float]:
        return _plain_loop(model, optimizer, data, bptt, train_cfg.clip, seconds)

    loops: dict[str, Loop] = {"job": job, "plain": plain}
    models = {name: build_model(art.manifest) for name in loops}
    optimizers = {
        "job": make_optimizer(models["job"], train_cfg),
        "plain": torch.optim.Adam(models["plain"].parameters(), lr=train_cfg.lr),
    }
    totals = {name: [0, 0.0] for name in loops}
    for name, loop in loops.items():
        loop(models[name], optimizers[name], warm, 0.0)  # one window: allocations, thread pool
    slice_s = cfg.training_s / (2 * cfg.training_slices)
    for _ in range(cfg.training_slices):
        for name, loop in loops.items():
            events, seconds = loop(models[name], optimizers[name], streams, slice_s)
            totals[name][0] += events
            totals[name][1] += seconds
    rates = {name: events / seconds for name, (events, seconds) in totals.items()}
    return {
        "model": art.describe(),
        "batch": batch,
        "bptt": bptt,
        "threads": train_cfg.threads,
        "optimizer": "Adam (the job's fused, the plain loop's default)",
        "clip": train_cfg.clip,
        "job_events_per_s": rates["job"],
        "plain_events_per_s": rates["plain"],
        "ratio": rates["job"] / rates["plain"],
        "seconds": {name: total[1] for name, total in totals.items()},
    }
