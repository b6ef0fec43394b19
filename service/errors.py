"""Domain errors: each carries its HTTP status and a machine-readable code.

The core raises these; one exception handler renders every one of them as
`{"error": {"code", "message", "details"}}` (Starlette finds the handler along the class hierarchy).
Anything that is not a ServiceError is a bug and becomes a generic 500 with a request id.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class ArtifactRefused(ServiceError):
    """A model version asked to load whose artifact does not verify (hash, manifest, graph)."""

    status, code = 400, "artifact_refused"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    """A valid key without the right: the admin routes need an admin key (RNNSERVE_ADMIN_KEYS)."""

    status, code = 403, "forbidden"


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class SessionNotFound(ServiceError):
    """Unknown id, or an id that belongs to another API key (indistinguishable on purpose)."""

    status, code = 404, "session_not_found"


class SequenceConflict(ServiceError):
    status, code = 409, "seq_conflict"

    def __init__(self, message: str, expected_seq: int, **details: Any) -> None:
        super().__init__(message, expected_seq=expected_seq, **details)
        self.expected_seq = expected_seq


class SessionGone(ServiceError):
    """A session that existed and no longer does; the subclass says why."""

    status, code = 410, "session_gone"


class SessionExpired(SessionGone):
    code = "session_expired"


class SessionEvicted(SessionGone):
    code = "session_evicted"


class SessionDeleted(SessionGone):
    code = "session_deleted"


class SessionUnloaded(SessionGone):
    """Its model version was unloaded with unload_policy=end (service/model_control.py)."""

    code = "session_unloaded"


GONE_BY_REASON: dict[str, type[SessionGone]] = {
    "expired": SessionExpired,
    "evicted": SessionEvicted,
    "deleted": SessionDeleted,
    "unloaded": SessionUnloaded,
}


def session_gone(session_id: str, reason: str) -> SessionGone:
    """The error for a session that ended for `reason` (a key of GONE_BY_REASON), as every store says it."""
    return GONE_BY_REASON[reason](f"session {session_id} was {reason}", session_id=session_id, reason=reason)


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class InvalidInput(ServiceError):
    """Well-formed request with values the model cannot take: NaN, wrong feature count, too many events."""

    status, code = 422, "invalid_input"


class RetryLater(ServiceError):
    """An error the same request may not meet later: the answer says when to try again (Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers["Retry-After"] = str(retry_after_s)


class CapacityExceeded(RetryLater):
    status, code = 429, "capacity_exceeded"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class ShuttingDown(ServiceError):
    status, code = 503, "shutting_down"


class StoreUnavailable(RetryLater):
    """The session store backend (e.g. Redis) cannot be reached; nothing was applied."""

    status, code = 503, "store_unavailable"


class InferenceFailed(ServiceError):
    """ONNX Runtime failed on a batch; only that batch's requests see this, their state is unchanged."""

    status, code = 500, "inference_failed"
