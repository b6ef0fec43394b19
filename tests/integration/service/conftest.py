"""Fixtures for the SessionManager tests; helpers live in manager_support.py and redis_support.py.

Every test that builds its settings with `make_settings` runs against both session-store backends:
`store_backend` is "memory" or "redis" (a real redis-server started once for the test session,
flushed before each test). A test that only makes sense for one backend overrides it with
`@pytest.mark.parametrize("store_backend", ["memory"])`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from manager_support import ALL_MODELS, Reference
from redis_support import NO_REDIS, REDIS_SERVER, RedisServer

from service.settings import Settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One in-memory redis-server for the test session (`--save '' --appendonly no`)."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.kill()


@pytest.fixture(params=["memory", "redis"])
def store_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def store_settings(store_backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if store_backend == "memory":
        return {"store": "memory"}
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return {"store": "redis", "redis_url": server.url}


@pytest.fixture
def make_settings(
    tiny_models_dir: Path, tmp_path: Path, store_settings: dict[str, Any]
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "models_dir": tiny_models_dir,
            "snapshot_path": None,
            "intra_op_threads": 1,
            "inter_op_threads": 1,
            **store_settings,
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def references(tiny_models_dir: Path) -> dict[str, Reference]:
    return {name: Reference(tiny_models_dir, name) for name in ALL_MODELS}
