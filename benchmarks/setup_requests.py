"""Setting a run up: many requests (creating sessions) sent over a pool of keep-alive connections."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from tqdm import tqdm

from benchmarks.http1 import Http1Connection, HttpError
from benchmarks.loadgen import CONNECTION, HOST


async def fan_out(
    port: int, requests: Sequence[tuple[str, str, bytes | None]], concurrency: int = 64, label: str = ""
) -> list[tuple[int, bytes]]:
    """Send many setup requests over `concurrency` keep-alive connections; answers in request order."""
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(requests)
    bar = tqdm(total=len(requests), desc=label or "requests", leave=False, disable=None if label else True)
    next_index = iter(range(len(requests)))

    async def worker() -> None:
        conn = Http1Connection(HOST, port)
        try:
            for i in next_index:
                method, path, body = requests[i]
                try:
                    answers[i] = await conn.request(method, path, body)
                except HttpError as exc:
                    answers[i] = (CONNECTION, str(exc).encode())
                bar.update(1)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(requests), 1)))))
    bar.close()
    return answers


async def create_sessions(port: int, body: bytes, count: int, label: str = "") -> list[str]:
    """Create `count` sessions; raises with the first error when any request fails."""
    answers = await fan_out(port, [("POST", "/v1/sessions", body)] * count, label=label)
    ids: list[str] = []
    for status, payload in answers:
        if status != 201:
            raise RuntimeError(f"POST /v1/sessions answered {status}: {payload[:300]!r}")
        ids.append(json.loads(payload)["session_id"])
    return ids
