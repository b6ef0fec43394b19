"""V2 tensors on the wire: datatypes, JSON `data`, binary tensor data and BYTES, for HTTP and gRPC.

A tensor's values travel either as JSON `data` (flat or nested, row-major) or as raw little-endian bytes
(HTTP's `binary_tensor_data` extension, gRPC's `raw_input_contents` / `raw_output_contents`). BYTES
elements are serialized as Triton does: each one a 4-byte little-endian length, then its bytes.

    HTTP binary answer:  <JSON header>  <output 1 bytes> <output 2 bytes> ...
                          '-- Inference-Header-Content-Length bytes
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.error_handlers import json_object
from service.errors import BadRequest, InvalidInput

NUMPY_DTYPES = {
    "BOOL": "?",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP32": "<f4",
    "FP64": "<f8",
}
_MAX_NESTING = 16  # tensors here have rank <= 3; deeper JSON is refused, not recursed into


@dataclass(frozen=True)
class Tensor:
    """One output tensor: `array` holds numbers, or `bytes` objects for BYTES."""

    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.array.shape]

    def raw(self) -> bytes:
        """The tensor's binary tensor data (row-major, little-endian; BYTES length-prefixed)."""
        if self.datatype == "BYTES":
            return b"".join(struct.pack("<I", len(item)) + item for item in self.array.reshape(-1))
        return np.ascontiguousarray(self.array, dtype=NUMPY_DTYPES[self.datatype]).tobytes()

    def data(self) -> list[Any]:
        """The tensor's JSON `data`, flat and row-major (BYTES as UTF-8 text)."""
        flat = self.array.reshape(-1)
        if self.datatype == "BYTES":
            return [item.decode("utf-8", errors="replace") for item in flat]
        values: list[Any] = flat.tolist()
        return values


def flatten(data: Any, depth: int = 0) -> list[Any]:
    if isinstance(data, list):
        if depth >= _MAX_NESTING:
            raise InvalidInput(f"tensor data nests deeper than {_MAX_NESTING} levels")
        return [item for part in data for item in flatten(part, depth + 1)]
    return [data]


def _json_values(data: Any, what: str) -> list[Any]:
    """A tensor's JSON `data`, flattened: an array (flat or nested), never a bare value."""
    if not isinstance(data, list):
        raise InvalidInput(f"{what}: give `data` as a JSON array (or binary tensor data)")
    return flatten(data)


def split_bytes(raw: bytes, what: str) -> list[bytes]:
    """BYTES binary data: each element a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"{what}: BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"{what}: a BYTES element of {length} bytes runs past the data")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def decode_values(datatype: str, shape: list[int], data: Any, raw: bytes | None, what: str) -> np.ndarray:
    """A request tensor's values, from JSON `data` or from its binary data (`raw`), shaped `shape`."""
    count = math.prod(shape)
    values: np.ndarray
    if datatype == "BYTES":
        if raw is not None:
            items = split_bytes(raw, what)
        else:
            flat = _json_values(data, what)
            if not all(isinstance(v, str) for v in flat):
                raise InvalidInput(f"{what}: BYTES data are JSON strings")
            items = [v.encode("utf-8", errors="surrogatepass") for v in flat]
        values = np.array(items, dtype=object)
    else:
        dtype = np.dtype(NUMPY_DTYPES[datatype])
        if raw is not None:
            if len(raw) % dtype.itemsize:
                raise InvalidInput(
                    f"{what}: {len(raw)} binary bytes are not a whole number of {datatype} values"
                )
            values = np.frombuffer(raw, dtype=dtype)
        else:
            flat = _json_values(data, what)
            if any(isinstance(v, bool) or not isinstance(v, int | float) for v in flat):
                raise InvalidInput(f"{what}: data is not {datatype} numbers")
            try:
                values = np.asarray(flat, dtype=dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidInput(f"{what}: data is not {datatype} ({exc})") from None
    if values.size != count:
        raise InvalidInput(f"{what}: shape {shape} needs {count} values, got {values.size}")
    return values.reshape(shape)


def http_body(header: dict[str, Any], tensors: list[tuple[Tensor, bool]]) -> tuple[bytes, int | None]:
    """The HTTP answer of an inference: (body, Inference-Header-Content-Length or None for all-JSON).

    `header` is the answer without `outputs`; each tensor goes as JSON `data`, or, when its flag is
    set, as binary data appended after the JSON with `parameters.binary_data_size`."""
    outputs: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for tensor, binary in tensors:
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            raw = tensor.raw()
            out["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            out["data"] = tensor.data()
        outputs.append(out)
    head = json.dumps({**header, "outputs": outputs}, separators=(",", ":")).encode("utf-8")
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)


def decode_http(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header of an HTTP inference request and its binary tail (empty without binary data)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length} does not fit the body")
    head, tail = (body[:header_length], body[header_length:]) if header_length else (body, b"")
    return json_object(head, "the inference request"), tail
