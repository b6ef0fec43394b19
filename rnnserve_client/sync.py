"""The blocking client: `Client`, its `Session`s, a WebSocket stream per session, bulk steps.

with Client("http://127.0.0.1:8000", api_key=...) as client:
    with client.session("lm") as s:            # created here, deleted at the end of the block
        print(s.step("the cat").outputs[-1]["next"])
        print(s.generate(max_tokens=10, seed=1).text)
        for answer in s.stream(["sat", "on", "the", "mat"]):
            ...
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

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


class Client:
    """One server. `retry_for_s`: how long a request is retried (timeouts, dropped connections, 503)
    before its error is raised; 0 turns retries off."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retry_for_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.retry_for_s = retry_for_s
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, body: Any = None, retry: Retry = "always") -> Any:
        """One API call with the retry rules of `_protocol`; the answer's JSON or a typed error."""
        budget = RetryBudget(self.retry_for_s)
        while True:
            try:
                return check(self._http.request(method, path, json=body))
            except (httpx.TransportError, RnnserveError) as exc:
                time.sleep(budget.next_delay(exc, retry))

    # ---- models and sessions -----------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self.request("GET", "/v1/models")["models"]
        return models

    def session(self, model: str, version: str | None = None, *, session_id: str | None = None) -> Session:
        """A new session of `model` (its default version unless `version`), or, with `session_id`,
        the existing one (after a restart, from another process): it goes on at the server's seq."""
        if session_id is not None:
            info = SessionInfo.parse(self.request("GET", f"/v1/sessions/{session_id}"))
        else:
            body = {"model": model} if version is None else {"model": model, "version": version}
            info = SessionInfo.parse(self.request("POST", "/v1/sessions", body, retry="unsent"))
        return Session(self, info)

    def steps(self, items: Sequence[BulkItem], **options: Any) -> list[StepResult | RnnserveError]:
        """Bulk steps (`POST /v1/steps`): items are (session, events) or (session, events, options);
        one result per item, in order, each a StepResult or the typed error of that step alone. A
        session may appear more than once (tokens or readings; if one of its steps fails, the later
        ones answer SequenceConflict). Retried as a whole: every step carries its seq."""
        return bulk_results(items, self.request("POST", "/v1/steps", bulk_body(items, options)))


class Session:
    """One server-side session. `seq` is the count of events the server has applied, as last heard:
    every step carries it, which makes each retry exactly-once."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        self.client = client
        self.id = info.session_id
        self.model = info.model
        self.version = info.version
        self.seq = info.seq

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Session({self.id!r}, {self.model}/{self.version}, seq={self.seq})"

    def step(self, events: Events, **options: Any) -> StepResult:
        """Send events (text, tokens, one reading or readings); options: top_k, timestamps, ..."""
        body = events_body(events, self.seq, options)
        result = parse_step(self.client.request("POST", f"/v1/sessions/{self.id}/events", body))
        self.seq = result.seq
        return result

    def generate(self, max_tokens: int = 20, *, commit: bool = False, **options: Any) -> Generated:
        """Sample a continuation (lm); options: temperature, top_k, seed, stop_at_eos. With `commit`
        the session advances by the tokens generated (retried only when surely not applied)."""
        body = {"max_tokens": max_tokens, "commit": commit, **options}
        retry: Retry = "unsent" if commit else "always"
        answer = self.client.request("POST", f"/v1/sessions/{self.id}/generate", body, retry)
        if commit:
            self.seq = int(answer["seq"])
        return Generated(list(answer["tokens"]), str(answer["text"]), int(answer["seq"]))

    def info(self) -> SessionInfo:
        return SessionInfo.parse(self.client.request("GET", f"/v1/sessions/{self.id}"))

    def reset(self) -> None:
        self.seq = SessionInfo.parse(self.client.request("POST", f"/v1/sessions/{self.id}/reset")).seq

    def export(self) -> dict[str, Any]:
        """The state snapshot; `Client.request("POST", "/v1/sessions", {"model", "snapshot"})` restores it."""
        snapshot: dict[str, Any] = self.client.request("GET", f"/v1/sessions/{self.id}/state")
        return snapshot

    def delete(self) -> None:
        """End the session (a retry that finds it already deleted counts as done)."""
        with contextlib.suppress(SessionDeleted):
            self.client.request("DELETE", f"/v1/sessions/{self.id}")

    def stream(self, chunks: Iterable[Events], **options: Any) -> Iterator[StepResult]:
        """Step each chunk of events over one WebSocket, one answer per chunk, in order. A dropped
        connection (a server restart) is reconnected and the unanswered chunk sent again, same seq."""
        url = ws_url(self.client.base_url, self.id)
        pending = iter(chunks)
        body: str | None = None
        budget = RetryBudget(self.client.retry_for_s)
        while True:
            try:
                with connect(
                    url, additional_headers=self.client.headers, open_timeout=self.client.timeout
                ) as ws:
                    while True:
                        if body is None:
                            events = next(pending, None)
                            if events is None:
                                return
                            body = json.dumps(events_body(events, self.seq, options))
                            budget = RetryBudget(self.client.retry_for_s)
                        ws.send(body)
                        result = parse_step(ws_answer(ws.recv(timeout=self.client.timeout)))
                        self.seq, body = result.seq, None
                        yield result
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError, RnnserveError) as exc:
                time.sleep(budget.next_delay(as_dropped(exc), "always"))
