"""`rnnserve eval nab --train-per-file`: a real model trained per file on its probationary rows only (real
training subprocesses, real export), then served by the real SessionManager."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from evaluation import cli
from evaluation.nab_scorer import probation
from evaluation.nab_training import model_name

pytestmark = pytest.mark.integration


def _write(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        start = dt.datetime(2015, 1, 1)
        w.writerows((start + dt.timedelta(minutes=5 * i), v) for i, v in enumerate(values.tolist()))


def _column(path: Path, column: int) -> list[str]:
    with path.open() as f:
        return [row[column] for row in list(csv.reader(f))[1:]]


def test_each_file_is_scored_by_a_model_of_its_own_probationary_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    t = np.arange(1400)
    wave = 20 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.2, t.size)
    wave[1100] += 15
    data = tmp_path / "data"
    _write(data / "realA" / "wave.csv", wave)
    _write(data / "realB" / "level.csv", 5e3 + 40 * rng.standard_normal(900))
    results = tmp_path / "results"
    argv = ["nab", "--data", str(data), "--results", str(results), "--train-per-file"]
    assert cli.main([*argv, "--detector", "pf", "--jobs", "2", "--no-progress"]) == 0

    work = results / ".train-pf"
    for relative, rows in (("realA/wave.csv", 1400), ("realB/level.csv", 900)):
        name = model_name(relative)
        manifest = json.loads((work / "models" / name / "1" / "manifest.json").read_text())
        assert manifest["task"] == "sensor" and manifest["sensor"]["normalization"] == "fixed"
        # the model saw exactly the rows NAB lets a detector learn from: the file's first ones
        seen = work / "probation" / f"{name}.csv"
        assert _column(seen, 0) == _column(data / relative, 0)[: probation(rows)]
    assert model_name("realA/wave.csv") == "nab-realA-wave"
    scores = np.array([float(v) for v in _column(results / "pf" / "realA" / "pf_wave.csv", 2)])
    assert scores.size == 1400 and np.all((scores >= 0) & (scores < 1))
    assert scores[1100] > 0.5 > scores[probation(1400) + 300 : 1100].max()


def test_a_file_too_short_to_train_on_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "data" / "realA" / "short.csv", np.arange(40.0))  # 6 probationary rows
    argv = ["nab", "--data", str(tmp_path / "data"), "--results", str(tmp_path / "r"), "--train-per-file"]
    assert cli.main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "realA/short.csv: training on its probationary rows failed" in err[0]


def test_jobs_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["nab", "--data", str(tmp_path), "--results", str(tmp_path), "--train-per-file", "--jobs", "0"]
    assert cli.main(argv) == 2
    assert "--jobs 0" in capsys.readouterr().err
