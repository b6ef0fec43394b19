"""The load generator: N concurrent sessions streaming events over HTTP or WebSocket, in one process.

- closed loop: every session sends its next request as soon as the previous answer arrives (N is
  the concurrency); latency runs from send to answer.
- open loop: requests arrive on a fixed schedule at `rate_rps` in total, round-robin over the
  sessions; a session still busy queues them in order (requests for one session are applied one at a
  time), and latency runs from the scheduled arrival, so a slow server cannot hide its queueing
  (no coordinated omission).

A run has two phases on the same connections: a closed-loop warm-up of `warmup_s` whose answers are
thrown away, then the measured phase. That phase stops sending at `duration_s` and lets the answers
in flight arrive (at most `grace_s`; what is left counts as `unfinished`). Throughput is the events
answered divided by the time from the phase's start to its last answer, and latency percentiles cover
every answered request. Counting whole requests this way stays exact when a batching server answers
the sessions in waves, or when one request takes longer than a short run (64 events per request),
where events counted inside a fixed window would be off by up to a wave.
The client's own CPU time is recorded for every run, so readers can judge whether it was in the way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
from tqdm import tqdm
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.http1 import Http1Connection, HttpError
from service.errors import ServiceError

Transport = Literal["http", "ws", "httpx"]  # httpx: a general client, for the client section only
Mode = Literal["closed", "open"]
T = TypeVar("T")

HOST = "127.0.0.1"
UNFINISHED = -1  # status of a request still in flight when the run stopped
CONNECTION = -2  # status of a request whose connection failed; its session stops sending


def _error_statuses(cls: type[ServiceError]) -> dict[str, int]:
    """The service's error codes and their HTTP statuses (a WebSocket error reply carries the code)."""
    found = {cls.code: cls.status}
    for sub in cls.__subclasses__():
        found.update(_error_statuses(sub))
    return found


_STATUS_BY_CODE = _error_statuses(ServiceError)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where installed (as the servers do), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@dataclass(frozen=True)
class LoadSpec:
    sessions: int
    duration_s: float
    warmup_s: float = 0.5  # closed-loop warm-up before the measured phase, not counted
    transport: Transport = "http"
    mode: Mode = "closed"
    events_per_request: int = 1
    max_events_per_session: int | None = None  # M: stop a session after this many events
    rate_rps: float | None = None  # open loop: offered requests per second, all sessions together
    grace_s: float = 30.0


@dataclass
class RunResult:
    spec: LoadSpec
    events: int  # answered (2xx) in the measured phase
    requests: int  # answered, any status, in the measured phase
    window_s: float  # from the phase's start to its last answer
    events_per_s: float
    requests_per_s: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    client_cpu_s: float
    client_cpu_us_per_request: float
    client_cpu_share: float  # client CPU seconds / wall seconds (1.0 = one core busy)
    wall_s: float
    server: dict[str, Any] = field(default_factory=dict)  # filled by the caller (metrics, CPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A record per request: (start or scheduled arrival, end, status, events).
Record = tuple[float, float, int, int]


class _Progress:
    def __init__(self, label: str, duration_s: float, enabled: bool = True) -> None:
        self.events = 0
        self._bar = tqdm(
            total=round(duration_s, 1),
            desc=label,
            unit="s",
            leave=False,
            disable=None if enabled else True,
            bar_format="{desc}: {bar} {n:.1f}/{total:.1f}s {postfix}",
        )

    async def tick(self, t0: float, deadline: float) -> None:
        while (now := time.perf_counter()) < deadline:
            elapsed = now - t0
            self._bar.n = round(elapsed, 1)
            self._bar.set_postfix_str(f"{self.events / max(elapsed, 1e-9):,.0f} events/s")
            await asyncio.sleep(0.25)

    def close(self) -> None:
        self._bar.close()


Send = Callable[[bytes], Awaitable[int]]


