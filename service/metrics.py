"""Prometheus metrics, one registry per app so that several apps can live in one test process.

Names are part of the contract: the Grafana dashboard and the benchmarks read them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_DELAY_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "rnnserve_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "rnnserve_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter("rnnserve_events", "events (steps) applied", ["model", "version"], registry=r)
        self.batch_size = Histogram(
            "rnnserve_batch_size",
            "sessions per ONNX Runtime call",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_events = Histogram(
            "rnnserve_batch_events",
            "events per ONNX Runtime call (sessions x steps)",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_delay = Histogram(
            "rnnserve_queue_delay_seconds",
            "time a step waited for its ONNX Runtime call (the step lane's or the batcher's queue)",
            ["model", "version"],
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "rnnserve_inference_seconds",
            "ONNX Runtime run time per batch",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.active_sessions = Gauge(
            "rnnserve_active_sessions", "live sessions", ["model", "version"], registry=r
        )
        self.state_bytes = Gauge(
            "rnnserve_state_bytes", "bytes held by session state slabs", ["model", "version"], registry=r
        )
        self.sessions_ended = Counter(
            "rnnserve_sessions_ended",
            "sessions that ended, by reason (expired, evicted, deleted, unloaded)",
            ["model", "reason"],
            registry=r,
        )
        self.seq_conflicts = Counter(
            "rnnserve_seq_conflicts", "step requests refused with 409", ["model"], registry=r
        )
        self.replays = Counter(
            "rnnserve_replays",
            "duplicate step requests answered from the stored response",
            ["model"],
            registry=r,
        )
        self.anomalies = Counter(
            "rnnserve_anomalies", "sensor readings flagged as anomalous", ["model", "version"], registry=r
        )
        self.unknown_tokens = Counter(
            "rnnserve_unknown_tokens", "lm input words mapped to <unk>", ["model", "version"], registry=r
        )
        self.model_versions = Gauge(
            "rnnserve_model_versions",
            "1 per loaded model version; state: default, ready (not the default) or draining",
            ["model", "version", "state"],
            registry=r,
        )
        self.batch_failures = Counter(
            "rnnserve_batch_failures", "ONNX Runtime calls that raised", ["model", "version"], registry=r
        )
        self.snapshot_seconds = Histogram(
            "rnnserve_snapshot_seconds",
            "periodic session snapshots: copying on the event loop (phase=loop), the longest single "
            "step of that copy, i.e. the stall (phase=stall), writing the file in a thread (phase=write)",
            ["phase"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot_failures = Counter(
            "rnnserve_snapshot_failures", "periodic session snapshots that failed", registry=r
        )
        self.snapshot_last_success = Gauge(
            "rnnserve_snapshot_last_success_timestamp_seconds",
            "wall-clock time of the last snapshot written (what a crash would restore)",
            registry=r,
        )

        # (method, route template, status) -> the children of `requests` and `request_latency`
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # requests answered in this turn of the event loop, counted at its end (`record_request`)
        self._answered: dict[tuple[str, str, int], list[float]] = {}

    def request_children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of one (method, route, status), looked up once:
        `labels()` takes a lock and builds a key on every call, on the hot path."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(method, route, str(status)),
                self.request_latency.labels(method, route),
            )
        return children

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request (or WebSocket message) and its latency. The requests answered in one turn
        of the event loop (a batch's answers resume together) go into the metrics together, in the
        next turn: one counter increment and one histogram update per (method, route, status)."""
        answered = self._answered
        if not answered:
            try:
                asyncio.get_running_loop().call_soon(self.flush_requests)
            except RuntimeError:  # no event loop (a plain thread): count it now
                answered.setdefault((method, route, status), []).append(seconds)
                self.flush_requests()
                return
        answered.setdefault((method, route, status), []).append(seconds)

    def flush_requests(self) -> None:
        answered, self._answered = self._answered, {}
        for (method, route, status), seconds in answered.items():
            counter, latency = self.request_children(method, route, status)
            counter.inc(len(seconds))
            observe_many(latency, seconds)

    def render(self) -> bytes:
        self.flush_requests()
        return generate_latest(self.registry)


def observe_many(histogram: Any, values: Sequence[float] | np.ndarray) -> None:
    """`histogram.observe(v)` for every value (`histogram`: a labelled child), as one update: the sum
    once, each bucket once. prometheus_client has no bulk observe; this adds to the same value objects
    its `observe` does (`_sum`, `_buckets`, one per upper bound, +Inf last), which a test checks
    against `observe` itself. A value above every bound, NaN, counts in no bucket, as there."""
    if len(values) == 0:
        return
    if len(values) < 4:  # not worth numpy's overhead
        for value in values:
            histogram.observe(value)
        return
    amounts = np.asarray(values, np.float64)
    bounds = np.asarray(histogram._upper_bounds, np.float64)
    counts = np.bincount(np.searchsorted(bounds, amounts, side="left"), minlength=len(bounds) + 1)
    histogram._sum.inc(float(amounts.sum()))
    for i in np.flatnonzero(counts[: len(bounds)]).tolist():
        histogram._buckets[i].inc(int(counts[i]))
