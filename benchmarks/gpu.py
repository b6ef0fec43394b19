"""The comparison on a GPU: ONNX Runtime's CUDA provider at 1..4096 sessions, state copies counted.

    python -m benchmarks.gpu                        # CUDA provider (onnxruntime-gpu, the [gpu] extra)
    python -m benchmarks.gpu --providers cpu        # the same measurements on CPU, where there is no GPU
    python -m benchmarks.gpu --server               # and the HTTP server (batcher on) at the same loads

Two ways to keep the state of B sessions between steps, one ONNX Runtime call per step each:

- host slab (what the service does): every session's state is a row of a host float32 slab; a step
  gathers the B rows, ONNX Runtime copies them to the device, runs, and the new state comes back to
  the host to be scattered into the slab: 2 copies per state tensor per step (host -> device and
  device -> host), 2 x state tensors x L x B x H x 4 bytes.
- device-resident (I/O binding): the state stays in device memory; step k's state outputs are bound as
  step k+1's inputs, so no state crosses the bus: 0 state copies per step. (A server would need a
  device-side slab and gather/scatter to do this with sessions coming and going.)

In both, `x` goes to the device and the per-event outputs come back to the host (the server needs
them there to build answers); those copies are counted apart. On CPU "device" is host memory, so the
figures show the cost of the slab gather/scatter alone.
Results: benchmarks/results/<date>-<host>-gpu.json and a plot beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.config import RESULTS_DIR, default_threads
from benchmarks.limit import PROVIDERS, ort_session, random_inputs
from benchmarks.models import Artifact, prepare_models

SESSIONS = (1, 4, 16, 64, 256, 1024, 4096)


def _device(providers: list[str]) -> str:
    return "cuda" if providers[0] == "cuda" else "cpu"


def _host_slab(session: ort.InferenceSession, art: Artifact, batch: int, seconds: float) -> dict[str, Any]:
    layers, hidden = art.manifest.state_shape
    states = art.manifest.onnx.states
    capacity = max(batch, 4096)
    slabs = {s.input: np.zeros((layers, capacity, hidden), np.float32) for s in states}  # [L, N, H]
    rows = np.random.default_rng(0).choice(capacity, batch, replace=False)
    x = random_inputs(art, batch, 1)
    outputs = [o.name for o in session.get_outputs()]
    out_index = {s.input: outputs.index(s.output) for s in states}
    runs, start = 0, time.perf_counter()
    while True:
        feed = {"x": x, **{name: slab[:, rows] for name, slab in slabs.items()}}  # gather [L, B, H]
        result = session.run(None, feed)
        for name, slab in slabs.items():
            slab[:, rows] = result[out_index[name]]  # scatter
        runs += 1
        if runs >= 3 and time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    copies = 2 * len(states)
    return {
        "events_per_s": batch * runs / elapsed,
        "step_ms": elapsed / runs * 1e3,
        "state_copies_per_step": copies,
        "state_bytes_copied_per_step": copies * layers * batch * hidden * 4,
    }


def _device_resident(
    session: ort.InferenceSession, art: Artifact, batch: int, seconds: float, device: str
) -> dict[str, Any]:
    layers, hidden = art.manifest.state_shape
    states = art.manifest.onnx.states
    state = {
        s.input: ort.OrtValue.ortvalue_from_numpy(np.zeros((layers, batch, hidden), np.float32), device, 0)
        for s in states
    }
    x = ort.OrtValue.ortvalue_from_numpy(random_inputs(art, batch, 1), device, 0)
    state_outputs = {s.output: s.input for s in states}
    task_outputs = [o.name for o in session.get_outputs() if o.name not in state_outputs]
    binding = session.io_binding()
    runs, start = 0, time.perf_counter()
    while True:
        binding.bind_ortvalue_input("x", x)
        for name, value in state.items():
            binding.bind_ortvalue_input(name, value)
        for name in task_outputs:
            binding.bind_output(name, "cpu")  # per-event outputs: to the host, as a server needs them
        for name in state_outputs:
            binding.bind_output(name, device)  # the new state stays where it is
        session.run_with_iobinding(binding)
        values = binding.get_outputs()
        state = {state_outputs[name]: values[len(task_outputs) + i] for i, name in enumerate(state_outputs)}
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        runs += 1
        if runs >= 3 and time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    return {
        "events_per_s": batch * runs / elapsed,
        "step_ms": elapsed / runs * 1e3,
        "state_copies_per_step": 0,
        "state_bytes_copied_per_step": 0,
    }


def in_process(
    art: Artifact, providers: list[str], threads: int, sessions: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    session = ort_session(art, threads, providers)
    device = _device(providers)
    points = []
    for batch in sessions:
        _host_slab(session, art, batch, 0.0)  # warm-up: allocations for this shape
        slab = _host_slab(session, art, batch, seconds)
        _device_resident(session, art, batch, 0.0, device)
        resident = _device_resident(session, art, batch, seconds, device)
        print(
            f"  {batch:>5} sessions: host slab {slab['events_per_s']:>11,.0f} events/s "
            f"({slab['state_copies_per_step']} state copies/step), device-resident "
            f"{resident['events_per_s']:>11,.0f} events/s (0 copies)",
            file=sys.stderr,
        )
        points.append(
            {
                "sessions": batch,
                "host_slab": slab,
                "device_resident": resident,
                "resident_vs_slab": resident["events_per_s"] / slab["events_per_s"],
            }
        )
    return {"providers_used": session.get_providers(), "device": device, "points": points}


def server_loads(
    art: Artifact,
    models_dir: Path,
    providers: list[str],
    threads: int,
    sessions: tuple[int, ...],
    seconds: float,
    work: Path,
) -> list[dict[str, Any]]:
    """The HTTP server (batcher on, host slab) with the same providers, closed loop at each load."""
    from benchmarks.loadgen import LoadSpec, run_async, run_load
    from benchmarks.payloads import event_bodies, session_body
    from benchmarks.servers import Launch, free_port, raise_nofile_limit, service_command, service_env, start
    from benchmarks.setup_requests import create_sessions

    raise_nofile_limit()
    port = free_port()
    settings = {
        "providers": ",".join(providers),
        "intra_op_threads": threads,
        "inter_op_threads": 1,
        "snapshot_path": "",
        "log_level": "warning",
        "max_batch_size": max(sessions),
        "max_sessions": max(sessions) + 1000,
    }
    launch = Launch("gpu-server", service_command(models_dir, port), service_env(settings), port)
    out = []
    with start(launch, log_dir=work / "logs") as (server,):
        ids = run_async(create_sessions(server.port, session_body(art), max(sessions), label="sessions"))
        bodies = event_bodies(art, 1)
        for n in sessions:
            result = run_async(
                run_load(server.port, ids, bodies, LoadSpec(sessions=n, duration_s=seconds), f"server, {n}")
            )
            print(f"  server, {n:>5} sessions: {result.events_per_s:>9,.0f} events/s", file=sys.stderr)
            out.append({"sessions": n, "run": result.to_dict()})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--providers", default="cuda", help="cuda or cpu (%(default)s)")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--lm-model", default="lm")
    p.add_argument("--sessions", default=",".join(map(str, SESSIONS)), help="batch sizes (%(default)s)")
    p.add_argument("--seconds", type=float, default=1.0, help="per measurement (%(default)s)")
    p.add_argument("--threads", type=int, default=default_threads(), help="intra-op threads (%(default)s)")
    p.add_argument("--server", action="store_true", help="also drive the HTTP server at the same loads")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    providers = [v.strip() for v in args.providers.split(",") if v.strip()]
    unknown = [v for v in providers if v not in PROVIDERS]
    if unknown or not providers:
        p.error(f"unknown providers {unknown}; choose from {', '.join(PROVIDERS)}")
    if PROVIDERS[providers[0]] not in ort.get_available_providers():
        print(
            f"{PROVIDERS[providers[0]]} is not available in this onnxruntime "
            f"({ort.get_available_providers()}); install the [gpu] extra, or run with --providers cpu",
            file=sys.stderr,
        )
        return 2
    sessions = tuple(int(v) for v in args.sessions.split(","))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rnnserve-gpu-") as tmp:
        work = Path(tmp)
        models_dir, arts = prepare_models(args.models_dir, {"lm": args.lm_model}, work)
        art = arts["lm"]
        results: dict[str, Any] = {
            "meta": {
                "date": dt.datetime.now().isoformat(timespec="seconds"),
                "host": socket.gethostname(),
                "onnxruntime": ort.__version__,
                "available_providers": ort.get_available_providers(),
                "command": " ".join(["python -m benchmarks.gpu", *(argv or sys.argv[1:])]),
            },
            "model": art.describe(),
            "providers": providers,
            "threads": args.threads,
            "in_process": in_process(art, providers, args.threads, sessions, args.seconds),
        }
        if args.server:
            results["server"] = server_loads(
                art, models_dir, providers, args.threads, sessions, args.seconds, work
            )
    host = socket.gethostname().split(".")[0]
    stem = args.out_dir / f"{dt.date.today().isoformat()}-{host}-gpu-{providers[0]}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    from benchmarks.plots import write_gpu_plot

    write_gpu_plot(results, stem)
    print(f"{'sessions':>8} {'host slab ev/s':>15} {'copies':>6} {'resident ev/s':>14} {'x':>5}")
    for point in results["in_process"]["points"]:
        slab, resident = point["host_slab"], point["device_resident"]
        print(
            f"{point['sessions']:>8} {slab['events_per_s']:>15,.0f} {slab['state_copies_per_step']:>6} "
            f"{resident['events_per_s']:>14,.0f} {point['resident_vs_slab']:>5.2f}"
        )
    print(f"wrote {stem.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
