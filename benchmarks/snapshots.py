"""What periodic session snapshots cost: events/s with and without them, and the stall per snapshot.

    python -m benchmarks.snapshots                          # 10k and 100k lm sessions, default interval
    python -m benchmarks.snapshots --sessions 10000 --interval 2 --duration 10 --model sensor

In one process, the session manager (no HTTP: the cheapest path per event, so the snapshot's share
is the largest it can be) holds N sessions of the model; `--workers` closed-loop clients step them in
turn, each step carrying `seq` (so answers are stored and snapshotted, as for exactly-once clients).
Phases alternate, snapshots off / on, `--rounds` times each, so that both sides see the same machine
load; in the "on" phases the store's own periodic path (`save_async`: chunked copy on the event loop,
file written in a thread) runs every `--interval` seconds, as RNNSERVE_SNAPSHOT_INTERVAL_S would.

Per snapshot it reports the longest single step the copy held the event loop (the stall a request can
see), the copy's whole time on the loop, the write in the thread and the file size; per phase the
event-loop lag (how late a 1 ms timer fires, at its worst). Writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import socket
import statistics
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
from service.store import Saved


class Load:
    """Closed-loop workers, each stepping its own slice of the sessions round-robin, with `seq`."""

    def __init__(self, manager: SessionManager, art: Artifact, ids: list[str], workers: int) -> None:
        self.manager, self.art = manager, art
        self.slices = [ids[w::workers] for w in range(workers)]
        self.seqs = dict.fromkeys(ids, 0)
        self.events = 0
        rng = random.Random(0)
        if art.task == "lm":
            words = art.words()
            self.payloads = [{"tokens": [rng.choice(words)], "top_k": 5} for _ in range(64)]
        else:
            self.payloads = [
                {"readings": [[rng.gauss(0, 1) for _ in range(art.features)]]} for _ in range(64)
            ]

    async def worker(self, sessions: list[str], stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            sid = sessions[i % len(sessions)]
            payload = {**self.payloads[i % len(self.payloads)], "seq": self.seqs[sid]}
            response = await self.manager.step(sid, None, payload)
            self.seqs[sid] = response.seq
            self.events += 1
            i += 1


async def _lag_probe(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)


async def _snapshots(
    manager: SessionManager, path: Path, interval: float, stop: asyncio.Event, out: list[Saved]
) -> None:
    while True:
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return
        except TimeoutError:
            out.append(await manager.store.save_async(path))


async def _phase(
    manager: SessionManager, load: Load, duration: float, snapshot: Path | None, interval: float
) -> dict[str, Any]:
    stop = asyncio.Event()
    lags: list[float] = []
    saved: list[Saved] = []
    tasks = [asyncio.create_task(load.worker(s, stop)) for s in load.slices if s]
    tasks.append(asyncio.create_task(_lag_probe(stop, lags)))
    if snapshot is not None:
        tasks.append(asyncio.create_task(_snapshots(manager, snapshot, interval, stop, saved)))
    await asyncio.sleep(1.0)  # warm: workers running, batches formed
    events0, cpu0, t0 = load.events, time.process_time(), time.perf_counter()
    lags.clear()
    await asyncio.sleep(duration)
    events1, cpu1, t1 = load.events, time.process_time(), time.perf_counter()
    stop.set()
    await asyncio.gather(*tasks)
    lags.sort()
    return {
        "snapshots": snapshot is not None,
        "events_per_s": (events1 - events0) / (t1 - t0),
        "cpu_s_per_event": (cpu1 - cpu0) / max(1, events1 - events0),
        "loop_lag_p99_ms": 1e3 * lags[int(0.99 * (len(lags) - 1))] if lags else None,
        "loop_lag_max_ms": 1e3 * lags[-1] if lags else None,
        "snapshot_count": len(saved),
        "stall_ms": [1e3 * s.stall_s for s in saved],
        "stall_cpu_ms": [1e3 * s.stall_cpu_s for s in saved],
        "loop_ms": [1e3 * s.loop_s for s in saved],
        "write_ms": [1e3 * s.write_s for s in saved],
        "cpu_ms": [1e3 * (s.loop_cpu_s + s.write_cpu_s) for s in saved],
        "file_bytes": snapshot.stat().st_size if snapshot is not None and snapshot.exists() else None,
    }


async def measure(
    models_dir: Path, art: Artifact, sessions: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    settings = Settings(
        models_dir=models_dir,
        snapshot_path=None,  # the benchmark drives the snapshots itself, phase by phase
        max_sessions=sessions,
        intra_op_threads=args.threads,
        inter_op_threads=1,
        log_level="warning",
    )
    manager = SessionManager(settings, Metrics())
    await manager.start()
    try:
        t = time.perf_counter()
        ids = [
            (await manager.create(schemas.CreateSession(model=art.name), None)).session_id
            for _ in range(sessions)
        ]
        create_s = time.perf_counter() - t
        load = Load(manager, art, ids, args.workers)
        path = workdir / f"sessions-{sessions}.snapshot"
        phases = []
        for r in range(args.rounds):
            for snapshots_on in (False, True):
                phase = await _phase(
                    manager, load, args.duration, path if snapshots_on else None, args.interval
                )
                phases.append(phase)
                print(f"  {sessions:>7,} sessions, round {r + 1}: {_describe(phase)}", flush=True)
        off = [p["events_per_s"] for p in phases if not p["snapshots"]]
        on = [p["events_per_s"] for p in phases if p["snapshots"]]
        cpu_off = [p["cpu_s_per_event"] for p in phases if not p["snapshots"]]
        cpu_on = [p["cpu_s_per_event"] for p in phases if p["snapshots"]]
        stalls = [s for p in phases for s in p["stall_ms"]]
        return {
            "sessions": sessions,
            "create_s": create_s,
            "events_per_s_off": statistics.median(off),
            "events_per_s_on": statistics.median(on),
            "throughput_cost": 1 - statistics.median(on) / statistics.median(off),
            # CPU per event is steadier than events/s on a machine shared with other work
            "cpu_cost": statistics.median(cpu_on) / statistics.median(cpu_off) - 1,
            "stall_ms_max": max(stalls, default=None),
            "stall_ms_median": statistics.median(stalls) if stalls else None,
            # the longest step's CPU time: the stall on a machine where the process has a core to itself
            "stall_cpu_ms_max": max((s for p in phases for s in p["stall_cpu_ms"]), default=None),
            "loop_lag_max_ms_off": max(p["loop_lag_max_ms"] or 0 for p in phases if not p["snapshots"]),
            "loop_ms_median": statistics.median([s for p in phases for s in p["loop_ms"]] or [0]),
            "write_ms_median": statistics.median([s for p in phases for s in p["write_ms"]] or [0]),
            # the snapshot's own CPU: its steps on the loop plus the writing thread's CPU time
            "cpu_ms_median": statistics.median([s for p in phases for s in p["cpu_ms"]] or [0]),
            "file_bytes": max((p["file_bytes"] or 0) for p in phases),
            "phases": phases,
        }
    finally:
        await manager.stop()


def _describe(phase: dict[str, Any]) -> str:
    text = (
        f"snapshots {'on ' if phase['snapshots'] else 'off'}: {phase['events_per_s']:8.0f} events/s, "
        f"{1e6 * phase['cpu_s_per_event']:.0f} us CPU/event, loop lag max {phase['loop_lag_max_ms']:.1f} ms"
    )
    if phase["snapshots"]:
        text += (
            f", {phase['snapshot_count']} snapshot(s): stall max {max(phase['stall_ms'], default=0):.1f} ms, "
            f"on loop {max(phase['loop_ms'], default=0):.0f} ms, "
            f"write {max(phase['write_ms'], default=0):.0f} ms, "
            f"CPU {max(phase['cpu_ms'], default=0):.0f} ms, "
            f"{(phase['file_bytes'] or 0) / 1e6:.0f} MB"
        )
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.snapshots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where the model is (%(default)s)")
    p.add_argument("--model", default="lm", help="model name: lm or sensor (%(default)s)")
    p.add_argument("--sessions", default="10000,100000", help="session counts (%(default)s)")
    p.add_argument(
        "--interval",
        type=float,
        default=Settings.model_fields["snapshot_interval_s"].default,
        help="seconds between snapshots when on (RNNSERVE_SNAPSHOT_INTERVAL_S's default: %(default)s)",
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per phase (%(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs per session count (%(default)s)")
    p.add_argument("--workers", type=int, default=256, help="concurrent closed-loop clients (%(default)s)")
    p.add_argument("--threads", type=int, default=default_threads(), help="ONNX Runtime intra-op threads")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes (%(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    counts = [int(v) for v in args.sessions.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="rnnserve-snapshots-") as tmp:
        models_dir, art = prepare_model(args.models_dir, args.model, Path(tmp))
        print(
            f"snapshot cost: {art.name}/{art.version}{' (STAND-IN)' if art.standin else ''}, "
            f"{art.state_bytes} state bytes per session, interval {args.interval:g} s, "
            f"{args.duration:g} s per phase, {args.workers} workers",
            flush=True,
        )
        results = [asyncio.run(measure(models_dir, art, n, args, Path(tmp))) for n in counts]
    for r in results:
        print(
            f"{r['sessions']:>7,} sessions: {r['events_per_s_off']:.0f} -> {r['events_per_s_on']:.0f} "
            f"events/s ({100 * r['throughput_cost']:+.1f}% cost; CPU per event {100 * r['cpu_cost']:+.1f}%), "
            f"stall per snapshot median {r['stall_ms_median']:.1f} ms max {r['stall_ms_max']:.1f} ms "
            f"(CPU {r['stall_cpu_ms_max']:.1f} ms; loop lag without snapshots up to "
            f"{r['loop_lag_max_ms_off']:.0f} ms), "
            f"copy on loop {r['loop_ms_median']:.0f} ms, write {r['write_ms_median']:.0f} ms, "
            f"CPU per snapshot {r['cpu_ms_median']:.0f} ms, "
            f"file {r['file_bytes'] / 1e6:.0f} MB"
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out_dir / f"{stamp}-{socket.gethostname()}-snapshots-{args.model}.json"
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out.write_text(json.dumps({"config": config, "cpus": os.cpu_count(), "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
