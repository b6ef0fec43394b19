"""The asyncio client: `AsyncClient` and `AsyncSession`, the same API as `sync` with `await`.

async with AsyncClient("http://127.0.0.1:8000") as client:
    async with await client.session("lm") as s:
        answer = await s.step("the cat")
        async for answer in s.stream(["sat", "on", "the", "mat"]):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rnnserve_client._protocol import (
    BulkItem,
    Events,
    Generated,
    Retry,
    RetryBudget,
    SessionInfo,
    StepResult,
    as_dropped,
    bulk_body,
    bulk_results,
    check,
    events_body,
    parse_step,
    ws_answer,
    ws_url,
)
from rnnserve_client.errors import RnnserveError, SessionDeleted


class AsyncClient:
    """One server; see `sync.Client` for the retry rules."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retry_for_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.retry_for_s = retry_for_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, body: Any = None, retry: Retry = "always") -> Any:
        budget = RetryBudget(self.retry_for_s)
        while True:
            try:
                return check(await self._http.request(method, path, json=body))
            except (httpx.TransportError, RnnserveError) as exc:
                await asyncio.sleep(budget.next_delay(exc, retry))

    async def models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = (await self.request("GET", "/v1/models"))["models"]
        return models

    async def session(
        self, model: str, version: str | None = None, *, session_id: str | None = None
    ) -> AsyncSession:
        if session_id is not None:
            info = SessionInfo.parse(await self.request("GET", f"/v1/sessions/{session_id}"))
        else:
            body = {"model": model} if version is None else {"model": model, "version": version}
            info = SessionInfo.parse(await self.request("POST", "/v1/sessions", body, retry="unsent"))
        return AsyncSession(self, info)

    async def steps(self, items: Sequence[BulkItem], **options: Any) -> list[StepResult | RnnserveError]:
        """See `sync.Client.steps`."""
        return bulk_results(items, await self.request("POST", "/v1/steps", bulk_body(items, options)))


class AsyncSession:
    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        self.client = client
        self.id = info.session_id
        self.model = info.model
        self.version = info.version
        self.seq = info.seq

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.delete()

    def __repr__(self) -> str:
        return f"AsyncSession({self.id!r}, {self.model}/{self.version}, seq={self.seq})"

    async def step(self, events: Events, **options: Any) -> StepResult:
        body = events_body(events, self.seq, options)
        result = parse_step(await self.client.request("POST", f"/v1/sessions/{self.id}/events", body))
        self.seq = result.seq
        return result

    async def generate(self, max_tokens: int = 20, *, commit: bool = False, **options: Any) -> Generated:
        body = {"max_tokens": max_tokens, "commit": commit, **options}
        retry: Retry = "unsent" if commit else "always"
        answer = await self.client.request("POST", f"/v1/sessions/{self.id}/generate", body, retry)
        if commit:
            self.seq = int(answer["seq"])
        return Generated(list(answer["tokens"]), str(answer["text"]), int(answer["seq"]))

    async def info(self) -> SessionInfo:
        return SessionInfo.parse(await self.client.request("GET", f"/v1/sessions/{self.id}"))

    async def reset(self) -> None:
        answer = await self.client.request("POST", f"/v1/sessions/{self.id}/reset")
        self.seq = SessionInfo.parse(answer).seq

    async def export(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = await self.client.request("GET", f"/v1/sessions/{self.id}/state")
        return snapshot

    async def delete(self) -> None:
        with contextlib.suppress(SessionDeleted):
            await self.client.request("DELETE", f"/v1/sessions/{self.id}")

    async def stream(self, chunks: Iterable[Events], **options: Any) -> AsyncIterator[StepResult]:
        """See `sync.Session.stream`."""
        url = ws_url(self.client.base_url, self.id)
        pending = iter(chunks)
        body: str | None = None
        budget = RetryBudget(self.client.retry_for_s)
        headers, timeout = self.client.headers, self.client.timeout
        while True:
            try:
                async with connect(url, additional_headers=headers, open_timeout=timeout) as ws:
                    while True:
                        if body is None:
                            events = next(pending, None)
                            if events is None:
                                return
                            body = json.dumps(events_body(events, self.seq, options))
                            budget = RetryBudget(self.client.retry_for_s)
                        await ws.send(body)
                        result = parse_step(ws_answer(await asyncio.wait_for(ws.recv(), timeout)))
                        self.seq, body = result.seq, None
                        yield result
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError, RnnserveError) as exc:
                await asyncio.sleep(budget.next_delay(as_dropped(exc), "always"))
