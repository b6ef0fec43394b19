"""Session stores: the backend-neutral interface (base.py), the embedded memory backend (memory.py,
the default) and the Redis backend shared by replicas (redis_store.py, imported on demand)."""

from __future__ import annotations

from service.store.base import (
    Committed,
    Gathered,
    Saved,
    SessionRecord,
    SessionStore,
    Status,
    StoredAnswer,
    check_session_id,
)
from service.store.memory import MemoryStore

__all__ = [
    "Committed",
    "Gathered",
    "MemoryStore",
    "Saved",
    "SessionRecord",
    "SessionStore",
    "Status",
    "StoredAnswer",
    "check_session_id",
]
