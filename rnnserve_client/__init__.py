"""rnnserve_client: a Python client for rnnserve that needs only httpx and websockets.

It carries each session's `seq` itself, so that every step is exactly-once and retried safely through
timeouts, dropped connections, 503s and server restarts; every server error is a typed exception
(`rnnserve_client.errors`). Sync (`Client`) and asyncio (`AsyncClient`) share one API:

    from rnnserve_client import Client

    with Client("http://127.0.0.1:8000") as client, client.session("lm") as s:
        print(s.step("the cat").outputs[-1]["next"])
"""

from rnnserve_client._protocol import Generated, SessionInfo, StepResult
from rnnserve_client.aio import AsyncClient, AsyncSession
from rnnserve_client.errors import (
    ConnectionFailed,
    InvalidInput,
    ModelNotFound,
    RnnserveError,
    SequenceConflict,
    SessionGone,
    SessionNotFound,
    Unavailable,
)
from rnnserve_client.sync import Client, Session

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "ConnectionFailed",
    "Generated",
    "InvalidInput",
    "ModelNotFound",
    "RnnserveError",
    "SequenceConflict",
    "Session",
    "SessionGone",
    "SessionInfo",
    "SessionNotFound",
    "StepResult",
    "Unavailable",
]
