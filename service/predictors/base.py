"""What a task plugs into the serving core: decode a request into model input, encode outputs back.

    payload (raw JSON) --validate--> request --decode--> Decoded(x [T] | [T, F], context)
    graph outputs [B, ...] --postprocess (batched, worker thread)--> derived arrays [B, ...]
    StepResult (this job's row of each derived array) --encode--> one output (a plain dict) per event

Predictors hold no session state and never touch ONNX Runtime; the batcher and runner do that.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from service.errors import BadRequest, InvalidInput
from service.runner import StepResult

R = TypeVar("R", bound=BaseModel)


@dataclass(slots=True)
class Decoded:
    """Model input of one step request plus what encoding the answer needs."""

    x: np.ndarray  # lm int64 [T]; sensor float32 [T, F], normalized
    seq: int | None  # the client's seq, for exactly-once
    fingerprint: int  # identifies the payload (without seq): a replay has the same one
    context: Any  # task-specific: tokens and top_k, or timestamps
    param: int = 0  # handed to postprocess with the job (lm: top_k)

    @property
    def events(self) -> int:
        return int(self.x.shape[0])


@dataclass(slots=True)
class DecodedMany:
    """Many steps' model input with one event count T (bulk ingest): what `decode` gives each of
    them, as arrays."""

    index: list[int]  # the steps' positions in the list given to `decode_many`
    x: np.ndarray  # lm int64 [B, T]; sensor [B, T, F]
    seqs: list[int | None]
    fingerprints: list[int]
    contexts: list[Any]  # per step, as `Decoded.context`
    params: np.ndarray  # int64 [B]

    @property
    def events(self) -> int:
        return int(self.x.shape[1])

    def take(self, keep: list[int]) -> DecodedMany:
        """The steps at positions `keep` (of this group) only."""
        return DecodedMany(
            [self.index[j] for j in keep],
            self.x[keep],
            [self.seqs[j] for j in keep],
            [self.fingerprints[j] for j in keep],
            [self.contexts[j] for j in keep],
            self.params[keep],
        )


class Predictor(Protocol):
    task: str

    def decode(self, payload: dict[str, Any]) -> Decoded: ...

    def postprocess(self, outputs: list[np.ndarray], x: np.ndarray, params: np.ndarray) -> list[np.ndarray]:
        """Derive what `encode` needs from the graph's outputs for a whole batch, vectorized."""
        ...

    def encode(self, decoded: Decoded, result: StepResult, seq_before: int) -> list[dict[str, Any]]:
        """One output per event, as plain values for `schemas.StepResponse` to validate in one go."""
        ...

    def decode_many(self, payloads: Sequence[dict[str, Any]]) -> tuple[list[DecodedMany], list[int]]:
        """`decode` of many steps at once: the groups (by event count, at least one event) of those it
        takes as they are, and the positions of the others, which `decode` must answer one by one
        (it refuses them, or converts them)."""
        ...

    def encode_many_json(
        self, group: DecodedMany, outputs: list[np.ndarray], seq_before: list[int]
    ) -> list[bytes]:
        """What `encode` answers for each step of `group`, as orjson writes it (each step's list of
        outputs), from the batch's arrays [B, ...] (postprocess's, or the session statistics') without
        an object per event; `seq_before`: each session's seq before its step."""
        ...


def validate(model: type[R], payload: object) -> R:
    """Parse a raw JSON body; a wrong shape is 400, wrong or missing fields 422 with readable details."""
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(p) for p in err["loc"]) or "body",
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise InvalidInput(f"invalid request: {summary}", errors=errors) from None


def fingerprint(*parts: bytes) -> int:
    """64-bit digest of a request's payload parts (collisions matter only against the same session's
    last request at the same seq): BLAKE2b-64 of the parts, each preceded by its length (8 bytes, little
    endian). Stored answers keep it (snapshots, Redis), so the definition must not change."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(_LENGTH(len(part)) + part)  # one update per part: this runs per step with a seq
    return int.from_bytes(digest.digest(), "little")


_LENGTH = struct.Struct("<Q").pack


def check_event_count(events: int, limit: int) -> None:
    if events > limit:
        raise InvalidInput(
            f"{events} events in one request; the limit is {limit}", events=events, limit=limit
        )
