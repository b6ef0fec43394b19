"""Every error the service answers, rendered in one place.

API v1 (and everything that is not KServe) answers `{"error": {"code", "message", "details"}}`; the KServe
V2 routes answer the V2 protocol's `{"error": "<message>"}`, with the same `code` beside it, so that
Triton clients read their errors. The HTTP status and headers (Retry-After, WWW-Authenticate) are the
same on both. Sources:

- `ServiceError` from the core or the routes: its own status, code, headers and details.
- FastAPI's request validation: a body that is not JSON, or not a JSON object, is malformed (400
  `bad_request`); a JSON object with wrong or missing fields is invalid input (422 `invalid_input`).
- Starlette's HTTP errors (unknown route 404 `not_found`, 405 `method_not_allowed`).
- Anything else is a bug: `internal_error_response` answers a generic 500 that names the request id
  (the request middleware logs the traceback under the same id).
"""

from __future__ import annotations

import json
import math
import sys
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import jsonin
from service.errors import BadRequest, InvalidInput, ServiceError

KSERVE_PREFIX = "/v2"
# Validation errors on the body as a whole: the body is not JSON, not an object, or absent.
_MALFORMED_TYPES = frozenset({"json_invalid", "dict_type", "model_attributes_type", "missing"})


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: error details that echo such values carry them as strings. UTF-8
    has no lone surrogates: text that echoes one carries it escaped, as JSON writes it (`\\ud800`), so
    that rendering an error about bad text never fails."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8") if not value.isascii() else value
    if isinstance(value, dict):
        return {_finite(str(k)): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render_error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    """The one error response; `path` picks the KServe V2 shape under `/v2`."""
    body: dict[str, Any]
    if path == KSERVE_PREFIX or path.startswith(KSERVE_PREFIX + "/"):
        body = {"error": message, "code": code}
    else:
        body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(_finite(body), status_code=status, headers=headers)


def error_response(error: ServiceError, path: str = "") -> JSONResponse:
    return render_error(error.status, error.code, error.message, error.details, error.headers, path)


def error_json(error: ServiceError) -> str:
    """The error shape as JSON text, for transports without responses (WebSocket messages)."""
    return json.dumps(_finite(error.body()))


def internal_error(request_id: str) -> ServiceError:
    return ServiceError(
        "internal error; the server log has the details under this request id", request_id=request_id
    )


def internal_error_response(request_id: str, path: str = "") -> JSONResponse:
    return error_response(internal_error(request_id), path)


def json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    """Parse a body the framework does not parse (WebSocket messages, KServe requests): 400 unless it
    is a JSON object."""
    try:
        body = jsonin.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise BadRequest(f"{what} nests arrays or objects too deeply") from None
    except ValueError:  # Python refuses to read integers of more digits than this (CVE-2020-10735)
        digits = sys.get_int_max_str_digits()
        raise BadRequest(f"{what} holds an integer of more than {digits} digits") from None
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return body


def validation_error(exc: RequestValidationError) -> ServiceError:
    """400 for a malformed body; 422 for invalid fields, each as `{"field", "message", "type"}` like the
    core's own payload validation (service/predictors/base.py), with `body.` dropped from the field."""
    problems: list[dict[str, str]] = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        kind = str(err.get("type", ""))
        if kind == "json_invalid":
            return BadRequest("the request body is not valid JSON")
        if loc == ["body"] and kind in _MALFORMED_TYPES:
            return BadRequest("the request body must be a JSON object (Content-Type: application/json)")
        field = ".".join(loc[1:] if loc[:1] == ["body"] else loc) or "body"
        problems.append({"field": field, "message": str(err.get("msg", "")), "type": kind})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
    return InvalidInput(f"invalid request: {summary}", errors=problems)


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc, request.url.path)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc), request.url.path)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    message = str(exc.detail)
    if message == phrase:  # Starlette's routing errors say only the phrase; name what was asked for
        message = f"{phrase}: {request.method} {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return render_error(exc.status_code, code, message, headers=headers, path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
