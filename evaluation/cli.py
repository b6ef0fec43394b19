"""`rnnserve eval nab --data DIR --results DIR [--labels FILE] [--detector NAME]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from evaluation.nab_runner import (
    NabError,
    read_corpus,
    read_windows,
    run_detector,
    score_results,
    summary,
    write_results,
)
from evaluation.nab_scorer import format_results
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
    nab.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _progress(total: int, enabled: bool) -> tuple[Callable[[int], object], Callable[[], object]]:
    """(advance(n), close()) of a tqdm bar over readings, or no-ops."""
    if not enabled:
        return (lambda n: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="reading", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
    return bar.update, bar.close


def run_nab(args: argparse.Namespace) -> int:
    files = read_corpus(args.data)
    windows = read_windows(args.labels, files) if args.labels is not None else None
    where = {} if args.models_dir is None else {"models_dir": args.models_dir}
    settings = Settings(snapshot_path=None, max_events_per_request=1024, **where)
    total = sum(len(f.values) for f in files)
    print(
        f"{len(files)} file(s), {total:,} readings; detector {args.detector} = model {args.model}", flush=True
    )
    advance, close = _progress(total, not args.no_progress)
    started = time.perf_counter()
    try:
        scores = asyncio.run(run_detector(files, settings, args.model, advance))
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
    except NabError as exc:
        print(f"rnnserve eval nab: {exc}", file=sys.stderr)
        return 2
