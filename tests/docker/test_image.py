"""The CPU image for real: what is in it, a container that answers and streams lm and sensor sessions
like the reference, a clean stop on `docker stop`, and a restart that continues the sessions from the
snapshot volume."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_support import (
    REPORT,
    BuiltImage,
    Container,
    Models,
    check_outputs,
    client,
    docker,
    new_session,
    readable_copy,
    sample_events,
    step,
    unique,
    wait_for,
)
from e2e_support import Reference

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# run inside the image as its own user: nothing of training, torch or a compiler, and the service imports
PROBE = """
import importlib.util, json, os, shutil
print(json.dumps({
    "uid": os.getuid(),
    "absent": [m for m in ("torch", "training", "onnx", "pytest") if importlib.util.find_spec(m) is None],
    "compilers": [c for c in ("gcc", "cc", "g++", "clang", "make") if shutil.which(c)],
    "imports": all(importlib.util.find_spec(m) for m in ("service.app", "onnxruntime", "uvicorn")),
    "models": sorted(os.listdir("/models")),
}))
"""


@pytest.fixture(scope="module")
def served(image: BuiltImage, models: Models) -> Iterator[Container]:
    container = Container(image.tag, run_args=models.run_args).start()
    try:
        yield container.wait_ready()
    finally:
        container.remove()


def test_image_holds_the_service_and_nothing_else(image: BuiltImage, models: Models) -> None:
    result = docker(
        "run", "--rm", "--network", "none", *models.run_args, "--entrypoint", "python", image.tag, "-c", PROBE
    )
    found = json.loads(result.stdout)
    assert found["uid"] == 10001
    assert found["absent"] == ["torch", "training", "onnx", "pytest"]
    assert found["compilers"] == []
    assert found["imports"] is True
    assert set(models.names.values()) <= set(found["models"])
    REPORT.append(f"image size {image.size_bytes / 1e6:.0f} MB (docker image inspect .Size)")


def test_image_metadata(image: BuiltImage) -> None:
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image.tag).stdout)
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"][-1] == "/healthz"
    assert config["StopSignal"] == "SIGTERM"
    assert "/var/lib/rnnserve" in config["Volumes"]
    assert "8000/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["rnnserve"]


def test_ready_and_healthy(served: Container) -> None:
    with client(served.url) as http:
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"] >= 2
        assert http.get("/metrics").text.startswith("# HELP")
        assert (
            http.post(
                "/v1/sessions", json={"model": "lm"}, headers={"Authorization": "Bearer wrong"}
            ).status_code
            == 401
        ), "settings come from the environment: the API key is on"
    # the image's own HEALTHCHECK command (run every second here) turns the container healthy
    wait_for(
        "docker reports healthy",
        lambda: served.inspect("{{.State.Health.Status}}") == "healthy",
        60,
        served.logs,
    )
    published = served.inspect("{{json .NetworkSettings.Ports}}")
    assert {binding["HostIp"] for binding in json.loads(published)["8000/tcp"]} == {"127.0.0.1"}


@pytest.mark.parametrize("task", ["lm", "sensor"])
def test_streams_a_session_like_the_reference(served: Container, models: Models, task: str) -> None:
    reference = Reference.load(models.artifact(task))
    events = sample_events(reference, 12)
    outputs = []
    with client(served.url) as http:
        session = new_session(http, models.names[task])
        seq = 0
        for size in (1, 4, 2, 5):  # one event, then chunks: one graph serves both
            outputs += step(http, session, task, seq, events[seq : seq + size])["outputs"]
            seq += size
    check_outputs(reference, events, outputs)


def test_stop_is_clean_and_a_restart_continues_the_sessions(image: BuiltImage, models: Models) -> None:
    volume = unique("rnnserve-test-state")
    container = Container(image.tag, run_args=(*models.run_args, "-v", f"{volume}:/var/lib/rnnserve"))
    references = {task: Reference.load(models.artifact(task)) for task in ("lm", "sensor")}
    events = {task: sample_events(ref, 10, seed=1) for task, ref in references.items()}
    outputs: dict[str, list[dict[str, object]]] = {task: [] for task in references}
    try:
        container.start().wait_ready()
        with client(container.url) as http:
            sessions = {task: new_session(http, models.names[task]) for task in references}
            for task, session in sessions.items():
                outputs[task] += step(http, session, task, 0, events[task][:6])["outputs"]

        start = time.monotonic()
        docker("stop", container.name, timeout=60)  # SIGTERM, SIGKILL after 10 s
        stop_s = time.monotonic() - start
        assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
        assert stop_s < 9, f"docker stop took {stop_s:.1f} s: SIGKILL comes at 10 s"
        assert "Traceback" not in container.logs()
        REPORT.append(f"docker stop: {stop_s:.1f} s, exit 0, snapshot on volume {volume}")

        docker("start", container.name)
        container.wait_ready()
        with client(container.url) as http:
            for task, session in sessions.items():
                assert http.get(f"/v1/sessions/{session}").json()["seq"] == 6
                outputs[task] += step(http, session, task, 6, events[task][6:])["outputs"]
        for task, reference in references.items():
            check_outputs(reference, events[task], outputs[task])
    finally:
        container.remove()
        docker("volume", "rm", "-f", volume, check=False)


def test_a_mount_replaces_the_baked_models(image: BuiltImage, tiny_models_dir: Path, tmp_path: Path) -> None:
    names = ["lm-rnn", "sensor-gru"]
    mounted = readable_copy(tiny_models_dir, names, tmp_path / "models")
    container = Container(image.tag, run_args=("-v", f"{mounted}:/models:ro")).start()
    try:
        with client(container.wait_ready().url) as http:
            served = {m["name"] for m in http.get("/v1/models").json()["models"]}
        assert served == set(names)
    finally:
        container.remove()
