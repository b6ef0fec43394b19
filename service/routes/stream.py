"""`WS /v1/sessions/{session_id}/stream`: one session's events over one WebSocket.

Each message the client sends is an `events` body (`{"seq"?, "tokens" | "text" | "readings", ...}`,
JSON text or UTF-8 bytes); each reply is, in the same order, the `events` answer or the error shape
`{"error": {"code", "message", "details"}}`. A bad message is answered and the stream stays open.

Auth (when keys are configured), checked once at connect:
- `Authorization: Bearer <key>` on the upgrade request (servers, CLI clients), or
- `?token=<key>` in the URL, for browsers, which cannot set headers on a WebSocket (the access log
  never records query strings; prefer the header where the client allows it).

A connection that cannot start (no or bad key, unknown or ended session, server not ready) is
accepted, sent the error shape, and closed with code 4000 + the HTTP status (4401, 4404, 4410, 4503)
so that browsers, which never see a refused upgrade's status, can read why. When the server shuts
down mid-stream, uvicorn closes the stream with 1012 (service restart): reconnect and resume from
`seq` (a step that was answered is not applied twice). A message larger than RNNSERVE_MAX_BODY_BYTES
closes the stream with 1009 (message too big), as the server's `ws_max_size`.

The hot path: `RequestMiddleware` runs both streams (this one and bulk's `/v1/stream`) through
`websocket_fast`, claimed before FastAPI's middleware stack (`service.app._App`), and `serve_messages`
reads and answers on the connection's own ASGI receive and send, so that a message and its reply do
not pass through FastAPI's and Starlette's wrappers; the FastAPI routes stay (a mounted app).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketState

from service.deps import authenticator_of, manager_of
from service.error_handlers import error_json, internal_error, json_object
from service.errors import ServiceError, ShuttingDown
from service.metrics import Metrics
from service.routes.sessions import session_id_in
from service.sessions import SessionManager

router = APIRouter(tags=["sessions"])
ROUTE = "/v1/sessions/{session_id}/stream"
_SUFFIX = "/stream"
CLOSE_SERVICE_RESTART = 1012
CLOSE_INTERNAL_ERROR = 1011

log = logging.getLogger("rnnserve.errors")


async def refuse(websocket: WebSocket, error: ServiceError) -> None:
    await websocket.accept()
    await websocket.send_text(error_json(error))
    await websocket.close(code=4000 + error.status, reason=error.code)


# the route's own check before its stream starts, given the manager and the caller's owner id
OpenCheck = Callable[[SessionManager, str | None], Awaitable[object]]


async def accept(
    websocket: WebSocket, token: str | None, check: OpenCheck
) -> tuple[SessionManager, str | None] | None:
    """Start a stream: auth (header or `?token=`), a ready manager, then the route's `check`; accepted:
    (manager, owner). Anything refused is answered by `refuse` (close 4000 + status) and gives None."""
    try:
        owner = authenticator_of(websocket).owner(websocket.headers.get("authorization"), token)
        manager = manager_of(websocket)
        await check(manager, owner)
    except ServiceError as error:
        await refuse(websocket, error)
        return None
    await websocket.accept()
    return manager, owner


@router.websocket(ROUTE)
async def stream(websocket: WebSocket, session_id: str, token: str | None = None) -> None:
    opened = await accept(websocket, token, lambda manager, owner: manager.get(session_id, owner))
    if opened is None:
        return
    manager, owner = opened

    async def answer(raw: str | bytes) -> bytes:
        return await manager.step_json(session_id, owner, json_object(raw, "the message (an events body)"))

    await serve_messages(websocket, ROUTE, answer, f"the stream of session {session_id}")


# (the connection, its `?token=`) -> the stream served to its end
Stream = Callable[[WebSocket, str | None], Awaitable[None]]


def websocket_fast(scope: Scope, bulk: Stream) -> Callable[[Scope, Receive, Send], Awaitable[None]] | None:
    """The ASGI handler of a WebSocket scope on one of the two streams (`bulk`: `/v1/stream`'s), as the
    FastAPI routes would run it (path parameter, `token` query parameter); None for any other path."""
    path = scope["path"]
    if scope.get("root_path"):
        return None
    if path == "/v1/stream":
        run: Stream = bulk
    else:
        session_id = session_id_in(path, _SUFFIX)
        if session_id is None:
            return None

        async def run(websocket: WebSocket, token: str | None) -> None:
            await stream(websocket, session_id, token)

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await run(websocket, websocket.query_params.get("token"))

    return handler


async def serve_messages(
    websocket: WebSocket, route: str, answer: Callable[[str | bytes], Awaitable[bytes]], what: str
) -> None:
    """Answer an accepted WebSocket's messages in order until the client leaves: each message's reply
    is `answer(message)` or the error shape. Shared by both streams, so that both close alike: 1012
    when the server shuts down, 1011 after a bug (the error is logged, and the client is told)."""
    metrics: Metrics = websocket.app.state.metrics
    # The connection's own ASGI receive and send: past the accept, Starlette's state checks add nothing
    # to a message but two frames each way. What they did that matters here is kept: a send that finds
    # the client gone ends the stream, as a disconnect does.
    receive, send = websocket._receive, websocket._send
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            started, status = time.perf_counter(), 500
            try:
                text = message.get("text")
                content = await answer(text if text is not None else message.get("bytes") or b"")
                status = 200
                try:
                    await send({"type": "websocket.send", "text": content.decode()})
                except OSError:  # uvicorn's ClientDisconnected: the client left before its answer
                    return
            except ServiceError as error:
                status = error.status
                await websocket.send_text(error_json(error))
                if isinstance(error, ShuttingDown):
                    await websocket.close(code=CLOSE_SERVICE_RESTART, reason=error.code)
                    return
            finally:
                metrics.record_request("WS", route, status, time.perf_counter() - started)
    except WebSocketDisconnect:
        return
    except Exception:
        request_id = websocket.scope.get("state", {}).get("request_id", "")
        log.exception("unhandled error in %s", what)
        if websocket.application_state == WebSocketState.CONNECTED:
            await websocket.send_text(error_json(internal_error(request_id)))
            await websocket.close(code=CLOSE_INTERNAL_ERROR)
