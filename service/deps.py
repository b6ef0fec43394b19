"""FastAPI dependencies as `Annotated` aliases: what a route needs, declared in its signature.

Everything comes from `app.state`, set by `create_app` (settings, metrics, authenticator) and by its
lifespan (the session manager), so two apps in one process never share anything. The dependencies are
`async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per
dependency per request on the hot path.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import State
from starlette.requests import HTTPConnection

from service.auth import Authenticator
from service.errors import Forbidden, NotReady, ShuttingDown
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="an API key from RNNSERVE_API_KEYS (when auth is on)")


async def get_app_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


async def get_metrics(conn: HTTPConnection) -> Metrics:
    metrics: Metrics = conn.app.state.metrics
    return metrics


def authenticator_of(conn: HTTPConnection) -> Authenticator:
    auth: Authenticator = conn.app.state.auth
    return auth


def manager_of(conn: HTTPConnection) -> SessionManager:
    """The session manager, once its models are loaded; 503 before that and during shutdown."""
    return manager_of_state(conn.app.state)


def manager_of_state(state: State) -> SessionManager:
    """`manager_of` for code that holds the app's state rather than a connection (the fast routes)."""
    if getattr(state, "shutting_down", False):
        raise ShuttingDown("the server is shutting down")
    manager: SessionManager | None = getattr(state, "manager", None)
    if manager is None or not manager.ready:
        error: str | None = getattr(state, "startup_error", None)
        raise NotReady("the server is starting: models are loading", **({"reason": error} if error else {}))
    return manager


def bearer_owner(auth: Authenticator, authorization: str | None) -> str | None:
    """`get_owner` without FastAPI: the owner id of an `Authorization` header read exactly as
    `HTTPBearer(auto_error=False)` reads it (anything but `Bearer <credentials>` counts as no key)."""
    if not auth.enabled:
        return None
    token: str | None = None
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme and credentials and scheme.lower() == "bearer":
            token = credentials
    return auth.owner(token=token)


async def get_manager(conn: HTTPConnection) -> SessionManager:
    return manager_of(conn)


async def get_authenticator(conn: HTTPConnection) -> Authenticator:
    return authenticator_of(conn)


async def get_owner(
    auth: Annotated[Authenticator, Depends(get_authenticator)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The caller's owner id (a fingerprint of its key); None when auth is off; 401 otherwise."""
    return auth.owner(token=credentials.credentials if credentials is not None else None)


async def require_admin(
    conn: HTTPConnection,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Model management (admin routes, Triton's repository API): an admin key when any is set; open
    when auth is off altogether; refused (403) when API keys are on but no admin key is set, so that
    turning auth on never leaves model management open by accident."""
    admin: Authenticator = conn.app.state.admin_auth
    token = credentials.credentials if credentials is not None else None
    if admin.enabled:
        admin.owner(token=token)
    elif authenticator_of(conn).enabled:
        raise Forbidden(
            "model management is off: API keys are on and no admin key is set (RNNSERVE_ADMIN_KEYS)"
        )


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ManagerDep = Annotated[SessionManager, Depends(get_manager)]
OwnerDep = Annotated[str | None, Depends(get_owner)]
AdminDep = Annotated[None, Depends(require_admin)]
