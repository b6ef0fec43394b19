"""The whole comparison in one run: same model, same machine, same load, measured side by side.

Order of work (all servers are real subprocesses on free loopback ports, same thread settings):

1. client: the load generator against no-op servers (its own ceiling and CPU cost).
2. limit: ONNX Runtime in-process over batch sizes; the best one is the ceiling.
3. loads: for each load N, back to back: the limit again (best batch, short), the server with the
   batcher on, the server with max_batch_size=1, and the naive baseline; WebSocket at some loads.
   Interleaving by load keeps each ratio's two sides seconds apart on a machine whose speed drifts.
4. low_load: one session on each server and an in-process step, taking turns in short blocks.
5. multi_event: the same events sent 1, 8, 64 per request.  6. open_loop: latency at a fixed offered
   load.  7. sensor: the sensor model.  8. memory: RSS per idle session.  9. training: our training
   job vs a plain PyTorch truncated-BPTT loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import cost, floor, limit, memory, training_bench
from benchmarks.config import SuiteConfig
from benchmarks.interleave import interleaved
from benchmarks.loadgen import LoadSpec, run_async, run_load
from benchmarks.models import Artifact, prepare_models
from benchmarks.payloads import event_bodies, session_body
from benchmarks.rounds import median_rows
from benchmarks.servers import (
    Launch,
    Server,
    free_port,
    histogram_delta,
    raise_nofile_limit,
    service_command,
    service_env,
    start,
)
from benchmarks.setup_requests import create_sessions


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _drive(
    server: Server, ids: list[str], bodies: list[bytes], spec: LoadSpec, label: str, metrics: bool = True
) -> dict[str, Any]:
    """One load run, with the server's CPU time and (for the service) its /metrics histograms.

    Both are read as the measured phase starts and ends (after the warm-up, with nothing in flight).
    """
    marks: dict[str, tuple[float, float, dict[str, Any]]] = {}

    def mark(when: str) -> None:
        marks[when] = (time.perf_counter(), server.cpu_seconds(), server.histograms() if metrics else {})

    result = run_async(run_load(server.port, ids, bodies, spec, label, on_phase=mark))
    (t0, cpu0, before), (t1, cpu1, after) = marks["start"], marks["end"]
    wall, cpu = t1 - t0, cpu1 - cpu0
    out = result.to_dict()
    answered = max(result.requests * spec.events_per_request, 1)
    out["server"] = {"cpu_share": cpu / wall, "cpu_us_per_event": cpu / answered * 1e6}
    if metrics:
        hist = histogram_delta(before, after)
        out["server"].update(hist)
        busy = hist.get("inference_seconds", {}).get("sum")
        # the service's inference_seconds: gather + ONNX Runtime + the wait for the event loop to resume
        out["server"]["inference_share"] = busy / wall if busy is not None else None
    lat = result.latency_ms
    log(
        f"  {label:<28} {result.events_per_s:>9,.0f} events/s   p50 {lat.get('p50', float('nan')):7.2f} ms"
        f"   p99 {lat.get('p99', float('nan')):8.2f} ms   errors {result.errors or 0}"
    )
    return out


class _Run:
    """State of one suite run: config, artifacts, work directory, results so far."""

    def __init__(self, cfg: SuiteConfig, work: Path, arts: dict[str, Artifact], models_dir: Path) -> None:
        self.cfg, self.work, self.arts, self.models_dir = cfg, work, arts, models_dir
        self.results: dict[str, Any] = {}

    def spec(self, sessions: int, **kw: Any) -> LoadSpec:
        cfg = self.cfg
        kw.setdefault("max_events_per_session", cfg.events_per_session)
        return LoadSpec(sessions=sessions, duration_s=cfg.duration_s, warmup_s=cfg.warmup_s, **kw)

    def start(self, *launches: Launch) -> contextlib.AbstractContextManager[list[Server]]:
        return start(*launches, log_dir=self.work / "logs")

    def service(self, name: str, **settings: object) -> Launch:
        cfg = self.cfg
        base: dict[str, object] = {
            "intra_op_threads": cfg.threads,
            "inter_op_threads": 1,
            "providers": ",".join(cfg.providers),
            "snapshot_path": "",
            "log_level": "warning",
            "max_sessions": max(cfg.memory_sessions, max(cfg.loads)) + 2 * memory.WARMUP_SESSIONS,
        }
        port = free_port()
        return Launch(name, service_command(self.models_dir, port), service_env({**base, **settings}), port)

    def baseline(self) -> Launch:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "benchmarks.baseline_app",
            "--artifact",
            str(self.arts["lm"].dir),
            "--port",
            str(port),
            "--threads",
            str(self.cfg.threads),
        ]
        return Launch("baseline", argv, service_env({}), port)

    def noop(self, kind: str) -> Launch:
        port = free_port()
        argv = [sys.executable, "-m", "benchmarks.noop_app", "--kind", kind, "--port", str(port)]
        return Launch(f"noop-{kind}", argv, service_env({}), port)

    def section(self, name: str, body: Callable[[], Any]) -> None:
        """Run one section; a failure is recorded (and the run marked failed) without stopping the rest."""
        if name in self.cfg.skip:
            self.results[name] = {"skipped": "--skip"}
            return
        log(f"[{name}]")
        t0 = time.perf_counter()
        try:
            self.results[name] = body()
        except Exception as exc:
            log(traceback.format_exc())
            self.results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        self.results.setdefault("section_wall_s", {})[name] = round(time.perf_counter() - t0, 2)

    # ---- sections ----------------------------------------------------------------------------------

    def client(self) -> dict[str, Any]:
        n = self.cfg.client_sessions
        ids = [f"noop{i}" for i in range(n)]
        bodies = event_bodies(self.arts["lm"], 1, self.cfg.top_k)
        out: dict[str, Any] = {}
        with self.start(self.noop("raw"), self.noop("fastapi")) as (raw, fast):
            out["raw_noop"] = _drive(raw, ids, bodies, self.spec(n), "raw no-op (this client)", metrics=False)
            out["raw_noop_httpx"] = _drive(
                raw, ids, bodies, self.spec(n, transport="httpx"), "raw no-op (httpx client)", metrics=False
            )
            out["fastapi_noop"] = _drive(fast, ids, bodies, self.spec(n), "FastAPI no-op", metrics=False)
            out["fastapi_noop_ws"] = _drive(
                fast, ids, bodies, self.spec(n, transport="ws"), "FastAPI no-op (WebSocket)", metrics=False
            )
        return out

    def limits(self) -> dict[str, Any]:
        cfg = self.cfg
        out = {"lm": limit.sweep(self.arts["lm"], cfg.threads, cfg.limit_batches, cfg.limit_s, cfg.providers)}
        for p in out["lm"]["points"]:
            log(f"  batch {p['batch']:>5}: {p['events_per_s']:>9,.0f} events/s, {p['run_ms_p50']:.2f} ms/run")
        if "sensor" not in cfg.skip:
            out["sensor"] = limit.sweep(
                self.arts["sensor"], cfg.threads, cfg.limit_batches, cfg.limit_s, cfg.providers
            )
        return out

    def comparisons(self) -> None:
        """Sections 3-7 share three running servers."""
        cfg, lm = self.cfg, self.arts["lm"]
        mbs: dict[str, object] = {} if cfg.max_batch_size is None else {"max_batch_size": cfg.max_batch_size}
        try:
            self._comparisons(cfg, lm, mbs)
        except Exception as exc:  # a server that did not start: every section it serves failed
            log(traceback.format_exc())
            for name in ("loads", "low_load", "multi_event", "open_loop", "sensor"):
                self.results.setdefault(name, {"error": f"{type(exc).__name__}: {exc}"})

    def _comparisons(self, cfg: SuiteConfig, lm: Artifact, mbs: dict[str, object]) -> None:
        launches = (
            self.service("batched", **mbs),
            self.service("unbatched", max_batch_size=1),
            self.baseline(),
        )
        with self.start(*launches) as (batched, single, base):
            most = max(cfg.loads)
            ids = {
                s.name: run_async(create_sessions(s.port, session_body(lm), most, label=f"{s.name} sessions"))
                for s in (batched, single, base)
            }
            bodies = event_bodies(lm, 1, cfg.top_k)
            self.section("loads", lambda: self.loads(batched, single, base, ids, bodies))
            self.section("low_load", lambda: self.low_load(batched, single, ids, bodies))
            self.section("multi_event", lambda: self.multi_event(batched, ids["batched"]))
            self.section("open_loop", lambda: self.open_loop(batched, ids["batched"], bodies))
            self.section("sensor", lambda: self.sensor(batched))

    def loads(
        self, batched: Server, single: Server, base: Server, ids: dict[str, list[str]], bodies: list[bytes]
    ) -> list[dict[str, Any]]:
        cfg, lm = self.cfg, self.arts["lm"]
        best = self.results["limit"]["lm"]["best_batch"] if "lm" in self.results.get("limit", {}) else 256
        session = limit.ort_session(lm, cfg.threads, cfg.providers)
        rounds = []
        for n in cfg.loads:
            log(f" {n} sessions")
            point = limit.measure(session, lm, best, max(cfg.limit_s, 0.5))
            row: dict[str, Any] = {
                "sessions": n,
                "limit_events_per_s": point.events_per_s,
                "limit_batch": best,
            }
            row["batched"] = _drive(batched, ids["batched"], bodies, self.spec(n), f"batched, {n} sessions")
            row["unbatched"] = _drive(
                single, ids["unbatched"], bodies, self.spec(n), f"max_batch_size=1, {n} sessions"
            )
            row["baseline"] = _drive(
                base, ids["baseline"], bodies, self.spec(n), f"baseline, {n} sessions", metrics=False
            )
            if n in cfg.ws_loads:
                row["batched_ws"] = _drive(
                    batched,
                    ids["batched"],
                    bodies,
                    self.spec(n, transport="ws"),
                    f"batched WebSocket, {n} sessions",
                )
            rounds.append(row)
        return rounds

    def low_load(
        self, batched: Server, single: Server, ids: dict[str, list[str]], bodies: list[bytes]
    ) -> dict[str, Any]:
        """One session on each server and an in-process step, taking turns in short blocks.

        A second session on the batcher-on server takes its turn too: the difference between the two
        sessions of one server is the noise floor of the measurement.
        """
        cfg, lm = self.cfg, self.arts["lm"]
        stepper = limit.Stepper(limit.ort_session(lm, cfg.threads, cfg.providers), lm, 1)
        targets = [
            (batched.port, ids["batched"][0]),
            (single.port, ids["unbatched"][0]),
            (batched.port, ids["batched"][1 % len(ids["batched"])]),
        ]
        lat = run_async(interleaved(targets, bodies, cfg.low_load_s, cfg.warmup_s, stepper.step))
        p50 = [statistics.median(values) for values in lat]

        def paired(a: list[float], b: list[float]) -> float:
            return statistics.median(x - y for x, y in zip(a, b, strict=True))

        log(f"  p50 batched {p50[0]:.3f} ms, max_batch_size=1 {p50[1]:.3f} ms, in-process {p50[3]:.3f} ms")
        return {
            "samples": len(lat[0]),
            "batched_p50_ms": p50[0],
            "unbatched_p50_ms": p50[1],
            "in_process_step_p50_ms": p50[3],
            "batcher_added_p50_ms": p50[0] - p50[1],
            "batcher_added_paired_median_ms": paired(lat[0], lat[1]),
            "noise_floor_paired_median_ms": paired(lat[0], lat[2]),
            "overhead_vs_in_process_ms": p50[0] - p50[3],
            "batched_p99_ms": float(np.percentile(lat[0], 99)),
            "unbatched_p99_ms": float(np.percentile(lat[1], 99)),
        }

    def multi_event(self, batched: Server, ids: list[str]) -> list[dict[str, Any]]:
        """k events per request, with the in-process limit for the same [sessions, k] call beside it."""
        cfg, lm, n = self.cfg, self.arts["lm"], min(self.cfg.multi_event_sessions, len(ids))
        session = limit.ort_session(lm, cfg.threads, cfg.providers)
        out = []
        for k in cfg.multi_event_sizes:
            point = limit.measure(session, lm, n, cfg.limit_s, steps=k, min_runs=2)
            bodies = event_bodies(lm, k, cfg.top_k)
            spec = self.spec(n, events_per_request=k)
            run = _drive(batched, ids, bodies, spec, f"{k} events/request, {n} sess")
            out.append(
                {"events_per_request": k, "sessions": n, "limit_events_per_s": point.events_per_s, "run": run}
            )
        return out

    def open_loop(self, batched: Server, ids: list[str], bodies: list[bytes]) -> list[dict[str, Any]]:
        cfg = self.cfg
        n = min(cfg.open_loop_sessions, len(ids))
        closed = _drive(batched, ids, bodies, self.spec(n), f"closed loop, {n} sessions")
        out = [{"sessions": n, "mode": "closed", "run": closed}]
        for fraction in cfg.open_loop_fractions:
            rate = max(closed["events_per_s"] * fraction, 1.0)
            spec = self.spec(n, mode="open", rate_rps=rate)
            run = _drive(batched, ids, bodies, spec, f"open loop {fraction:.0%} ({rate:,.0f}/s)")
            out.append(
                {
                    "sessions": n,
                    "mode": "open",
                    "fraction_of_closed": fraction,
                    "offered_rps": rate,
                    "run": run,
                }
            )
        return out

    def sensor(self, batched: Server) -> list[dict[str, Any]]:
        art = self.arts["sensor"]
        ids = run_async(create_sessions(batched.port, session_body(art), max(self.cfg.sensor_loads)))
        bodies = event_bodies(art, 1)
        return [
            {"sessions": n, "run": _drive(batched, ids, bodies, self.spec(n), f"sensor, {n} sessions")}
            for n in self.cfg.sensor_loads
        ]

    def cost(self) -> list[dict[str, Any]]:
        """Server CPU per event against ONNX Runtime's at the server's mean batch, per task and transport
        (benchmarks/cost.py), on a fresh server, with the transport's floor beside it (benchmarks/floor.py):
        each cell's median of `cost_rounds` rounds (benchmarks/rounds.py)."""
        cfg = self.cfg
        with self.start(self.service("cost"), floor.launch(service_env({}))) as servers:
            rows = cost.run(
                servers,
                self.arts,
                cfg.cost_cells,
                cfg.cost_duration_s,
                cfg.warmup_s,
                cfg.threads,
                cfg.cost_rounds,
            )
        return median_rows(rows)

    def memory(self) -> dict[str, Any]:
        with self.start(self.service("memory")) as (server,):
            return memory.measure(server, self.arts["lm"], self.cfg.memory_sessions)


