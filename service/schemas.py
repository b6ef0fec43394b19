"""Request and response bodies of API v1: the contract clients and tests rely on.

Field names follow `shared/docs/design.md`'s API table. Requests refuse unknown fields (a typo such as
`token` for `tokens` must be a 400/422, not a silently ignored field); responses may grow new fields.
Value limits that depend on settings (events per request, top_k ceiling) are checked by the core.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema


class _Request(BaseModel):
    # NaN and Infinity (which Python's JSON parser reads) are refused in every float field of a request,
    # and values are not coerced ("7" is not an integer, "yes" not a boolean): the schema is the contract
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


# Text a client sends and the answer echoes: a lone UTF-16 surrogate (JSON "\ud800") cannot be written
# back as UTF-8, and control characters other than tab, newline and carriage return are not text.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def is_text(value: str) -> bool:
    """What `check_text` accepts, without the message (for the decoders' fast paths). Printable ASCII
    (most ids and timestamps) is text: two passes in C at twice the regular expression's speed over a
    bulk request's joined ids."""
    return (value.isascii() and value.isprintable()) or _NOT_TEXT.search(value) is None


def check_text(value: str) -> str:
    """`value` if it is writable text; else a ValueError naming the first bad character as JSON writes it."""
    bad = _NOT_TEXT.search(value)
    if bad is not None:
        char = json.dumps(bad.group())[1:-1]  # "\ud800", "\u0000": as the client wrote it
        raise ValueError(
            f"character {bad.start()} ({char}) is not text: remove lone surrogates and control characters"
        )
    return value


Text = Annotated[str, AfterValidator(check_text)]


# ---- models ------------------------------------------------------------------------------------


ModelState = Literal["ready", "draining", "unloaded"]


class ModelInfo(BaseModel):
    name: str
    version: str
    task: Literal["lm", "sensor"]
    cell: Literal["rnn", "gru", "lstm"]
    layers: int
    hidden: int
    features: list[str] | None = None
    vocab_size: int | None = None
    default: bool
    state: ModelState = Field(
        "ready",
        description="ready: takes new sessions; draining: unloading, serves its sessions until they "
        "end, takes no new ones; unloaded: gone (the answer to an unload)",
    )


class ModelList(BaseModel):
    models: list[ModelInfo]


class SetDefault(BaseModel):
    """`PUT /v1/admin/models/{name}/default`: the version new sessions get (null: the highest)."""

    model_config = ConfigDict(extra="forbid")
    version: str | None


class RepositoryEntry(BaseModel):
    """One row of Triton's `POST /v2/repository/index`."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE", "UNLOADING"]
    reason: str = ""


# ---- sessions ----------------------------------------------------------------------------------


class Snapshot(BaseModel):
    """A session's exported state; `state` is base64 of the float32 state tensors, C order.

    For each state tensor in the manifest's order, the [L, H] slice of this session, concatenated.
    `checksum` is the sha256 hex of the canonical JSON of every other field, so any change is caught.
    """

    format: Literal[1] = 1
    model: str
    version: str
    seq: int = Field(ge=0)
    state: str
    checksum: str
    # the last event's pending prediction context (sensor: prediction for the next reading; lm: the
    # next-token distribution is recomputed from state, so nothing else is needed)
    extra: dict[str, Any] = Field(default_factory=dict)


class CreateSession(_Request):
    model: str
    version: str | None = None
    snapshot: Snapshot | None = None


class SessionInfo(BaseModel):
    session_id: str
    model: str
    version: str
    seq: int
    created_at: str
    last_used_at: str
    expires_at: str


# ---- steps -------------------------------------------------------------------------------------


class LmEvents(_Request):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["tokens"]}, {"required": ["text"]}]})

    seq: int | None = Field(default=None, ge=0)
    # absent, never null: the schema's "exactly one of tokens and text" counts the keys given
    tokens: list[Text] | SkipJsonSchema[None] = None
    text: Text | SkipJsonSchema[None] = None
    top_k: int = Field(default=5, ge=0)
    # `<unk>` and `<eos>` among the suggestions; without, the top_k other words (each with the
    # model's own probability, not renormalized)
    include_special: bool = False

    @field_validator("tokens", "text", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("give a value or leave the field out")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> LmEvents:
        if (self.tokens is None) == (self.text is None):
            raise ValueError("give exactly one of `tokens` or `text`")
        return self


class SensorEvents(_Request):
    seq: int | None = Field(default=None, ge=0)
    # NaN and Infinity pass here so that the predictor can name the reading and feature they are in
    readings: list[list[Annotated[float, Field(allow_inf_nan=True)]]]
    timestamps: list[float | Text] | None = Field(
        default=None,
        description="one per reading, echoed in the answer: ISO 8601 text (its wall-clock hour as written) "
        "or Unix seconds (the UTC hour); the hour of the day feeds the session's daily profile, which "
        "readings without a timestamp (or with other text) stay out of",
    )

    @model_validator(mode="after")
    def _timestamps_match(self) -> SensorEvents:
        if self.timestamps is not None and len(self.timestamps) != len(self.readings):
            raise ValueError("`timestamps` must have one entry per reading")
        return self


class NextToken(BaseModel):
    token: str
    prob: float


class LmOutput(BaseModel):
    token: str
    token_id: int
    unknown: bool
    logprob: float | None
    next: list[NextToken]


class SensorOutput(BaseModel):
    """One reading's verdict; the first reading of a session (nothing predicted it) has nulls."""

    score: float | None = Field(
        description="raw score: Gaussian NLL of the reading under the model's prediction (model-dependent "
        "scale; rank readings of one stream by it, not streams)"
    )
    probability: float | None = Field(
        description="stream-comparable anomaly score in [0, 1): a / (a + 5) with a = -log10 of the tail "
        "of `likelihood`; 0.5 means the recent surprise is a 1-in-100,000 event for this very stream. "
        "Use one threshold for every stream"
    )
    is_anomaly: bool | None = Field(
        description="probability >= 0.5 (likelihood >= 0.99999, Numenta's red alert)"
    )
    likelihood: float | None = Field(
        default=None,
        description="Numenta's anomaly likelihood: P(short-term average surprise is below its present "
        "value) under the stream's own long-term distribution; 0.5 during the first 250 scored readings",
    )
    surprise: float | None = Field(
        default=None,
        description="squared standardised prediction error, mean over features, capped at 100 (~1 when "
        "the reading is as predicted); the raw input of `likelihood`",
    )
    alarm: float | None = Field(
        default=None,
        description="`probability`, except 0 during the 30 readings after a reading that raised an alarm "
        "(probability >= 0.5): one alarm per anomalous episode, a stretch still red after 30 readings "
        "alarms again (CAD OSE's rest period); during the rest a reading whose evidence (-log10 tail) is "
        "at least twice that of the episode's last alarm escalates (is reported). Page on it, with the "
        "same threshold as `probability`",
    )
    predicted_mean: list[float]
    predicted_std: list[float]
    timestamp: float | str | None = None


class StepResponse(BaseModel):
    seq: int
    outputs: list[LmOutput] | list[SensorOutput]


class BulkStep(BaseModel):
    """One step of a bulk request: a session id and that session's events body (lm or sensor fields)."""

    model_config = ConfigDict(extra="allow")
    session_id: str
    seq: int | None = Field(default=None, ge=0)


class StepsRequest(_Request):
    """`POST /v1/steps` and each `WS /v1/stream` message: steps of many sessions, in order."""

    steps: list[BulkStep]


class BulkResult(BaseModel):
    """One step's outcome: `seq` and `outputs` as `POST /v1/sessions/{id}/events` answers, or `error`."""

    session_id: str | None
    seq: int | None = None
    outputs: list[LmOutput] | list[SensorOutput] | None = None
    error: ErrorDetail | None = None


class StepsResponse(BaseModel):
    results: list[BulkResult]


class GenerateRequest(_Request):
    max_tokens: int = Field(default=20, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_k: int = Field(default=40, ge=0)
    seed: int | None = Field(default=None, ge=0, lt=2**128)
    commit: bool = False
    stop_at_eos: bool = True
    include_special: bool = False  # may sample `<unk>`, and `<eos>` without stop_at_eos


class GenerateResponse(BaseModel):
    tokens: list[str]  # as the model sees them (WikiText's tokenization)
    text: str  # the tokens as readable text: `well @-@ known , and` -> `well-known, and`
    seq: int


# ---- errors ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


BulkResult.model_rebuild()
