"""The benchmark suite end to end on a tiny model: one command, every section, JSON and plots.

No timing assertions (machines are noisy): the figures must exist, be positive and finite, and every
run must have been answered without errors.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.config import SECTIONS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_run(run: dict[str, Any], where: str) -> None:
    assert _positive(run["events_per_s"]), where
    assert not run["errors"], f"{where}: {run['errors']}"
    assert all(_positive(run["latency_ms"][p]) for p in ("p50", "p90", "p99", "max")), where
    assert run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"], where
    assert _positive(run["client_cpu_s"]), where


@pytest.fixture(scope="module")
def results(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--quick",
        "--models-dir",
        str(tiny_models_dir),
        "--lm-model",
        "lm-lstm",
        "--sensor-model",
        "sensor-gru",
        "--loads",
        "1,4",
        "--duration",
        "0.4",
        "--warmup",
        "0.1",
        "--memory-sessions",
        "300",
        "--training-seconds",
        "0.5",
        "--cost-cells",
        "lm:http:4,lm:ws:4,sensor:ws:4,lm:bulk:8,sensor:bulk:8,sensor:bulk_ws:8,sensor:bulk_ts:8",
        "--cost-rounds",
        "2",
        "--out-dir",
        str(out),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    assert "targets:" in done.stdout
    (json_path,) = out.glob("*-quick.json")
    return json.loads(json_path.read_text()), out


def test_every_section_is_there_without_errors(results: tuple[dict[str, Any], Path]) -> None:
    data, _ = results
    for name in SECTIONS:
        assert name in data, name
        section = data[name]
        assert not (isinstance(section, dict) and ("error" in section or "skipped" in section)), (
            name,
            section,
        )
    assert data["models"]["lm"]["name"] == "lm-lstm" and not data["models"]["lm"]["standin"]
    assert data["meta"]["command"].startswith("python -m benchmarks --quick")


def test_figures_are_positive_and_finite(results: tuple[dict[str, Any], Path]) -> None:
    data, _ = results
    for name, run in data["client"].items():
        _check_run(run, f"client {name}")
    limit = data["limit"]["lm"]
    assert _positive(limit["best_events_per_s"]) and _positive(limit["single_step_ms"])
    assert [row["sessions"] for row in data["loads"]] == [1, 4]
    for row in data["loads"]:
        assert _positive(row["limit_events_per_s"])
        for server in ("batched", "unbatched", "baseline"):
            _check_run(row[server], f"{server} at {row['sessions']}")
        hist = row["batched"]["server"]["batch_size"]
        assert hist["count"] > 0 and sum(hist["buckets"].values()) == hist["count"]
        assert row["unbatched"]["server"]["batch_size"]["mean"] == 1.0
    low = data["low_load"]
    assert low["samples"] > 0
    assert all(_positive(low[k]) for k in ("batched_p50_ms", "unbatched_p50_ms", "in_process_step_p50_ms"))
    assert [m["events_per_request"] for m in data["multi_event"]] == [1, 8, 64]
    for m in data["multi_event"]:
        _check_run(m["run"], f"{m['events_per_request']} events/request")
    for section in ("open_loop", "sensor"):
        for entry in data[section]:
            _check_run(entry["run"], section)
    cells = [(r["task"], r["transport"], r["sessions"]) for r in data["cost"]]
    assert cells == [
        ("lm", "http", 4),
        ("lm", "ws", 4),
        ("sensor", "ws", 4),
        ("lm", "bulk", 8),
        ("sensor", "bulk", 8),
        ("sensor", "bulk_ws", 8),
        ("sensor", "bulk_ts", 8),  # stamped readings: every step answered (errors 0, below)
    ]
    for r in data["cost"]:  # each cell's median of its 2 rounds (benchmarks/rounds.py)
        assert r["rounds"] == 2 and r["round"] in (0, 1), r
        assert r["server_cpu_us_per_event"] in r["rounds_server_cpu_us_per_event"], r
        assert r["errors"] == 0 and r["events"] > 0, r
        assert _positive(r["server_cpu_us_per_event"]) and _positive(r["ort_cpu_us_per_event"])
        assert 0 < r["inference_share"] < 1.5, r  # ORT alone cannot cost much more than the server
        # the per-session cells have the bare transport's floor beside them (benchmarks.floor)
        if r["transport"] in ("http", "ws"):
            assert _positive(r["floor_cpu_us_per_event"]), r
            want = r["ort_cpu_us_per_event"] / (r["ort_cpu_us_per_event"] + r["floor_cpu_us_per_event"])
            assert r["share_ceiling"] == pytest.approx(want) and 0 < want < 1, r
        else:
            assert "share_ceiling" not in r, r
    mem = data["memory"]
    assert mem["sessions"] == 300 and mem["state_bytes_per_session"] > 0
    assert math.isfinite(mem["ratio_to_state_bytes"]) and mem["rss_after_bytes"] > 0
    train = data["training"]
    assert _positive(train["job_events_per_s"]) and _positive(train["plain_events_per_s"])


def test_summary_targets_and_plots(results: tuple[dict[str, Any], Path]) -> None:
    data, out = results
    summary = data["summary"]
    for row in summary["per_load"]:
        for key in ("efficiency", "batcher_gain", "baseline_advantage"):
            assert _positive(row[key]), (key, row)
    assert math.isfinite(summary["low_load_overhead_ms"]) and math.isfinite(summary["batcher_p50_added_ms"])
    names = {t["name"] for t in summary["targets"]}
    assert len(names) == 10 and all(t["value"] is not None for t in summary["targets"])
    assert sorted(data["plots"]) == sorted(p.name for p in out.glob("*.png"))
    for kind in ("throughput", "latency", "batch-sizes", "multi-event"):
        assert any(p.endswith(f"-{kind}.png") for p in data["plots"]), kind
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_script_runs_on_cpu(tiny_models_dir: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu",
        "--providers",
        "cpu",
        "--models-dir",
        str(tiny_models_dir),
        "--lm-model",
        "lm-gru",
        "--sessions",
        "1,8",
        "--seconds",
        "0.1",
        "--server",
        "--out-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-5000:]
    (json_path,) = tmp_path.glob("*-gpu-cpu.json")
    data = json.loads(json_path.read_text())
    for point in data["in_process"]["points"]:
        assert point["host_slab"]["state_copies_per_step"] == 2  # GRU: one state tensor, in and out
        assert point["device_resident"]["state_copies_per_step"] == 0
        assert _positive(point["host_slab"]["events_per_s"]) and _positive(
            point["device_resident"]["events_per_s"]
        )
    for entry in data["server"]:
        _check_run(entry["run"], f"server at {entry['sessions']}")
    assert json_path.with_suffix(".png").is_file()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_replicas_benchmark_runs_and_accounts_for_every_process(tmp_path: Path) -> None:
    out = tmp_path / "replicas.json"
    command = [sys.executable, "-m", "benchmarks.replicas", "--replicas", "2", "--cells", "sensor:ws:8"]
    command += ["--duration", "1", "--warmup", "0.3", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-5000:]
    rows = {r["server"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"memory x1", "redis x2"}
    assert rows["memory x1"]["replicas"] == 1 and rows["memory x1"]["redis_cpu_us_per_event"] is None
    assert rows["redis x2"]["replicas"] == 2 and _positive(rows["redis x2"]["redis_cpu_us_per_event"])
    for row in rows.values():
        assert row["errors"] == 0 and row["events"] > 0, row
        assert _positive(row["server_cpu_us_per_event"]) and 0 < row["inference_share_with_redis"] < 1.5, row
