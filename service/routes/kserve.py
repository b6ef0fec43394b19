"""The KServe V2 inference protocol (`/v2`), with Triton's sequence extension; see service/kserve.py.

Health routes carry no auth (probes); model metadata and inference take the same
`Authorization: Bearer <key>` as API v1 (Triton clients pass it with `headers=`). Errors answer the V2
shape `{"error": "<message>", "code": "..."}` with the API's HTTP statuses.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from service import kserve
from service.deps import ManagerDep, OwnerDep
from service.routes.health import check_ready

router = APIRouter(prefix="/v2", tags=["kserve v2"])


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    extensions = ["sequence", "binary_tensor_data"]
    return {"name": "rnnserve", "version": request.app.version, "extensions": extensions}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: 503 until models are loaded")
async def ready(request: Request) -> dict[str, bool]:
    check_ready(request)
    return {"ready": True}


@router.get("/models/{name}", summary="Model metadata (default version)")
@router.get("/models/{name}/versions/{version}", summary="Model metadata")
async def metadata(
    name: str, owner: OwnerDep, manager: ManagerDep, version: str | None = None
) -> dict[str, Any]:
    return kserve.model_metadata(manager, name, version)


@router.get("/models/{name}/ready", summary="Model readiness (200, or 404 when not served)")
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness")
async def model_ready(
    name: str, owner: OwnerDep, manager: ManagerDep, version: str | None = None
) -> Response:
    kserve.model_metadata(manager, name, version)
    return Response(status_code=200)


@router.post("/models/{name}/infer", summary="Inference on the default version")
@router.post("/models/{name}/versions/{version}/infer", summary="Inference")
async def infer(
    name: str,
    request: Request,
    owner: OwnerDep,
    manager: ManagerDep,
    header_length: Annotated[int | None, Header(alias="Inference-Header-Content-Length")] = None,
    version: str | None = None,
) -> dict[str, Any]:
    body = await request.body()
    return await kserve.infer(manager, owner, name, version, body, header_length)
