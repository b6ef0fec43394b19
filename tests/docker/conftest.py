"""Docker fixtures: the engine (skip with the reason when none answers), the CPU image built once per
test session, and the models the containers serve with the artifacts the reference reads.

The image bakes in the repository's `models/`; while that has no `lm` and `sensor` artifact yet, the
containers get the tiny test models mounted over /models instead (the mount the image supports).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

# the whole-sequence ONNX Runtime reference of the end-to-end tests (no service code)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from docker_support import (
    API_KEY,
    COMPOSE_FILE,
    REPORT,
    ROOT,
    BuiltImage,
    ComposeProject,
    Models,
    build_image,
    compose_command,
    engine_problem,
    free_port,
    readable_copy,
    redis_store_problem,
    wait_for,
)

STACK_SERVICES = ("rnnserve", "rnnserve-a", "rnnserve-b")


@pytest.fixture(scope="session")
def engine() -> None:
    problem = engine_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def image(engine: None) -> BuiltImage:
    built = build_image()
    how = f"built in {built.seconds:.1f} s" if built.built else "reused (same context hash)"
    REPORT.append(f"image {built.tag}: {how}, {built.size_bytes / 1e6:.0f} MB")
    return built


@pytest.fixture(scope="session")
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Models:
    shipped = ROOT / "models"
    if all(any((shipped / task).glob("*/manifest.json")) for task in ("lm", "sensor")):
        return Models(shipped, (), {"lm": "lm", "sensor": "sensor"})
    names = {"lm": "lm-gru", "sensor": "sensor-lstm"}
    tiny: Path = request.getfixturevalue("tiny_models_dir")
    target = readable_copy(tiny, list(names.values()), tmp_path_factory.mktemp("docker-models") / "models")
    return Models(target, ("-v", f"{target}:/models:ro"), names)


@pytest.fixture(scope="session")
def api_keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "api_keys"
    path.write_text(f"{API_KEY}\n", encoding="utf-8")
    path.chmod(0o644)  # the container reads it as uid 10001
    path.parent.chmod(0o755)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("docker")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def stack(
    image: BuiltImage, models: Models, api_keys_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeProject]:
    """docker-compose.yml up with profile `replicas` (which holds the default services too).

    Until the Redis store exists the replicas run the memory store, so that nginx, the health chain
    and Prometheus' discovery of the replicas are tested already; the session tests skip."""
    override: dict[str, dict[str, Any]] = {service: {} for service in STACK_SERVICES}
    if models.run_args:  # no shipped models yet: the test models go over /models, as in `docker run -v`
        for service in STACK_SERVICES:
            override[service]["volumes"] = [f"{models.host_dir}:/models:ro"]
    store = "redis" if redis_store_problem() is None else "memory"
    for service in ("rnnserve-a", "rnnserve-b"):
        override[service]["environment"] = {"RNNSERVE_STORE": store}
    override_file = tmp_path_factory.mktemp("compose") / "test.override.yml"
    override_file.write_text(json.dumps({"services": override}), encoding="utf-8")
    project = ComposeProject(
        env={
            "RNNSERVE_IMAGE": image.tag,
            "RNNSERVE_API_KEYS_FILE": str(api_keys_file),
            "RNNSERVE_HTTP_PORT": str(free_port()),
            "RNNSERVE_LB_PORT": str(free_port()),
            "PROMETHEUS_PORT": str(free_port()),
        },
        files=[COMPOSE_FILE, override_file],
        profiles=["replicas"],
    )
    start = time.monotonic()
    try:
        project.run("up", "-d", "--no-build", timeout=600)
        for service in ("rnnserve", "redis", "prometheus", "rnnserve-a", "rnnserve-b", "nginx"):
            wait_for(
                f"{service} healthy", partial(_healthy, project, service), 180, partial(project.logs, service)
            )
        REPORT.append(
            f"compose ({' '.join(compose_command())}) --profile replicas up, replicas on the "
            f"{store} store: healthy in {time.monotonic() - start:.1f} s"
        )
        yield project
    finally:
        project.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


def _healthy(project: ComposeProject, service: str) -> bool:
    return project.health(service) == "healthy"
