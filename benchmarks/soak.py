"""Soak: a million create / step / delete cycles through the session manager; memory must stay flat.

    nice -n 10 python -m benchmarks.soak                      # 1,000,000 cycles of the sensor model
    python -m benchmarks.soak --cycles 5000 --warmup 1000     # a smoke run

In one process (no HTTP: the most cycles per second, so the most churn per minute), `--workers`
concurrent clients each loop: create a session, step it once with `seq` (so an answer is stored),
delete it (so a tombstone is kept). Every `--sample-every` cycles it records the process RSS and the
size of every structure that holds per-session entries:

    store index, slab rows live / capacity / free, stored answers, ids held by rows, tombstones,
    turn entries (service/turns.py), owner table, the batcher's queue

Periodic snapshots run at their default interval (RNNSERVE_SNAPSHOT_INTERVAL_S) or every
`--snapshot-interval` seconds, into a temporary directory, so that their code soaks too; each sample
counts them. The verdict: RSS growth from the end of the warm-up to the end under `--max-rss-growth`
(5%); at the end no session, row, answer, id or turn entry left, tombstones within their bound
(max_sessions per served version), slab capacity within what the workers ever held at once. The
warm-up must be long enough for the tombstones to reach their bound (max_sessions deletes), after
which they are trimmed as fast as they are added. Exit status 1 when any check fails.
JSON goes to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import random
import resource
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.config import RESULTS_DIR, default_threads
from benchmarks.models import Artifact, prepare_model
from service import schemas
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings
from service.store import MemoryStore


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def census(manager: SessionManager) -> dict[str, int]:
    """The size of every structure that holds per-session entries."""
    store = manager.store
    assert isinstance(store, MemoryStore)
    (part,) = store.partitions
    return {
        "index": len(store),
        "live_rows": part.live,
        "capacity": part.capacity,
        "free_rows": part._n_free,
        "answers": len(part.answers),
        "ids_held": sum(k is not None for k in part.ids),
        "tombstones": len(store.ids.gone),
        "turns": len(manager._turns),
        "owners": len(store.owners),
        "queued": sum(s.batcher.queued for s in manager.versions),
        "snapshots": int(
            manager.metrics.registry.get_sample_value("rnnserve_snapshot_seconds_count", {"phase": "write"})
            or 0
        ),
    }


def _payloads(art: Artifact) -> list[dict[str, Any]]:
    rng = random.Random(0)
    if art.task == "lm":
        words = art.words()
        return [{"seq": 0, "tokens": [rng.choice(words)], "top_k": 3} for _ in range(64)]
    return [{"seq": 0, "readings": [[rng.gauss(0, 1) for _ in range(art.features)]]} for _ in range(64)]


async def soak(manager: SessionManager, art: Artifact, args: argparse.Namespace) -> dict[str, Any]:
    payloads = _payloads(art)
    body = schemas.CreateSession(model=art.name)
    done = 0
    most_live = 0
    samples: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    next_sample = args.sample_every

    def sample() -> None:
        gc.collect()
        row = {"cycles": done, "s": time.perf_counter() - t0, "rss_bytes": rss_bytes(), **census(manager)}
        samples.append(row)
        print(
            f"  {done:>9,} cycles {row['s']:7.0f} s  rss {row['rss_bytes'] / 2**20:7.1f} MiB  "
            f"live {row['live_rows']:>4}  capacity {row['capacity']:>5}  answers {row['answers']:>4}  "
            f"tombstones {row['tombstones']:>7,}  turns {row['turns']}  snapshots {row['snapshots']}",
            flush=True,
        )

    async def worker(w: int) -> None:
        nonlocal done, most_live, next_sample
        i = w
        while done < args.cycles and (
            args.max_seconds is None or time.perf_counter() - t0 < args.max_seconds
        ):
            sid = (await manager.create(body, None)).session_id
            most_live = max(most_live, len(manager.store))  # type: ignore[arg-type]
            response = await manager.step(sid, None, payloads[i % len(payloads)])
            assert response.seq == 1
            await manager.delete(sid, None)
            done += 1
            i += args.workers
            if done >= next_sample:
                next_sample += args.sample_every
                sample()

    sample()
    await asyncio.gather(*(worker(w) for w in range(args.workers)))
    elapsed = time.perf_counter() - t0
    sample()
    return {"cycles": done, "elapsed_s": elapsed, "most_live": most_live, "samples": samples}


def verdict(result: dict[str, Any], settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    samples = result["samples"]
    after_warmup = next((s for s in samples if s["cycles"] >= args.warmup), samples[-1])
    end = samples[-1]
    growth = (end["rss_bytes"] - after_warmup["rss_bytes"]) / after_warmup["rss_bytes"]
    row_bound = 1
    while row_bound < result["most_live"]:  # the slab doubles from its initial size
        row_bound *= 2
    checks = {
        f"rss growth after warm-up < {args.max_rss_growth:.0%}": growth < args.max_rss_growth,
        "no session left in the index": end["index"] == 0,
        "no slab row left live": end["live_rows"] == 0 and end["free_rows"] == end["capacity"],
        "no stored answer left": end["answers"] == 0,
        "no id left on a row": end["ids_held"] == 0,
        "no turn entry left": end["turns"] == 0,
        "nothing queued": end["queued"] == 0,
        "one owner": end["owners"] == 1,
        "tombstones within max_sessions": max(s["tombstones"] for s in samples) <= settings.max_sessions,
        "slab capacity within what was live at once": end["capacity"] <= max(1024, row_bound),
    }
    return {
        "rss_after_warmup_bytes": after_warmup["rss_bytes"],
        "rss_end_bytes": end["rss_bytes"],
        "rss_growth": growth,
        "rss_max_bytes": max(s["rss_bytes"] for s in samples),
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "checks": checks,
        "passed": all(checks.values()),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where the model is (%(default)s)")
    p.add_argument("--model", default="sensor", help="model name under --models-dir (%(default)s)")
    p.add_argument("--cycles", type=int, default=1_000_000, help="create/step/delete cycles (%(default)s)")
    p.add_argument(
        "--warmup", type=int, default=200_000, help="cycles before the RSS baseline is read (%(default)s)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=None, help="stop after this long even short of --cycles (none)"
    )
    p.add_argument("--sample-every", type=int, default=50_000, help="cycles between samples (%(default)s)")
    p.add_argument("--workers", type=int, default=64, help="concurrent clients (%(default)s)")
    p.add_argument("--max-sessions", type=int, default=100_000, help="RNNSERVE_MAX_SESSIONS (%(default)s)")
    p.add_argument(
        "--snapshot-interval",
        type=float,
        default=None,
        help="RNNSERVE_SNAPSHOT_INTERVAL_S; short to soak many snapshots in a short run (the default's)",
    )
    p.add_argument("--max-rss-growth", type=float, default=0.05, help="allowed growth (%(default)s)")
    p.add_argument("--threads", type=int, default=default_threads(), help="ONNX Runtime intra-op threads")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes (%(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rnnserve-soak-") as tmp:
        models_dir, art = prepare_model(args.models_dir, args.model, Path(tmp))
        settings = Settings(
            models_dir=models_dir,
            # periodic snapshots on, at their default interval: their code soaks too
            snapshot_path=Path(tmp) / "sessions.snapshot",
            **({} if args.snapshot_interval is None else {"snapshot_interval_s": args.snapshot_interval}),
            max_sessions=args.max_sessions,
            intra_op_threads=args.threads,
            inter_op_threads=1,
            log_level="warning",
        )
        print(
            f"soak: {args.cycles:,} create/step/delete cycles of {art.name}/{art.version}"
            f"{' (STAND-IN)' if art.standin else ''}, {args.workers} workers, "
            f"max_sessions {args.max_sessions:,}, warm-up {args.warmup:,} cycles",
            flush=True,
        )

        async def run() -> dict[str, Any]:
            manager = SessionManager(settings, Metrics())
            await manager.start()
            try:
                return await soak(manager, art, args)
            finally:
                await manager.stop()

        result = asyncio.run(run())
    result.update(verdict(result, settings, args))
    rate = result["cycles"] / result["elapsed_s"]
    print(
        f"{result['cycles']:,} cycles in {result['elapsed_s']:.0f} s ({rate:.0f}/s); "
        f"RSS {result['rss_after_warmup_bytes'] / 2**20:.1f} MiB after warm-up -> "
        f"{result['rss_end_bytes'] / 2**20:.1f} MiB at the end ({100 * result['rss_growth']:+.2f}%), "
        f"{result['samples'][-1]['snapshots']} periodic snapshots"
    )
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out_dir / f"{stamp}-{socket.gethostname()}-soak-{args.model}.json"
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out.write_text(json.dumps({"config": config, **result}, indent=1))
    print(f"wrote {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
