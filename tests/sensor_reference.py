"""What a sensor session answers as `probability` during its warm-up, written out from the README for the
reference checks of the e2e and manager tests."""

from __future__ import annotations

import math

from service.manifest import SensorSpec

A_MAX = 1e6  # README: probability stays below 1 (a = 1e6 at most)


def warmup_probability(score: float, spec: SensorSpec) -> float:
    """Before WARMUP scored readings the likelihood is 0.5 (a = -log10(0.5)); a model trained on its
    sensor's history (fixed normalisation) also answers its calibration's logistic of the raw score,
    and only that where training chose the threshold on labelled anomalies (its summary counts them)."""
    a = math.log10(2)
    if spec.normalization == "fixed":
        u = (score - spec.calibration.center) / spec.calibration.scale
        logistic = 5 * math.exp(min(u, math.log(A_MAX / 5)))  # a / (a + 5) = the logistic of u
        labelled = float(spec.calibration.summary.get("valid_all_events", 0)) > 0
        a = logistic if labelled else max(a, logistic)
    return a / (a + 5)