async def _http_sender(port: int, path: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    conn = Http1Connection(HOST, port)
    await conn.request("GET", "/healthz")  # connect (and warm the socket) before the clock starts

    async def send(body: bytes) -> int:
        try:
            return (await conn.request("POST", path, body))[0]
        except HttpError:
            return CONNECTION

    return send, conn.close


async def _httpx_sender(port: int, path: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}", timeout=None, headers={"content-type": "application/json"}
    )
    await client.get("/healthz")

    async def send(body: bytes) -> int:
        try:
            return (await client.post(path, content=body)).status_code
        except httpx.TransportError:
            return CONNECTION

    return send, client.aclose


async def _ws_sender(port: int, path: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    ws: ClientConnection = await connect(
        f"ws://{HOST}:{port}{path}", compression=None, max_size=2**24, ping_interval=None
    )

    async def send(body: bytes) -> int:
        try:
            await ws.send(body.decode())
            reply = await ws.recv()
        except ConnectionClosed:
            return CONNECTION
        if reply[:9] in ('{"error":', b'{"error":'):
            code = json.loads(reply).get("error", {}).get("code")
            return _STATUS_BY_CODE.get(code, 400)
        return 200

    return send, ws.close


async def _closed_worker(
    send: Send,
    bodies: Sequence[bytes],
    offset: int,
    spec: LoadSpec,
    deadline: float,
    records: list[Record],
    progress: _Progress,
) -> None:
    k, i = spec.events_per_request, 0
    limit = spec.max_events_per_session
    while time.perf_counter() < deadline and (limit is None or i * k < limit):
        start = time.perf_counter()
        status = await send(bodies[(offset + i) % len(bodies)])
        records.append((start, time.perf_counter(), status, k))
        progress.events += k
        i += 1
        if status == CONNECTION:
            return


async def _open_worker(
    send: Send,
    bodies: Sequence[bytes],
    offset: int,
    spec: LoadSpec,
    queue: asyncio.Queue[float | None],
    records: list[Record],
    progress: _Progress,
) -> None:
    i = 0
    while (scheduled := await queue.get()) is not None:
        status = await send(bodies[(offset + i) % len(bodies)])
        records.append((scheduled, time.perf_counter(), status, spec.events_per_request))
        progress.events += spec.events_per_request
        i += 1
        if status == CONNECTION:
            return


async def _schedule(
    queues: Sequence[asyncio.Queue[float | None]], rate: float, t0: float, deadline: float
) -> int:
    """Put arrival times into the sessions' queues, round-robin, at `rate` per second; returns the count."""
    n = 0
    while True:
        now = time.perf_counter()
        due = min(int((now - t0) * rate) + 1, int((deadline - t0) * rate))
        while n < due:
            queues[n % len(queues)].put_nowait(t0 + n / rate)
            n += 1
        if now >= deadline:
            break
        await asyncio.sleep(max(t0 + n / rate - time.perf_counter(), 0.0005))
    for q in queues:
        q.put_nowait(None)
    return n


def _summarize(records: list[Record], t0: float, unfinished: int) -> dict[str, Any]:
    arr = np.array(records, dtype=np.float64).reshape(-1, 4)
    ok = (arr[:, 2] >= 200) & (arr[:, 2] < 300)
    events = int(arr[ok, 3].sum())
    window = float(arr[ok, 1].max() - t0) if ok.any() else 0.0
    lat = (arr[ok, 1] - arr[ok, 0]) * 1e3
    latency: dict[str, float] = {}
    if lat.size:
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        latency = {
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": float(lat.max()),
            "mean": float(lat.mean()),
            "count": int(lat.size),
        }
    errors: Counter[str] = Counter()
    for status in arr[~ok, 2].astype(int):
        errors["connection" if status == CONNECTION else str(status)] += 1
    if unfinished:
        errors["unfinished"] += unfinished
    return {
        "events": events,
        "window_s": window,
        "events_per_s": events / window if window else 0.0,
        "requests_per_s": float(ok.sum()) / window if window else 0.0,
        "latency_ms": latency,
        "errors": dict(errors),
    }


async def _phase(
    senders: Sequence[Send],
    bodies: Sequence[bytes],
    spec: LoadSpec,
    records: list[Record],
    progress: _Progress,
) -> tuple[float, int]:
    """One closed- or open-loop phase of `spec.duration_s`; returns (start time, requests unfinished)."""
    stride = max(1, len(bodies) // max(spec.sessions, 1))
    t0 = time.perf_counter()
    deadline = t0 + spec.duration_s
    if spec.mode == "closed":
        tasks = [
            asyncio.create_task(_closed_worker(send, bodies, j * stride, spec, deadline, records, progress))
            for j, send in enumerate(senders)
        ]
    else:
        if not spec.rate_rps:
            raise ValueError("an open-loop run needs rate_rps")
        queues: list[asyncio.Queue[float | None]] = [asyncio.Queue() for _ in senders]
        tasks = [
            asyncio.create_task(_open_worker(send, bodies, j * stride, spec, q, records, progress))
            for j, (send, q) in enumerate(zip(senders, queues, strict=True))
        ]
        scheduler = asyncio.create_task(_schedule(queues, spec.rate_rps, t0, deadline))
    ticker = asyncio.create_task(progress.tick(t0, deadline))
    _, pending = await asyncio.wait(tasks, timeout=spec.duration_s + spec.grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    ticker.cancel()
    crashed = [task.exception() for task in tasks if task not in pending and task.exception() is not None]
    if crashed:
        raise RuntimeError(f"{len(crashed)} load workers failed; first: {crashed[0]!r}") from crashed[0]
    if spec.mode == "open":
        scheduled = scheduler.result() if scheduler.done() else 0
        return t0, scheduled - len(records)
    return t0, len(pending)


async def run_load(
    port: int | Sequence[int],
    session_ids: Sequence[str],
    bodies: Sequence[bytes],
    spec: LoadSpec,
    label: str = "",
    on_phase: Callable[[str], None] | None = None,
) -> RunResult:
    """Drive `spec.sessions` of `session_ids` with `bodies` (cycled): warm up, then measure. Given
    several ports (replicas sharing one session store), session i is driven through port i mod their
    number.

    `on_phase("start")` and `on_phase("end")` run just before and after the measured phase, with no
    request in flight (to read the server's counters around exactly that phase).
    """
    if len(session_ids) < spec.sessions:
        raise ValueError(f"{spec.sessions} sessions asked for, {len(session_ids)} created")
    make = {"http": _http_sender, "ws": _ws_sender, "httpx": _httpx_sender}[spec.transport]
    suffix = "stream" if spec.transport == "ws" else "events"
    sem = asyncio.Semaphore(128)

    ports = [port] if isinstance(port, int) else list(port)

    async def open_one(i: int, sid: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
        async with sem:
            return await make(ports[i % len(ports)], f"/v1/sessions/{sid}/{suffix}")

    opened = await asyncio.gather(*(open_one(i, sid) for i, sid in enumerate(session_ids[: spec.sessions])))
    senders = [send for send, _ in opened]
    try:
        if spec.warmup_s > 0:
            warm = LoadSpec(
                sessions=spec.sessions,
                duration_s=spec.warmup_s,
                transport=spec.transport,
                events_per_request=spec.events_per_request,
                grace_s=spec.grace_s,
            )
            await _phase(senders, bodies, warm, [], _Progress("", 0.0, enabled=False))
        records: list[Record] = []
        progress = _Progress(label or f"{spec.sessions} sessions", spec.duration_s)
        if on_phase is not None:
            on_phase("start")
        cpu0 = time.process_time()
        t0, unfinished = await _phase(senders, bodies, spec, records, progress)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        progress.close()
        if on_phase is not None:
            on_phase("end")
    finally:
        await asyncio.gather(*(close() for _, close in opened), return_exceptions=True)
    return RunResult(
        spec=spec,
        requests=len(records),
        client_cpu_s=cpu,
        client_cpu_us_per_request=cpu / max(len(records), 1) * 1e6,
        client_cpu_share=cpu / wall,
        wall_s=wall,
        **_summarize(records, t0, unfinished),
    )
