"""What serving costs beside inference: the server's own CPU time per event against ONNX Runtime's.

    server CPU per event   user + system time of the server process (/proc/<pid>/stat, all its threads)
                           over the measured phase / events answered: the load generator never counts
    ORT CPU per event      this process's CPU time stepping the same graph in-process at the server's
                           mean batch size (its /metrics), same thread settings, state fed back;
                           measured for 1 s right after the cell's first server, once per cell
    inference share        ORT CPU per event / server CPU per event (1.0: the server is pure inference)

per task (lm, sensor) and transport: `http` (POST /v1/sessions/{id}/events, one event per request),
`ws` (one WebSocket per session), `bulk` (POST /v1/steps, every session's next event in one request),
`bulk_ws` (the same bodies over WS /v1/stream) and, for sensor only, `bulk_ts` (`bulk` with a timestamp
per reading, as a replay of real streams sends them: no target, the cost beside `bulk`'s).

`python -m benchmarks.cost --against <dir>` runs a second server from another source tree (e.g. the
code before a change, `git archive <rev> | tar -x -C <dir>`) side by side: the two servers take turns
cell by cell, so both columns see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import connect

from benchmarks import floor, limit
from benchmarks.config import RESULTS_DIR, SuiteConfig
from benchmarks.http1 import Http1Connection
from benchmarks.loadgen import LoadSpec, run_async, run_load
from benchmarks.models import Artifact, prepare_models
from benchmarks.payloads import event_bodies, session_body
from benchmarks.rounds import median_rows, spread
from benchmarks.servers import (
    HOST,
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

TRANSPORTS = ("http", "ws", "bulk", "bulk_ws", "bulk_ts")


class OrtCost:
    """ONNX Runtime's CPU time per event in this process, by (task, batch size), measured once per cell:
    `new_cell()` forgets the figures, so that each cell's share is taken against a reference measured
    right after it ran (a shared VM's speed drifts by 10-20% over minutes), and the servers of one cell,
    side by side, against the same one."""

    def __init__(self, arts: dict[str, Artifact], threads: int, seconds: float = 1.0) -> None:
        self.arts, self.threads, self.seconds = arts, threads, seconds
        self._sessions: dict[str, Any] = {}
        self._cache: dict[tuple[str, int], float] = {}

    def new_cell(self) -> None:
        self._cache.clear()

    def us_per_event(self, task: str, batch: int) -> float:
        key = (task, max(1, batch))
        if key not in self._cache:
            art = self.arts[task]
            if task not in self._sessions:
                self._sessions[task] = limit.ort_session(art, self.threads)
            stepper = limit.Stepper(self._sessions[task], art, key[1])
            stepper.step()  # warm-up
            runs, cpu0, t0 = 0, time.process_time(), time.perf_counter()
            while runs < 5 or time.perf_counter() - t0 < self.seconds:
                stepper.step()
                runs += 1
            self._cache[key] = (time.process_time() - cpu0) / (runs * key[1]) * 1e6
        return self._cache[key]


def bulk_bodies(ids: Sequence[str], bodies: Sequence[bytes], count: int = 4) -> list[bytes]:
    """`count` bulk bodies, each one step (one event) for every session of `ids`."""
    steps = [json.loads(b) for b in bodies]
    return [
        json.dumps(
            {
                "steps": [
                    {"session_id": sid, **steps[(r * len(ids) + i) % len(steps)]} for i, sid in enumerate(ids)
                ]
            }
        ).encode()
        for r in range(count)
    ]


async def bulk_loop(
    port: int,
    bodies: Sequence[bytes],
    ws: bool,
    warmup_s: float,
    duration_s: float,
    on_phase: Callable[[str], None],
) -> tuple[int, int]:
    """One client sending bulk bodies back to back; returns (requests answered 200, requests)."""
    if ws:
        conn = await connect(
            f"ws://{HOST}:{port}/v1/stream", compression=None, max_size=2**26, ping_interval=None
        )

        async def send(body: bytes) -> int:
            await conn.send(body.decode())
            reply = await conn.recv()
            return 200 if reply[:11] in ('{"results":', b'{"results":') else 400

        async def close() -> None:
            await conn.close()

    else:
        http = Http1Connection(HOST, port)

        async def send(body: bytes) -> int:
            return (await http.request("POST", "/v1/steps", body))[0]

        async def close() -> None:
            await http.close()

    try:
        i, deadline = 0, time.perf_counter() + warmup_s
        while time.perf_counter() < deadline:
            await send(bodies[i % len(bodies)])
            i += 1
        on_phase("start")
        ok = n = 0
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            ok += await send(bodies[i % len(bodies)]) == 200
            n, i = n + 1, i + 1
        on_phase("end")
        return ok, n
    finally:
        await close()


class Measured(Protocol):
    """What a cell reads of the system under test: one server, or replicas behind one session store
    (benchmarks/replicas.py; `port` is then their ports, and the load spreads over them)."""

    name: str

    @property
    def port(self) -> int | Sequence[int]: ...

    def cpu_seconds(self) -> float: ...

    def histograms(self) -> dict[str, dict[str, Any]]: ...


def measure_cell(
    server: Measured,
    task: str,
    transport: str,
    ids: list[str],
    bodies: list[bytes],
    duration_s: float,
    warmup_s: float,
    ort: OrtCost,
) -> dict[str, Any]:
    """One (task, transport) cell on one server: server CPU per event, mean batch, ORT share."""
    marks: dict[str, tuple[float, float, dict[str, Any]]] = {}

    def mark(when: str) -> None:
        marks[when] = (time.perf_counter(), server.cpu_seconds(), server.histograms())

    if transport.startswith("bulk"):
        assert isinstance(server.port, int), "bulk cells run on one server"
        ok, requests = run_async(
            bulk_loop(
                server.port, bulk_bodies(ids, bodies), transport == "bulk_ws", warmup_s, duration_s, mark
            )
        )
        events, errors = ok * len(ids), requests - ok
    else:
        spec = LoadSpec(sessions=len(ids), duration_s=duration_s, warmup_s=warmup_s, transport=transport)  # type: ignore[arg-type]
        run = run_load(server.port, ids, bodies, spec, f"{server.name} {task} {transport}", on_phase=mark)
        result = run_async(run)
        events, errors = result.events, sum(result.errors.values())
    (t0, cpu0, before), (t1, cpu1, after) = marks["start"], marks["end"]
    hist = histogram_delta(before, after)
    batches = hist.get("batch_size", {})
    mean_batch = batches.get("mean") or 1.0
    server_us = (cpu1 - cpu0) / max(events, 1) * 1e6
    # a server that ran no batches (the transport's floor, benchmarks.floor) has no inference share
    ort_us = ort.us_per_event(task, round(mean_batch)) if batches.get("count") else None
    # the server's own ONNX Runtime calls (wall time, 1 thread): what the server spends beside them
    # moves far less with the machine's load than the share, whose two sides are measured apart
    inside_us = hist.get("inference_seconds", {}).get("sum", 0.0) / max(events, 1) * 1e6
    return {
        "server": server.name,
        "task": task,
        "transport": transport,
        "sessions": len(ids),
        "events": events,
        "errors": errors,
        "events_per_s": events / (t1 - t0),
        "server_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "server_cpu_us_per_event": server_us,
        "mean_batch": mean_batch,
        "ort_cpu_us_per_event": ort_us,
        "inference_share": ort_us / server_us if events and ort_us is not None else None,
        "server_ort_wall_us_per_event": inside_us,
        "beside_ort_us_per_event": server_us - inside_us,
    }


def run(
    servers: list[Server],
    arts: dict[str, Artifact],
    cells: Sequence[tuple[str, str, int]],
    duration_s: float,
    warmup_s: float,
    threads: int,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """Every (task, transport, sessions) cell on every server, the servers taking turns cell by cell,
    `rounds` times over (each row says its `round`; benchmarks.rounds picks each cell's median); a
    transport floor among them (benchmarks.floor) adds its figures to the others' rows of its cells."""
    ort = OrtCost(arts, threads)
    ids: dict[tuple[str, str, int], list[str]] = {}
    rows = []
    for round_ in range(rounds):
        if rounds > 1:
            print(f"  round {round_ + 1} of {rounds}", file=sys.stderr, flush=True)
        for task, transport, n in cells:
            bodies = event_bodies(arts[task], 1, timestamps=transport == "bulk_ts")
            ort.new_cell()
            cell = []
            for server in servers:
                if floor.skips(server.name, transport):
                    continue
                key = (server.name, task, n)
                if key not in ids:
                    ids[key] = run_async(create_sessions(server.port, session_body(arts[task]), n))
                try:
                    row = measure_cell(server, task, transport, ids[key], bodies, duration_s, warmup_s, ort)
                except Exception as exc:  # e.g. a server from before the bulk routes: that cell only
                    print(f"  {server.name} {task} {transport}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                cell.append({**row, "round": round_})
                print(table_line(row), file=sys.stderr, flush=True)
            served, lines = floor.annotate(cell)
            for line in lines:
                print(line, file=sys.stderr, flush=True)
            rows.extend(served)
    return rows


def server_settings(threads: int) -> dict[str, object]:
    """The measured servers' settings: `threads` ONNX Runtime threads, no snapshots, quiet logs."""
    return {
        "intra_op_threads": threads,
        "inter_op_threads": 1,
        "snapshot_path": "",
        "log_level": "warning",
        "max_sessions": 10_000,
    }


def table_line(r: dict[str, Any]) -> str:
    share = r["inference_share"]
    beside = r.get("beside_ort_us_per_event")  # not in results written before it was measured
    ort = r["ort_cpu_us_per_event"]
    return (
        f"  {r['server']:<8} {r['task']:<6} {r['transport']:<8} {r['sessions']:>5} sess"
        f"  {r['events_per_s']:>9,.0f} ev/s  server {r['server_cpu_us_per_event']:8.1f} us/ev"
        f"  batch {r['mean_batch']:6.1f}  ORT {ort if ort is not None else float('nan'):7.1f} us/ev"
        f"  share {share if share is not None else float('nan'):5.3f}"
        + (f"  ceiling {r['share_ceiling']:5.3f}" if "share_ceiling" in r else "")
        + (f"  beside ORT {beside:6.1f} us/ev" if beside is not None else "")
        + f"  errors {r['errors']}"
    )


DEFAULT_CELLS = SuiteConfig.cost_cells


def cells(text: str) -> list[tuple[str, str, int]]:
    cells = []
    for item in text.split(","):
        task, transport, n = item.strip().split(":")
        if task not in ("lm", "sensor") or transport not in TRANSPORTS:
            raise argparse.ArgumentTypeError(f"bad cell {item!r}: task:transport:sessions")
        if transport == "bulk_ts" and task != "sensor":
            raise argparse.ArgumentTypeError(f"bad cell {item!r}: bulk_ts (timestamps) is sensor's")
        cells.append((task, transport, int(n)))
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--against", type=Path, help="another source tree to run side by side, as `before`")
    p.add_argument(
        "--cells",
        type=cells,
        default=list(DEFAULT_CELLS),
        help="task:transport:sessions,... (transports: " + ", ".join(TRANSPORTS) + ")",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also a bare ASGI app on uvicorn in the http and ws cells: the transport's own CPU per "
        "message, and the share the server would have if its own work cost nothing (benchmarks.floor)",
    )
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the cells this many times over; the JSON's `medians` are each cell's median round "
        "(benchmarks.rounds)",
    )
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (%(default)s)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: results/<date>-cost.json)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    raise_nofile_limit()
    with tempfile.TemporaryDirectory(prefix="rnnserve-cost-") as tmp:
        models_dir, arts = prepare_models(args.models_dir, {"lm": "lm", "sensor": "sensor"}, Path(tmp))
        settings = server_settings(args.threads)
        launches = []
        if args.against is not None:
            port = free_port()
            env = {**service_env(settings), "PYTHONPATH": str(args.against.resolve())}
            argv_before = [sys.executable, "-P", *service_command(models_dir, port)[1:]]
            launches.append(Launch("before", argv_before, env, port))
        port = free_port()
        launches.append(
            Launch(
                "after" if args.against else "server",
                service_command(models_dir, port),
                service_env(settings),
                port,
            )
        )
        if args.floor:
            launches.append(floor.launch(service_env(settings)))
        with start(*launches, log_dir=Path(tmp) / "logs") as servers:
            rows = run(servers, arts, args.cells, args.duration, args.warmup, args.threads, args.rounds)
    written: dict[str, Any] = {"command": " ".join(["python -m benchmarks.cost", *(argv or sys.argv[1:])])}
    written["rows"] = rows
    if args.rounds > 1:
        written["medians"] = medians = median_rows(rows)
        print("each cell's median round:", file=sys.stderr)
        for row in medians:
            print(table_line(row) + spread(row), file=sys.stderr)
    out = args.out or RESULTS_DIR / f"{time.strftime('%Y-%m-%d')}-cost.json"
    out.write_text(json.dumps(written, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
