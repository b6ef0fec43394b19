"""Our NAB scorer against cases worked out by hand from NAB's rules (../shared/data/README.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.nab_scorer import FileScores, probation, score_all, score_corpus, window_rows

pytestmark = pytest.mark.unit


def s(y: float) -> float:
    """The scaled sigmoid, written out again."""
    return -1.0 if y > 3 else 2 / (1 + math.exp(5 * y)) - 1


def file_with(n: int, detections: dict[int, float], windows: list[tuple[int, int]]) -> FileScores:
    scores = np.zeros(n)
    for row, value in detections.items():
        scores[row] = value
    return FileScores("f.csv", scores, windows)


def test_probation_is_15_percent_capped_at_750() -> None:
    assert (probation(100), probation(4032), probation(5000), probation(22695)) == (15, 604, 750, 750)


def test_one_file_by_hand() -> None:
    # 100 rows (probation 15), one window over rows 40..49 (width 10).
    # row 5: in the probation, ignored; row 20: before any window; row 42: a hit; row 60: after the window
    f = file_with(100, {5: 1.0, 20: 0.7, 42: 0.9, 60: 0.8}, [(40, 49)])
    hit = s(-(49 - 42 + 1) / 10) / s(-1.0)  # 0.977
    after = s((60 - 49) / (10 - 1))  # -0.9956
    # thresholds: 0.9 -> hit only; 0.8 -> hit + FP after; 0.7 -> also the FP before (-1 each A_FP)
    totals = {0.9: -1 + 1 + hit, 0.8: -1 + 1 + hit + 0.11 * after, 0.7: -1 + 1 + hit + 0.11 * after - 0.11}
    result = score_corpus([f], "standard")
    assert result.threshold == 0.9 and result.raw == pytest.approx(max(totals.values()))
    assert result.normalized == pytest.approx(100 * (totals[0.9] + 1) / 2)
    assert (result.tp, result.fp, result.fn) == (1, 0, 0)
    low_fn = score_corpus([f], "reward_low_FN_rate")
    assert low_fn.normalized == pytest.approx(100 * (-2 + 2 + hit + 2) / (1 + 2))


def test_only_the_earliest_detection_in_a_window_counts_and_fps_add_up() -> None:
    # window rows 30..59 (width 30): detections at 50 and 35 (both in), FPs at 61 and 62 (each counts)
    f = file_with(200, {50: 0.9, 35: 0.5, 61: 0.95, 62: 0.95}, [(30, 59)])
    late, early = s(-(59 - 50 + 1) / 30) / s(-1), s(-(59 - 35 + 1) / 30) / s(-1)
    fp = s((61 - 59) / 29) + s((62 - 59) / 29)
    by_threshold = {0.95: -1 + 0.22 * fp, 0.9: 0.22 * fp + late, 0.5: 0.22 * fp + early}
    result = score_corpus([f], "reward_low_FP_rate")
    assert result.raw == pytest.approx(max(by_threshold.values()))
    assert result.threshold == 0.5 and result.fp == 2


def test_one_threshold_for_the_corpus_and_the_null_detector() -> None:
    # file a: a hit needs threshold <= 0.6; file b (no windows): an FP at 0.7 costs -A_FP each
    a = file_with(100, {45: 0.6}, [(40, 49)])
    b = file_with(100, {50: 0.7, 51: 0.7, 52: 0.7}, [])
    hit = s(-(49 - 45 + 1) / 10) / s(-1)
    result = score_corpus([a, b], "standard")
    # at 0.6: hit (+1 + hit over null) and three FPs at -0.11 each; at 0.7 the FPs alone; above: null
    assert result.raw == pytest.approx(-1 + 1 + hit - 0.33) and result.threshold == 0.6
    results = score_all([a, b])
    fp_heavy = results["reward_low_FP_rate"]  # 1 + hit - 0.66 > 0 still beats null
    assert fp_heavy.raw == pytest.approx(hit - 0.66)
    nothing = score_corpus([file_with(100, {50: 0.7}, [(60, 69)])], "standard")
    assert nothing.raw == nothing.null == -1 and nothing.normalized == 0.0 and nothing.threshold == math.inf


def test_windows_map_times_to_inclusive_rows() -> None:
    stamps = [0.0, 10.0, 20.0, 30.0, 40.0]
    assert window_rows(stamps, [(10.0, 30.0), (35.0, 100.0), (50.0, 60.0)]) == [(1, 3), (4, 4)]
