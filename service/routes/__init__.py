"""Thin routers, one per resource: they parse, call the session manager, and shape the answer."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel

from service.schemas import ErrorBody


def model_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialize with pydantic's own JSON encoder: no second validation pass on the hot path, and a
    non-finite float becomes null instead of failing the response."""
    return Response(
        model.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json"
    )


# For the OpenAPI page: the statuses every authenticated v1 route may answer, all in the error shape.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "malformed request"),
        (401, "missing or wrong API key"),
        (404, "unknown model or session (or a session of another key)"),
        (413, "body too large"),
        (422, "invalid values"),
        (503, "not ready or shutting down"),
    )
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {"model": ErrorBody, "description": "model management is off, or the key is not an admin key"},
}
SESSION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"model": ErrorBody, "description": "`seq` conflict; details carry `expected_seq`"},
    410: {"model": ErrorBody, "description": "session expired, evicted or deleted"},
    429: {"model": ErrorBody, "description": "capacity or rate limit; see Retry-After"},
}
