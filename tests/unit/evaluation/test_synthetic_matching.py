"""The synthetic evaluation's own counting (the rest is training.calibration's), against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.synthetic import WARMUP_READINGS, filled, in_warmup, trailing_alarms
from training.data.synthetic import MARGIN, AnomalyEvent, SensorSeries

pytestmark = pytest.mark.unit


def flags_at(n: int, *at: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(at)] = True
    return out


def test_trailing_alarms_are_the_runs_that_continue_an_alarm_from_inside_an_anomaly() -> None:
    assert MARGIN == 3  # the cases below are worked out with a return edge of 3 readings
    spike = (AnomalyEvent("spike", 0, 10, 11, 11),)  # covered: readings 10..13
    # flagged 10..16: the run 14..16 is a false alarm, and a tail of the hit's alarm
    assert trailing_alarms(flags_at(30, *range(10, 17)), spike) == 1
    # flagged 12..15 (inside from its return edge, then out): still a tail
    assert trailing_alarms(flags_at(30, 12, 13, 14, 15), spike) == 1
    # a gap between the covered readings and the run: a false alarm of its own, no tail
    assert trailing_alarms(flags_at(30, 10, 15, 16), spike) == 0
    # before the anomaly, touching it: not a tail (it did not begin inside)
    assert trailing_alarms(flags_at(30, 7, 8, 9, 10), spike) == 0
    # two anomalies, each outlasted; the alarm at reading 0 has nothing before it
    two = (*spike, AnomalyEvent("stuck", 0, 20, 24, 24))  # covered: 10..13 and 20..26
    assert trailing_alarms(flags_at(40, 0, 13, 14, 26, 27, 28), two) == 2
    assert trailing_alarms(np.zeros(0, dtype=bool), ()) == 0


def test_events_starting_in_the_warm_up_are_counted_per_type() -> None:
    def series(*starts: int) -> SensorSeries:
        events = tuple(AnomalyEvent("drift", 0, s, s + 5, s + 5) for s in starts)
        n = 1000
        return SensorSeries(
            ("value",), np.zeros(n), np.zeros((n, 1)), np.zeros(n, np.int64), ("drift",), events
        )

    last = WARMUP_READINGS - 1  # the last reading of the warm-up
    assert in_warmup([series(3, last, last + 1), series(600)]) == {"drift": 2, "all": 2}


def test_missing_values_are_filled_with_the_last_present_one_or_the_first_before_it() -> None:
    nan = np.nan
    values = np.array([[nan, 5.0], [2.0, nan], [nan, nan], [4.0, 6.0], [nan, nan]])
    expected = np.array([[2.0, 5.0], [2.0, 5.0], [2.0, 5.0], [4.0, 6.0], [4.0, 6.0]])
    assert np.array_equal(filled(values), expected)
    assert np.array_equal(filled(np.full((2, 1), nan)), np.zeros((2, 1)))  # never present: 0
