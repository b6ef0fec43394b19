"""Bulk ingest: `POST /v1/steps` and `WS /v1/stream`, many sessions' steps per request or message.

Each body (and each WebSocket message) is `{"steps": [{"session_id", "seq"?, ...events body...}]}`;
the answer is `{"results": [...]}`, one per step in order: the events answer with its `session_id`, or
`{"session_id", "error": {...}}` for a step that failed (alone). The envelope itself (not an object, no
`steps` list, more than RNNSERVE_MAX_STEPS_PER_REQUEST steps) is refused as a whole: 400 / 422 / 413.
The work is in `service.bulk`; the WebSocket checks auth once at connect, as the per-session stream.
`RequestMiddleware` answers `POST /v1/steps` with `steps_fast`, outside FastAPI's routing and
dependency solving, as the events route (a 1,000-step body is parsed by orjson: `service.jsonin`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response, WebSocket
from starlette.types import Receive, Scope, Send

from service import schemas
from service.deps import ManagerDep, OwnerDep
from service.error_handlers import json_object
from service.routes import SESSION_ERRORS
from service.routes.sessions import answer_fast
from service.routes.stream import accept, serve_messages
from service.sessions import SessionManager

router = APIRouter(tags=["sessions"], responses=SESSION_ERRORS)
STREAM_ROUTE = "/v1/stream"

_EXAMPLES = {
    "sensors": {
        "value": {
            "steps": [
                {"session_id": "9f1c...", "readings": [[20.1, 1001.5, 0.52]]},
                {"session_id": "4b7e...", "seq": 12, "readings": [[19.8, 1002.0, 0.49]]},
            ]
        }
    },
    "lm": {"value": {"steps": [{"session_id": "a1...", "tokens": ["the"], "top_k": 3}]}},
}
# the body is read as a plain object (a bad step fails alone, not the request); documented as this
_BODY_SCHEMA = {
    "title": "StepsRequest",
    "description": schemas.StepsRequest.__doc__,
    "type": "object",
    "properties": {"steps": {"type": "array", "items": schemas.BulkStep.model_json_schema()}},
    "required": ["steps"],
    "additionalProperties": False,
}
StepsBody = Annotated[dict[str, Any], Body(openapi_examples=_EXAMPLES)]


STEPS_ROUTE = "/v1/steps"


async def steps_fast(scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
    """`POST /v1/steps` as a plain ASGI handler, as the events route's `step_fast` (the route below
    answers the same, and documents it)."""

    async def steps(manager: SessionManager, owner: str | None, payload: dict[str, Any]) -> bytes:
        return await manager.steps_json(owner, payload)

    await answer_fast(scope, receive, send, body, steps)


@router.post(
    STEPS_ROUTE,
    response_model=schemas.StepsResponse,
    summary="Bulk ingest: steps of many sessions in one request, one result per step",
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": _BODY_SCHEMA}}}},
)
async def steps(body: StepsBody, owner: OwnerDep, manager: ManagerDep) -> Response:
    return Response(await manager.steps_json(owner, body), media_type="application/json")


async def _check_open(manager: SessionManager, owner: str | None) -> None:
    manager.check_open()  # no session to look up: each message names its sessions


@router.websocket(STREAM_ROUTE)
async def stream(websocket: WebSocket, token: str | None = None) -> None:
    """(`service.routes.stream.websocket_fast` runs this on the server's own receive and send.)"""
    opened = await accept(websocket, token, _check_open)
    if opened is None:
        return
    manager, owner = opened

    async def answer(raw: str | bytes) -> bytes:
        return await manager.steps_json(owner, json_object(raw, "the message (a steps body)"))

    await serve_messages(websocket, STREAM_ROUTE, answer, "the bulk stream")
