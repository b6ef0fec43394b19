"""The application factory: `create_app(settings)` wires settings, auth, metrics, routes and errors.

Nothing loads at import or in the factory. The lifespan creates the session manager and loads the
models in the background, so `/healthz` answers at once and `/readyz` (and every route that needs a
model) answers 503 `not_ready` until loading is done; a load that fails keeps the server unready with
the reason in `/readyz`, and `app.state.loading` tells the command line to exit non-zero. On shutdown
(uvicorn has already stopped taking connections and finished the in-flight requests) the manager
stops: it refuses new work, drains in-flight batches and writes the session snapshot.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service.auth import Authenticator
from service.docs import install_offline_docs
from service.error_handlers import install_error_handlers
from service.metrics import Metrics
from service.middleware import RequestMiddleware
from service.routes import admin, health, kserve, models, pages, repository, sessions, steps, stream
from service.sessions import SessionManager
from service.settings import Settings, get_settings

log = logging.getLogger("rnnserve")
# allocations between young collections (Python's default 700): a bulk request builds tens of thousands
# of short-lived answer objects that live until it is answered, and each young collection walks them
# all again; at 50,000 they are walked about once (benchmarks/README.md, "Serving cost")
GC_YOUNG = 50_000


def _version() -> str:
    try:
        return metadata.version("rnnserve")
    except metadata.PackageNotFoundError:
        return "0+unknown"


async def _start(app: FastAPI, manager: SessionManager) -> bool:
    """Load models and restore sessions; True once ready. A failure is logged and kept for /readyz."""
    try:
        await manager.start()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        app.state.startup_error = f"{type(exc).__name__}: {exc}"
        log.critical("the service could not start: %s", app.state.startup_error, exc_info=True)
        return False
    # what start-up made (FastAPI, pydantic, ONNX Runtime, the models) lives as long as the process:
    # out of the collector's reach, a full collection no longer walks it (bulk requests make many
    # short-lived objects and trigger collections often)
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    log.info(
        "ready: %d model version(s) loaded from %s",
        len(manager.models().models),
        app.state.settings.models_dir,
    )
    return True


async def _start_grpc(app: FastAPI) -> Any:
    """The KServe V2 gRPC server on RNNSERVE_GRPC_PORT (None when disabled); its bound port is kept in
    `app.state.grpc_port` for the command line's banner."""
    settings: Settings = app.state.settings
    app.state.grpc_port = None
    if settings.grpc_port is None:
        return None
    from service import grpc_server

    server, port = await grpc_server.start(
        app.state, app.version, settings.host, settings.grpc_port, settings.max_body_bytes
    )
    app.state.grpc_port = port
    log.info("gRPC (KServe V2) listening on %s:%d", settings.host, port)
    return server


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not app.state.auth.enabled:
        log.warning(
            "AUTH IS OFF: no API keys configured (RNNSERVE_API_KEYS, RNNSERVE_API_KEYS_FILE); "
            "anyone who can reach this port can use every session"
        )
    manager = SessionManager(settings, app.state.metrics)
    app.state.manager = manager
    app.state.shutting_down = False
    app.state.startup_error = None
    loading = asyncio.create_task(_start(app, manager), name="rnnserve-start")
    app.state.loading = loading
    grpc = await _start_grpc(app)
    try:
        yield
    finally:
        app.state.shutting_down = True
        if grpc is not None:  # in-flight gRPC calls finish first, as uvicorn lets HTTP ones finish
            await grpc.stop(settings.shutdown_drain_s)
        if not loading.done():
            loading.cancel()
        # a manager that never started holds nothing to drain or snapshot
        if (await asyncio.gather(loading, return_exceptions=True))[0] is True:
            log.info("shutting down: draining in-flight batches, writing the session snapshot")
            await manager.stop()
        log.info("stopped")


class _App(FastAPI):
    """FastAPI, with the hot paths (`POST /v1/sessions/{id}/events`, `POST /v1/steps` and the two
    WebSocket streams, `RequestMiddleware.claims`) answered before FastAPI's own middleware stack
    (error pages, native telemetry, body limit, exception handlers, routing): the request middleware
    answers them by itself, with the same envelope (request id, body limit, metrics, access log,
    last-resort 500) as every other request, which it sees inside that stack. A stream's every message
    resumes its connection's coroutines: the fewer frames between uvicorn and the stream, the less
    each costs."""

    fast: RequestMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and not self.root_path and fast.claims(scope):
            scope["app"] = self
            await fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else get_settings()
    app = _App(
        title="rnnserve",
        version=_version(),
        summary="Stateful streaming inference for recurrent networks (Elman RNN, GRU, LSTM)",
        description="Sessions keep their hidden state on the server; stream events one at a time over "
        "REST (`/v1`), a WebSocket per session, or the KServe V2 protocol with Triton's sequence "
        'extension (`/v2`). Errors: `{"error": {"code", "message", "details"}}`.',
        lifespan=_lifespan,
        docs_url=None,  # served from local assets by install_offline_docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.auth = Authenticator(settings.all_api_keys())
    app.state.admin_auth = Authenticator(frozenset(settings.admin_keys))
    for module in (models, sessions, stream, steps, kserve, health, admin, repository, pages):
        app.include_router(module.router)
    install_offline_docs(app)
    install_error_handlers(app)
    envelope: dict[str, Any] = {
        "metrics": app.state.metrics,
        "max_body_bytes": settings.max_body_bytes,
        "routes": app.router.routes,
    }
    app.add_middleware(RequestMiddleware, **envelope)
    # the same envelope outside FastAPI's stack, for the requests it answers alone (never calls its app)
    app.fast = RequestMiddleware(app.router, **envelope)
    return app
