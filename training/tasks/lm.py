"""The `lm` task: word-level next-word prediction trained on a text corpus."""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from service.manifest import Tokenizer
from training.checkpoint import task_data_to_dict
from training.config import TrainConfig
from training.data.errors import DataError
from training.data.streams import Streams, batchify
from training.data.text import TOKENIZERS, Vocab, compile_pattern, load_splits, tokenize
from training.distributed import DistContext
from training.export import TaskData
from training.model import RecurrentNet
from training.tasks import Prepared, model_spec
from training.tbptt import evaluate

EVAL_STREAMS = 10
# The shared data directory beside the repository (resolved when the command runs, not at import).
DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wikitext-2"


def lm_loss(outputs: tuple[Tensor, ...], targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-word NLL over unpadded positions: log_probs [B, T, V], targets/mask [B, T]."""
    nll = -outputs[0].gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return torch.where(mask > 0, nll, torch.zeros_like(nll)).sum(), mask.sum()


def describe(loss: float) -> str:
    return f"{loss:.3f} (ppl {math.exp(min(loss, 50.0)):.1f})"


def token_streams(ids: Tensor, streams: int) -> Streams:
    """Token ids [N] -> pairs (token t -> token t+1) laid out as `streams` streams."""
    if ids.numel() < 2:
        raise DataError("a split needs at least two tokens")
    return batchify(ids[:-1], ids[1:], torch.ones(ids.numel() - 1), streams)


def prepare(args: argparse.Namespace, cfg: TrainConfig, ctx: DistContext) -> Prepared:
    """Read and tokenize the corpus, build the vocabulary, lay out the streams; `args` from the CLI."""
    files = None
    given = [args.train, args.valid, args.test]
    if any(given):
        if not all(given):
            raise DataError("--train, --valid and --test go together")
        files = (args.train, args.valid, args.test)
    data_dir = args.data or (None if files or args.corpus else DEFAULT_DATA.resolve())
    splits = load_splits(data_dir, files, args.corpus, args.valid_fraction, args.test_fraction)
    pattern_text = TOKENIZERS.get(args.tokenizer, args.tokenizer)
    pattern = compile_pattern(pattern_text)
    if args.max_vocab < 0 or args.min_count < 1:
        raise DataError("--max-vocab must be >= 0 and --min-count >= 1")
    train_tokens = tokenize(splits.train, pattern, args.lowercase)
    vocab = Vocab.build(Counter(train_tokens), args.max_vocab or None, args.min_count)
    train_ids = vocab.encode(train_tokens)  # [N]
    valid_ids = vocab.encode(tokenize(splits.valid, pattern, args.lowercase))
    test_ids = vocab.encode(tokenize(splits.test, pattern, args.lowercase))
    unk_rate = float((train_ids == 0).float().mean())
    if ctx.is_main:
        print(
            f"lm data: {train_ids.numel():,} / {valid_ids.numel():,} / {test_ids.numel():,} tokens "
            f"(train/valid/test), vocabulary {len(vocab):,}, <unk> {unk_rate:.1%} of training tokens",
            flush=True,
        )
    embedding = args.embedding or (args.dense if args.tied and args.dense else args.hidden)
    spec = model_spec(args, "lm", embedding, vocab_size=len(vocab))
    tokenizer = Tokenizer(pattern=pattern_text, lowercase=args.lowercase)
    task_data = TaskData(vocab=list(vocab.tokens), tokenizer=tokenizer)
    world = ctx.world_size

    def finish(model: RecurrentNet) -> tuple[dict[str, float], TaskData]:
        metrics: dict[str, float] = {}
        limit = cfg.dry_run_windows if cfg.dry_run else None
        for split, ids in (("valid", valid_ids), ("test", test_ids)):
            stats = evaluate(model, token_streams(ids, EVAL_STREAMS), cfg.bptt, lm_loss, DistContext(), limit)
            metrics[f"{split}_loss"] = stats.loss
            metrics[f"{split}_ppl"] = math.exp(stats.loss)
            print(
                f"{split}: loss {stats.loss:.4f}, perplexity {math.exp(stats.loss):.2f} "
                f"over {stats.targets:,} tokens",
                flush=True,
            )
        metrics["train_unk_rate"] = unk_rate
        return metrics, task_data

    return Prepared(
        spec=spec,
        train=token_streams(train_ids, cfg.batch_size * world),
        valid=token_streams(valid_ids, EVAL_STREAMS * world),
        loss_fn=lm_loss,
        describe=describe,
        fingerprint=splits.fingerprint,
        finish=finish,
        data_config={
            "data": str(data_dir) if data_dir else None,
            "corpus": str(args.corpus or ""),
            "max_vocab": args.max_vocab,
            "min_count": args.min_count,
            "tokenizer": args.tokenizer,
            "train_tokens": int(train_ids.numel()),
        },
        partial_task_data=task_data_to_dict(task_data),
    )
