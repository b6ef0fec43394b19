"""Memory per idle session: RSS growth of a real server process while it creates many sessions.

A fresh server warms up first (a few hundred sessions created and stepped, so that code paths,
allocator arenas and the first slab growth are paid before the baseline is read); then N sessions are
created and left idle. The figure is (RSS after - RSS before) / N, compared with the raw float32
bytes of one session's state; the service's own `rnnserve_state_bytes` gauge is recorded beside it.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.loadgen import run_async
from benchmarks.models import Artifact
from benchmarks.payloads import event_bodies, session_body
from benchmarks.servers import Server
from benchmarks.setup_requests import create_sessions, fan_out

WARMUP_SESSIONS = 500


def _warm_up(server: Server, art: Artifact, count: int) -> None:
    ids = run_async(create_sessions(server.port, session_body(art), min(WARMUP_SESSIONS, count)))
    body = event_bodies(art, 1)[0]
    answers = run_async(fan_out(server.port, [("POST", f"/v1/sessions/{sid}/events", body) for sid in ids]))
    failed = [a for a in answers if a[0] != 200]
    if failed:
        raise RuntimeError(
            f"{len(failed)} warm-up steps failed; first: {failed[0][0]} {failed[0][1][:200]!r}"
        )


def measure(server: Server, art: Artifact, count: int) -> dict[str, Any]:
    _warm_up(server, art, count)
    time.sleep(0.5)
    rss0, state0 = server.rss_bytes(), server.gauge("rnnserve_state_bytes")
    t0 = time.perf_counter()
    run_async(create_sessions(server.port, session_body(art), count, label=f"memory: {count:,} sessions"))
    elapsed = time.perf_counter() - t0
    time.sleep(0.5)
    rss1, state1 = server.rss_bytes(), server.gauge("rnnserve_state_bytes")
    per_session = (rss1 - rss0) / count
    return {
        "sessions": count,
        "rss_before_bytes": rss0,
        "rss_after_bytes": rss1,
        "rss_per_session_bytes": per_session,
        "state_bytes_per_session": art.state_bytes,
        "ratio_to_state_bytes": per_session / art.state_bytes,
        "state_bytes_gauge_per_session": (state1 - state0) / count
        if state0 is not None and state1 is not None
        else None,
        "create_s": elapsed,
        "sessions_per_s": count / elapsed,
    }
