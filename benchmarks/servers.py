"""Servers under test as real subprocesses on free loopback ports, and what can be read from outside them.

Every server is started with the same thread settings, answers `/readyz` before it is used, logs to a
file (shown when it fails to start), and is stopped with SIGTERM (SIGKILL after a bound).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]  # children run from here, so `-m benchmarks...` resolves
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
# The histograms of the service's /metrics that explain a run (names from service/metrics.py).
HISTOGRAMS = (
    "rnnserve_batch_size",
    "rnnserve_batch_events",
    "rnnserve_inference_seconds",
    "rnnserve_queue_delay_seconds",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def rss_bytes(self) -> int:
        """Resident set size of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process, all its threads."""
        return process_cpu_seconds(self.proc.pid)

    def _families(self) -> list[Any]:
        status, body = self.get("/metrics")
        return list(text_string_to_metric_families(body.decode())) if status == 200 else []

    def gauge(self, name: str) -> float | None:
        """A gauge or counter of /metrics, summed over its labels (None when absent)."""
        values = [s.value for f in self._families() if f.name == name for s in f.samples]
        return sum(values) if values else None

    def histograms(self) -> dict[str, dict[str, Any]]:
        """The service's histograms, summed over labels: {name: {"buckets": {le: n}, "sum", "count"}}."""
        found: dict[str, dict[str, Any]] = {}
        for family in self._families():
            if family.name not in HISTOGRAMS:
                continue
            h = found.setdefault(family.name, {"buckets": {}, "sum": 0.0, "count": 0.0})
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    le = sample.labels["le"]
                    h["buckets"][le] = h["buckets"].get(le, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    h["sum"] += sample.value
                elif sample.name.endswith("_count"):
                    h["count"] += sample.value
        return found

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def histogram_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What happened between two scrapes: per histogram, non-cumulative bucket counts, count, mean."""
    out: dict[str, Any] = {}
    for name, h in after.items():
        b = before.get(name, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = h["count"] - b["count"]
        cumulative = [(le, h["buckets"][le] - b["buckets"].get(le, 0.0)) for le in h["buckets"]]
        cumulative.sort(key=lambda item: float(item[0]))
        buckets, previous = {}, 0.0
        for le, n in cumulative:
            buckets[le] = int(n - previous)
            previous = n
        out[name.removeprefix("rnnserve_")] = {
            "count": int(count),
            "sum": h["sum"] - b["sum"],
            "mean": (h["sum"] - b["sum"]) / count if count else None,
            "buckets": buckets,
        }
    return out


def service_env(settings: Mapping[str, object]) -> dict[str, str]:
    """This process's environment without any RNNSERVE_* variable, plus `settings` as RNNSERVE_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSERVE_")}
    env["RNNSERVE_GRPC_PORT"] = ""  # benchmarks measure HTTP; several servers must not share port 8001
    env.update({f"RNNSERVE_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def service_command(models_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--models-dir",
        str(models_dir),
    ]


def _wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError):
            if server.get("/readyz", timeout=2.0)[0] == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f} s:\n{server.log_tail()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)


@dataclass(frozen=True)
class Launch:
    """How to start one server: a command that listens on `port` (127.0.0.1)."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    port: int


@contextlib.contextmanager
def start(*launches: Launch, log_dir: Path) -> Iterator[list[Server]]:
    """Start every server at once, wait until each is ready, stop them all when the block ends."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[Server] = []
    try:
        for launch in launches:
            log_path = log_dir / f"{launch.name}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    launch.argv,
                    env=dict(launch.env),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                )
            started.append(Server(launch.name, proc, launch.port, log_path))
        for server in started:
            _wait_ready(server, READY_TIMEOUT_S)
        yield started
    finally:
        for server in started:
            _stop(server.proc)


def raise_nofile_limit() -> None:
    """1024 sessions need 1024+ sockets on each side; children inherit the raised soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
