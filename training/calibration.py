"""Anomaly calibration: choose the score threshold on labelled validation streams, and score detections.

A reading's score is the summed Gaussian NLL of the reading under the prediction made one step earlier
(`service.manifest.Calibration`). A reading is flagged when `score >= center`. Detection is judged per
anomaly event, the way an operator sees alarms:

- an event is detected (true positive) if any reading in its detection window [start, detect_end) is
  flagged, missed (false negative) otherwise;
- a false alarm (false positive) is a run of consecutive flagged readings outside every event (an event
  covers [start, end + MARGIN): the return edge of an anomaly is part of it);
- precision = TP / (TP + FP), recall = TP / (TP + FN). Per anomaly type these count the events of that
  type and the false alarms of the streams that contain it (give each type its own stream to make the
  per-type precision exact, as the synthetic validation and test sets do).

The threshold maximises F1 over all events: F1 only changes where the threshold crosses the largest score
in some event's window, so those values are the candidates. The logistic scale is then fitted by maximum
likelihood with the center fixed (positives: each event's largest window score; negatives: every reading
outside the events), so the probability says how sure the detector is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.manifest import Calibration
from training.data.synthetic import MARGIN, AnomalyEvent


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray  # [N] float64; NaN where a reading has no score (the first, or a missing value)
    events: tuple[AnomalyEvent, ...]


@dataclass(frozen=True)
class Detection:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def covered(n: int, events: Sequence[AnomalyEvent]) -> np.ndarray:
    covered = np.zeros(n, dtype=bool)
    for ev in events:
        covered[ev.start : ev.end + MARGIN] = True
    return covered


def false_alarms(flags: np.ndarray, events: Sequence[AnomalyEvent]) -> int:
    """Runs of consecutive flagged readings outside every event."""
    outside = flags & ~covered(len(flags), events)
    return int(outside[0]) + int(np.count_nonzero(outside[1:] & ~outside[:-1])) if len(outside) else 0


def detect(streams: Sequence[Scored], threshold: float) -> dict[str, Detection]:
    """Per anomaly type and overall ("all"): TP/FP/FN of `score >= threshold` (see the module docs)."""
    counts: dict[str, list[int]] = {}
    for stream in streams:
        flags = np.nan_to_num(stream.scores, nan=-np.inf) >= threshold  # [N]
        fp = false_alarms(flags, stream.events)
        kinds = {ev.kind for ev in stream.events}
        for kind in (*kinds, "all"):
            c = counts.setdefault(kind, [0, 0, 0])
            c[1] += fp
        for ev in stream.events:
            hit = bool(flags[ev.start : ev.detect_end].any())
            for kind in (ev.kind, "all"):
                counts[kind][0 if hit else 2] += 1
    return {kind: Detection(*c) for kind, c in sorted(counts.items())}


def _event_peaks(streams: Sequence[Scored]) -> np.ndarray:
    peaks = [
        np.nanmax(s.scores[ev.start : ev.detect_end], initial=-np.inf) for s in streams for ev in s.events
    ]
    return np.asarray(peaks, dtype=np.float64)


def best_threshold(streams: Sequence[Scored]) -> float:
    """The threshold with the highest overall F1 (ties: the higher threshold, fewer alarms)."""
    candidates = np.unique(_event_peaks(streams))
    candidates = candidates[np.isfinite(candidates)]
    if candidates.size == 0:
        raise ValueError("no labelled anomaly with a score: cannot choose a threshold")
    f1 = [detect(streams, float(c))["all"].f1 for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (f1[i], candidates[i]))
    return float(candidates[best])


def fit_scale(streams: Sequence[Scored], center: float) -> float:
    """Maximum-likelihood logistic scale with the center fixed (grid search over log scale)."""
    negatives = np.concatenate([s.scores[~covered(len(s.scores), s.events)] for s in streams])
    negatives = negatives[np.isfinite(negatives)]
    positives = _event_peaks(streams)
    positives = positives[np.isfinite(positives)]
    spread = float(np.std(negatives)) if negatives.size > 1 else 1.0
    best_scale, best_ll = spread, -np.inf
    for scale in spread * np.geomspace(1e-3, 1e2, 151):
        # log sigmoid(z) = -logaddexp(0, -z), computed stably
        ll = (
            -np.logaddexp(0, -(positives - center) / scale).sum()
            - np.logaddexp(0, (negatives - center) / scale).sum()
        )
        if ll > best_ll:
            best_scale, best_ll = float(scale), float(ll)
    return max(best_scale, 1e-6)


def quantile_calibration(scores: Sequence[np.ndarray], contamination: float) -> Calibration:
    """Without labels: flag the top `contamination` share of validation scores."""
    values = np.concatenate([s[np.isfinite(s)] for s in scores])
    center = float(np.quantile(values, 1 - contamination))
    scale = max(float(np.std(values)) / 4, 1e-6)
    return Calibration(
        center=center,
        scale=scale,
        summary={
            "method": f"no labels: threshold at the {1 - contamination:.4g} quantile of validation scores",
            "valid_readings": int(values.size),
        },
    )


def metrics_summary(result: dict[str, Detection], prefix: str) -> dict[str, float]:
    """Flat {prefix_kind_precision: ...} for manifests and logs."""
    out: dict[str, float] = {}
    for kind, d in result.items():
        out.update(
            {
                f"{prefix}_{kind}_precision": round(d.precision, 4),
                f"{prefix}_{kind}_recall": round(d.recall, 4),
                f"{prefix}_{kind}_f1": round(d.f1, 4),
            }
        )
        out[f"{prefix}_{kind}_events"] = d.tp + d.fn
        out[f"{prefix}_{kind}_false_alarms"] = d.fp
    return out


def calibrate(streams: Sequence[Scored]) -> tuple[Calibration, dict[str, Detection]]:
    """Threshold with the best F1 on labelled validation streams, fitted scale, and how it did there."""
    center = best_threshold(streams)
    result = detect(streams, center)
    summary: dict[str, float | int | str] = {
        "method": "threshold maximising event F1 on labelled validation anomalies; logistic scale by ML",
        **metrics_summary(result, "valid"),
    }
    return Calibration(center=center, scale=fit_scale(streams, center), summary=summary), result


def format_table(result: dict[str, Detection]) -> str:
    lines = [f"{'type':<12} {'events':>6} {'hits':>5} {'false':>6} {'precision':>9} {'recall':>7} {'F1':>6}"]
    for kind, d in result.items():
        lines.append(
            f"{kind:<12} {d.tp + d.fn:>6} {d.tp:>5} {d.fp:>6} {d.precision:>9.3f} {d.recall:>7.3f} "
            f"{d.f1:>6.3f}"
        )
    return "\n".join(lines)
