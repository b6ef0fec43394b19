"""`python -m benchmarks [--quick]`: run the suite, print the table, write JSON and plots.

    python -m benchmarks                 # the whole suite (about 6-8 minutes on 2 cores)
    python -m benchmarks --quick         # every comparison, shorter and fewer loads (under 2 minutes)
    python -m benchmarks --models-dir models --lm-model lm --threads 1 --skip memory,training

Results go to benchmarks/results/<date>-<host>.json (`-quick` for --quick) with PNG plots beside it.
Exit status 1 when any section failed (the others still ran and were written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.config import RESULTS_DIR, SECTIONS, SuiteConfig, default_threads
from benchmarks.cost import cells as cost_cells


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give at least one integer >= 1")
    return values


def _sections(text: str) -> frozenset[str]:
    names = frozenset(v.strip() for v in text.split(",") if v.strip())
    unknown = names - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="shorter runs, loads 1,16,256, 5,000 sessions for memory"
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="where to find the models; a missing one is replaced by a stand-in of the shipped "
        "model's shape with random weights (%(default)s)",
    )
    p.add_argument("--lm-model", default="lm", help="lm model name under --models-dir (%(default)s)")
    p.add_argument("--sensor-model", default="sensor", help="sensor model name (%(default)s)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where JSON and plots go (%(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="ONNX Runtime intra-op threads for every server and the limit; torch threads for "
        "the baseline (%(default)s: half the cores)",
    )
    p.add_argument("--providers", default="cpu", help="ONNX Runtime providers, e.g. cuda,cpu (%(default)s)")
    p.add_argument(
        "--loads", type=_ints, help="concurrent sessions per closed-loop round, e.g. 1,16,64,256,1024"
    )
    p.add_argument("--duration", type=float, help="seconds measured per load run (3, quick 1)")
    p.add_argument(
        "--warmup", type=float, help="seconds of warm-up before each measured run (0.5, quick 0.3)"
    )
    p.add_argument(
        "--events-per-session",
        type=int,
        help="M: each session also stops after M events (default: time only)",
    )
    p.add_argument("--memory-sessions", type=int, help="idle sessions for the memory section (100000)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        help="the batcher-on server's max_batch_size (default: the service's own default)",
    )
    p.add_argument(
        "--cost-cells",
        type=cost_cells,
        help="the serving-cost section's task:transport:sessions,... (default: lm and sensor over http "
        "and ws at 256, bulk at 512 (lm) and 1000 (sensor), bulk_ws likewise, and sensor's bulk_ts: bulk "
        "with a timestamp per reading)",
    )
    p.add_argument(
        "--cost-rounds",
        type=int,
        help="times the serving-cost cells run over; each reports its median round (3; --quick: 1)",
    )
    p.add_argument("--training-seconds", type=float, help="seconds of training measured, both loops together")
    p.add_argument(
        "--skip",
        type=_sections,
        default=frozenset(),
        help=f"comma-separated sections to leave out: {', '.join(SECTIONS)}",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    overrides: dict[str, Any] = {
        "models_dir": args.models_dir,
        "lm_model": args.lm_model,
        "sensor_model": args.sensor_model,
        "out_dir": args.out_dir,
        "threads": args.threads,
        "skip": args.skip,
        "providers": tuple(p.strip() for p in args.providers.split(",") if p.strip()),
    }
    optional = {
        "loads": args.loads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "events_per_session": args.events_per_session,
        "memory_sessions": args.memory_sessions,
        "max_batch_size": args.max_batch_size,
        "training_s": args.training_seconds,
        "cost_cells": None if args.cost_cells is None else tuple(args.cost_cells),
        "cost_rounds": args.cost_rounds,
    }
    overrides.update({k: v for k, v in optional.items() if v is not None})
    cfg = SuiteConfig.quick_preset(**overrides) if args.quick else replace(SuiteConfig(), **overrides)
    if cfg.duration_s <= 0 or cfg.warmup_s < 0:
        raise SystemExit("--duration must be > 0 and --warmup >= 0")
    if cfg.cost_rounds < 1:
        raise SystemExit("--cost-rounds must be at least 1")
    # Loads that other sections refer to stay within the loads asked for.
    most = max(cfg.loads)
    return replace(
        cfg,
        ws_loads=tuple(n for n in cfg.ws_loads if n in cfg.loads) or cfg.loads[:1],
        sensor_loads=tuple(sorted({min(n, most) for n in cfg.sensor_loads})),
        open_loop_sessions=min(cfg.open_loop_sessions, most),
    )


def results_stem(cfg: SuiteConfig) -> Path:
    host = socket.gethostname().split(".")[0] or "host"
    return cfg.out_dir / f"{dt.date.today().isoformat()}-{host}{'-quick' if cfg.quick else ''}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_args(parser().parse_args(argv))
    from benchmarks.plots import write_plots
    from benchmarks.report import summarize, table, write_json
    from benchmarks.suite import run_suite

    results = run_suite(cfg, argv)
    results["summary"] = summarize(results)
    stem = results_stem(cfg)
    stem.parent.mkdir(parents=True, exist_ok=True)
    results["plots"] = [p.name for p in write_plots(results, stem)]
    json_path = stem.with_name(stem.name + ".json")
    write_json(results, json_path)
    print(table(results))
    print(f"\nwrote {json_path} and {len(results['plots'])} plots beside it")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0
