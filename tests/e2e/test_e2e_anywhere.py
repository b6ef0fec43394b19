"""An installed rnnserve works from any directory: the shipped models come with the package, and the
session snapshot goes to the user's state directory, never into the directory the server starts in.

The package is built as a wheel and unpacked outside the checkout (a non-editable install, as
`pip install <clone>` makes it); the server runs from it in an empty directory with no models setting.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from e2e_support import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_installed_package_serves_the_shipped_models_from_any_directory(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("rnnserve-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # what pip installs: the wheel's files as they are
        archive.extractall(site)
    shipped = {p.parent.parent.name for p in (site / "service/default_models").glob("*/*/manifest.json")}
    assert shipped == {"lm", "sensor", "sensor-fleet"}
    anywhere, state, logs = tmp_path / "anywhere", tmp_path / "state", tmp_path / "logs"
    logs.mkdir()
    environ: dict[str, str | None] = {
        "PYTHONPATH": str(site),  # ahead of the editable install of the checkout
        "XDG_STATE_HOME": str(state),
        "RNNSERVE_SNAPSHOT_PATH": None,  # the defaults, as a new user has them
        "RNNSERVE_MODELS_DIR": None,
    }
    server = ServerProcess(None, anywhere, environ=environ, log_dir=logs).wait_ready()
    try:
        models = httpx.get(f"{server.url}/v1/models").json()["models"]
        assert {(m["name"], m["version"]) for m in models} == {
            ("lm", "1"),
            ("lm", "2"),
            ("sensor", "1"),
            ("sensor-fleet", "1"),
        }
        created = httpx.post(f"{server.url}/v1/sessions", json={"model": "lm"}).json()
        assert created["version"] == "2"  # the newest lm is the default; lm/1 serves sessions started on it
        sid = created["session_id"]
        assert httpx.post(f"{server.url}/v1/sessions/{sid}/events", json={"text": "the"}).status_code == 200
    finally:
        assert server.stop() == 0, server.log()
    assert f"loaded from {site / 'service' / 'default_models'}" in server.log()  # the installed copy
    assert list(anywhere.iterdir()) == []  # nothing written where it started
    assert (state / "rnnserve" / "sessions.snapshot").is_file()  # the session, in the state directory
