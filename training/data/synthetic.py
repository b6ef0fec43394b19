"""A synthetic multi-sensor plant with injected, labelled anomalies, so the sensor path runs anywhere.

Four sensors of one machine room sampled every 10 minutes (144 steps a day, 1008 a week):

    temperature  21 C, daily cycle, weekly cycle, slow seasonal trend, AR(1) noise
    humidity     anti-correlated with temperature, its own daily cycle, AR(1) noise
    power        base load plus a smooth weekday business-hours plateau, noise
    vibration    follows power, plus a 2-hour machine cycle, noise

The plant (levels, amplitudes, phases) comes from `plant_seed`; noise, missing values and anomalies from
`seed`, so train/valid/test are different periods of the same plant. Missing values: isolated cells and
short gaps where every sensor drops out. Anomalies, each on one sensor (sizes in that sensor's std):

    spike        1-2 readings off by 3-6 std                      detectable at once
    level_shift  offset of 2-4 std for 1-3 days, then back         detectable at its onset
    drift        ramp to 2-4 std over 2-5 days, then back          detectable any time during the ramp
    stuck        the reading freezes for 12 hours to 2 days        detectable any time while stuck
    frequency    the sensor's cycle runs 4-8x faster for 1-3 days  detectable any time while it lasts
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

FEATURES = ("temperature", "humidity", "power", "vibration")
ANOMALY_TYPES = ("spike", "level_shift", "drift", "stuck", "frequency")
STEP_SECONDS = 600
DAY, WEEK = 144, 1008
MARGIN = 3  # readings after an anomaly ends that may still look odd (the return edge): never false alarms
_START = np.datetime64("2024-01-01T00:00:00", "s")
VALID_SEED, TEST_SEED = 100, 200  # noise seed of the held-out stream of ANOMALY_TYPES[i]: VALID_SEED + i, ...
EVAL_WEEKS = 12  # weeks per held-out stream unless a training run says otherwise


@dataclass(frozen=True)
class AnomalyEvent:
    kind: str
    feature: int
    start: int  # first anomalous reading
    end: int  # one past the last anomalous reading
    detect_end: int  # a detection in [start, detect_end) counts; later ones are neither hits nor false alarms


@dataclass(frozen=True)
class SensorSeries:
    features: tuple[str, ...]
    timestamps: np.ndarray  # [N] datetime64[s]
    values: np.ndarray  # [N, F] float64, NaN where missing
    labels: np.ndarray  # [N] int: 0 normal, else 1 + index into `kinds`
    kinds: tuple[str, ...]  # anomaly type names for the label codes
    events: tuple[AnomalyEvent, ...]


def carry_forward(z: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """[N, F] with NaN -> the last seen value of that feature (`first`, default 0, before the first)."""
    out = z.copy()
    last = np.zeros(z.shape[1]) if first is None else first.astype(np.float64)
    for t in range(len(out)):
        missing = np.isnan(out[t])
        out[t, missing] = last[missing]
        last = out[t]
    return out


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    eps = rng.normal(0.0, sigma, n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + eps[i]
        out[i] = acc
    return out


def _components(
    n: int, offset: int, plant: np.random.Generator, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(base [N, F] without the fast cycles, cycles [N, F]): the frequency anomaly speeds up `cycles`."""
    t = np.arange(offset, offset + n, dtype=np.float64)
    day, week = 2 * np.pi * t / DAY, 2 * np.pi * t / WEEK
    phase = plant.uniform(0, 2 * np.pi, 4)
    hour = (t % DAY) / 6.0
    weekday = ((t // DAY) % 7) < 5
    business = weekday / ((1 + np.exp(-(hour - 8.0) * 2)) * (1 + np.exp((hour - 18.0) * 2)))  # smooth 8h-18h
    cycles = np.stack(
        [
            plant.uniform(2.5, 4.0) * np.sin(day + phase[0]),
            plant.uniform(3.0, 5.0) * np.sin(day + phase[1]),
            plant.uniform(2.0, 4.0) * np.sin(day + phase[2]),
            plant.uniform(0.2, 0.4) * np.sin(2 * np.pi * t / 12 + phase[3]),
        ],
        axis=1,
    )
    season = np.sin(2 * np.pi * t / (13 * WEEK))  # a slow seasonal trend, a quarter of a year per cycle
    temp = plant.uniform(19, 23) + 0.8 * np.sin(week) + 1.5 * season + _ar1(rng, n, 0.95, 0.08)
    temp += rng.normal(0, 0.15, n)  # sensor measurement noise
    humid = plant.uniform(45, 60) - 1.2 * (cycles[:, 0] + temp - temp.mean()) + _ar1(rng, n, 0.9, 0.3)
    humid += rng.normal(0, 0.5, n)
    power = plant.uniform(30, 50) + plant.uniform(20, 35) * business + rng.normal(0, 0.8, n)
    vib = 1.5 + 0.03 * power + rng.normal(0, 0.05, n)
    return np.stack([temp, humid, power, vib], axis=1), cycles


def _place(
    rng: np.random.Generator, n: int, kinds: Sequence[str], per_kind: int, warmup: int
) -> list[tuple[str, int, int]]:
    """Non-overlapping (kind, start, length): one event per equal slot after `warmup`, kinds shuffled."""
    plan = [k for k in kinds for _ in range(per_kind)]
    rng.shuffle(plan)
    if not plan:
        return []
    slot = (n - warmup) // len(plan)
    lengths = {
        "spike": (1, 3),
        "level_shift": (DAY, 3 * DAY),
        "drift": (2 * DAY, 5 * DAY),
        "stuck": (DAY // 2, 2 * DAY),
        "frequency": (DAY, 3 * DAY),
    }
    placed = []
    for i, kind in enumerate(plan):
        lo, hi = lengths[kind]
        longest = min(hi, slot - 2 * MARGIN - 1)
        if longest < lo:
            raise ValueError(
                f"{n} steps are too few for {len(plan)} anomalies ({kind} needs {lo + 2 * MARGIN + 1})"
            )
        length = int(rng.integers(lo, longest + 1))
        start = warmup + i * slot + int(rng.integers(0, slot - length - MARGIN))
        placed.append((kind, start, length))
    return placed


def generate(
    steps: int,
    seed: int,
    plant_seed: int = 0,
    offset: int = 0,
    kinds: Sequence[str] = ANOMALY_TYPES,
    per_kind: int = 0,
    missing_rate: float = 0.005,
    warmup: int = DAY,
) -> SensorSeries:
    """`steps` readings starting `offset` steps after the epoch, with `per_kind` anomalies of each kind."""
    plant = np.random.default_rng([plant_seed, 0])
    rng = np.random.default_rng([plant_seed, seed, 1])
    base, cycles = _components(steps, offset, plant, rng)
    values = base + cycles  # [N, F]
    scale = values.std(axis=0)  # [F]
    kinds = tuple(kinds)
    labels = np.zeros(steps, dtype=np.int64)
    events = []
    for kind, start, length in _place(rng, steps, kinds, per_kind, warmup):
        f = int(rng.integers(0, len(FEATURES)))
        end = start + length
        size = rng.uniform(3, 6) if kind == "spike" else rng.uniform(2, 4)
        sign = rng.choice([-1.0, 1.0])
        span = slice(start, end)
        detect_end = end
        if kind in ("spike", "level_shift"):
            values[span, f] += sign * size * scale[f]
            detect_end = min(end, start + 3)  # seen at the onset or never
        elif kind == "drift":
            values[span, f] += sign * size * scale[f] * np.linspace(1 / length, 1, length)
        elif kind == "stuck":
            values[span, f] = values[start - 1, f]
        else:
            factor = rng.uniform(4, 8)
            t = np.arange(length)
            amp = np.abs(cycles[start:end, f]).max()
            values[span, f] = base[span, f] + amp * np.sin(2 * np.pi * factor * t / (DAY if f < 3 else 12))
        labels[span] = 1 + kinds.index(kind)
        events.append(AnomalyEvent(kind, f, start, end, detect_end))
    missing = rng.random(values.shape) < missing_rate
    for gap_start in rng.integers(
        0, steps, size=steps // (WEEK // 2) if missing_rate > 0 else 0
    ):  # ~2 sensor dropouts a week
        missing[gap_start : gap_start + int(rng.integers(1, 7))] = True
    for ev in events:  # keep the readings that make an anomaly visible
        missing[max(ev.start - 1, 0) : ev.end + MARGIN] = False
    values[missing] = np.nan
    timestamps = _START + (offset + np.arange(steps)) * np.timedelta64(STEP_SECONDS, "s")
    return SensorSeries(FEATURES, timestamps, values, labels, kinds, tuple(events))


def univariate(series: SensorSeries) -> list[SensorSeries]:
    """One single-feature stream ("value") per feature, with the anomalies of that feature."""
    out = []
    for f in range(len(series.features)):
        events = tuple(ev for ev in series.events if ev.feature == f)
        labels = np.zeros(len(series.values), np.int64)
        for ev in events:
            labels[ev.start : ev.end] = 1 + series.kinds.index(ev.kind)
        out.append(
            replace(
                series, features=("value",), values=series.values[:, f : f + 1], labels=labels, events=events
            )
        )
    return out


def held_out(
    split: str, plant_seed: int, weeks: float, eval_weeks: float, per_kind: int, fleet: int = 0
) -> list[SensorSeries]:
    """Training's labelled validation (`split` "valid") or test ("test") streams, one anomaly type each.

    A model of one plant (`fleet` 0) is trained on its first `weeks` weeks; its validation streams are the
    `eval_weeks` that follow, its test streams the `eval_weeks` after those (one stream per type, all
    four sensors). A fleet model trained on plants plant_seed .. plant_seed+fleet-1 is validated on
    plant plant_seed+fleet and tested on plant plant_seed+fleet+1, never trained on, from their start:
    each sensor is a stream of its own, those with anomalies of the type kept.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split {split!r}: give 'valid' or 'test'")
    test = split == "test"
    steps = int(eval_weeks * WEEK)
    seed = TEST_SEED if test else VALID_SEED
    plant, offset = plant_seed + fleet + int(test), 0
    if not fleet:
        plant, offset = plant_seed, int(weeks * WEEK) + steps * int(test)
    streams = [
        generate(steps, seed=seed + i, plant_seed=plant, offset=offset, kinds=(kind,), per_kind=per_kind)
        for i, kind in enumerate(ANOMALY_TYPES)
    ]
    if fleet:
        streams = [one for s in streams for one in univariate(s) if one.events]
    return streams
