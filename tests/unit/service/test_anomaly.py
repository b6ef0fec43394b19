"""Per-session sensor statistics (service.anomaly) against a plain one-reading-at-a-time reference."""

from __future__ import annotations

import itertools
import math
from collections import deque
from statistics import NormalDist

import numpy as np
import pytest

from service import anomaly, daytime
from service.anomaly import SessionStats, pack, unpack

pytestmark = pytest.mark.unit


class Reference:
    """The module docs' rules, written out for one stream and one reading at a time."""

    def __init__(self, features: int) -> None:
        self.n = 0
        self.mean = [0.0] * features
        self.var = [0.0] * features
        self.m = 0
        self.long_mean = self.long_var = 0.0
        self.ring: deque[float] = deque(maxlen=anomaly.WINDOW)
        self.last_scale = [0.0] * features  # the scale the last reading was normalised by

    @staticmethod
    def _moments(mean: float, var: float, count: int, value: float) -> tuple[float, float]:
        w = 1.0 / min(count + 1, anomaly.MEMORY)
        d = value - mean
        return mean + w * d, (1 - w) * (var + w * d * d)

    def normalise(self, reading: list[float]) -> list[float]:
        if self.n == 0:
            self.mean = list(reading)
        out = []
        for f, r in enumerate(reading):
            scale = max(math.sqrt(self.var[f]), anomaly.SCALE_FLOOR * abs(self.mean[f]) + 1e-9)
            x = min(max((r - self.mean[f]) / scale, -anomaly.CLIP), anomaly.CLIP)
            out.append(x)
            self.last_scale[f] = scale
            tamed = r if self.n == 0 else self.mean[f] + x * scale
            self.mean[f], self.var[f] = self._moments(self.mean[f], self.var[f], self.n, tamed)
        self.n += 1
        return out

    def likelihood(self, surprise: float) -> float:
        self.ring.append(surprise)
        average = sum(self.ring) / len(self.ring)
        if self.m >= anomaly.WARMUP:
            z = (average - self.long_mean) / math.sqrt(max(self.long_var, anomaly.VAR_FLOOR))
            result = NormalDist().cdf(z)
        else:
            result = 0.5
        if self.m >= anomaly.LEARN:
            self.long_mean, self.long_var = self._moments(
                self.long_mean, self.long_var, self.m - anomaly.LEARN, average
            )
        self.m += 1
        return result


