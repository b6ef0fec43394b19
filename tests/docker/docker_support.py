"""What the Docker tests share: the docker CLI, the image (built once, tagged by a hash of its build
context), containers and compose projects that clean up after themselves, and a client session that
streams events and checks them against the whole-sequence ONNX Runtime reference of tests/e2e.

Everything listens on 127.0.0.1 only; compose projects and containers get unique names, so that several
test runs can share one engine.
"""

from __future__ import annotations

import hashlib
import os
import pkgutil
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from e2e_support import Reference, check_lm, check_sensor

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
API_KEY = "docker-test-key"
TOP_K = 3
REPORT: list[str] = []  # timings and sizes, printed in pytest's terminal summary (conftest.py)


class DockerError(RuntimeError):
    pass


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise DockerError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def engine_problem() -> str | None:
    """Why the Docker tests cannot run here, or None when an engine answers."""
    if shutil.which("docker") is None:
        return "no docker CLI (../shared/tools/docker-engine --standins installs and starts an engine)"
    try:
        result = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer within 30 s"
    if result.returncode != 0:
        return f"no Docker engine answers ({result.stderr.strip()[:200]}); run ../shared/tools/docker-engine"
    return None


def redis_store_problem() -> str | None:
    """Why the replicas cannot share sessions yet, or None once service/store has a Redis backend."""
    import service.store

    if any("redis" in module.name for module in pkgutil.iter_modules(service.store.__path__)):
        return None
    return (
        "RNNSERVE_STORE=redis is not supported yet (service/store/ has no Redis backend: the store "
        "half of issue 5); the replicas profile needs it"
    )


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, timeout=30, check=False).returncode == 0


# ---- the image -------------------------------------------------------------------------------------


def context_files() -> list[Path]:
    """The files .dockerignore lets into the build context: it excludes everything, then lets back in
    the paths its `!` lines name, less caches (tests/unit/deploy checks that reading)."""
    roots = [
        line.strip()[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    ]
    files: list[Path] = []
    for root in roots:
        path = ROOT / root
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [
            p
            for p in candidates
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and p.name != ".DS_Store"
        ]
    return files


def context_hash(dockerfile: Path, base_image: str) -> str:
    """A tag for the image: the Dockerfile, .dockerignore, every context file and the base image's id,
    so that an unchanged tree reuses the image instead of building it again."""
    digest = hashlib.sha256()
    base_id = docker("image", "inspect", "--format", "{{.Id}}", base_image, check=False).stdout.strip()
    digest.update(base_id.encode())
    for path in [dockerfile, ROOT / ".dockerignore", *context_files()]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class BuiltImage:
    tag: str
    built: bool  # False: an image with this content hash was already there
    seconds: float
    size_bytes: int


def build_image(dockerfile: Path = DOCKERFILE, base_image: str = "python:3.11-slim") -> BuiltImage:
    tag = f"rnnserve:test-{context_hash(dockerfile, base_image)}"
    start = time.monotonic()
    built = not image_exists(tag)
    if built:
        docker("build", "--network", "host", "-f", str(dockerfile), "-t", tag, str(ROOT), timeout=1200)
    seconds = time.monotonic() - start
    if built:
        _remove_older_test_images(keep=tag)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    return BuiltImage(tag, built, seconds, size)


def _remove_older_test_images(keep: str) -> None:
    """Earlier trees' test images: each holds its own copy of the virtual environment. One that a
    container still uses (another test run on this engine) is refused by the engine and stays."""
    tags = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "rnnserve").stdout.split()
    for old in tags:
        if old.startswith("rnnserve:test-") and old != keep:
            docker("image", "rm", old, check=False)


# ---- containers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(
    what: str, ready: Callable[[], bool], timeout_s: float = 90, diagnose: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (httpx.HTTPError, DockerError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{diagnose()}")


@dataclass
class Container:
    """One `docker run -d` of the image, port 8000 published on a loopback port the engine picks."""

    image: str
    name: str = field(default_factory=lambda: unique("rnnserve-test"))
    run_args: Sequence[str] = ()

    def start(self) -> Container:
        docker(
            "run",
            "-d",
            "--name",
            self.name,
            "-p",
            "127.0.0.1::8000",
            "-e",
            f"RNNSERVE_API_KEYS={API_KEY}",
            "--health-interval",
            "1s",
            "--health-start-period",
            "30s",
            *self.run_args,
            self.image,
        )
        return self

    @property
    def url(self) -> str:
        # the engine may bind an IPv6 twin too: take the loopback one
        lines = docker("port", self.name, "8000/tcp").stdout.split()
        [address] = [line for line in lines if line.startswith("127.0.0.1:")]
        return f"http://{address}"

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        result = docker("logs", "--tail", "200", self.name, check=False)
        return result.stdout + result.stderr

    def wait_ready(self, timeout_s: float = 90) -> Container:
        def ready() -> bool:
            if self.inspect("{{.State.Running}}") != "true":
                raise AssertionError(f"the container exited:\n{self.logs()}")
            return httpx.get(f"{self.url}/readyz", timeout=5, trust_env=False).status_code == 200

        wait_for("/readyz answers 200", ready, timeout_s, self.logs)
        return self

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.name, check=False)


