"""`/v1/admin/models`: load, make default and unload model versions on a running server.

Every route needs an admin key (RNNSERVE_ADMIN_KEYS) when one is set; see `deps.require_admin`. The
operations are service/model_control.py's, shared with Triton's repository API and the watcher.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query

from service import schemas
from service.deps import AdminDep, ManagerDep
from service.routes import ADMIN_ERRORS

router = APIRouter(prefix="/v1/admin/models", tags=["admin"], responses=ADMIN_ERRORS)

PolicyQuery = Query(
    None, description="drain (sessions go on until they end) or end (410 at once); default: the setting"
)


@router.get("", summary="Every version loaded or found in the models directory, with its state")
async def repository(_: AdminDep, manager: ManagerDep) -> list[schemas.RepositoryEntry]:
    return manager.control.index()


@router.post("/reload", summary="Load the new version directories now (what the watcher does)")
async def reload(_: AdminDep, manager: ManagerDep) -> schemas.ModelList:
    loaded = await manager.control.scan()
    await manager.control.finish_drains()
    return schemas.ModelList(models=loaded)


@router.post("/{name}/versions/{version}/load", summary="Load one version from the models directory")
async def load(name: str, version: str, _: AdminDep, manager: ManagerDep) -> schemas.ModelInfo:
    return await manager.control.load(name, version)


@router.post("/{name}/versions/{version}/unload", summary="Unload one version (drain or end its sessions)")
async def unload(
    name: str,
    version: str,
    _: AdminDep,
    manager: ManagerDep,
    policy: Literal["drain", "end"] | None = PolicyQuery,
) -> schemas.ModelInfo:
    return await manager.control.unload(name, version, policy)


@router.put("/{name}/default", summary="Pin the version new sessions get (version null: the highest)")
async def set_default(
    name: str, body: schemas.SetDefault, _: AdminDep, manager: ManagerDep
) -> schemas.ModelInfo:
    return await manager.control.set_default(name, body.version)
