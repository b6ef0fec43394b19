"""Threads vs DDP processes on the cores there are: tokens/s of N training steps of an lm recipe.

    python -m benchmarks.threads_vs_ddp --threads 2                      # one process, 2 threads
    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        -m benchmarks.threads_vs_ddp --threads 1                         # 2 DDP processes (gloo)

The model, regularisers, optimizer and loop are the training job's own (training.tbptt.train_epoch).
The tokens are random over a 10,000-word vocabulary: the speed of a step does not depend on which words
they are. `--global-batch` streams are split between the ranks, so both setups take the same optimizer
steps over the same number of tokens. The first `--warmup` steps are not timed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from training.config import TrainConfig
from training.data.streams import Streams
from training.distributed import all_reduce_sum, init_distributed, shutdown, wrap
from training.model import ModelSpec, RecurrentNet
from training.recipes import RECIPES
from training.run import set_threads
from training.schedule import make_optimizer
from training.tbptt import train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="small")
    parser.add_argument("--global-batch", type=int, default=None, help="(the recipe's batch size)")
    parser.add_argument("--vocab", type=int, default=10000)
    args = parser.parse_args()
    set_threads(args.threads)
    ctx = init_distributed()
    recipe = RECIPES[args.recipe]
    global_batch = args.global_batch or recipe["batch_size"]
    spec = ModelSpec(
        task="lm", cell="lstm", input_size=recipe["hidden"], hidden=recipe["hidden"], layers=recipe["layers"],
        vocab_size=args.vocab, tied=True,
        **{k: recipe[k] for k in ("dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output",
                                  "weight_drop")},
    )  # fmt: skip
    torch.manual_seed(0)
    model = RecurrentNet(spec)
    batch = global_batch // ctx.world_size
    bptt = recipe["bptt"]
    cfg = replace(
        TrainConfig(), batch_size=batch, bptt=bptt, optimizer=recipe["optimizer"], lr=recipe["lr"],
        weight_decay=recipe["weight_decay"], clip=recipe["clip"], threads=args.threads, progress=False,
        variable_bptt=recipe.get("variable_bptt", False), ar=recipe.get("ar", 0.0),
        tar=recipe.get("tar", 0.0), dry_run=True,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(ctx.rank)

    def streams(steps: int) -> Streams:
        tokens = torch.randint(args.vocab, (batch, steps * bptt + 1), generator=generator)
        return Streams(tokens[:, :-1], tokens[:, 1:], torch.ones(batch, steps * bptt))

    def nll(
        outputs: tuple[torch.Tensor, ...], y: torch.Tensor, m: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        picked = outputs[0].gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return -(picked * m).sum(), m.sum()

    ddp = wrap(model, ctx)
    optimizer = make_optimizer(model, cfg)
    train_epoch(ddp, optimizer, streams(args.warmup), nll, replace(cfg, dry_run_windows=args.warmup), ctx)
    start = time.monotonic()
    stats = train_epoch(
        ddp, optimizer, streams(args.steps), nll, replace(cfg, dry_run_windows=args.steps), ctx
    )
    seconds = float(all_reduce_sum(torch.tensor([time.monotonic() - start]), ctx)) / ctx.world_size
    if ctx.is_main:
        print(
            f"{args.recipe}: {ctx.world_size} process(es) x {args.threads} thread(s), "
            f"global batch {global_batch}: "
            f"{args.steps} steps in {seconds:.1f}s, {stats.events / seconds:,.0f} tokens/s, "
            f"{args.steps / seconds:.2f} steps/s",
            flush=True,
        )
    shutdown(ctx)


if __name__ == "__main__":
    main()
