"""The multi-process mode as it exists: N full servers sharing their sessions through one Redis.

    python -m benchmarks.replicas --replicas 1,2 --cells lm:http:256,lm:ws:256,sensor:ws:256

For each N, a redis-server and N `rnnserve serve` processes with RNNSERVE_STORE=redis on their own ports
(what `rnnserve serve --workers N` runs behind one port, but each reachable, so that its CPU time and
its /metrics can be read); the load generator spreads the sessions over them. It prints, per cell:
events/s, the servers' CPU per event (all N processes, from the OS), Redis' own CPU per event, and the
inference share against the servers and Redis together; a memory-store single server is the first row
for reference. The load generator runs on the same cores: on a 2-core machine it competes with the
servers, as `benchmarks.cost` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.config import RESULTS_DIR
from benchmarks.cost import OrtCost, cells, measure_cell, server_settings, table_line
from benchmarks.loadgen import run_async
from benchmarks.models import Artifact, prepare_models
from benchmarks.payloads import event_bodies, session_body
from benchmarks.servers import (
    HOST,
    Launch,
    Server,
    free_port,
    process_cpu_seconds,
    raise_nofile_limit,
    service_command,
    service_env,
    start,
)
from benchmarks.setup_requests import create_sessions


@dataclass
class Replicas:
    """N servers and the Redis they share, read as one system: CPU summed, histograms merged."""

    name: str
    servers: list[Server]
    redis_pid: int | None
    redis_marks: list[float] = field(default_factory=list)  # Redis' CPU seconds at each servers' reading

    @property
    def port(self) -> list[int]:
        return [s.port for s in self.servers]

    def cpu_seconds(self) -> float:
        """The servers' CPU seconds; Redis' are noted at the same moment (`redis_marks`)."""
        self.redis_marks.append(process_cpu_seconds(self.redis_pid) if self.redis_pid is not None else 0.0)
        return sum(s.cpu_seconds() for s in self.servers)

    def histograms(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for server in self.servers:
            for name, h in server.histograms().items():
                m = merged.setdefault(name, {"buckets": {}, "sum": 0.0, "count": 0.0})
                for le, n in h["buckets"].items():
                    m["buckets"][le] = m["buckets"].get(le, 0.0) + n
                m["sum"] += h["sum"]
                m["count"] += h["count"]
        return merged


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A throwaway in-memory redis-server: (its URL, its pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("benchmarks.replicas needs redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host=HOST, port=port)
        for _ in range(100):
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _measure(
    system: Replicas,
    arts: dict[str, Artifact],
    cell: tuple[str, str, int],
    args: argparse.Namespace,
    ort: OrtCost,
) -> dict[str, Any]:
    task, transport, n = cell
    ids = run_async(create_sessions(system.servers[0].port, session_body(arts[task]), n))
    row = measure_cell(
        system, task, transport, ids, event_bodies(arts[task], 1), args.duration, args.warmup, ort
    )
    redis_us = (
        (system.redis_marks[-1] - system.redis_marks[-2]) / max(row["events"], 1) * 1e6
    )  # measured phase
    total = row["server_cpu_us_per_event"] + redis_us
    row.update(
        replicas=len(system.servers),
        redis_cpu_us_per_event=redis_us if system.redis_pid is not None else None,
        inference_share_with_redis=row["ort_cpu_us_per_event"] / total if row["events"] else None,
    )
    return row


def _line(r: dict[str, Any]) -> str:
    """benchmarks.cost's line (`share` against the servers alone), then Redis' CPU and the share with it."""
    redis_us = r["redis_cpu_us_per_event"]
    redis = "-" if redis_us is None else f"{redis_us:.1f}"
    return f"{table_line(r)}  redis {redis} us/ev  share with redis {r['inference_share_with_redis']:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.replicas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--replicas", default="1,2", help="replica counts to run, comma-separated (%(default)s)")
    p.add_argument("--cells", type=cells, default=cells("lm:http:256,lm:ws:256,sensor:ws:256"))
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads per server (%(default)s)"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if any(transport.startswith("bulk") for _, transport, _ in args.cells):
        p.error("bulk cells run on one server (benchmarks.cost)")
    counts = [int(c) for c in args.replicas.split(",")]
    raise_nofile_limit()
    rows: list[dict[str, Any]] = []
    settings = server_settings(args.threads)
    with tempfile.TemporaryDirectory(prefix="rnnserve-replicas-") as tmp:
        models_dir, arts = prepare_models(args.models_dir, {"lm": "lm", "sensor": "sensor"}, Path(tmp))
        ort = OrtCost(arts, args.threads)
        systems: list[tuple[str, dict[str, object], int]] = [("memory x1", {}, 1)]
        systems += [(f"redis x{n}", {"store": "redis"}, n) for n in counts]
        for name, store, count in systems:
            for cell in args.cells:
                ort.new_cell()
                with contextlib.ExitStack() as stack:
                    redis_pid = None
                    if store:
                        url, redis_pid = stack.enter_context(redis_server(Path(tmp)))
                        store = {**store, "redis_url": url}
                    launches = []
                    for i in range(count):
                        port = free_port()
                        launches.append(
                            Launch(
                                f"{name}-{i}",
                                service_command(models_dir, port),
                                service_env({**settings, **store}),
                                port,
                            )
                        )
                    servers = stack.enter_context(start(*launches, log_dir=Path(tmp) / "logs"))
                    row = _measure(Replicas(name, servers, redis_pid), arts, cell, args, ort)
                rows.append(row)
                print(_line(row), file=sys.stderr, flush=True)
    out = args.out or RESULTS_DIR / f"{time.strftime('%Y-%m-%d')}-replicas.json"
    command = " ".join(["python -m benchmarks.replicas", *(argv or sys.argv[1:])])
    out.write_text(json.dumps({"command": command, "cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
