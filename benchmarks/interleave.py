"""Low-load latency by taking turns: one session on each of several servers, and an in-process step,
measured in short alternating blocks so that machine drift moves every side alike (the suite's low-load
section). The load generator proper (many concurrent sessions) is loadgen.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from benchmarks.http1 import Http1Connection
from benchmarks.loadgen import HOST


async def interleaved(
    targets: Sequence[tuple[int, str]],
    bodies: Sequence[bytes],
    duration_s: float,
    warmup_s: float,
    local: Callable[[], None] | None = None,
    block: int = 20,
) -> list[list[float]]:
    """Latencies (ms) of one session on each target, and of `local`, taking turns in short blocks.

    A round sends `block` requests, one after the other, to each target in turn (in reverse order
    every other round, so that no target always goes first), then runs `local` (an in-process step)
    `block` times. The first of each block is not counted: it pays for caches the others just
    evicted (three copies of a 10k-word model do not fit in one cache). A round lasts tens of
    milliseconds, so a machine that slows down or speeds up moves all sides alike, and differences
    stay sharp where separate runs would drown them in drift.
    Returns one list per target (then one for `local`), in round order.
    """
    conns = [Http1Connection(HOST, port) for port, _ in targets]
    paths = [f"/v1/sessions/{sid}/events" for _, sid in targets]
    latencies: list[list[float]] = [[] for _ in range(len(targets) + (local is not None))]

    async def post(j: int, body: bytes) -> None:
        status, payload = await conns[j].request("POST", paths[j], body)
        if status != 200:
            raise RuntimeError(f"POST {paths[j]} answered {status}: {payload[:300]!r}")

    try:
        start = time.perf_counter()
        measure_from, deadline = start + warmup_s, start + warmup_s + duration_s
        k = 0
        while (now := time.perf_counter()) < deadline:
            measuring = now >= measure_from
            order = list(range(len(conns))) if k % 2 == 0 else list(reversed(range(len(conns))))
            for j in [*order, len(conns)] if local is not None else order:
                for i in range(block):
                    t0 = time.perf_counter()
                    if j < len(conns):
                        await post(j, bodies[(k * block + i) % len(bodies)])
                    else:
                        assert local is not None
                        local()
                    if measuring and i:
                        latencies[j].append((time.perf_counter() - t0) * 1e3)
            k += 1
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    return latencies
