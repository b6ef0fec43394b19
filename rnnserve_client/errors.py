"""Typed errors: one class per error code the server answers, grouped by HTTP status.

The server answers every error as `{"error": {"code", "message", "details"}}` (service/errors.py). A code
this client does not know yet still gets the class of its status (e.g. a new 400 code is a BadRequest),
so `except BadRequest` keeps working when the server grows new codes.
"""

from __future__ import annotations

import contextlib
from typing import Any


class RnnserveError(Exception):
    """Any error of this client; `status` is the HTTP status (0 when no answer came)."""

    status = 0
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details or {}
        self.retry_after_s: float | None = None


class ConnectionFailed(RnnserveError):
    """No answer within the retry budget (timeouts, refused or dropped connections)."""


# ---- by status ---------------------------------------------------------------------------------------


class BadRequest(RnnserveError):
    status, code = 400, "bad_request"


class ArtifactRefused(BadRequest):
    code = "artifact_refused"


class Unauthorized(RnnserveError):
    status, code = 401, "unauthorized"


class Forbidden(RnnserveError):
    status, code = 403, "forbidden"


class NotFound(RnnserveError):
    status, code = 404, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class MethodNotAllowed(RnnserveError):
    status, code = 405, "method_not_allowed"


class SequenceConflict(RnnserveError):
    """The session is not at the `seq` this request carried: another client stepped it. `expected_seq`
    is where it is; nothing was applied."""

    status, code = 409, "seq_conflict"

    @property
    def expected_seq(self) -> int | None:
        value = self.details.get("expected_seq")
        return int(value) if value is not None else None


class SessionGone(RnnserveError):
    status, code = 410, "session_gone"


class SessionExpired(SessionGone):
    code = "session_expired"


class SessionEvicted(SessionGone):
    code = "session_evicted"


class SessionDeleted(SessionGone):
    code = "session_deleted"


class SessionUnloaded(SessionGone):
    """Its model version was unloaded with the `end` policy."""

    code = "session_unloaded"


class PayloadTooLarge(RnnserveError):
    status, code = 413, "payload_too_large"


class InvalidInput(RnnserveError):
    status, code = 422, "invalid_input"


class CapacityExceeded(RnnserveError):
    status, code = 429, "capacity_exceeded"


class InternalError(RnnserveError):
    status, code = 500, "internal_error"


class InferenceFailed(InternalError):
    code = "inference_failed"


class Unavailable(RnnserveError):
    """503: nothing was applied; the client retries these within its budget."""

    status, code = 503, "unavailable"


class NotReady(Unavailable):
    code = "not_ready"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class StoreUnavailable(Unavailable):
    code = "store_unavailable"


def _classes(base: type[RnnserveError]) -> list[type[RnnserveError]]:
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_classes(sub))
    return found


_BY_CODE: dict[str, type[RnnserveError]] = {c.code: c for c in _classes(RnnserveError) if c.status}
_BY_STATUS: dict[int, type[RnnserveError]] = {
    c.status: c for c in RnnserveError.__subclasses__() if c.status and c is not ConnectionFailed
}
_STATUS_OF_CODE: dict[str, int] = {code: c.status for code, c in _BY_CODE.items()}


def error_from(status: int, body: Any, retry_after: str | None = None) -> RnnserveError:
    """The typed error of an answer: by its code, else by its status, else RnnserveError."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message, details = (
            str(error.get("code", "")),
            str(error.get("message", "")),
            error.get("details"),
        )
    else:  # the KServe V2 shape {"error": "...", "code": "..."} or no JSON at all
        code = str(body.get("code", "")) if isinstance(body, dict) else ""
        message, details = (str(error) if error is not None else f"HTTP {status}"), None
    if not status:
        status = _STATUS_OF_CODE.get(code, 0)
    cls = _BY_CODE.get(code)
    if cls is None or (status and cls.status != status):
        cls = _BY_STATUS.get(status, RnnserveError)
    result = cls(message, code=code or None, details=details if isinstance(details, dict) else None)
    result.status = status
    if retry_after:
        with contextlib.suppress(ValueError):
            result.retry_after_s = float(retry_after)
    return result
