"""The NAB runner on a few small files: real ONNX Runtime, the shipped one-feature fleet model, the real
SessionManager; results in NAB's layout, scored with our scorer, and no look-ahead from chunking."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evaluation import cli, nab_runner
from evaluation.nab_scorer import PROFILES
from service.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet_models() -> Path:
    """The shipped models directory: `sensor-fleet/1`, the one-feature online model the runner uses."""
    return Path(__file__).resolve().parents[3] / "models"


def _write(path: Path, values: np.ndarray) -> list[str]:
    stamps = [
        f"2014-04-{1 + i // 288:02d} {(i % 288) // 12:02d}:{5 * (i % 12):02d}:00" for i in range(len(values))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        w.writerows(zip(stamps, values.tolist(), strict=True))
    return stamps


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    data = tmp_path_factory.mktemp("nab") / "data"
    t = np.arange(600)
    spiky = 50 + 5 * np.sin(2 * np.pi * t / 48) + rng.normal(0, 0.5, 600)
    spiky[450] += 80
    stamps = _write(data / "artificialWithAnomaly" / "spiky.csv", spiky)
    _write(data / "realThing" / "noisy.csv", 1e4 + 300 * rng.standard_normal(400))
    _write(data / "realThing" / "flat.csv", np.full(350, 3.0))
    labels = data.parent / "combined_windows.json"
    labels.write_text(
        json.dumps(
            {
                "artificialWithAnomaly/spiky.csv": [[stamps[440] + ".000000", stamps[470] + ".000000"]],
                "realThing/noisy.csv": [],
                "realThing/flat.csv": [],
            }
        )
    )
    return data, labels


def test_runner_writes_nab_results_and_scores_them(
    fleet_models: Path, corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    data, labels = corpus
    results = tmp_path / "results"
    argv = ["nab", "--data", str(data), "--results", str(results), "--labels", str(labels)]
    code = cli.main([*argv, "--models-dir", str(fleet_models), "--detector", "tiny", "--no-progress"])
    assert code == 0
    for rel, rows in (("artificialWithAnomaly/tiny_spiky.csv", 600), ("realThing/tiny_flat.csv", 350)):
        with (results / "tiny" / rel).open() as f:
            table = list(csv.reader(f))
        assert table[0] == ["timestamp", "value", "anomaly_score"] and len(table) == rows + 1
        scores = np.array([float(r[2]) for r in table[1:]])
        assert scores[0] == 0.0 and np.all((scores >= 0) & (scores < 1))
    summary = json.loads((results / "tiny_scores.json").read_text())
    assert set(summary["profiles"]) == set(PROFILES) and summary["readings"] == 1350
    # the spike stands out of its own stream
    with (results / "tiny/artificialWithAnomaly/tiny_spiky.csv").open() as f:
        values = np.array([float(r[2]) for r in list(csv.reader(f))[1:]])
    assert values[450:460].max() > 0.5 > values[300:440].max()
    # the results are the served alarm: one detection for the spike, then its rest period is quiet
    raised = 450 + int(np.argmax(values[450:460] >= 0.5))
    assert values[raised + 1 : raised + 31].max() == 0.0
    assert summary["profiles"]["standard"]["tp"] == 1


def test_chunked_requests_answer_what_single_readings_would(
    fleet_models: Path, corpus: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = nab_runner.read_corpus(corpus[0])[:2]
    settings = Settings(models_dir=fleet_models, snapshot_path=None)
    models = ["sensor-fleet"] * len(files)
    chunked = asyncio.run(nab_runner.run_detector(files, settings, models, lambda n: None))
    monkeypatch.setattr(nab_runner, "CHUNK", 1)
    single = asyncio.run(nab_runner.run_detector(files, settings, models, lambda n: None))
    for a, b in zip(chunked, single, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)  # float32 statistics between requests


def test_bad_inputs_get_one_line_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["nab", "--data", str(tmp_path / "none"), "--results", str(tmp_path)]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.csv").write_text("time,reading\n1,2\n")
    assert cli.main(["nab", "--data", str(tmp_path), "--results", str(tmp_path)]) == 2
    assert "timestamp,value" in capsys.readouterr().err
