"""The KServe V2 inference protocol (`/v2`), with Triton's sequence extension; see service/kserve.py.

Health routes carry no auth (probes); everything else takes the same `Authorization: Bearer <key>` as
API v1 (Triton clients pass it with `headers=`). Errors answer the V2 shape
`{"error": "<message>", "code": "..."}` with the API's HTTP statuses. A version is only ever a path
segment (`/versions/{version}`): the unversioned routes take no `version` query parameter.

Triton extensions this server does not implement (trace, logging, shared memory, generate) answer 400
`extension_not_supported` with the list of those it does, rather than a bare 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse

from service import kserve, triton_config
from service.deps import ManagerDep, MetricsDep, OwnerDep, SettingsDep
from service.errors import BadRequest
from service.routes.health import check_ready
from service.v2_schemas import InferResponse, ModelMetadata, ServerMetadata, infer_request_body, v2_errors
from service.v2_tensors import decode_http, http_body

# OpenAPI: every /v2 route may answer these, in the V2 error shape; inference adds its own below
router = APIRouter(prefix="/v2", tags=["kserve v2"], responses=v2_errors(400, 401, 404, 413, 422, 503))
_INFER: dict[int | str, dict[str, Any]] = {
    200: {  # documented, not validated: a response_model would add absent fields as null
        "model": InferResponse,
        "description": "JSON, or (binary outputs asked for) JSON then binary data",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **v2_errors(409, 410, 429),
}

EXTENSIONS = [
    "sequence",
    "binary_tensor_data",
    "parameters",
    "model_configuration",
    "statistics",
    "model_repository",  # HTTP only (service/routes/repository.py)
]


async def _path_version(request: Request) -> str | None:
    version: str | None = request.path_params.get("version")
    return version


VersionDep = Annotated[str | None, Depends(_path_version)]


@router.get("", summary="Server metadata", responses={200: {"model": ServerMetadata}})
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "rnnserve", "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: 503 until models are loaded")
async def ready(request: Request) -> dict[str, bool]:
    check_ready(request)
    return {"ready": True}


@router.get("/models/stats", summary="Statistics of every model version (Triton's statistics extension)")
async def all_statistics(owner: OwnerDep, manager: ManagerDep, metrics: MetricsDep) -> dict[str, Any]:
    return triton_config.statistics(manager.registry.all(), metrics)


@router.get("/models/{name}/stats", summary="Statistics of every version of a model")
@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of a model version")
async def statistics(
    name: str, owner: OwnerDep, manager: ManagerDep, metrics: MetricsDep, version: VersionDep
) -> dict[str, Any]:
    if version is not None:
        models = [manager.registry.get(name, version)]
    else:
        manager.registry.get(name)  # 404 for an unknown name
        models = [m for m in manager.registry.all() if m.name == name]
    return triton_config.statistics(models, metrics)


@router.get("/models/{name}/config", summary="Triton model configuration (default version)")
@router.get("/models/{name}/versions/{version}/config", summary="Triton model configuration")
async def config(
    name: str, owner: OwnerDep, manager: ManagerDep, settings: SettingsDep, version: VersionDep
) -> dict[str, Any]:
    model = manager.registry.get(name, version)
    return triton_config.model_config(model, settings, manager.registry.default_version(name))


@router.get("/models/{name}/vocab", summary="lm vocabulary: token id i is `vocab[i]` (an rnnserve extension)")
@router.get("/models/{name}/versions/{version}/vocab", summary="lm vocabulary of a model version")
async def vocab(name: str, owner: OwnerDep, manager: ManagerDep, version: VersionDep) -> dict[str, Any]:
    model = manager.registry.get(name, version)
    if model.vocab is None:
        raise BadRequest(f"model {name!r} is a {model.task} model: only lm models have a vocabulary")
    return {"name": model.name, "version": model.version, "vocab": model.vocab}


_METADATA: dict[int | str, dict[str, Any]] = {200: {"model": ModelMetadata}}


@router.get("/models/{name}", summary="Model metadata (default version)", responses=_METADATA)
@router.get("/models/{name}/versions/{version}", summary="Model metadata", responses=_METADATA)
async def metadata(name: str, owner: OwnerDep, manager: ManagerDep, version: VersionDep) -> dict[str, Any]:
    return kserve.model_metadata(manager, name, version)


@router.get(
    "/models/{name}/ready", summary="Model readiness (200, or 404 when not served)", response_class=Response
)
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness", response_class=Response)
async def model_ready(name: str, owner: OwnerDep, manager: ManagerDep, version: VersionDep) -> Response:
    kserve.model_metadata(manager, name, version)
    return Response(status_code=200)


_INFER_BODY = infer_request_body()


@router.post(
    "/models/{name}/infer",
    summary="Inference on the default version",
    responses=_INFER,
    openapi_extra=_INFER_BODY,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference",
    responses=_INFER,
    openapi_extra=_INFER_BODY,
)
async def infer(
    name: str,
    request: Request,
    owner: OwnerDep,
    manager: ManagerDep,
    version: VersionDep,
    header_length: Annotated[int | None, Header(alias="Inference-Header-Content-Length")] = None,
) -> Response:
    decoded, tail = decode_http(await request.body(), header_length)
    result = await kserve.infer(manager, owner, name, version, decoded, tail)
    body, json_length = http_body(result.header, result.outputs)
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


def _not_supported(extension: str) -> JSONResponse:
    message = (
        f"this server does not implement Triton's {extension} extension; "
        f"it implements {', '.join(EXTENSIONS)} (see GET /v2)"
    )
    return JSONResponse({"error": message, "code": "extension_not_supported"}, status_code=400)


def _refuse(path: str, extension: str) -> None:
    async def refuse() -> Response:
        return _not_supported(extension)

    router.add_api_route(
        path, refuse, methods=["GET", "POST"], include_in_schema=False, name=f"v2 {extension} {path}"
    )


for _path, _extension in (
    ("/trace/setting", "trace"),
    ("/models/{name}/trace/setting", "trace"),
    ("/logging", "logging"),
    ("/systemsharedmemory/{rest:path}", "system_shared_memory"),
    ("/cudasharedmemory/{rest:path}", "cuda_shared_memory"),
    ("/models/{name}/generate", "generate"),
    ("/models/{name}/generate_stream", "generate"),
    ("/models/{name}/versions/{version}/generate", "generate"),
    ("/models/{name}/versions/{version}/generate_stream", "generate"),
):
    _refuse(_path, _extension)
