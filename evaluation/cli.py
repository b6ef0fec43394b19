"""`rnnserve eval nab --data DIR --results DIR [--labels FILE] [--detector NAME]` and
`rnnserve eval synthetic [--model NAME ...] [--json FILE]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
from evaluation.synthetic import SyntheticError, as_json, evaluate, format_report
from service.errors import ModelNotFound
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
    syn = sub.add_parser(
        "synthetic",
        help="event F1 per anomaly type of the served sensor detector on the held-out synthetic streams",
        description="Streams each sensor model's held-out synthetic test streams (the ones its training "
        "reported on) through the serving code and prints event precision, recall and F1 per anomaly "
        "type for the served is_anomaly, the raw score at the manifest's threshold, and the best "
        "probability threshold chosen on those streams.",
    )
    syn.add_argument(
        "--model",
        action="append",
        default=None,
        help="sensor model trained on the synthetic plant, repeatable (default: sensor and sensor-fleet)",
    )
    syn.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="models directory (default: the service's, RNNSERVE_MODELS_DIR)",
    )
    syn.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    syn.add_argument(
        "--no-timestamps",
        action="store_true",
        help="send the readings without timestamps, as a client that has none (no daily profile)",
    )
    syn.add_argument("--no-progress", action="store_true", help="no progress bar")
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


def _settings(models_dir: Path | None) -> Settings:
    """The in-process server's settings: no snapshot file, long requests, the given models directory
    (default: the service's)."""
    where: dict[str, Any] = {} if models_dir is None else {"models_dir": models_dir}
    return Settings(snapshot_path=None, max_events_per_request=1024, **where)


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
    settings = _settings(models_dir)
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


def run_synthetic(args: argparse.Namespace) -> int:
    settings = _settings(args.models_dir)
    models = args.model or ["sensor", "sensor-fleet"]
    started = time.perf_counter()

    def progress(total: int) -> tuple[Callable[[int], object], Callable[[], object]]:
        return _progress(total, not args.no_progress)

    reports = asyncio.run(evaluate(settings, models, progress, timestamps=not args.no_timestamps))
    print(f"served in {time.perf_counter() - started:.1f} s", flush=True)
    for report in reports:
        print(f"\n{format_report(report)}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([as_json(r) for r in reports], indent=2) + "\n", encoding="utf-8")
        print(f"\nfigures in {args.json}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_synthetic(args) if args.benchmark == "synthetic" else run_nab(args)
    except (NabError, TrainingFailed, SyntheticError, ModelNotFound) as exc:
        print(f"rnnserve eval {args.benchmark}: {exc}", file=sys.stderr)
        return 2
