"""`/v1/sessions`: create, inspect, reset, export and delete sessions; step and generate.

The step and generate bodies are passed to the manager as raw JSON objects: which schema applies
(lm or sensor) depends on the session's model, so the manager validates them against its task.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from service import schemas
from service.deps import ManagerDep, OwnerDep
from service.routes import SESSION_ERRORS, model_response

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=SESSION_ERRORS)

_EVENTS_EXAMPLES = {
    "lm tokens": {"value": {"seq": 0, "tokens": ["the", "cat"], "top_k": 5}},
    "lm text": {"value": {"text": "the cat sat"}},
    "sensor": {"value": {"seq": 0, "readings": [[20.1, 1001.5, 0.52]], "timestamps": [1717171717.0]}},
}
EventsBody = Annotated[dict[str, Any], Body(openapi_examples=_EVENTS_EXAMPLES)]
GenerateBody = Annotated[dict[str, Any], Body(openapi_examples={
    "greedy": {"value": {"max_tokens": 20, "temperature": 0}},
    "sampled": {"value": {"max_tokens": 20, "temperature": 0.8, "top_k": 40, "seed": 7, "commit": True}},
})]


@router.post("", status_code=201, response_model=schemas.SessionInfo,
             summary="Create a session (optionally from a snapshot)")
async def create_session(body: schemas.CreateSession, owner: OwnerDep, manager: ManagerDep) -> Response:
    info = await manager.create(body, owner)
    return model_response(info, 201, {"Location": f"{router.prefix}/{info.session_id}"})


@router.get("/{session_id}", response_model=schemas.SessionInfo,
            summary="A session's model, position (`seq`) and lifetimes")
async def get_session(session_id: str, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.get(session_id, owner))


@router.delete("/{session_id}", status_code=204, response_class=Response,
               summary="End a session; its id answers 410 session_deleted afterwards")
async def delete_session(session_id: str, owner: OwnerDep, manager: ManagerDep) -> Response:
    await manager.delete(session_id, owner)
    return Response(status_code=204)


@router.post("/{session_id}/reset", response_model=schemas.SessionInfo,
             summary="Back to the initial state, seq 0")
async def reset_session(session_id: str, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.reset(session_id, owner))


@router.get("/{session_id}/state", response_model=schemas.Snapshot,
            summary="Export the session's state as a snapshot")
async def export_state(session_id: str, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.export_state(session_id, owner))


@router.post("/{session_id}/events", response_model=schemas.StepResponse,
             summary="Apply events; one output per event")
async def step(session_id: str, body: EventsBody, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.step(session_id, owner, body))


@router.post("/{session_id}/generate", response_model=schemas.GenerateResponse,
             summary="lm: generate a continuation")
async def generate(session_id: str, body: GenerateBody, owner: OwnerDep, manager: ManagerDep) -> Response:
    return model_response(await manager.generate(session_id, owner, body))
