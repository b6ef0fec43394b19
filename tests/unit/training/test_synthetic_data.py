"""The synthetic plant: labels match what was injected, splits are reproducible."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.data.synthetic import (
    ANOMALY_TYPES,
    DAY,
    WEEK,
    SensorSeries,
    carry_forward,
    generate,
    held_out,
    univariate,
)

pytestmark = pytest.mark.unit


def test_same_seed_same_data_and_plant_shared_across_seeds() -> None:
    a, b = generate(3 * WEEK, seed=1, per_kind=1), generate(3 * WEEK, seed=1, per_kind=1)
    assert np.array_equal(a.values, b.values, equal_nan=True) and a.events == b.events
    c = generate(3 * WEEK, seed=2, per_kind=1)
    assert not np.array_equal(a.values, c.values, equal_nan=True)
    # same plant: the daily profile of the temperature agrees across seeds (noise averages out)
    profile = [np.nanmean(s.values[: 7 * DAY, 0].reshape(7, DAY), axis=0) for s in (a, c)]
    assert np.corrcoef(*profile)[0, 1] > 0.9


@pytest.mark.parametrize("kind", ANOMALY_TYPES)
def test_labels_mark_exactly_the_injected_changes(kind: str) -> None:
    # The clean stream with the same seed has the same noise: the anomaly is the difference.
    clean = generate(4 * WEEK, seed=5, kinds=(kind,), per_kind=0, missing_rate=0.0)
    dirty = generate(4 * WEEK, seed=5, kinds=(kind,), per_kind=4, missing_rate=0.0)
    both = ~np.isnan(clean.values) & ~np.isnan(dirty.values)
    changed = (np.abs(dirty.values - clean.values) > 1e-9) & both  # [N, F]
    assert len(dirty.events) == 4 and {e.kind for e in dirty.events} == {kind}
    code = 1 + dirty.kinds.index(kind)
    label_rows = np.flatnonzero(dirty.labels)
    assert set(np.unique(dirty.labels[label_rows])) == {code}
    # nothing changed outside the labelled segments
    assert not changed[dirty.labels == 0].any()
    for ev in dirty.events:
        assert (dirty.labels[ev.start : ev.end] == code).all()
        assert ev.start <= ev.detect_end <= ev.end
        seg = slice(ev.start, ev.end)
        # only the event's own feature is touched
        others = [f for f in range(4) if f != ev.feature]
        assert not changed[seg][:, others].any()
        delta = dirty.values[seg, ev.feature] - clean.values[seg, ev.feature]
        if kind in ("spike", "level_shift"):
            assert np.allclose(delta, delta[0]) and abs(delta[0]) > 0  # one constant offset
        elif kind == "drift":
            assert np.all(np.diff(np.abs(delta)) > 0.5 * np.abs(delta[0]))  # a growing ramp
        elif kind == "stuck":
            assert np.all(dirty.values[seg, ev.feature] == dirty.values[ev.start - 1, ev.feature])
        else:
            assert changed[seg, ev.feature].mean() > 0.9


def test_missing_values_spare_anomalies_and_events_do_not_overlap() -> None:
    s = generate(6 * WEEK, seed=3, per_kind=2)
    assert 0.001 < np.isnan(s.values).mean() < 0.05
    for ev in s.events:
        assert not np.isnan(s.values[ev.start : ev.end]).any()
    spans = sorted((e.start, e.end) for e in s.events)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    assert {e.kind for e in s.events} == set(ANOMALY_TYPES)


def test_too_many_anomalies_for_the_length_is_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        generate(DAY * 2, seed=0, kinds=("level_shift",), per_kind=10)


def _same(a: list[SensorSeries], b: list[SensorSeries]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.events == y.events and x.features == y.features
        assert np.array_equal(x.values, y.values, equal_nan=True)
        assert np.array_equal(x.timestamps, y.timestamps)


def test_held_out_streams_are_the_documented_periods_and_plants() -> None:
    # one plant: valid = the 1.5 weeks after 2 training weeks, test = the 1.5 weeks after those;
    # noise seeds 100 + i (valid) and 200 + i (test) for anomaly type i
    n = int(1.5 * WEEK)
    for split, seed, offset in (("valid", 100, 2 * WEEK), ("test", 200, 2 * WEEK + n)):
        expected = [
            generate(n, seed=seed + i, plant_seed=3, offset=offset, kinds=(k,), per_kind=2)
            for i, k in enumerate(ANOMALY_TYPES)
        ]
        _same(held_out(split, plant_seed=3, weeks=2, eval_weeks=1.5, per_kind=2), expected)
    # a fleet trained on plants 3, 4: valid on plant 5, test on plant 6, from their start; each sensor
    # with anomalies is a stream of its own
    for split, seed, plant in (("valid", 100, 5), ("test", 200, 6)):
        whole = [
            generate(n, seed=seed + i, plant_seed=plant, kinds=(k,), per_kind=2)
            for i, k in enumerate(ANOMALY_TYPES)
        ]
        got = held_out(split, plant_seed=3, weeks=2, eval_weeks=1.5, per_kind=2, fleet=2)
        parts = [
            (events, series.values[:, f : f + 1])
            for series in whole
            for f in range(4)
            if (events := tuple(ev for ev in series.events if ev.feature == f))
        ]
        assert [(g.events, g.features) for g in got] == [(e, ("value",)) for e, _ in parts]
        for g, (_, values) in zip(got, parts, strict=True):
            assert np.array_equal(g.values, values, equal_nan=True)
    with pytest.raises(ValueError, match="split"):
        held_out("train", plant_seed=0, weeks=1, eval_weeks=1, per_kind=1)


def test_univariate_labels_only_its_own_sensor() -> None:
    series = generate(2 * WEEK, seed=7, per_kind=1)
    parts = univariate(series)
    assert sum(len(p.events) for p in parts) == len(series.events) == len(ANOMALY_TYPES)
    for f, part in enumerate(parts):
        assert all(ev.feature == f for ev in part.events)
        assert set(np.flatnonzero(part.labels)) == {t for ev in part.events for t in range(ev.start, ev.end)}


def test_carry_forward_fills_with_the_last_present_value() -> None:
    z = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [4.0, 5.0]])
    assert np.array_equal(carry_forward(z), [[0.0, 1.0], [2.0, 1.0], [2.0, 1.0], [4.0, 5.0]])
    assert np.array_equal(carry_forward(z, first=np.array([9.0, 9.0]))[0], [9.0, 1.0])
