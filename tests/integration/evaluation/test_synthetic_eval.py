"""`rnnserve eval synthetic`: labelled streams through the real SessionManager and the shipped sensor models
(real ONNX Runtime, the session statistics the HTTP API serves), judged with training's event matching."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from evaluation import cli
from evaluation.synthetic import WARMUP_READINGS, Served, evaluate, in_warmup, judge, serve_stream
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings
from training.data.synthetic import ANOMALY_TYPES, STEP_SECONDS, AnomalyEvent, SensorSeries

pytestmark = pytest.mark.integration
MODELS = Path(__file__).resolve().parents[3] / "models"


def _settings(models: Path = MODELS) -> Settings:
    return Settings(models_dir=models, snapshot_path=None)


def _series(values: np.ndarray, events: Sequence[AnomalyEvent]) -> SensorSeries:
    n = len(values)
    stamps = np.datetime64("2024-03-01T00:00:00", "s") + np.arange(n) * np.timedelta64(STEP_SECONDS, "s")
    labels = np.zeros(n, np.int64)
    return SensorSeries(("value",), stamps, values[:, None], labels, ("spike",), tuple(events))


async def _serve(model: str, streams: Sequence[SensorSeries], timestamps: bool = True) -> list[Served]:
    manager = SessionManager(_settings(), Metrics())
    await manager.start()
    try:
        version = manager.registry.get(model).version
        return [await serve_stream(manager, model, version, s, lambda n: None, timestamps) for s in streams]
    finally:
        await manager.stop()


def test_an_obvious_spike_is_found_and_one_in_the_warm_up_is_missed() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(800)
    values = 50 + 5 * np.sin(2 * np.pi * t / 48) + rng.normal(0, 0.5, t.size)
    values[100] += 80  # inside the warm-up: likelihood and range novelty are still silent
    values[600] += 80
    values[300] = np.nan  # a missing reading: sent as the last present value
    events = [AnomalyEvent("spike", 0, 100, 101, 101), AnomalyEvent("spike", 0, 600, 601, 601)]
    stream = _series(values, events)
    (served,) = asyncio.run(_serve("sensor-fleet", [stream]))
    assert np.isnan(served.score[0]) and np.isfinite(served.score[1:]).all()  # nothing predicted reading 0
    assert np.array_equal(served.is_anomaly[1:], served.probability[1:] >= 0.5)  # the served contract
    assert not served.is_anomaly[:WARMUP_READINGS].any()
    assert in_warmup([stream]) == {"spike": 1, "all": 1}
    rules = {r.name: r for r in judge([stream], [served], raw_threshold=1e9)}
    # the spike at 600 is found, the one at 100 is not
    got = rules["served"].result["spike"]
    assert (got.tp, got.fn) == (1, 1) and served.is_anomaly[600]
    # false alarms, counted here reading by reading: runs of flags outside 100..103 and 600..603 (each
    # spike and its 3-reading return edge); a tail is such a run that starts right after a flagged 603
    inside = {*range(100, 104), *range(600, 604)}
    flagged = {int(i) for i in np.flatnonzero(served.is_anomaly)}
    runs = [i for i in sorted(flagged - inside) if i - 1 not in flagged - inside]
    tails = [i for i in runs if i - 1 in flagged & inside]
    assert got.fp == len(runs) and rules["served"].trailing == {"spike": len(tails), "all": len(tails)}
    assert got.f1 == pytest.approx(2 * (1 / (1 + len(runs))) * 0.5 / (1 / (1 + len(runs)) + 0.5))
    # no raw score reaches 1e9: nothing found, nothing flagged
    assert (rules["raw"].result["spike"].tp, rules["raw"].result["spike"].fp) == (0, 0)
    # the best probability threshold finds the spike after the warm-up at least
    assert rules["best"].result["spike"].tp >= 1
    # without timestamps the model scores the same readings the same (only the daily profile needs them)
    (untimed,) = asyncio.run(_serve("sensor-fleet", [stream], timestamps=False))
    np.testing.assert_array_equal(untimed.score, served.score)


@pytest.mark.slow
def test_the_raw_score_rule_through_the_server_is_what_training_reported() -> None:
    """The streams, the matching and the serving path agree with training's own test figures, computed
    by torch outside the server: the shipped models' manifests."""
    reports = asyncio.run(evaluate(_settings(), ["sensor", "sensor-fleet"]))
    for report in reports:
        manifest = json.loads((MODELS / report.model / report.version / "manifest.json").read_text())
        metrics = manifest["training"]["metrics"]
        raw = next(r for r in report.rules if r.name == "raw")
        assert raw.threshold == manifest["sensor"]["calibration"]["center"]
        for kind in (*ANOMALY_TYPES, "all"):
            got = raw.result[kind]
            assert got.tp + got.fn == metrics[f"test_{kind}_events"]
            assert got.fp == metrics[f"test_{kind}_false_alarms"], (report.model, kind)
            assert got.f1 == pytest.approx(metrics[f"test_{kind}_f1"], abs=1e-4), (report.model, kind)
        assert report.readings == sum(12 * 1008 for _ in range(report.streams))


def _small_fleet(tmp_path: Path, data: dict[str, object] | None) -> Path:
    """A copy of the shipped fleet model whose manifest says it was trained with `data` (None: no data)."""
    models = tmp_path / "models"
    artifact = models / "sensor-fleet" / "1"
    shutil.copytree(MODELS / "sensor-fleet" / "1", artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    if data is None:
        del manifest["training"]["config"]["data"]
    else:
        manifest["training"]["config"]["data"].update(data)
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    return models


@pytest.mark.parametrize("flags", [[], ["--no-timestamps"]])
def test_the_command_writes_every_rule_per_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    models = _small_fleet(tmp_path, {"synthetic_eval_weeks": 0.5, "synthetic_events": 1})
    out = tmp_path / "f1.json"
    argv = ["synthetic", "--models-dir", str(models), "--model", "sensor-fleet", "--json", str(out)]
    assert cli.main([*argv, "--no-progress", *flags]) == 0
    (report,) = json.loads(out.read_text())
    assert report["model"] == "sensor-fleet" and report["readings"] == report["streams"] * 504
    assert set(report["rules"]) == {"served", "raw", "best"}
    for rule in report["rules"].values():
        assert {"all", *ANOMALY_TYPES} <= set(rule)
        assert rule["all"]["tp"] + rule["all"]["fn"] == len(ANOMALY_TYPES)  # one anomaly per type
    assert "served `is_anomaly`" in capsys.readouterr().out


def test_models_it_cannot_judge_get_one_line_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = _small_fleet(tmp_path, None)
    argv = ["synthetic", "--models-dir", str(models), "--no-progress"]
    assert cli.main([*argv, "--model", "sensor-fleet"]) == 2
    assert "not trained on the built-in synthetic plant" in capsys.readouterr().err
    assert cli.main([*argv, "--model", "nope"]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
