"""NAB's scoring rules (Lavin & Ahmad 2015, NAB v1.1), our own implementation; see ../shared/data/README.md.

Per file of N rows with anomaly windows (row ranges [left, right], timestamps inclusive):

    probation  the first min(floor(0.15 N), 750) rows are never scored
    s(y)       = 2 / (1 + exp(5 y)) - 1, and -1 for y > 3 (the scaled sigmoid)
    in window  a detection at row i of window [l, r] (width w = r - l + 1): y = -(r - i + 1) / w, earns
               A_TP * s(y) / s(-1); only the window's earliest detection counts (it earns most)
    outside    a detection at row i after window [l', r'] (width w'): y = (i - r') / (w' - 1), costs
               A_FP * s(y) (negative); before any window: -A_FP
    missed     a window without detection: -A_FN

A detection is a row whose score is >= the threshold; one threshold per profile for the whole corpus,
the one with the highest total (an exact sweep over every distinct score). Normalised score:
100 * (S - S_null) / (S_perfect - S_null), null = never fires (-A_FN per window), perfect = fires on the
first row of every window (+A_TP per window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PROFILES: dict[str, tuple[float, float, float]] = {  # name -> (A_TP, A_FN, A_FP)
    "standard": (1.0, 1.0, 0.11),
    "reward_low_FP_rate": (1.0, 1.0, 0.22),
    "reward_low_FN_rate": (1.0, 2.0, 0.11),
}


def probation(rows: int) -> int:
    return min(math.floor(0.15 * rows), 750)


def scaled_sigmoid(y: float) -> float:
    return -1.0 if y > 3.0 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@dataclass(frozen=True)
class FileScores:
    """One file: its detector scores [N] and its windows as inclusive row ranges."""

    name: str
    scores: np.ndarray
    windows: Sequence[tuple[int, int]]


def window_rows(timestamps: Sequence[float], windows: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """Windows given by (start, end) times -> inclusive row ranges of the rows inside them."""
    stamps = np.asarray(timestamps, np.float64)
    out = []
    for start, end in windows:
        inside = np.flatnonzero((stamps >= start) & (stamps <= end))
        if inside.size:
            out.append((int(inside[0]), int(inside[-1])))
    return out


@dataclass(frozen=True)
class _Point:
    score: float
    window: int  # index into the corpus's windows, -1 outside every window
    weight: float  # unweighted value: s(y)/s(-1) in a window, s(y) or -1 outside


def _points(files: Sequence[FileScores]) -> tuple[list[_Point], int]:
    """Every scored row's (score, window, value), and the number of windows in the corpus."""
    points: list[_Point] = []
    base = 0
    top = scaled_sigmoid(-1.0)
    for f in files:
        n = len(f.scores)
        start = probation(n)
        owner = np.full(n, -1)
        for k, (left, right) in enumerate(f.windows):
            owner[left : right + 1] = k
        prev: tuple[int, int] | None = None  # the last window that ended before row i
        for i in range(n):
            k = int(owner[i])
            if k >= 0:
                left, right = f.windows[k]
                value = scaled_sigmoid(-(right - i + 1) / (right - left + 1)) / top
                prev = (left, right)
            elif prev is None:
                value = -1.0
            else:
                width = prev[1] - prev[0] + 1
                value = scaled_sigmoid((i - prev[1]) / (width - 1)) if width > 1 else -1.0
            if i >= start:
                points.append(_Point(float(f.scores[i]), base + k if k >= 0 else -1, value))
        base += len(f.windows)
    return points, base


@dataclass(frozen=True)
class ProfileResult:
    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int

    @property
    def normalized(self) -> float:
        return (
            100.0 * (self.raw - self.null) / (self.perfect - self.null) if self.perfect > self.null else 0.0
        )


def score_corpus(files: Sequence[FileScores], profile: str) -> ProfileResult:
    """The best total over every threshold (exact sweep), normalised between null and perfect."""
    a_tp, a_fn, a_fp = PROFILES[profile]
    points, windows = _points(files)
    null = -a_fn * windows
    order = sorted(points, key=lambda p: -p.score)
    best_value: dict[int, float] = {}  # window -> value of its best (earliest) detection so far
    total, fp, tp = null, 0, 0
    best = (null, math.inf, 0, 0)  # (total, threshold, tp, fp): the null detector (threshold above all)
    i = 0
    while i < len(order):
        threshold = order[i].score
        while i < len(order) and order[i].score == threshold:  # ties fire together
            p = order[i]
            if p.window < 0:
                total += a_fp * p.weight
                fp += 1
            else:
                old = best_value.get(p.window)
                if old is None:
                    total += a_fn + a_tp * p.weight
                    tp += 1
                    best_value[p.window] = p.weight
                elif p.weight > old:
                    total += a_tp * (p.weight - old)
                    best_value[p.window] = p.weight
            i += 1
        if total > best[0]:
            best = (total, threshold, tp, fp)
    raw, threshold, tp, fp = best
    return ProfileResult(profile, threshold, raw, null, a_tp * windows, tp, fp, windows - tp)


def score_all(files: Sequence[FileScores]) -> Mapping[str, ProfileResult]:
    return {name: score_corpus(files, name) for name in PROFILES}


def format_results(results: Mapping[str, ProfileResult], detector: str) -> str:
    lines = [f"{'detector':<20} {'profile':<20} {'score':>7} {'threshold':>10} {'TP':>4} {'FP':>5} {'FN':>4}"]
    for r in results.values():
        lines.append(
            f"{detector:<20} {r.profile:<20} {r.normalized:>7.2f} {r.threshold:>10.5f} {r.tp:>4} {r.fp:>5} "
            f"{r.fn:>4}"
        )
    return "\n".join(lines)
