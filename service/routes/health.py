"""Liveness, readiness and Prometheus metrics (no auth: probes and scrapers carry no key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep, manager_of
from service.errors import NotReady

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: 200 while the process serves HTTP")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def check_ready(request: Request) -> int:
    """The number of loaded model versions; NotReady/ShuttingDown (503) unless at least one serves."""
    manager = manager_of(request)
    count = len(manager.models().models)
    if count == 0:
        raise NotReady(
            f"no model is loaded from {request.app.state.settings.models_dir}",
            refused=dict(manager.registry.errors),
        )
    return count


@router.get("/readyz", summary="Readiness: 503 until models are loaded, and during shutdown")
async def readyz(request: Request) -> dict[str, Any]:
    return {"status": "ready", "models": check_ready(request)}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(registry: MetricsDep) -> Response:
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