def _git_revision() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    return None


def _meta(argv: list[str]) -> dict[str, Any]:
    import onnxruntime

    from service.settings import Settings

    fields = Settings.model_fields
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "git_revision": _git_revision(),
        "command": " ".join(["python -m benchmarks", *argv]),
        "service_defaults": {k: fields[k].default for k in ("max_batch_size", "max_queue_delay_us")},
    }


def run_suite(cfg: SuiteConfig, argv: list[str]) -> dict[str, Any]:
    """Every section; returns the results (report.py derives the ratios and targets from them)."""
    raise_nofile_limit()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rnnserve-bench-") as tmp:
        work = Path(tmp)
        models_dir, arts = prepare_models(
            cfg.models_dir, {"lm": cfg.lm_model, "sensor": cfg.sensor_model}, work
        )
        for art in arts.values():
            kind = "STAND-IN with random weights" if art.standin else f"from {art.source}"
            log(f"model {art.name}/{art.version} ({art.task}): {kind}")
        run = _Run(cfg, work, arts, models_dir)
        run.results.update(
            meta=_meta(argv),
            config=cfg.to_dict(),
            models={task: art.describe() for task, art in arts.items()},
        )
        run.section("client", run.client)
        run.section("limit", run.limits)
        run.comparisons()
        run.section("cost", run.cost)
        run.section("memory", run.memory)
        run.section("training", lambda: training_bench.run(cfg, arts["lm"]))
        run.results["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
        return run.results
