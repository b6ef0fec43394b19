"""End-to-end fixtures: real server processes on free ports, real HTTP clients.

One shared server (`server`) serves most tests; tests that need other settings (capacity, TTL, an
empty models directory, a restart) start their own through `start_server`. Every server is stopped
with SIGTERM and must exit 0 (a graceful shutdown).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    KEYS,
    MAX_BODY,
    MAX_EVENTS,
    MAX_STEPS,
    MAX_TOP_K,
    Reference,
    ServerProcess,
    StartServer,
    auth,
)
from integration.service.redis_support import NO_REDIS, REDIS_SERVER, RedisServer


@pytest.fixture(scope="session")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tiny_models_dir,
        tmp_path_factory.mktemp("server"),
        api_keys=",".join(KEYS),
        max_events_per_request=str(MAX_EVENTS),
        max_body_bytes=str(MAX_BODY),
        max_top_k=str(MAX_TOP_K),
        max_steps_per_request=str(MAX_STEPS),
        max_generate_tokens="50",
        log_json="true",
    ).wait_ready()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def references(tiny_models_dir: Path) -> dict[str, Reference]:
    return {d.name: Reference.load(d / "1") for d in sorted(tiny_models_dir.iterdir()) if (d / "1").is_dir()}


@pytest.fixture
def start_server(tiny_models_dir: Path, tmp_path: Path) -> Iterator[StartServer]:
    """Start servers with other settings; each is stopped at the end and must have exited 0."""
    started: list[ServerProcess] = []

    def start(
        models_dir: Path | None = None, workdir: Path | None = None, ready: bool = True, **settings: str
    ) -> ServerProcess:
        process = ServerProcess(
            models_dir or tiny_models_dir, workdir or tmp_path / f"s{len(started)}", None, None, **settings
        )
        started.append(process)
        return process.wait_ready() if ready else process

    yield start
    for process in started:
        assert process.stop() == 0, process.log()


@pytest.fixture(scope="session", params=["memory", "redis"])
def hostile_server(
    request: pytest.FixtureRequest, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The transport fuzz tests' own server (the shared server's log stays theirs), on each session
    store, so that "a refused request changes nothing" is checked where the store is Redis too: at the
    end, its log must show no traceback, so that an error the fuzzing provoked cannot pass unseen
    behind a 4xx."""
    store: dict[str, str] = {}
    redis_server = None
    if request.param == "redis":
        if REDIS_SERVER is None:
            pytest.skip(NO_REDIS)
        redis_server = RedisServer(tmp_path_factory.mktemp("hostile-redis"))
        store = {"store": "redis", "redis_url": redis_server.url}
    try:
        process = ServerProcess(
            tiny_models_dir,
            tmp_path_factory.mktemp("hostile"),
            None,
            None,
            api_keys=",".join(KEYS),
            max_events_per_request=str(MAX_EVENTS),
            max_body_bytes=str(MAX_BODY),
            max_top_k=str(MAX_TOP_K),
            max_steps_per_request=str(MAX_STEPS),
            **store,
        ).wait_ready()
        yield process
        assert process.stop() == 0, process.log()
        assert "Traceback" not in process.log(), process.log()[-20000:]
    finally:
        if redis_server is not None:
            redis_server.kill()
