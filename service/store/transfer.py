"""Export and restore of one session's state: `schemas.Snapshot`, base64 float32 with a sha256 checksum.

state  = base64(concat(h[L, H], c[L, H]?))  float32, little-endian, C order, manifest state order
checksum = sha256 hex of the canonical JSON (sorted keys, no spaces) of every other field
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

import numpy as np

from service import schemas
from service.errors import InvalidInput
from service.registry import LoadedModel


def snapshot_checksum(snapshot: schemas.Snapshot) -> str:
    fields = snapshot.model_dump(mode="json", exclude={"checksum"})
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_snapshot(model: LoadedModel, seq: int, state: list[np.ndarray]) -> schemas.Snapshot:
    blob = b"".join(np.ascontiguousarray(s, dtype="<f4").tobytes() for s in state)
    snapshot = schemas.Snapshot(
        model=model.name,
        version=model.version,
        seq=seq,
        state=base64.b64encode(blob).decode("ascii"),
        checksum="",
    )
    return snapshot.model_copy(update={"checksum": snapshot_checksum(snapshot)})


def decode_snapshot(snapshot: schemas.Snapshot, model: LoadedModel) -> list[np.ndarray]:
    """The state tensors [L, H] of a snapshot taken from `model`; InvalidInput (422) otherwise."""
    if snapshot.checksum != snapshot_checksum(snapshot):
        raise InvalidInput("snapshot checksum does not match its content", field="snapshot.checksum")
    if (snapshot.model, snapshot.version) != (model.name, model.version):
        raise InvalidInput(
            f"the snapshot is of {snapshot.model}/{snapshot.version}, not {model.key}",
            snapshot_model=snapshot.model,
            snapshot_version=snapshot.version,
        )
    try:
        blob = base64.b64decode(snapshot.state, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("snapshot state is not valid base64", field="snapshot.state") from None
    layers, hidden = model.manifest.state_shape
    expected = model.state_floats * 4
    if len(blob) != expected:
        raise InvalidInput(
            f"snapshot state has {len(blob)} bytes; {model.key} needs {expected}",
            expected_bytes=expected,
            got_bytes=len(blob),
        )
    flat = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    if not np.isfinite(flat).all():
        raise InvalidInput("snapshot state holds non-finite values", field="snapshot.state")
    return list(flat.reshape(model.state_count, layers, hidden))
