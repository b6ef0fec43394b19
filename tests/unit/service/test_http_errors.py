"""Error rendering: one shape for API v1, the V2 shape under /v2, never a NaN in JSON."""

from __future__ import annotations

import json

import pytest
from fastapi.exceptions import RequestValidationError

from service.error_handlers import error_json, error_response, internal_error_response, validation_error
from service.errors import CapacityExceeded, SequenceConflict, SessionExpired

pytestmark = pytest.mark.unit


def test_service_errors_render_status_code_headers_and_details() -> None:
    response = error_response(CapacityExceeded("full", retry_after_s=3, limit=10), "/v1/sessions")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert json.loads(bytes(response.body)) == {
        "error": {"code": "capacity_exceeded", "message": "full", "details": {"limit": 10}}
    }
    conflict = json.loads(bytes(error_response(SequenceConflict("no", expected_seq=4)).body))
    assert conflict["error"]["details"] == {"expected_seq": 4}


def test_kserve_paths_get_the_v2_error_shape() -> None:
    response = error_response(SessionExpired("sequence 7 expired"), "/v2/models/lm/infer")
    assert response.status_code == 410
    assert json.loads(bytes(response.body)) == {"error": "sequence 7 expired", "code": "session_expired"}
    assert "details" in json.loads(bytes(error_response(SessionExpired("x"), "/v2x").body))["error"]


def test_non_finite_details_become_strings() -> None:
    error = SequenceConflict("bad", expected_seq=1, values=[float("nan"), 1.0, {"x": float("inf")}])
    for text in (error_json(error), bytes(error_response(error).body).decode()):
        body = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
        assert body["error"]["details"]["values"] == ["nan", 1.0, {"x": "inf"}]


def test_internal_errors_name_the_request_id_only() -> None:
    body = json.loads(bytes(internal_error_response("req-1").body))
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["details"] == {"request_id": "req-1"}


@pytest.mark.parametrize(
    ("errors", "status", "code"),
    [
        ([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error"}], 400, "bad_request"),
        (
            [{"type": "dict_type", "loc": ("body",), "msg": "Input should be a valid dictionary"}],
            400,
            "bad_request",
        ),
        ([{"type": "missing", "loc": ("body",), "msg": "Field required"}], 400, "bad_request"),
        ([{"type": "missing", "loc": ("body", "model"), "msg": "Field required"}], 422, "invalid_input"),
        ([{"type": "int_parsing", "loc": ("header", "x"), "msg": "bad int"}], 422, "invalid_input"),
    ],
)
def test_request_validation_maps_to_400_or_422(
    errors: list[dict[str, object]], status: int, code: str
) -> None:
    error = validation_error(RequestValidationError(errors))
    assert (error.status, error.code) == (status, code)


def test_invalid_fields_are_listed_like_the_cores_validation() -> None:
    error = validation_error(
        RequestValidationError(
            [
                {"type": "missing", "loc": ("body", "model"), "msg": "Field required"},
                {
                    "type": "string_type",
                    "loc": ("body", "snapshot", "state"),
                    "msg": "Input should be a valid string",
                },
            ]
        )
    )
    assert error.details["errors"] == [
        {"field": "model", "message": "Field required", "type": "missing"},
        {"field": "snapshot.state", "message": "Input should be a valid string", "type": "string_type"},
    ]
    assert "model: Field required" in error.message
