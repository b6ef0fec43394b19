"""The hour of the day of a sensor reading, from the timestamp the client sent with it.

A reading's daily profile (service.anomaly) needs its wall-clock hour: a text timestamp in ISO 8601 is
read as written (`2014-04-01 13:05:00` and `2014-04-01T13:05:00+02:00` are both hour 13: a daily
pattern follows the sensor's local clock, and the offset says where that is); a number is Unix time in
seconds, whose hour is taken in UTC. A reading without a timestamp, or whose text is not ISO 8601 (the
API echoes any text), has no hour (NaN) and stays out of the daily profile.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import numpy as np

HOURS = 24


def _hour(stamp: float | str) -> float:
    if isinstance(stamp, str):
        try:
            return float(dt.datetime.fromisoformat(stamp.strip()).hour)
        except ValueError:
            return math.nan
    return float((math.floor(stamp) // 3600) % HOURS) if math.isfinite(stamp) else math.nan


def hours_of(timestamps: Sequence[float | str] | None, count: int) -> np.ndarray:
    """[count] float64: each reading's hour of the day (0..23), NaN where it has none."""
    if timestamps is None:
        return np.full(count, math.nan)
    return np.fromiter((_hour(t) for t in timestamps), np.float64, count)


def hours_grid(timestamps: Sequence[Sequence[float | str] | None], count: int) -> np.ndarray:
    """[len(timestamps), count] float64: `hours_of` of each step's `count` timestamps (a row of NaN for a
    step without), each distinct text read once: a gateway's bulk request stamps its thousand sensors'
    readings with a few moments, and reading an ISO text costs more than the rest of a step's decode."""
    hours = np.full((len(timestamps), count), math.nan)
    rows = [j for j, stamps in enumerate(timestamps) if stamps is not None]
    if rows:
        read: dict[str, float] = {}  # texts only: 0.0 and -0.0 are one key, and numbers are cheap
        flat = [
            (read[t] if t in read else read.setdefault(t, _hour(t))) if type(t) is str else _hour(t)
            for stamps in timestamps
            if stamps is not None
            for t in stamps
        ]
        hours[rows] = np.array(flat, np.float64).reshape(len(rows), count)
    return hours
