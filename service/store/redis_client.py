"""The Redis store's connection: a bounded pool with short timeouts, and outages turned into 503s.

`connect(url)` builds the client: at most POOL_SIZE connections (a caller waits up to the socket timeout
for one, then gets an error rather than a queue that grows without bound), SOCKET_TIMEOUT_S per reply,
CONNECT_TIMEOUT_S to connect, and one immediate retry on a connection error, so that the first call on
a pooled connection that a Redis restart broke goes out again on a fresh one. The URL's query string
overrides these (redis-py parses it), e.g. `redis://host:6379/0?socket_timeout=1&max_connections=64`.

`Availability.guard()` wraps every call: a connection error or timeout, or a reply that says Redis
cannot serve now (LOADING, OOM, READONLY, ...), becomes StoreUnavailable (503 `store_unavailable`,
Retry-After) for that call alone. The outage is logged once, and so is its end; nothing else changes
state, so the next call simply tries again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import NoReturn

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import StoreUnavailable

log = logging.getLogger(__name__)

POOL_SIZE = 32
SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
RETRY_AFTER_S = 1
# ResponseErrors that mean "Redis cannot serve right now", not "this command is wrong" (redis-py maps
# OOM and READONLY to classes; it keeps the code in the message of the others).
_TRANSIENT = ("OOM", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS")


def connect(url: str) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


def where(client: aioredis.Redis) -> str:
    """host:port (or the socket path) of a client, for logs: never the URL, which may hold a password."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"


class Availability:
    def __init__(self, where: str) -> None:
        self.where = where
        self.up = True  # False from a failed call until the next call that succeeds

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._down(exc)
        except ResponseError as exc:
            if isinstance(exc, OutOfMemoryError | ReadOnlyError) or str(exc).startswith(_TRANSIENT):
                self._down(exc)
            raise
        if not self.up:
            self.up = True
            log.warning("session store: Redis at %s answers again", self.where)

    def _down(self, exc: Exception) -> NoReturn:
        if self.up:
            self.up = False
            name = type(exc).__name__
            log.error("session store: Redis at %s is unavailable: %s: %s", self.where, name, exc)
        raise StoreUnavailable(
            f"the session store (Redis) is unavailable: {type(exc).__name__}", retry_after_s=RETRY_AFTER_S
        ) from exc
