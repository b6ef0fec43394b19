"""`GET /v1/models`: the served model versions."""

from __future__ import annotations

from fastapi import APIRouter

from service import schemas
from service.deps import ManagerDep, OwnerDep
from service.routes import ERRORS

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)


@router.get("", summary="List the served model versions")
async def list_models(owner: OwnerDep, manager: ManagerDep) -> schemas.ModelList:
    return manager.models()
