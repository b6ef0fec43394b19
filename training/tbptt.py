"""The truncated-BPTT training loop, shared by every task.

Per epoch: the training streams (see data/streams.py) are walked window by window; the recurrent state
is carried from one window into the next and detached, so gradients flow back at most `bptt` steps while
the state itself sees the whole stream. The loss of a window is the sum of the per-target losses over all
of its time steps divided by the number of (unpadded) targets. Gradients are clipped by global norm.
After every epoch: validation, learning-rate decay when validation stalls, early stopping, `best.pt` when
it improves and `last.pt` always (to resume). A wall-clock budget stops the run cleanly mid-epoch.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from training import checkpoint
from training.awd import activation_penalty, lr_scale, variable_windows
from training.config import TrainConfig
from training.data.streams import Streams
from training.distributed import DistContext, all_reduce_sum, any_rank, barrier, gather_digests, unwrap, wrap
from training.model import RecurrentNet, State
from training.schedule import WeightAverage, averaging_due, make_optimizer

# (outputs of the model, targets, mask) -> (sum of the per-target losses, number of targets counted)
LossFn = Callable[[tuple[Tensor, ...], Tensor, Tensor], tuple[Tensor, Tensor]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class PhaseStats:
    loss: float  # mean per-target loss (nats)
    targets: int  # loss terms counted (tokens, or present sensor values)
    events: int  # unpadded time steps
    seconds: float
    stopped_by_budget: bool = False


@dataclass
class FitResult:
    best_loss: float
    epochs: int
    history: list[dict[str, Any]]
    stopped: str  # "epochs" | "early_stop" | "budget" | "dry_run"
    wall_time_s: float  # this process's time in fit
    weight_digests: list[str] = field(default_factory=list)  # one per rank; all equal under DDP
    earlier_seconds: float = 0.0  # time spent in fit by the runs this one resumed


def _events(mask: Tensor) -> Tensor:
    return mask.reshape(mask.shape[0], mask.shape[1], -1).amax(dim=-1).sum()  # [B, T, ...] -> scalar


def _detach(state: State) -> State:
    return tuple(s.detach() for s in state)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    streams: Streams,
    loss_fn: LossFn,
    cfg: TrainConfig,
    ctx: DistContext,
    deadline: float | None = None,
    describe: Callable[[float], str] = lambda loss: f"{loss:.3f}",
    after_step: Callable[[], None] | None = None,
    epoch: int = 1,
) -> PhaseStats:
    """One pass over `streams` ([B, L, ...]); `model` may be wrapped in DistributedDataParallel.

    `after_step` runs after every optimizer step (the weight average of NT-ASGD). With variable BPTT the
    window lengths come from (seed, epoch): every rank draws the same ones, so DDP's steps stay in step.
    """
    net = unwrap(model)
    assert isinstance(net, RecurrentNet)
    model.train()
    net.keep_activations = cfg.ar > 0 or cfg.tar > 0
    windows = streams.window_count(cfg.bptt)  # exact for fixed windows, the expected count for drawn ones
    limit = cfg.dry_run_windows if cfg.dry_run else None
    if limit is not None:
        windows = min(windows, limit)
    source = (
        variable_windows(streams, cfg.bptt, random.Random(cfg.seed * 1_000_003 + epoch))
        if cfg.variable_bptt
        else streams.windows(cfg.bptt)
    )
    bar = tqdm(
        total=windows,
        disable=not (cfg.progress and ctx.is_main),
        unit="win",
        leave=False,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        dynamic_ncols=True,
    )
    state = net.init_state(streams.batch)  # [L, B, H] each
    loss_sum, count, events = 0.0, 0, 0
    start = time.monotonic()
    stopped = False
    for i, (x, y, m) in enumerate(source):
        if limit is not None and i >= limit:
            break
        state = _detach(state)  # carry the values, cut the graph: gradients stay inside this window
        outputs, state = model(x, state)  # outputs [B, T, V] | ([B, T, F], [B, T, F])
        window_sum, window_count = loss_fn(outputs, y, m)
        loss = window_sum / window_count.clamp(min=1)  # mean over the window's unpadded targets
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {float(loss)} in window {i}; lower --lr or --clip"
            )
        if net.activations is not None:
            loss = loss + activation_penalty(*net.activations, cfg.ar, cfg.tar)
            net.activations = None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if cfg.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        scale = lr_scale(x.shape[1], cfg.bptt) if cfg.variable_bptt else 1.0
        base_lrs = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * scale
        optimizer.step()
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr  # the schedule's rate stays what it was
        if after_step is not None:
            after_step()
        loss_sum += float(window_sum.detach())
        count += int(window_count)
        events += int(_events(m))
        bar.update(1)
        if bar.n % 10 == 0 or bar.n >= windows:
            rate = events * ctx.world_size / max(time.monotonic() - start, 1e-9)
            bar.set_postfix_str(f"loss {describe(loss_sum / max(count, 1))} {rate:,.0f} ev/s", refresh=False)
        if deadline is not None and any_rank(time.monotonic() > deadline, ctx):
            stopped = True
            break
    bar.close()
    net.keep_activations = False
    sums = all_reduce_sum(torch.tensor([loss_sum, float(count), float(events)], dtype=torch.float64), ctx)
    return PhaseStats(
        float(sums[0]) / max(float(sums[1]), 1.0),
        int(sums[1]),
        int(sums[2]),
        time.monotonic() - start,
        stopped,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, streams: Streams, bptt: int, loss_fn: LossFn, ctx: DistContext, limit: int | None = None
) -> PhaseStats:
    """Mean loss over every unpadded target of `streams` (summed over ranks' streams when distributed)."""
    net = unwrap(model)
    assert isinstance(net, RecurrentNet)
    net.eval()
    state = net.init_state(streams.batch)
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = events = 0
    start = time.monotonic()
    for i, (x, y, m) in enumerate(streams.windows(bptt)):
        if limit is not None and i >= limit:
            break
        outputs, state = net(x, state)
        window_sum, window_count = loss_fn(outputs, y, m)
        loss_sum += window_sum.double()
        count += int(window_count)
        events += int(_events(m))
    sums = all_reduce_sum(
        torch.stack(
            [
                loss_sum,
                torch.tensor(float(count), dtype=torch.float64),
                torch.tensor(float(events), dtype=torch.float64),
            ]
        ),
        ctx,
    )
    return PhaseStats(
        float(sums[0]) / max(float(sums[1]), 1.0), int(sums[1]), int(sums[2]), time.monotonic() - start
    )


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _log(ctx: DistContext, message: str) -> None:
    if ctx.is_main:
        print(message, flush=True)


def fit(
    model: RecurrentNet,
    train: Streams,
    valid: Streams,
    loss_fn: LossFn,
    cfg: TrainConfig,
    ctx: DistContext,
    saved: dict[str, Any],
    describe: Callable[[float], str] = lambda loss: f"{loss:.3f}",
) -> FitResult:
    """Train `model` in place and leave it holding the best weights seen.

    `train` and `valid` hold `batch * world_size` streams; each rank takes its own share. `saved` goes into
    every checkpoint as is (config and task data).
    """
    started = time.monotonic()
    deadline = started + cfg.budget_minutes * 60 if cfg.budget_minutes else None
    per_rank_train = train.batch // ctx.world_size
    per_rank_valid = valid.batch // ctx.world_size
    train = train.select(ctx.rank * per_rank_train, per_rank_train)
    valid = valid.select(ctx.rank * per_rank_valid, per_rank_valid)
    optimizer = make_optimizer(model, cfg)
    average = WeightAverage(model)
    progress: dict[str, Any] = {
        "epoch": 0,
        "best_loss": math.inf,
        "lr": cfg.lr,
        "bad_epochs": 0,
        "history": [],
    }
    last_path, best_path = cfg.checkpoint_dir / checkpoint.LAST, cfg.checkpoint_dir / checkpoint.BEST
    if cfg.resume:
        ckpt = checkpoint.load(last_path)
        model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        progress = ckpt.progress
        torch.set_rng_state(progress.pop("rng"))
        average.load_state_dict(progress.pop("average", None))
        _log(
            ctx,
            f"resumed from {last_path} after epoch {progress['epoch']} "
            f"(best validation loss {progress['best_loss']:.4f})",
        )
    else:
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout masks differ by rank; weights come from rank 0
    earlier_seconds = float(progress.get("seconds", 0.0))
    ddp = wrap(model, ctx)
    eval_limit = cfg.dry_run_windows if cfg.dry_run else None
    stopped = "epochs"

    def snapshot(with_optimizer: bool) -> checkpoint.Checkpoint:
        # last.pt resumes training (the model being trained, and the average beside it); best.pt keeps
        # what was validated (the average once averaging has started).
        extra = {"rng": torch.get_rng_state(), "average": average.state_dict()} if with_optimizer else {}
        kept = model if with_optimizer else average.current()
        return checkpoint.Checkpoint(
            spec=model.spec,
            model_state={k: v.clone() for k, v in kept.state_dict().items()},
            optimizer_state=optimizer.state_dict() if with_optimizer else None,
            progress={**progress, **extra},
            config=saved.get("config", {}),
            task_data=saved.get("task_data", {}),
        )

    while progress["epoch"] < cfg.epochs:
        epoch = progress["epoch"] + 1
        tr = train_epoch(ddp, optimizer, train, loss_fn, cfg, ctx, deadline, describe, average.update, epoch)
        va = evaluate(average.current(), valid, cfg.bptt, loss_fn, ctx, eval_limit)
        averaging = average.active
        earlier = [h["valid_loss"] for h in progress["history"]]
        improved = va.loss < progress["best_loss"] - cfg.min_delta
        if improved:
            progress["best_loss"], progress["bad_epochs"] = va.loss, 0
            if ctx.is_main:
                checkpoint.save(best_path, snapshot(with_optimizer=False))
        else:
            progress["bad_epochs"] += 1
            progress["lr"] *= cfg.lr_decay
            _set_lr(optimizer, progress["lr"])
        progress["epoch"] = epoch
        progress["seconds"] = earlier_seconds + time.monotonic() - started
        progress["history"].append(
            {
                "epoch": epoch,
                "train_loss": tr.loss,
                "valid_loss": va.loss,
                "lr": optimizer.param_groups[0]["lr"],
                "train_events_per_s": tr.events / max(tr.seconds, 1e-9),
                "seconds": tr.seconds + va.seconds,
                "partial": tr.stopped_by_budget,
                "averaged": averaging,
            }
        )
        if not averaging and averaging_due(earlier, va.loss, cfg.nonmono):
            average.start()  # from the next step on; the first update copies the weights
            _log(ctx, f"validation stalled: averaging the weights from epoch {epoch + 1} on (NT-ASGD)")
        if ctx.is_main:
            checkpoint.save(last_path, snapshot(with_optimizer=True))
        _log(
            ctx,
            f"epoch {epoch}: train {describe(tr.loss)}, valid {describe(va.loss)}"
            f"{' (best)' if improved else ''}, lr {progress['lr']:.3g}, "
            f"{tr.events / max(tr.seconds, 1e-9):,.0f} events/s per rank, {tr.seconds:.0f}s",
        )
        if cfg.dry_run:
            stopped = "dry_run"
            break
        if tr.stopped_by_budget:
            stopped = "budget"
            _log(ctx, f"wall-clock budget of {cfg.budget_minutes} min reached; keeping the best model")
            break
        if progress["bad_epochs"] >= cfg.patience:
            stopped = "early_stop"
            _log(ctx, f"early stop: no improvement for {cfg.patience} epoch(s)")
            break
    digests = gather_digests(model, ctx)
    if ctx.enabled:
        _log(ctx, f"ddp: {ctx.world_size} ranks, weights sha256 {digests}")
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {digests}")
    barrier(ctx)  # rank 0 has written best.pt
    if best_path.is_file():
        model.load_state_dict(checkpoint.load(best_path).model_state)
    return FitResult(
        progress["best_loss"],
        progress["epoch"],
        progress["history"],
        stopped,
        time.monotonic() - started,
        digests,
        earlier_seconds,
    )
