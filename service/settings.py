"""One settings object for the whole service, read from `RNNSERVE_*` environment variables.

Every limit the service enforces is here, with a default that suits one machine and a validator that
refuses unsafe values at start rather than failing at the first request.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from platformdirs import user_state_path
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Provider = Literal["cpu", "cuda"]

# Defaults that do not depend on the directory the server starts in: the models installed with the
# package (a link to the checkout's models/ in an editable install), and the user's state directory
# (~/.local/state/rnnserve on Linux, $XDG_STATE_HOME honoured).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "default_models"
DEFAULT_SNAPSHOT_PATH = user_state_path("rnnserve") / "sessions.snapshot"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", extra="ignore", frozen=True)

    # where and what to serve
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    grpc_port: int | None = Field(
        8001,
        ge=0,
        le=65535,
        description="KServe V2 / Triton gRPC port (0 picks a free one; empty disables gRPC)",
    )
    models_dir: Path = Field(
        DEFAULT_MODELS_DIR,
        description="registry root: <name>/<version>/ artifacts (default: the shipped models, installed "
        "with the package)",
    )
    providers: Annotated[list[Provider], NoDecode] = Field(
        default_factory=lambda: list[Provider](["cpu"]),
        description="ONNX Runtime providers in order of preference, e.g. `cuda,cpu`; "
        "CUDA falls back to CPU with a warning when absent",
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: its default)")
    inter_op_threads: int = Field(0, ge=0, description="ONNX Runtime inter-op threads (0: its default)")

    # batching
    max_batch_size: int = Field(256, ge=1, description="most sessions in one ONNX Runtime call")
    max_queue_delay_us: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="how long a batch may wait for more requests once one is queued; "
        "it never waits when nothing else is queued",
    )

    # sessions
    store: Literal["memory", "redis"] = Field("memory", description="session state backend")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for store=redis")
    session_ttl_s: float = Field(3600.0, gt=0, description="idle time after which a session expires")
    max_sessions: int = Field(100_000, ge=1, description="live sessions per model version")
    capacity_policy: Literal["reject", "evict"] = Field(
        "reject", description="at max_sessions: refuse new sessions (429) or evict the least recently used"
    )
    gone_retention_s: float = Field(
        3600.0, ge=0, description="how long an ended session's id answers 410 with the reason"
    )
    snapshot_path: Path | None = Field(
        DEFAULT_SNAPSHOT_PATH,
        description="memory store: where sessions are written on shutdown and read at start (empty "
        "disables; default: the user's state directory)",
    )
    # 30 s: at 100k sessions of the shipped lm (340 MB of state) one snapshot costs about 1.2 s of CPU,
    # some 4% of one core at this interval; at 10k sessions, under 0.5% (README, "Reliability")
    snapshot_interval_s: float = Field(
        30.0,
        ge=0,
        description="memory store: also write the snapshot this often, so that a crash (SIGKILL, OOM) "
        "loses at most about this many seconds of steps; 0 writes it only at shutdown",
    )

    # request limits
    max_events_per_request: int = Field(1024, ge=1, description="events in one step request")
    max_steps_per_request: int = Field(
        4096, ge=1, description="steps in one bulk request (POST /v1/steps, WS /v1/stream); 413 above"
    )
    max_top_k: int = Field(100, ge=1, description="largest top_k a client may ask for")
    max_generate_tokens: int = Field(512, ge=1, description="largest max_tokens for generate")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body size limit (413 above)")
    ws_per_message_deflate: bool = Field(
        False,
        description="accept the WebSocket permessage-deflate extension when a client offers it (most "
        "do by default): off, since answers are a few hundred bytes and deflate costs more server CPU "
        "per message than the service's own work does (README, Configuration)",
    )

    # auth
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated bearer keys; none configured = auth off"
    )
    api_keys_file: Path | None = Field(None, description="file with one API key per line")

    # runtime model management (service/model_control.py)
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated bearer keys for the admin routes and Triton's repository API; "
        "with API keys on and none of these, model management over HTTP is refused (403)",
    )
    watch_models_s: float = Field(
        5.0, ge=0, description="poll the models directory for new versions this often (0: never)"
    )
    unload_policy: Literal["drain", "end"] = Field(
        "drain",
        description="unloading a version: drain (its sessions go on until they end, then it unloads) "
        "or end (its sessions end at once and answer 410 session_unloaded)",
    )

    # operations
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = Field(False, description="structured JSON log lines")
    shutdown_drain_s: float = Field(10.0, ge=0, description="longest wait for in-flight batches at stop")

    _split = field_validator("providers", "api_keys", "admin_keys", mode="before")(_split_commas)

    @field_validator("snapshot_path", "grpc_port", mode="before")
    @classmethod
    def _empty_disables(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("providers")
    @classmethod
    def _providers_not_empty(cls, value: list[Provider]) -> list[Provider]:
        if not value:
            raise ValueError("give at least one provider (cpu, cuda)")
        return value

    @model_validator(mode="after")
    def _keys_readable(self) -> Settings:
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"api_keys_file {self.api_keys_file} does not exist")
        return self

    def all_api_keys(self) -> frozenset[str]:
        keys = set(self.api_keys)
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys.update(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        return frozenset(keys)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.all_api_keys())


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings(...)` and pass it to create_app."""
    return Settings()
