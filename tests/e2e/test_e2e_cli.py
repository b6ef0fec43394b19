"""The installed command line and the server's operational output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_support import ServerProcess, StartServer, auth

pytestmark = pytest.mark.e2e

RNNSERVE = Path(sys.executable).parent / "rnnserve"


@pytest.mark.skipif(not RNNSERVE.is_file(), reason="the rnnserve console script is not installed here")
def test_console_script_verifies_models(tiny_models_dir: Path) -> None:
    done = subprocess.run(
        [RNNSERVE, "models", "--models-dir", tiny_models_dir], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "6 of 6 artifact(s) verified" in done.stdout


def test_python_dash_m_service_has_the_same_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "RNNSERVE_MAX_QUEUE_DELAY_US" in done.stdout


def test_start_banner_access_logs_and_docs(server: ServerProcess) -> None:
    httpx.get(
        f"{server.url}/v1/models", headers={**auth(), "X-Request-ID": "e2e-log-check"}
    ).raise_for_status()
    assert httpx.get(f"{server.url}/docs").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/sessions/{session_id}/events" in spec["paths"] and "/v2/models/{name}/infer" in spec["paths"]
    log = server.log()
    assert f"API docs {server.url}/docs, metrics {server.url}/metrics" in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "e2e-log-check"]
    assert access and access[0]["route"] == "/v1/models" and access[0]["status"] == 200
    assert access[0]["logger"] == "rnnserve.access" and "duration_ms" in access[0]
    assert not any(line["level"] == "warning" and "AUTH IS OFF" in line["message"] for line in lines)


def test_auth_off_is_announced_loudly(start_server: StartServer) -> None:
    server = start_server()
    assert "AUTH IS OFF" in server.log()
    assert httpx.get(f"{server.url}/v1/models").status_code == 200
