"""Each serving-cost cell's median round (benchmarks/rounds.py), on hand-made rows."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.rounds import median_rows, spread

pytestmark = pytest.mark.unit


def row(task: str, transport: str, share: float | None, cpu: float, server: str = "server") -> dict[str, Any]:
    return {
        "server": server,
        "task": task,
        "transport": transport,
        "sessions": 256,
        "inference_share": share,
        "server_cpu_us_per_event": cpu,
        "events_per_s": 1e6 / cpu,
    }


def test_lm_cells_report_the_round_of_the_median_share_and_sensor_cells_of_the_median_cpu() -> None:
    # rounds interleaved as cost.run writes them: lm ws, sensor ws, lm ws, sensor ws, ...
    rows = [
        row("lm", "ws", 0.62, 180.0),
        row("sensor", "ws", 0.012, 75.0),
        row("lm", "ws", 0.57, 170.0),  # lower share and lower CPU (ORT ran faster that second)
        row("sensor", "ws", 0.015, 58.0),
        row("lm", "ws", 0.60, 200.0),
        row("sensor", "ws", 0.010, 61.0),
    ]
    lm, sensor = median_rows(rows)
    # lm: shares 0.57 < 0.60 < 0.62 -> the third round, as it was measured (its own CPU, not a median)
    assert (lm["inference_share"], lm["server_cpu_us_per_event"]) == (0.60, 200.0)
    assert lm["rounds"] == 3 and lm["rounds_inference_share"] == [0.62, 0.57, 0.60]
    assert lm["rounds_server_cpu_us_per_event"] == [180.0, 170.0, 200.0]
    # sensor: CPU 58 < 61 < 75 -> the third round, whatever its share
    assert (sensor["server_cpu_us_per_event"], sensor["inference_share"]) == (61.0, 0.010)
    assert spread(lm) == "  (median of 3 rounds: 0.570-0.620)"
    assert spread(sensor) == "  (median of 3 rounds: 58.0-75.0)"


def test_an_even_count_reports_the_less_favourable_middle_round() -> None:
    lm = median_rows([row("lm", "bulk", s, 100.0) for s in (0.85, 0.79, 0.81, 0.90)])[0]
    assert lm["inference_share"] == 0.81  # of 0.81 and 0.85: the lower share
    sensor = median_rows([row("sensor", "bulk", 0.05, c) for c in (9.0, 11.0, 10.5, 8.0)])[0]
    assert sensor["server_cpu_us_per_event"] == 10.5  # of 9.0 and 10.5: the higher CPU


def test_cells_keep_their_order_and_servers_their_own_rows() -> None:
    rows = [
        row("lm", "http", 0.50, 200.0, "before"),
        row("lm", "http", 0.52, 190.0, "after"),
        row("sensor", "bulk", 0.05, 9.0, "before"),
        row("sensor", "bulk", 0.06, 8.5, "after"),
        row("lm", "http", 0.48, 210.0, "before"),
        row("lm", "http", 0.54, 185.0, "after"),
        row("sensor", "bulk", 0.05, 9.5, "before"),
        row("sensor", "bulk", 0.06, 8.0, "after"),
    ]
    out = median_rows(rows)
    assert [(r["server"], r["task"]) for r in out] == [
        ("before", "lm"),
        ("after", "lm"),
        ("before", "sensor"),
        ("after", "sensor"),
    ]
    assert [r["inference_share"] for r in out[:2]] == [0.48, 0.52]  # the worse middle of two
    assert [r["server_cpu_us_per_event"] for r in out[2:]] == [9.5, 8.5]


def test_one_round_is_reported_as_it_is_and_a_cell_without_a_share_still_has_a_row() -> None:
    (alone,) = median_rows([row("lm", "ws", 0.6, 180.0)])
    assert alone["rounds"] == 1 and spread(alone) == ""
    (unshared,) = median_rows([row("lm", "ws", None, 180.0), row("lm", "ws", None, 170.0)])
    assert unshared["rounds"] == 2 and unshared["inference_share"] is None
