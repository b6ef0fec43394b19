"""What the sync and asyncio clients share, without I/O: request bodies, answers, the retry rules.

Why retries are safe: every step this client sends carries `seq`, the count of events the session had
consumed when the client last heard from it. The server applies a step only at that seq and answers the
same request again (same seq, same payload) from its stored answer, without applying it twice. So a
step whose answer was lost (a timeout, a dropped connection, a server restart) is simply sent again.
Requests that are not exactly-once (create a session, generate with commit) are retried only when
they surely did not reach the server: the connection was never made, or the server answered 503.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from rnnserve_client.errors import ConnectionFailed, RnnserveError, Unavailable, error_from

Events = str | Sequence[str] | Sequence[float] | Sequence[Sequence[float]]
Retry = Literal["always", "unsent", "never"]

# transport failures after which the request surely never reached the server
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass
class StepResult:
    """The answer to one step: the session's `seq` after it, and one output per event."""

    seq: int
    outputs: list[dict[str, Any]]
    session_id: str = ""


@dataclass
class Generated:
    tokens: list[str]
    text: str
    seq: int


@dataclass
class SessionInfo:
    session_id: str
    model: str
    version: str
    seq: int
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> SessionInfo:
        return cls(
            str(body["session_id"]), str(body["model"]), str(body["version"]), int(body["seq"]), dict(body)
        )


def events_body(events: Events, seq: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """The events body: text (a str), tokens (strs), one reading (numbers) or readings (lists)."""
    body: dict[str, Any] = {}
    if isinstance(events, str):
        body["text"] = events
    elif len(events) == 0:
        raise ValueError("no events to send")
    elif all(isinstance(e, str) for e in events):
        body["tokens"] = list(events)
    elif all(isinstance(e, int | float) and not isinstance(e, bool) for e in events):
        body["readings"] = [list(events)]  # one reading of several features
    elif all(isinstance(e, Sequence) and not isinstance(e, str) for e in events):
        body["readings"] = [list(e) for e in events]  # type: ignore[arg-type]
    else:
        raise ValueError("events are a str, a list of str (tokens), or readings (lists of numbers)")
    if seq is not None:
        body["seq"] = seq
    body.update(options)
    return body


def event_count(body: Mapping[str, Any]) -> int | None:
    """How many events a body holds (None for text: the server tokenizes it)."""
    if "tokens" in body:
        return len(body["tokens"])
    if "readings" in body:
        return len(body["readings"])
    return None


class Stepped(Protocol):
    """What bulk bodies need of a session (the sync and asyncio sessions both are one)."""

    id: str
    seq: int


BulkItem = tuple[Stepped, Events] | tuple[Stepped, Events, Mapping[str, Any]]


def bulk_body(items: Sequence[BulkItem], options: Mapping[str, Any]) -> dict[str, Any]:
    """The `steps` body: each step at the seq its session will be at by then (a session may appear
    more than once, with tokens or readings), with the call's options and its own (a third item)."""
    seqs: dict[str, int] = {}
    steps = []
    for item in items:
        session, events = item[0], item[1]
        own = item[2] if len(item) == 3 else {}
        seq = seqs.get(session.id, session.seq)
        step = {"session_id": session.id, **events_body(events, seq, {**options, **own})}
        count = event_count(step)
        if count is None and sum(1 for other in items if other[0].id == session.id) > 1:
            raise ValueError(
                "a session that appears twice in one bulk call takes tokens or readings, not text"
            )
        seqs[session.id] = seq + (count or 0)
        steps.append(step)
    return {"steps": steps}


def bulk_results(items: Sequence[BulkItem], answer: Any) -> list[StepResult | RnnserveError]:
    """One StepResult or typed error per step; each session's seq follows its applied steps."""
    results: list[StepResult | RnnserveError] = []
    for item, raw in zip(items, answer["results"], strict=True):
        if raw.get("error"):
            results.append(error_from(0, raw))
            continue
        result = parse_step(raw)
        item[0].seq = max(item[0].seq, result.seq)
        results.append(result)
    return results


def parse_step(body: Mapping[str, Any]) -> StepResult:
    return StepResult(int(body["seq"]), list(body["outputs"]), str(body.get("session_id", "")))


def check(response: httpx.Response) -> Any:
    """The JSON of a successful answer, or the typed error of a failed one."""
    if response.status_code < 400:
        return response.json() if response.content else None
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_from(response.status_code, body, response.headers.get("Retry-After"))


@dataclass
class RetryBudget:
    """Backoff with jitter, within `total_s` seconds from the first attempt."""

    total_s: float
    base_s: float = 0.05
    cap_s: float = 2.0
    started: float = field(default_factory=time.monotonic)
    attempt: int = 0

    def next_delay(self, error: BaseException, retry: Retry) -> float:
        """Seconds to wait before trying again, or raise: `error` is not retryable or time is up."""
        if not retryable(error, retry):
            raise error
        delay = min(self.cap_s, self.base_s * 2.0**self.attempt) * (0.5 + random.random() / 2)
        if isinstance(error, RnnserveError) and error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, self.cap_s))
        self.attempt += 1
        if time.monotonic() + delay - self.started > self.total_s:
            if isinstance(error, RnnserveError):
                raise error
            raise ConnectionFailed(f"no answer within {self.total_s:g} s: {error!r}") from error
        return delay


def retryable(error: BaseException, retry: Retry) -> bool:
    if retry == "never":
        return False
    if isinstance(error, Unavailable):  # 503: nothing was applied
        return True
    if isinstance(error, httpx.TransportError):  # includes every timeout
        return retry == "always" or isinstance(error, _UNSENT)
    return isinstance(error, OSError | ConnectionFailed) and retry == "always"


def ws_url(base_url: str, session_id: str) -> str:
    url = httpx.URL(base_url)
    scheme = "wss" if url.scheme == "https" else "ws"
    path = url.path.rstrip("/") + f"/v1/sessions/{session_id}/stream"
    return str(url.copy_with(scheme=scheme, path=path))


def ws_answer(message: str | bytes) -> dict[str, Any]:
    """A WebSocket reply: the events answer, or the typed error it carries."""
    import json

    body = json.loads(message)
    if isinstance(body, dict) and "error" in body:
        raise error_from(0, body)
    if not isinstance(body, dict):
        raise RnnserveError(f"unexpected stream reply {body!r}")
    return body


def as_dropped(exc: BaseException) -> BaseException:
    """WebSocket failures count as dropped connections for the retry rules (typed errors stay)."""
    if isinstance(exc, RnnserveError | OSError):
        return exc
    return ConnectionError(repr(exc))