def run_chunks(
    hooks: SessionStats, readings: np.ndarray, preds: np.ndarray, cuts: list[int]
) -> dict[str, np.ndarray]:
    """Feed one stream [N, F] in requests split at `cuts`, the statistics packed into float32 state
    tensors between requests as the store keeps them; `preds` [N, F] is the model's prediction (model
    space, unit variance) for each next reading."""
    like = [np.zeros((1, 1, 8), np.float32) for _ in range(anomaly.aux_tensors(hooks.floats, 1, 8))]
    state = like
    parts: dict[str, list[np.ndarray]] = {"x": [], "likelihood": [], "surprise": [], "mean": []}
    bounds = [0, *cuts, len(readings)]
    for a, b in itertools.pairwise(bounds):
        stats = unpack(state, hooks.floats)
        x, carry = hooks.before(readings[None, a:b], stats)
        prior = preds[a - 1] if a else np.zeros(readings.shape[1])
        zeros = np.zeros_like(preds[a:b])
        out = hooks.after([preds[None, a:b], zeros[None], prior[None], zeros[:1]], x, stats, carry)
        state = pack(stats, like)
        parts["x"].append(x[0])
        parts["mean"].append(out[0][0])
        parts["likelihood"].append(out[4][0])
        parts["surprise"].append(out[5][0])
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_online_statistics_match_the_reference_and_do_not_depend_on_request_sizes() -> None:
    rng = np.random.default_rng(3)
    n = anomaly.WARMUP + 120
    readings = np.stack([1000 + 5 * rng.standard_normal(n), rng.standard_normal(n) * 0.01], axis=1)
    readings[n - 40 :, 0] += 60  # a level shift late in the stream
    preds = rng.standard_normal((n, 2)) * 0.1
    hooks = SessionStats(2, online=True, mean=np.zeros(2), std=np.ones(2))
    whole = run_chunks(hooks, readings, preds, [])
    chunked = run_chunks(hooks, readings, preds, [1, 2, 7, 100, anomaly.WARMUP + 3, n - 41])
    ref = Reference(2)
    want_x, want_lk = [], []
    for t in range(n):
        x = ref.normalise(readings[t].tolist())
        want_x.append(x)
        if t:
            z2 = [min((x[f] - preds[t - 1, f]) ** 2, anomaly.CAP) for f in range(2)]
            want_lk.append(ref.likelihood(sum(z2) / 2))
    # the model input is float32; statistics are float32 between requests
    np.testing.assert_allclose(whole["x"], want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked["x"], want_x, rtol=1e-4, atol=1e-4)
    assert math.isnan(whole["likelihood"][0]) and math.isnan(chunked["surprise"][0])
    np.testing.assert_allclose(whole["likelihood"][1:], want_lk, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(chunked["likelihood"][1:], want_lk, rtol=1e-3, atol=1e-6)
    assert max(want_lk[: anomaly.WARMUP]) == min(want_lk[: anomaly.WARMUP]) == 0.5
    assert max(want_lk[n - 40 :]) > 0.99999  # the level shift stands out of its own stream's history
    # predicted readings come back in reading units: the centre and scale the next reading will get
    assert abs(whole["mean"][n - 50, 0] - readings[: n - 49, 0].mean()) < 1.0


def test_probability_is_comparable_across_scales_and_never_saturates() -> None:
    rng = np.random.default_rng(5)
    noise = rng.standard_normal(anomaly.WARMUP + 60)
    results = []
    for scale, offset in ((1.0, 5.0), (1e-3, 5e-3), (1e4, 5e4)):  # the same stream in other units
        hooks = SessionStats(1, online=True, mean=np.zeros(1), std=np.ones(1))
        readings = (offset + scale * noise)[:, None]
        readings[-30] += 40 * scale  # the same spike, in that stream's units
        stats = np.zeros((1, hooks.floats))
        x, carry = hooks.before(readings[None], stats)
        preds = np.zeros((1, len(noise), 1))
        out = hooks.after([preds, preds, preds[:, 0], preds[:, 0]], x, stats, carry)
        results.append(out[3][0])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-4)  # float32 model input
    np.testing.assert_allclose(results[2], results[0], rtol=1e-4)  # float32 model input
    assert results[0][-30] > 0.5 and np.nanmax(results[0]) < 1.0


def test_log10_tail_is_continuous_and_does_not_underflow() -> None:
    z = np.array([-3.0, 0.0, 1.0, 7.999, 8.0, 40.0, 1e3])
    got = anomaly.log10_tail(z)
    assert got[1] == pytest.approx(math.log10(0.5))
    assert got[2] == pytest.approx(math.log10(1 - NormalDist().cdf(1.0)), rel=1e-9)
    assert got[4] == pytest.approx(got[3], rel=1e-3)
    assert np.isfinite(got).all() and np.all(np.diff(got) < 0)
    assert anomaly.probability_from_tail(np.array([-5.0]))[0] == 0.5


def test_log10_tail_of_a_batch_is_each_values_own() -> None:
    """A batch with values past 8 (masked into two branches) against each value alone (the branch
    of that value only, for most of them the path without masks): bit for bit, so a session's answer
    never depends on the other sessions of its batch."""
    z = np.random.default_rng(7).uniform(-12.0, 14.0, 400)
    assert (z >= 8).any() and (z < 8).any()
    each = np.concatenate([anomaly.log10_tail(z[i : i + 1]) for i in range(len(z))])
    assert anomaly.log10_tail(z).tobytes() == each.tobytes()
    low = z[z < 8]
    assert anomaly.log10_tail(low).tobytes() == each[z < 8].tobytes()


