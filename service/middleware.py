"""The envelope around every HTTP request: id, body limit, metrics, access log, last-resort 500.

A plain ASGI middleware (no BaseHTTPMiddleware: no extra task per request, streaming untouched):

- request id: the client's `X-Request-ID` when it is sane, a fresh one otherwise; echoed on the
  response, stamped on every log record of the request (`service.logs.request_id_var`), and given to
  handlers as `request.state.request_id`.
- body limit: a declared `Content-Length` above `max_body_bytes` is answered 413 before reading a byte;
  otherwise the body is read here, counting the bytes as they stream in (chunked uploads have no
  length), and 413 is answered as soon as the count passes the limit. The app then gets the buffered
  body, so nothing downstream can read past the limit.
- metrics: `rnnserve_requests{method, route, status}` and the latency histogram, labelled with the
  route TEMPLATE (`/v1/sessions/{session_id}/events`), never the raw path (unbounded cardinality);
  requests that match no route count as `unmatched`.
- hot paths: `POST /v1/sessions/{id}/events` and `POST /v1/steps` are answered here by
  `routes.sessions.step_fast` and `routes.steps.steps_fast`, without Starlette's routing or FastAPI's
  dependency solving (same answers as the FastAPI routes); the two WebSocket streams likewise, by
  `routes.stream.websocket_fast`, on the server's own receive and send.
- access log: one line per request (JSON fields with `log_json`); probes and scrapes log at DEBUG. The
  query string is never logged (a WebSocket client may carry its key in `?token=`).
- anything that escapes the app is logged with its traceback and the request id and answered with the
  generic 500 (`error_handlers.internal_error_response`).
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.error_handlers import internal_error_response, render_error
from service.logs import request_id_var
from service.metrics import Metrics
from service.routes.sessions import EVENTS_ROUTE, events_session_id, step_fast
from service.routes.steps import STEPS_ROUTE, steps_fast
from service.routes.steps import stream as bulk_stream
from service.routes.stream import websocket_fast

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})

log = logging.getLogger("rnnserve.errors")
access_log = logging.getLogger("rnnserve.access")


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def fresh_request_id() -> str:
    """A random id shaped like `uuid.uuid4().hex`, without a system call per request (an id names a
    request in the logs; it guards nothing, so it needs no cryptographic randomness)."""
    return f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"


def request_id_of(scope: Scope) -> str:
    given = _header(scope, REQUEST_ID_HEADER.encode())
    return given if given is not None and _SANE_REQUEST_ID.match(given) else fresh_request_id()


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.routes = routes

    @staticmethod
    def claims(scope: Scope) -> bool:
        """Whether this middleware answers `scope` by itself, never calling the app (the hot paths: the
        two POST routes and the two WebSocket streams, whose every message then skips FastAPI's stack)."""
        if scope.get("root_path"):
            return False
        if scope["type"] == "websocket":
            return websocket_fast(scope, bulk_stream) is not None
        return (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and (scope["path"] == STEPS_ROUTE or events_session_id(scope["path"]) is not None)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        try:
            if scope["type"] == "http":
                await self._http(scope, receive, send, request_id)
            else:
                await (websocket_fast(scope, bulk_stream) or self.app)(scope, receive, send)
        finally:
            request_id_var.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = time.perf_counter()
        status = 500
        response_started = False
        route: str | None = None  # the template, when known before the app runs

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        try:
            try:
                body = await self._read_body(scope, receive)
            except _Disconnected:
                status = 499  # nginx's "client closed request": nothing to answer, counted apart
                return
            except _TooLarge:
                response = render_error(
                    413,
                    "payload_too_large",
                    f"the request body is larger than the limit of {self.max_body_bytes} bytes",
                    {"limit_bytes": self.max_body_bytes},
                    path=scope["path"],
                )
                await response(scope, receive, send_with_id)
                return
            if scope["method"] == "POST" and not scope.get("root_path"):
                session_id = events_session_id(scope["path"])
                if session_id is not None:
                    route = EVENTS_ROUTE
                    await step_fast(scope, _replay(b"", receive), send_with_id, session_id, body)
                    return
                if scope["path"] == STEPS_ROUTE:
                    route = STEPS_ROUTE
                    await steps_fast(scope, _replay(b"", receive), send_with_id, body)
                    return
            await self.app(scope, _replay(body, receive), send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if response_started:
                raise  # too late for an error response; the server closes the connection
            await internal_error_response(request_id, scope["path"])(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - started, route)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client went away mid-body
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _route_template(self, scope: Scope) -> str:
        route: Any = scope.get("route")
        if route is None:  # answered before routing (413) or matched nothing (404)
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match == Match.FULL:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        return path if isinstance(path, str) else "unmatched"

    def _record(self, scope: Scope, status: int, duration_s: float, route: str | None) -> None:
        method = scope["method"]
        if route is None:
            route = self._route_template(scope)
        self.metrics.record_request(method, route, status, duration_s)
        level = logging.DEBUG if scope["path"] in _QUIET_PATHS else logging.INFO
        if access_log.isEnabledFor(level):
            client = scope.get("client")
            access_log.log(
                level,
                "%s %s %d %.1fms",
                method,
                scope["path"],
                status,
                duration_s * 1000,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(duration_s * 1000, 3),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                },
            )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the buffered body over once, then waits on the real one (disconnects)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