# ---- compose ---------------------------------------------------------------------------------------


def compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin is installed, else `docker-compose` (v1.29, Debian's)."""
    forced = os.environ.get("RNNSERVE_TEST_COMPOSE")
    if forced:
        return forced.split()
    if docker("compose", "version", timeout=30, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise DockerError("neither `docker compose` nor `docker-compose` is installed")


@dataclass
class ComposeProject:
    """A compose project of docker-compose.yml under a unique name, on free loopback ports."""

    env: dict[str, str]
    files: list[Path]
    profiles: list[str]
    name: str = field(default_factory=lambda: unique("rnnserve-test"))

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*compose_command(), "-p", self.name]
        for path in self.files:
            command += ["-f", str(path)]
        for profile in self.profiles:
            command += ["--profile", profile]
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RNNSERVE_", "COMPOSE_"))}
        result = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**clean, **self.env},
            cwd=ROOT,
            check=False,
        )
        if check and result.returncode != 0:
            raise DockerError(f"{' '.join(command[-2:])} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
        return result

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        return docker(
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
            self.container(service),
        ).stdout.strip()

    def logs(self, *services: str) -> str:
        return self.run("logs", "--no-color", "--tail", "60", *services, check=False).stdout

    def url(self, port_variable: str) -> str:
        return f"http://127.0.0.1:{self.env[port_variable]}"


@dataclass(frozen=True)
class Models:
    """The models the containers serve: where they live on this machine (the reference reads them
    there), the `docker run` arguments that put them at /models (none: the baked-in ones), and the
    model name to use for each task."""

    host_dir: Path
    run_args: tuple[str, ...]
    names: dict[str, str]

    def artifact(self, task: str) -> Path:
        """The default (highest) version of the task's model."""
        versions = sorted((self.host_dir / self.names[task]).iterdir(), key=lambda p: (len(p.name), p.name))
        return versions[-1]


def readable_copy(models_dir: Path, names: Sequence[str], target: Path) -> Path:
    """The named models of models_dir copied to target, readable by the image's non-root user."""
    for name in names:
        shutil.copytree(models_dir / name, target / name)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


# ---- a client session ------------------------------------------------------------------------------


def client(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30, trust_env=False
    )


def sample_events(reference: Reference, count: int, seed: int = 0) -> list[Any]:
    """Known and unknown words for lm; readings around the training statistics for sensor."""
    rng = random.Random(seed)
    sensor = reference.manifest.sensor
    if sensor is not None:
        return [
            [mu + sd * rng.uniform(-2, 2) for mu, sd in zip(sensor.mean, sensor.std, strict=True)]
            for _ in range(count)
        ]
    words = [w for w in reference.vocab if not w.startswith("<")] + ["no-such-word"]
    return [rng.choice(words) for _ in range(count)]


def body(task: str, seq: int, events: list[Any]) -> dict[str, Any]:
    if task == "lm":
        return {"seq": seq, "tokens": events, "top_k": TOP_K}
    return {"seq": seq, "readings": events}


def check_outputs(reference: Reference, events: list[Any], outputs: list[dict[str, Any]]) -> None:
    if reference.manifest.task == "lm":
        check_lm(outputs, reference.lm(events, TOP_K))
    else:
        check_sensor(outputs, reference.sensor(events), reference.manifest)


def step(http: httpx.Client, session: str, task: str, seq: int, events: list[Any]) -> dict[str, Any]:
    response = http.post(f"/v1/sessions/{session}/events", json=body(task, seq, events))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["seq"] == seq + len(events)
    return answer


def new_session(http: httpx.Client, model: str) -> str:
    response = http.post("/v1/sessions", json={"model": model})
    assert response.status_code == 201, response.text
    session: str = response.json()["session_id"]
    return session