@pytest.mark.parametrize(
    ("layers", "hidden", "floats"), [(2, 4, 21), (1, 8, 21), (1, 7, 21)]
)  # padded, padded, exact
def test_pack_and_unpack_round_trip_over_several_tensors(layers: int, hidden: int, floats: int) -> None:
    """Stats -> float32 tensors, each session's values laid out row by row over the tensors' [L, H]
    (the flat layout a snapshot and the Redis store keep), the last tensor zero padded; and back, as
    float32 values read as float64."""
    stats = np.random.default_rng(3).normal(size=(2, floats))  # not float32 values: pack rounds them
    like = [
        np.zeros((layers, 2, hidden), np.float32) for _ in range(anomaly.aux_tensors(floats, layers, hidden))
    ]
    assert len(like) == 3
    tensors = pack(stats, like)
    assert [(t.shape, t.dtype) for t in tensors] == [((layers, 2, hidden), np.dtype(np.float32))] * 3
    flat = np.concatenate([t.transpose(1, 0, 2).reshape(2, -1) for t in tensors], axis=1)
    np.testing.assert_array_equal(flat[:, :floats], stats.astype(np.float32))
    assert not flat[:, floats:].any()
    back = unpack(tensors, floats)
    assert back.dtype == np.float64 and back.flags.c_contiguous
    np.testing.assert_array_equal(back, stats.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(unpack([t[:, 1:] for t in tensors], floats), back[1:])  # rows: sessions


def _novelty(hooks: SessionStats, readings: np.ndarray, cuts: list[int]) -> np.ndarray:
    """Range novelty of each reading of one stream [N, F], fed in requests split at `cuts` with the
    statistics stored as float32 state between requests."""
    like = [np.zeros((1, 1, 8), np.float32) for _ in range(anomaly.aux_tensors(hooks.floats, 1, 8))]
    state, parts = like, []
    for a, b in itertools.pairwise([0, *cuts, len(readings)]):
        stats = unpack(state, hooks.floats)
        _, carry = hooks.before(readings[None, a:b], stats)
        parts.append(carry.novelty[0])
        state = pack(stats, like)
    return np.concatenate(parts)


def test_range_novelty_against_hand_computed_cases() -> None:
    warm = [0.0, 10.0] * (anomaly.WARMUP // 2)  # range [0, 10] once warm
    late = [10.5, 11.0, -2.0, 5.0, 10.0]
    # 5% of the range outside it is the red alert (a = RED); the range grows with every reading
    want = [anomaly.RED, anomaly.RED * (0.5 / 10.5) / 0.05, anomaly.RED * (2 / 11) / 0.05, 0.0, 0.0]
    readings = np.array(warm + late)[:, None]
    for online, mean, std in ((True, 0.0, 1.0), (False, 4.0, 2.0)):  # fixed: the runner sees (r - mean) / std
        hooks = SessionStats(1, online=online, mean=np.array([mean]), std=np.array([std]))
        given = readings if online else (readings - mean) / std
        for cuts in ([], [1, anomaly.WARMUP, anomaly.WARMUP + 2]):
            got = _novelty(hooks, given, cuts)
            assert not got[: len(warm)].any()  # nothing before WARMUP readings, however novel
            np.testing.assert_allclose(got[len(warm) :], want, rtol=1e-6, atol=1e-9)


def test_range_novelty_waits_for_warmup_and_floors_a_constant_streams_width() -> None:
    hooks = SessionStats(2, online=True, mean=np.zeros(2), std=np.ones(2))
    readings = np.full((anomaly.WARMUP + 2, 2), [100.0, -3.0])
    readings[5] = [200.0, -3.0]  # outside the range, but before the session knows the stream
    readings[5:] = readings[5]  # from here on constant
    readings[-1, 1] = -3.003  # 0.003 outside a constant stream's floored width 0.1% of 3 (+ 1e-9)
    got = _novelty(hooks, readings, [])
    assert not got[:-1].any()
    want = anomaly.RED * (0.003 / (1e-3 * 3.0 + 1e-9)) / anomaly.TOL  # the largest feature's excess
    assert got[-1] == pytest.approx(want, rel=1e-6)


def test_a_session_saved_without_a_range_starts_one() -> None:
    hooks = SessionStats(1, online=True, mean=np.zeros(1), std=np.ones(1))
    stats = np.zeros((1, hooks.floats))
    hooks.before(np.arange(anomaly.WARMUP + 5, dtype=np.float64)[None, :, None], stats)
    stats[0, hooks.range_at :] = 0.0  # what a session stored before the range existed holds there
    _, carry = hooks.before(np.array([[[1e6]]]), stats)
    assert carry.novelty[0, 0] == 0.0 and stats[0, hooks.range_at] == 1.0  # learning afresh


def test_probability_takes_the_stronger_of_likelihood_and_range_novelty() -> None:
    rng = np.random.default_rng(11)
    n = anomaly.WARMUP + 80
    readings = (50 + rng.standard_normal(n))[:, None]
    readings[n - 60] = 80.0  # far outside the range: novelty dominates
    readings[n - 20 :] += 0.5  # inside the range: only the likelihood can speak
    hooks = SessionStats(1, online=True, mean=np.zeros(1), std=np.ones(1))
    stats = np.zeros((1, hooks.floats))
    x, carry = hooks.before(readings[None], stats)
    preds = np.zeros((1, n, 1))
    out = hooks.after([preds, preds, preds[:, 0], preds[:, 0]], x, stats, carry)
    probability, likelihood = out[3][0, 1:], out[4][0, 1:]
    novelty, exact = carry.novelty[0, 1:], 1.0 - likelihood > 1e-9  # float64 1 - likelihood: 9 digits
    a = np.maximum(-np.log10(1.0 - likelihood[exact]), novelty[exact])
    np.testing.assert_allclose(probability[exact], a / (a + anomaly.RED), rtol=1e-6)
    assert np.all(probability >= novelty / (novelty + anomaly.RED))
    assert carry.novelty[0, n - 60] > anomaly.RED and probability[n - 61] > 0.5
    assert probability.max() < 1.0


def _evidence(probability: list[float] | np.ndarray) -> np.ndarray:
    """The evidence a behind a probability a / (a + RED) (NaN stays NaN)."""
    p = np.asarray(probability, np.float64)
    return anomaly.RED * p / (1.0 - p)


def _alarm_of(
    hooks: SessionStats, probabilities: list[float], cuts: list[int], saved: tuple[float, float] = (0, 0)
) -> list[float]:
    """The alarm of one session whose readings had `probabilities`, in requests split at `cuts`, its
    statistics stored between requests as float32 state (as the runner stores them); `saved`: the
    session's (rest left, escalation bar) before its first request."""
    stats, out = np.zeros((1, hooks.floats)), []
    stats[0, hooks.rest_at : hooks.rest_at + 2] = saved
    for lo, hi in itertools.pairwise([0, *cuts, len(probabilities)]):
        stored = unpack(pack(stats, [np.zeros((1, 1, 128), np.float32)]), hooks.floats)
        p = np.array([probabilities[lo:hi]])
        out.extend(hooks._alarm(p, _evidence(p), stored[:, hooks.rest_at : hooks.rest_at + 2])[0].tolist())
        stats = stored
    return out


def test_alarm_rests_after_each_raised_alarm_against_hand_computed_cases() -> None:
    hooks = SessionStats(1, online=True, mean=np.zeros(1), std=np.ones(1))
    r = anomaly.REST
    # red at 2 (raised: a = 7.5), still red at 3 (a = 11.7, under twice 7.5) and r+2 (resting), red again
    # at r+3 (rest over: raised again)
    p = [0.1, 0.4, 0.6, 0.7] + [0.2] * (r - 2) + [0.7, 0.8, 0.3]
    want = [0.1, 0.4, 0.6, 0.0] + [0.0] * (r - 2) + [0.0, 0.8, 0.0]
    assert len(p) == len(want) == r + 5
    for cuts in ([], [1], [3, 4], list(range(1, len(p)))):  # request sizes change nothing
        assert _alarm_of(hooks, p, cuts) == want, cuts
    # nothing predicted (NaN: a session's first reading) raises nothing and stays NaN
    got = _alarm_of(hooks, [math.nan, 0.7, 0.65], [])
    assert math.isnan(got[0]) and got[1:] == [0.7, 0.0]
    # a probability just under the red alert raises nothing; a session saved before the alarm existed
    # (0 in its slots) starts calm
    assert _alarm_of(hooks, [0.499, 0.499, 0.5, 0.55], []) == [0.499, 0.499, 0.5, 0.0]


def test_alarm_escalates_within_a_rest_when_the_evidence_doubles() -> None:
    hooks = SessionStats(1, online=True, mean=np.zeros(1), std=np.ones(1))
    r = anomaly.REST
    assert anomaly.ESCALATE == 2.0  # the hand-computed bars below
    # evidence a = 5 p / (1 - p): 5 (raised; the bar 10), 8.33 (resting), 11 (>= 10: escalated, bar 22),
    # 21.7 (resting), 45 (>= 22: escalated, bar 90), 15 (resting), 0.26 ..., 6.1 (the rest's last
    # reading: resting), 6.1 (the rest is over: raised)
    p = [0.5, 0.625, 0.6875, 0.8125, 0.9, 0.75] + [0.05] * (r - 6) + [0.55, 0.55]
    want = [0.5, 0.0, 0.6875, 0.0, 0.9, 0.0] + [0.0] * (r - 6) + [0.0, 0.55]  # r readings rest
    for cuts in ([], [2], [3, 5], list(range(1, len(p)))):  # the bar survives the float32 state
        assert _alarm_of(hooks, p, cuts) == want, cuts
    # the rest runs from the raise, not from an escalation: reading r + 1 after the raise raises anew
    assert _alarm_of(hooks, [0.5, 0.9] + [0.05] * (r - 1) + [0.55], [])[-2:] == [0.0, 0.55]
    # a session saved mid-rest before escalation existed (a bar of 0) rests without escalating
    assert _alarm_of(hooks, [0.99, 0.999, 0.99], [], saved=(2, 0)) == [0.0, 0.0, 0.99]


def _pages(alarm: np.ndarray, probability: np.ndarray) -> tuple[list[int], list[int]]:
    """The pages (alarm >= ALERT) that raised an alarm and those that escalated one, from the reported
    `alarm` alone; a page within REST readings after a raise must have twice the evidence of the
    episode's page before it."""
    raised: list[int] = []
    escalated: list[int] = []
    last_a = 0.0
    for t in np.flatnonzero(alarm >= anomaly.ALERT):
        a = float(_evidence([probability[t]])[0])
        if raised and t - raised[-1] <= anomaly.REST:
            assert a >= anomaly.ESCALATE * last_a * (1 - 1e-6), (t, a, last_a)
            escalated.append(int(t))
        else:
            raised.append(int(t))
        last_a = a
    return raised, escalated


def test_after_answers_the_alarm_of_its_probability() -> None:
    rng = np.random.default_rng(5)
    n = anomaly.WARMUP + 120
    readings = (10 + rng.standard_normal(n))[:, None]
    readings[n - 100 : n - 40] += 6.0  # a long anomalous stretch: red for many readings
    hooks = SessionStats(1, online=True, mean=np.zeros(1), std=np.ones(1))
    stats = np.zeros((1, hooks.floats))
    x, carry = hooks.before(readings[None], stats)
    preds = np.zeros((1, n, 1))
    out = hooks.after([preds, preds, preds[:, 0], preds[:, 0]], x, stats, carry)
    probability, alarm = out[3][0], out[6][0]
    assert (probability[1:] >= 0.5).sum() > 3  # red for a while
    assert _alarm_of(hooks, probability.tolist(), []) == pytest.approx(alarm.tolist(), nan_ok=True)
    raised, _ = _pages(np.nan_to_num(alarm), probability)
    assert raised and np.all(np.diff(raised) > anomaly.REST)  # raised alarms at least a rest apart
    assert stats[0, hooks.rest_at] == max(0, anomaly.REST - (n - 1 - raised[-1]))


class DailyReference:
    """The daily profile of the module docs, for one stream and one reading at a time."""

    def __init__(self, features: int) -> None:
        self.count = [0] * 24
        self.mean = [[0.0] * features for _ in range(24)]
        self.var = [[0.0] * features for _ in range(24)]
        self.track = Reference(features)  # its likelihood() is the track's rule

    def step(self, reading: list[float], hour: int | None, scale: list[float]) -> float | None:
        """The likelihood of the reading's daily surprise; None where it has none."""
        if hour is None:
            return None
        mean, var, surprise = self.mean[hour], self.var[hour], None
        if self.count[hour] >= anomaly.MIN_COUNT:
            z2 = []
            for f, r in enumerate(reading):
                sd = max(
                    math.sqrt(var[f]), anomaly.FLOOR * scale[f], anomaly.SCALE_FLOOR * abs(mean[f]) + 1e-9
                )
                z2.append(min((r - mean[f]) ** 2 / sd**2, anomaly.CAP))
            surprise = sum(z2) / len(z2)
        for f, r in enumerate(reading):
            if self.count[hour] == 0:
                mean[f] = r
            w = 1.0 / min(self.count[hour] + 1, anomaly.BIN_MEMORY)
            d = r - mean[f]
            mean[f], var[f] = mean[f] + w * d, (1 - w) * (var[f] + w * d * d)
        self.count[hour] += 1
        return None if surprise is None else self.track.likelihood(surprise)


def _daily_stream(days: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Hourly readings of a daily square wave (high 9:00-17:00) with noise; ISO timestamps."""
    rng = np.random.default_rng(seed)
    hours = np.arange(24 * days) % 24
    readings = np.where((hours >= 9) & (hours < 17), 80.0, 20.0) + rng.normal(0, 2.0, hours.size)
    stamps = [f"2015-03-{1 + i // 24:02d}T{i % 24:02d}:30:00" for i in range(hours.size)]
    return readings[:, None], stamps


def _run_daily(hooks: SessionStats, readings: np.ndarray, hours: np.ndarray, cuts: list[int]) -> np.ndarray:
    like = [np.zeros((1, 1, 8), np.float32) for _ in range(anomaly.aux_tensors(hooks.floats, 1, 8))]
    state, parts = like, []
    for a, b in itertools.pairwise([0, *cuts, len(readings)]):
        stats = unpack(state, hooks.floats)
        _, carry = hooks.before(readings[None, a:b], stats, hours[None, a:b])
        parts.append(carry.daily[0])
        state = pack(stats, like)
    return np.concatenate(parts)


def test_daily_profile_matches_the_reference_and_finds_a_day_that_stays_low() -> None:
    readings, stamps = _daily_stream(days=20, seed=4)
    readings[24 * 18 + 9 : 24 * 18 + 17] = 20.0 + np.random.default_rng(1).normal(0, 2.0, (8, 1))  # no peak
    hours = daytime.hours_of(stamps, len(stamps))
    hours[5] = np.nan  # a reading without a timestamp stays out of the profile
    for online, cuts in ((True, []), (True, [1, 30, 200, 431]), (False, [2, 300])):
        hooks = SessionStats(1, online=online, mean=np.array([50.0]), std=np.array([30.0]))
        given = readings if online else (readings - 50.0) / 30.0
        got = _run_daily(hooks, given, hours, cuts)
        ref, norm, want = DailyReference(1), Reference(1), []
        for t in range(len(readings)):
            norm.normalise(readings[t].tolist())
            scale = norm.last_scale if online else [30.0]
            hour = None if math.isnan(hours[t]) else int(hours[t])
            lk = ref.step(readings[t].tolist(), hour, scale)
            want.append(0.0 if lk is None else -math.log10(max(1.0 - lk, 1e-300)))
        want_a = np.array(want)
        exact = want_a < 9  # 1 - cdf in float64: nine digits
        np.testing.assert_allclose(got[exact], want_a[exact], rtol=1e-4, atol=1e-6)
        assert np.all(got[~exact] > 8)
        # the missing peak: ordinary values for the stream, wrong for their hours
        assert got[24 * 18 + 9 : 24 * 18 + 17].max() > anomaly.RED > got[24 * 12 : 24 * 18].max()


def test_readings_without_hours_leave_the_profile_as_it_was() -> None:
    readings, stamps = _daily_stream(days=2, seed=5)
    hooks = SessionStats(1, online=True, mean=np.zeros(1), std=np.ones(1))
    stats = np.zeros((1, hooks.floats))
    hooks.before(readings[None, :30], stats, daytime.hours_of(stamps[:30], 30)[None])
    block = slice(hooks.daily_at, hooks.floats)
    kept = stats[0, block].copy()
    _, carry = hooks.before(readings[None, 30:], stats)  # no timestamps
    np.testing.assert_array_equal(stats[0, block], kept)
    assert not carry.daily.any()


def test_hours_of_timestamps() -> None:
    stamps: list[float | str] = [
        "2014-04-01 13:05:00",
        "2014-04-01T13:05:00+02:00",  # local time as written
        "2014-04-01T23:59:59Z",
        3600 * 24 * 365 + 7 * 3600 + 0.5,  # Unix seconds: the UTC hour
        -0.5,  # 23:59:59.5 on 1969-12-31
        "yesterday",
        " 2014-04-01 06:00 ",
    ]
    got = daytime.hours_of(stamps, len(stamps))
    np.testing.assert_array_equal(got, [13, 13, 23, 7, 23, np.nan, 6])
    assert np.isnan(daytime.hours_of(None, 3)).all()


def test_hours_grid_is_hours_of_each_step() -> None:
    """Steps' timestamps read together (each distinct text once) give each step's `hours_of`: repeated
    texts, a step without timestamps, text that is no time, numbers (0.0 and -0.0 among them)."""
    steps: list[list[float | str] | None] = [
        ["2014-04-01 13:05:00", "2014-04-01T23:59:59Z"],
        None,
        ["2014-04-01 13:05:00", "yesterday"],
        [-0.0, 0.0],
        ["yesterday", 3600 * 5 + 0.25],
        None,
    ]
    got = daytime.hours_grid(steps, 2)
    expected = np.stack([daytime.hours_of(s, 2) for s in steps])
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (6, 2) and np.isnan(got[[1, 5]]).all() and got[0, 0] == 13
    assert np.isnan(daytime.hours_grid([None, None], 3)).all()


def test_a_trained_models_calibration_speaks_until_the_session_has_warmed_up() -> None:
    center, scale = 6.0, 1.5
    rng = np.random.default_rng(8)
    n = anomaly.WARMUP + 40
    x = rng.normal(0, 0.5, (n, 1))
    x[[10, n - 10]] = 6.0  # the same wild reading early and late
    hooks = SessionStats(1, online=False, mean=np.zeros(1), std=np.ones(1), calibration=(center, scale))
    stats = np.zeros((1, hooks.floats))
    model_x, carry = hooks.before(x[None], stats)
    preds = np.zeros((1, n, 1))
    out = hooks.after([preds, preds, preds[:, 0], preds[:, 0]], model_x, stats, carry)
    score, probability = out[2][0], out[3][0]
    logistic = 1.0 / (1.0 + np.exp(-(score - center) / scale))
    early = slice(1, anomaly.WARMUP + 1)  # the first WARMUP scored readings: the manifest's logistic
    baseline = -math.log10(0.5) / (-math.log10(0.5) + anomaly.RED)  # the warming likelihood's 0.5
    np.testing.assert_allclose(probability[early], np.maximum(logistic[early], baseline), rtol=1e-9)
    assert probability[10] > 0.5  # flagged by the calibration during warm-up
    uncalibrated = SessionStats(1, online=False, mean=np.zeros(1), std=np.ones(1))
    stats = np.zeros((1, uncalibrated.floats))
    model_x, carry = uncalibrated.before(x[None], stats)
    plain = uncalibrated.after([preds, preds, preds[:, 0], preds[:, 0]], model_x, stats, carry)[3][0]
    np.testing.assert_array_equal(probability[anomaly.WARMUP + 1 :], plain[anomaly.WARMUP + 1 :])
    # a threshold chosen on labelled anomalies decides, during the warm-up and after
    labelled = SessionStats(
        1, online=False, mean=np.zeros(1), std=np.ones(1), calibration=(center, scale), labelled=True
    )
    stats = np.zeros((1, labelled.floats))
    model_x, carry = labelled.before(x[None], stats)
    kept = labelled.after([preds, preds, preds[:, 0], preds[:, 0]], model_x, stats, carry)[3][0]
    np.testing.assert_allclose(kept[1:], np.minimum(logistic[1:], 1 - 5e-6), rtol=1e-6)
    assert np.isnan(kept[0]) and kept[10] > 0.5 and kept[n - 10] > 0.5
    late = slice(anomaly.WARMUP + 1, None)
    assert np.any(np.abs(plain[late] - kept[late]) > 0.1)  # the stream's own evidence no longer counts
