"""`rnnserve eval nab --data DIR --results DIR [--labels FILE] [--detector NAME]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from evaluation.nab_runner import (
    NabError,
    NabFile,
    read_corpus,
    read_windows,
    run_detector,
    score_results,
    summary,
    write_results,
)
from evaluation.nab_scorer import format_results
from evaluation.nab_training import TrainingFailed, train_per_file
from service.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnserve eval", description=(__doc__ or "").strip())
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    nab = sub.add_parser("nab", help="the Numenta Anomaly Benchmark, through the serving code")
    nab.add_argument("--data", type=Path, required=True, help="NAB's data/ folder: <category>/<file>.csv")
    nab.add_argument("--results", type=Path, required=True, help="where RESULTS/<detector>/... is written")
    nab.add_argument(
        "--labels", type=Path, default=None, help="combined_windows.json: also score the results"
    )
    nab.add_argument("--detector", default="rnnserve", help="detector name in the results (%(default)s)")
    nab.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="models directory (default: the service's, RNNSERVE_MODELS_DIR)",
    )
    nab.add_argument(
        "--model",
        default="sensor-fleet",
        help="one-feature sensor model that scores every file (%(default)s)",
    )
    nab.add_argument(
        "--train-per-file",
        action="store_true",
        help="score each file with a model trained on its own probationary rows (needs the [train] extra; "
        "models and the rows they saw go to RESULTS/.train-<detector>/) instead of --model",
    )
    nab.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="trainings run side by side with --train-per-file (%(default)s)",
    )
    nab.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _progress(
    total: int, enabled: bool, unit: str = "reading"
) -> tuple[Callable[[int], object], Callable[[], object]]:
    """(advance(n), close()) of a tqdm bar over readings, or no-ops."""
    if not enabled:
        return (lambda n: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True)
    return bar.update, bar.close


def _train_models(args: argparse.Namespace, files: Sequence[NabFile]) -> tuple[Path, list[str]]:
    """--train-per-file: (the models directory, each file's model), trained on probationary rows."""
    work = args.results / f".train-{args.detector}"
    print(
        f"training {len(files)} model(s) on probationary rows, {args.jobs} at a time, in {work}", flush=True
    )
    advance, close = _progress(len(files), not args.no_progress, unit="model")
    started = time.perf_counter()
    try:
        corpus = [(f.relative, f.timestamps, f.values.tolist()) for f in files]
        models = asyncio.run(train_per_file(corpus, work, args.jobs, lambda: advance(1)))
    finally:
        close()
    print(f"trained in {time.perf_counter() - started:.1f} s", flush=True)
    return work / "models", models


def run_nab(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise NabError(f"--jobs {args.jobs}: give 1 or more")
    files = read_corpus(args.data)
    windows = read_windows(args.labels, files) if args.labels is not None else None
    models_dir, models = args.models_dir, [args.model] * len(files)
    if args.train_per_file:
        models_dir, models = _train_models(args, files)
    where = {} if models_dir is None else {"models_dir": models_dir}
    settings = Settings(snapshot_path=None, max_events_per_request=1024, **where)
    total = sum(len(f.values) for f in files)
    which = "a model per file" if args.train_per_file else f"model {args.model}"
    print(f"{len(files)} file(s), {total:,} readings; detector {args.detector} = {which}", flush=True)
    advance, close = _progress(total, not args.no_progress)
    started = time.perf_counter()
    try:
        scores = asyncio.run(run_detector(files, settings, models, advance))
    finally:
        close()
    seconds = time.perf_counter() - started
    write_results(args.results, args.detector, files, scores)
    print(
        f"scored in {seconds:.1f} s ({total / seconds:,.0f} readings/s); "
        f"results in {args.results / args.detector}",
        flush=True,
    )
    if windows is None:
        return 0
    results = score_results(files, scores, windows)
    print(format_results(results, args.detector), flush=True)
    out = args.results / f"{args.detector}_scores.json"
    out.write_text(json.dumps(summary(results, total, seconds), indent=2) + "\n", encoding="utf-8")
    print(f"scores in {out}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_nab(args)
    except (NabError, TrainingFailed) as exc:
        print(f"rnnserve eval nab: {exc}", file=sys.stderr)
        return 2
