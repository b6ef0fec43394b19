"""Triton's model repository extension (`/v2/repository`): index, load, unload.

The same operations as the admin routes (service/model_control.py), in Triton's shapes: index answers
a JSON array of `{name, version, state, reason}`; load and unload answer 200 with an empty body. Load
loads every version of the model found in the models directory; unload unloads every loaded version
with the server's unload_policy. Triton's load parameters (`config`, `file:*`: a config or files sent
with the request) do not apply to this server and are refused with 400; `unload_dependents` is
accepted and means nothing here (no ensembles). Auth as the admin routes.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from service import schemas
from service.deps import AdminDep, ManagerDep
from service.errors import BadRequest
from service.v2_schemas import v2_errors

router = APIRouter(
    prefix="/v2/repository", tags=["kserve v2"], responses=v2_errors(400, 401, 403, 404, 413, 422, 503)
)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _parameters(body: dict[str, Any], allowed: set[str]) -> None:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest("`parameters` must be an object")
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        raise BadRequest(
            f"parameters {unknown} are not supported: this server loads artifacts from its models "
            "directory only",
            supported=sorted(allowed),
        )
    extra = sorted(set(body) - {"parameters"})
    if extra:
        raise BadRequest(f"unknown fields {extra}")


@router.post("/index", summary="Every version loaded or found in the models directory")
async def index(request: Request, _: AdminDep, manager: ManagerDep) -> list[schemas.RepositoryEntry]:
    body = await _body(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool) or set(body) - {"ready"}:
        raise BadRequest('the index body is `{"ready": true|false}`')
    entries = manager.control.index()
    return [e for e in entries if e.state == "READY"] if ready else entries


@router.post("/models/{name}/load", summary="Load every version of a model from the models directory")
async def load(name: str, request: Request, _: AdminDep, manager: ManagerDep) -> Response:
    _parameters(await _body(request), set())
    await manager.control.load_name(name)
    return Response(status_code=200)


@router.post("/models/{name}/unload", summary="Unload every version of a model (the unload_policy)")
async def unload(name: str, request: Request, _: AdminDep, manager: ManagerDep) -> Response:
    _parameters(await _body(request), {"unload_dependents"})
    await manager.control.unload_name(name)
    return Response(status_code=200)
