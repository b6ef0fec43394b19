"""The KServe V2 bodies as OpenAPI documents them (the routes read raw bytes: see service/kserve.py).

These models describe, they do not validate: `kserve.infer` checks requests itself (it must also read
the binary tensor extension), and unknown fields are allowed, as Triton allows them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.v2_sequence import MAX_STRING_ID_BYTES


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class V2Error(BaseModel):
    error: str
    code: str


class InferParameters(_Open):
    sequence_id: int | str | None = Field(
        default=None,
        description="Triton's sequence id: 1 to 2^64 - 1, or a string (0, empty or absent: one-shot)",
        json_schema_extra={
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
                {"type": "string", "maxLength": MAX_STRING_ID_BYTES},
                {"type": "null"},
            ]
        },
    )
    sequence_start: bool = False
    sequence_end: bool = False
    seq: int | None = Field(
        default=None, ge=0, description="this server's extension: exactly-once, as API v1's `seq`"
    )
    top_k: int | None = Field(default=None, ge=0, description="lm: next-word suggestions per event")


class InferInputParameters(_Open):
    binary_data_size: int | None = Field(default=None, ge=0)


class InferInput(_Open):
    name: str
    datatype: str
    shape: list[int] = Field(json_schema_extra={"items": {"type": "integer", "minimum": 0}})
    data: list[Any] | None = None
    parameters: InferInputParameters | None = None


class RequestedOutput(_Open):
    name: str


class InferRequest(_Open):
    id: str | None = None
    parameters: InferParameters | None = None
    inputs: list[InferInput] = Field(
        min_length=1,
        max_length=2,
        description="lm: `x` or `TEXT`; sensor: `x`, and optionally `TIMESTAMP` (one per reading)",
    )
    outputs: list[RequestedOutput] | None = None


class OutputTensor(_Open):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None


class InferResponse(_Open):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    outputs: list[OutputTensor]


class ServerMetadata(_Open):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Open):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Open):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


_V2_STATUS = {
    400: "malformed request (not JSON, bad parameters, unknown input, sequence not running)",
    401: "missing or wrong API key",
    403: "model management is off, or the key is not an admin key",
    404: "unknown model or version",
    409: "`parameters.seq` conflict",
    410: "the sequence expired, was evicted or ended",
    413: "body too large",
    422: "invalid tensor values (datatype, shape, size, range)",
    429: "capacity; see Retry-After",
    503: "not ready, shutting down or session store unreachable",
}


def v2_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses, all in the V2 error shape."""
    return {s: {"model": V2Error, "description": _V2_STATUS[s]} for s in statuses}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` references replaced by the definitions (none of these is recursive):
    an `openapi_extra` body cannot point into the document's components."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    inlined: dict[str, Any] = resolve(schema)
    return inlined


def infer_request_body() -> dict[str, Any]:
    """`openapi_extra` of the infer route: the JSON request body (binary tensor data is also read)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _inline(InferRequest.model_json_schema()),
                    "example": {
                        "parameters": {"sequence_id": 7, "sequence_start": True, "seq": 0},
                        "inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 3], "data": [11, 52, 7]}],
                    },
                }
            },
        }
    }
