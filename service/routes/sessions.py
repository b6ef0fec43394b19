"""`/v1/sessions`: create, inspect, reset, export and delete sessions; step and generate.

The step and generate bodies are passed to the manager as raw JSON objects: which schema applies
(lm or sensor) depends on the session's model, so the manager validates them against its task.

The events route is the hot path: `RequestMiddleware` answers `POST /v1/sessions/{id}/events` with
`step_fast`, a plain ASGI handler that skips routing, dependency solving and response validation but
answers exactly what the FastAPI route below answers (same checks in the same order, same errors, same
body). The FastAPI route stays: it documents the operation in OpenAPI and serves a mounted app.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Response
from starlette.types import Receive, Scope, Send

from service import jsonin, schemas
from service.deps import ManagerDep, OwnerDep, bearer_owner, manager_of_state
from service.error_handlers import error_response, render_error
from service.errors import BadRequest, ServiceError
from service.routes import SESSION_ERRORS, model_response

if TYPE_CHECKING:
    from service.sessions import SessionManager

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=SESSION_ERRORS)

_EVENTS_EXAMPLES = {
    "lm tokens": {"value": {"seq": 0, "tokens": ["the", "cat"], "top_k": 5}},
    "lm text": {"value": {"text": "the cat sat"}},
    "sensor": {  # the shipped sensor model: temperature, humidity, power, vibration
        "value": {"seq": 0, "readings": [[21.2, 59.0, 52.3, 3.1]], "timestamps": [1717171717.0]}
    },
}


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body raw: the schema OpenAPI shows for it."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# the events body is an lm or a sensor body, whichever the session's model takes
_EVENTS_BODY = _body_schema(
    {"oneOf": [schemas.LmEvents.model_json_schema(), schemas.SensorEvents.model_json_schema()]}
)
EventsBody = Annotated[dict[str, Any], Body(openapi_examples=_EVENTS_EXAMPLES)]
GenerateBody = Annotated[
    dict[str, Any],
    Body(
        openapi_examples={
            "greedy": {"value": {"max_tokens": 20, "temperature": 0}},
            "sampled": {
                "value": {"max_tokens": 20, "temperature": 0.8, "top_k": 40, "seed": 7, "commit": True}
            },
        }
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=schemas.SessionInfo,
    summary="Create a session (optionally from a snapshot)",
)
async def create_session(body: schemas.CreateSession, owner: OwnerDep, manager: ManagerDep) -> Response:
    info = await manager.create(body, owner)
    return model_response(info, 201, {"Location": f"{router.prefix}/{info.session_id}"})


@router.get(
    "/{session_id}",
    response_model=schemas.SessionInfo,
    summary="A session's model, position (`seq`) and lifetimes",
)
async def get_session(session_id: str, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.get(session_id, owner))


@router.delete(
    "/{session_id}",
    status_code=204,
    response_class=Response,
    summary="End a session; its id answers 410 session_deleted afterwards",
)
async def delete_session(session_id: str, owner: OwnerDep, manager: ManagerDep) -> Response:
    await manager.delete(session_id, owner)
    return Response(status_code=204)


@router.post(
    "/{session_id}/reset", response_model=schemas.SessionInfo, summary="Back to the initial state, seq 0"
)
async def reset_session(session_id: str, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.reset(session_id, owner))


@router.get(
    "/{session_id}/state", response_model=schemas.Snapshot, summary="Export the session's state as a snapshot"
)
async def export_state(session_id: str, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.export_state(session_id, owner))


@router.post(
    "/{session_id}/events",
    response_model=schemas.StepResponse,
    summary="Apply events; one output per event",
    openapi_extra=_EVENTS_BODY,
)
async def step(session_id: str, body: EventsBody, owner: OwnerDep, manager: ManagerDep) -> Response:
    return Response(await manager.step_json(session_id, owner, body), media_type="application/json")


@router.post(
    "/{session_id}/generate",
    response_model=schemas.GenerateResponse,
    summary="lm: generate a continuation",
    openapi_extra=_body_schema(schemas.GenerateRequest.model_json_schema()),
)
async def generate(session_id: str, body: GenerateBody, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.generate(session_id, owner, body))


# ---- the hot path ----------------------------------------------------------------------------------

EVENTS_ROUTE = f"{router.prefix}/{{session_id}}/events"  # the route template, for metrics
_EVENTS_PREFIX = f"{router.prefix}/"
_EVENTS_SUFFIX = "/events"
_MALFORMED = "the request body must be a JSON object (Content-Type: application/json)"
_JSON_HEADERS = (b"content-type", b"application/json")


def session_id_in(path: str, suffix: str) -> str | None:
    """The `{session_id}` (Starlette's `[^/]+`) of a path `/v1/sessions/{session_id}<suffix>`, or None
    for any other path."""
    if path.startswith(_EVENTS_PREFIX) and path.endswith(suffix):
        session_id = path[len(_EVENTS_PREFIX) : -len(suffix)]
        if session_id and "/" not in session_id:
            return session_id
    return None


def events_session_id(path: str) -> str | None:
    """The `{session_id}` of an events path, or None for any other path."""
    return session_id_in(path, _EVENTS_SUFFIX)


class _Unparsable(Exception):
    """The body is JSON-typed but not text FastAPI can parse (400 'There was an error parsing the body')."""


_ABSENT = object()


def _json_content(content_type: str) -> bool:
    if content_type == "application/json":
        return True
    message = email.message.Message()  # FastAPI's own test, for every other spelling
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _payload(body: bytes, content_type: str | None) -> Any:
    """The body as FastAPI's route reads it: JSON when declared as JSON, the bytes otherwise (which the
    object check then refuses), `_ABSENT` when empty. Read as the standard parser (FastAPI's) reads it,
    faster (`service.jsonin`)."""
    if not body:
        return _ABSENT
    if not content_type or not _json_content(content_type):
        return body
    try:
        return jsonin.loads(body)
    except json.JSONDecodeError:
        raise BadRequest("the request body is not valid JSON") from None
    except Exception as exc:
        raise _Unparsable from exc


def _content_type_and_authorization(scope: Scope) -> tuple[str | None, str | None]:
    """The first `Content-Type` and `Authorization` headers, in one pass."""
    content_type = authorization = None
    for key, value in scope["headers"]:
        if key == b"content-type":
            if content_type is None:
                content_type = bytes(value).decode("latin-1")
        elif key == b"authorization" and authorization is None:
            authorization = bytes(value).decode("latin-1")
    return content_type, authorization


async def step_fast(scope: Scope, receive: Receive, send: Send, session_id: str, body: bytes) -> None:
    """`POST /v1/sessions/{session_id}/events` as a plain ASGI handler (see the module docstring)."""

    async def step(manager: SessionManager, owner: str | None, payload: dict[str, Any]) -> bytes:
        return await manager.step_json(session_id, owner, payload)

    await answer_fast(scope, receive, send, body, step)


# (manager, owner, the JSON object body) -> the JSON answer
FastCall = Callable[["SessionManager", str | None, dict[str, Any]], Awaitable[bytes]]


async def answer_fast(scope: Scope, receive: Receive, send: Send, body: bytes, call: FastCall) -> None:
    """Answer a POST whose body is one JSON object, as a FastAPI route with a `dict` body, an owner
    and a manager dependency would: the same checks in the same order, the same errors."""
    state = scope["app"].state
    try:
        content_type, authorization = _content_type_and_authorization(scope)
        payload = _payload(body, content_type)
        owner = bearer_owner(state.auth, authorization)
        manager = manager_of_state(state)
        if not isinstance(payload, dict):
            raise BadRequest(_MALFORMED)
        content = await call(manager, owner, payload)
    except ServiceError as exc:
        await error_response(exc, scope["path"])(scope, receive, send)
        return
    except _Unparsable:
        await render_error(400, "bad_request", "There was an error parsing the body", path=scope["path"])(
            scope, receive, send
        )
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(content)).encode()), _JSON_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": content})
