"""Threshold choice and detection counting against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.manifest import Calibration
from training.calibration import Scored, best_threshold, calibrate, detect, false_alarms, fit_scale
from training.data.synthetic import MARGIN, AnomalyEvent

pytestmark = pytest.mark.unit


def _brute_force_counts(
    scores: np.ndarray, events: list[AnomalyEvent], threshold: float
) -> tuple[int, int, int]:
    """TP/FP/FN by walking the readings one by one (a second, independent implementation)."""
    tp = fn = fp = 0
    for ev in events:
        if any(scores[t] >= threshold for t in range(ev.start, ev.detect_end) if not math.isnan(scores[t])):
            tp += 1
        else:
            fn += 1
    inside = {t for ev in events for t in range(ev.start, ev.end + MARGIN)}
    previous_flagged_outside = False
    for t, s in enumerate(scores):
        flagged_outside = (not math.isnan(s)) and s >= threshold and t not in inside
        if flagged_outside and not previous_flagged_outside:
            fp += 1
        previous_flagged_outside = flagged_outside
    return tp, fp, fn


def _random_stream(seed: int) -> Scored:
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 1, 400)
    scores[rng.random(400) < 0.05] = np.nan
    events = []
    for i, start in enumerate(range(30, 380, 60)):
        kind = ("spike", "drift")[i % 2]
        end = start + (1 if kind == "spike" else 20)
        scores[start : start + 1] += rng.uniform(0, 5)
        events.append(AnomalyEvent(kind, 0, start, end, end))
    return Scored(scores, tuple(events))


@pytest.mark.parametrize("threshold", [-0.5, 0.5, 1.5, 2.5, 4.0])
def test_detection_counts_match_a_brute_force_count(threshold: float) -> None:
    streams = [_random_stream(s) for s in range(3)]
    result = detect(streams, threshold)
    expected = np.array([_brute_force_counts(s.scores, list(s.events), threshold) for s in streams]).sum(
        axis=0
    )
    d = result["all"]
    assert (d.tp, d.fp, d.fn) == tuple(expected)
    assert result["spike"].tp + result["drift"].tp == d.tp


def test_false_alarms_are_runs_outside_events() -> None:
    flags = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 0], dtype=bool)
    event = AnomalyEvent("spike", 0, 6, 7, 7)  # covers readings 6 .. 6 + MARGIN
    assert false_alarms(flags, [event]) == 2 + (1 if 7 + MARGIN <= 8 else 0)


def test_threshold_maximises_f1_like_an_exhaustive_search() -> None:
    streams = [_random_stream(s) for s in range(3)]
    chosen = best_threshold(streams)
    values = np.unique(np.concatenate([s.scores[np.isfinite(s.scores)] for s in streams]))

    def f1(th: float) -> float:
        tp, fp, fn = np.array([_brute_force_counts(s.scores, list(s.events), th) for s in streams]).sum(
            axis=0
        )
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    best = max(f1(v) for v in values)  # every distinct score is a candidate here
    assert f1(chosen) == pytest.approx(best)


def test_calibration_probability_is_the_documented_logistic() -> None:
    streams = [_random_stream(s) for s in range(3)]
    calibration, result = calibrate(streams)
    assert isinstance(calibration, Calibration)
    for score in (-3.0, calibration.center, calibration.center + 2.0):
        z = (score - calibration.center) / calibration.scale
        assert calibration.probability(score) == pytest.approx(1 / (1 + math.exp(-z)))
    assert calibration.probability(calibration.center) == pytest.approx(0.5)
    assert calibration.summary["valid_all_f1"] == pytest.approx(round(result["all"].f1, 4))


def test_scale_maximises_the_likelihood() -> None:
    streams = [_random_stream(s) for s in range(3)]
    center = best_threshold(streams)
    scale = fit_scale(streams, center)
    neg = np.concatenate([s.scores for s in streams])
    pos = np.array([np.nanmax(s.scores[e.start : e.detect_end]) for s in streams for e in s.events])
    covered = np.concatenate(
        [
            np.isin(np.arange(len(s.scores)), [t for e in s.events for t in range(e.start, e.end + MARGIN)])
            for s in streams
        ]
    )
    neg = neg[~covered & np.isfinite(neg)]

    def log_likelihood(a: float) -> float:
        p_pos = 1 / (1 + np.exp(-(pos - center) / a))
        p_neg = 1 / (1 + np.exp(-(neg - center) / a))
        return float(np.log(p_pos).sum() + np.log1p(-p_neg).sum())

    assert log_likelihood(scale) >= max(log_likelihood(scale * f) for f in (0.8, 1.25)) - 1e-9
