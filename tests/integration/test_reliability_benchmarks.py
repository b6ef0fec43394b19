"""The reliability benchmarks in their smoke mode, on tiny models: the soak's leak checks hold after a
few thousand cycles, and the snapshot-cost benchmark measures both phases and real snapshots.

No timing or RSS assertions (a short run on a shared machine says nothing about either): the soak's
structural checks (no session, row, answer, id or turn entry left; tombstones within their bound)
must pass, and the snapshot figures must exist and be positive.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _run(module: str, out: Path, *args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", module, "--out-dir", str(out), "--threads", "1", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = out.glob("*.json")
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def test_soak_smoke_leaves_nothing_behind(tiny_models_dir: Path, tmp_path: Path) -> None:
    data = _run(
        "benchmarks.soak",
        tmp_path,
        *("--models-dir", str(tiny_models_dir), "--model", "sensor-gru"),
        *("--cycles", "3000", "--warmup", "1000", "--sample-every", "500", "--workers", "16"),
        *("--max-sessions", "400", "--max-rss-growth", "10"),  # tombstones reach their bound of 400
        *("--snapshot-interval", "0.2"),  # periodic snapshots of the sessions and tombstones run too
    )
    assert data["cycles"] >= 3000 and data["passed"], data["checks"]
    end = data["samples"][-1]
    assert end["index"] == end["live_rows"] == end["answers"] == end["turns"] == 0
    assert max(s["tombstones"] for s in data["samples"]) == 400  # reached the bound, never beyond
    assert max(s["live_rows"] for s in data["samples"]) > 0  # sampled while sessions were live
    assert end["snapshots"] > 0


def test_snapshot_cost_smoke_measures_both_phases(tiny_models_dir: Path, tmp_path: Path) -> None:
    data = _run(
        "benchmarks.snapshots",
        tmp_path,
        *("--models-dir", str(tiny_models_dir), "--model", "lm-lstm", "--sessions", "500"),
        *("--duration", "1", "--rounds", "1", "--interval", "0.2", "--workers", "8"),
    )
    (result,) = data["results"]
    assert result["sessions"] == 500
    for key in ("events_per_s_off", "events_per_s_on", "stall_ms_max", "write_ms_median", "file_bytes"):
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]) and result[key] > 0, key
    on = [p for p in result["phases"] if p["snapshots"]]
    assert on and all(p["snapshot_count"] >= 1 for p in on)
