"""Event-level F1 of the served sensor detector on training's held-out synthetic streams.

    a sensor model's manifest (its training config: plant seed, weeks, events per stream, fleet plants)
        -> the labelled test streams its training reported on (training.data.synthetic.held_out: one
           anomaly type per stream; a fleet model: each sensor of an unseen plant is a stream of its own)
        -> one session per stream on the in-process SessionManager (the code the HTTP API runs), from the
           stream's first reading, in sequenced requests of CHUNK readings with their timestamps (or none:
           then the daily profile stays out); a missing value is carried forward (the API refuses NaN, so
           a client has to fill it)
        -> the served answers of every reading -> training.calibration.detect, per anomaly type, for
             served  `is_anomaly` as served (`probability >= 0.5`)
             raw     `score >= ` the manifest's calibrated raw-score threshold (the rule the manifest's
                     test figures and the README's earlier table measured; here through the server)
             best    `probability >= ` the one threshold with the best overall F1 on these very streams,
                     chosen with their labels: what a threshold could do at best, not a served setting

Matching (training.calibration): an anomaly is found when a reading in its detection window is flagged;
each run of flags outside every anomaly (and its return edge) is one false alarm, counted for the types
of the stream it is in. An alarm that outlasts its anomaly's return edge (MARGIN readings) counts as a
false alarm too; how many false alarms are such tails (`trailing`) is reported beside them.

Warm-up: a session's likelihoods and range novelty stay silent for its first WARMUP_READINGS readings
(service.anomaly.WARMUP scored ones after the unscored first); meanwhile a fixed-normalisation model
answers its training calibration of the raw score and a fleet model's `is_anomaly` cannot fire. The
streams are scored from their first reading as a new session would be, anomalies starting in the warm-up
are counted like the others, and their number is reported (`in_warmup`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.nab_runner import PARALLEL, stream_readings
from service.anomaly import WARMUP
from service.manifest import Manifest
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings
from training.calibration import Detection, Scored, best_threshold, covered, detect
from training.data.synthetic import (
    ANOMALY_TYPES,
    EVAL_WEEKS,
    AnomalyEvent,
    SensorSeries,
    carry_forward,
    held_out,
)

WARMUP_READINGS = WARMUP + 1  # the first reading (nothing predicted it) and WARMUP scored ones
RULES = ("served", "raw", "best")


class SyntheticError(Exception):
    """A model this evaluation cannot judge: a message that says why."""


@dataclass(frozen=True)
class Served:
    """A stream's served answers, one per reading; NaN / False for the first (nothing predicted it)."""

    score: np.ndarray  # [N] float64
    probability: np.ndarray  # [N] float64
    is_anomaly: np.ndarray  # [N] bool


@dataclass(frozen=True)
class Rule:
    name: str  # one of RULES
    threshold: float | None  # on `score` (raw) or `probability` (best); None: served as is
    result: dict[str, Detection]  # per anomaly type and "all"
    trailing: dict[str, int]  # per anomaly type and "all": false alarms that are tails of a hit's alarm


@dataclass(frozen=True)
class ModelReport:
    model: str
    version: str
    streams: int
    readings: int
    in_warmup: dict[str, int]  # per anomaly type: anomalies that start in the session's warm-up
    rules: tuple[Rule, ...]


def test_streams(manifest: Manifest) -> list[SensorSeries]:
    """The labelled test streams `manifest`'s training reported on."""
    data = manifest.training.config.get("data")
    if manifest.sensor is None or not isinstance(data, dict) or data.get("source") != "synthetic":
        raise SyntheticError(
            f"{manifest.name}/{manifest.version} was not trained on the built-in synthetic plant: "
            "it has no held-out synthetic streams to be judged on"
        )
    streams = held_out(
        "test",
        plant_seed=int(data["plant_seed"]),
        weeks=float(data["synthetic_weeks"]),
        eval_weeks=float(data.get("synthetic_eval_weeks", EVAL_WEEKS)),
        per_kind=int(data["synthetic_events"]),
        fleet=int(data.get("fleet_plants", 0)),
    )
    features = manifest.sensor.features
    if streams[0].values.shape[1] != len(features):
        raise SyntheticError(f"{manifest.name}: {len(features)} feature(s), the streams have another count")
    return streams


def filled(values: np.ndarray) -> np.ndarray:
    """Readings [N, F] with NaN -> each missing value is the feature's last present one (its first present
    one before it): what a client sends for a reading it lacks."""
    first = np.array([col[np.isfinite(col)][0] if np.isfinite(col).any() else 0.0 for col in values.T])
    return carry_forward(values, first=first)


async def serve_stream(
    manager: SessionManager,
    model: str,
    version: str,
    series: SensorSeries,
    advance: Callable[[int], object],
    timestamps: bool = True,
) -> Served:
    """Every reading of `series` through one new session, from its first reading (with its timestamp
    unless `timestamps` is False)."""
    stamps = [str(t) for t in series.timestamps] if timestamps else None
    outputs = await stream_readings(manager, model, version, filled(series.values), stamps, advance)
    n = len(outputs)
    score, probability = np.full(n, np.nan), np.full(n, np.nan)
    is_anomaly = np.zeros(n, dtype=bool)
    for i, out in enumerate(outputs):
        if out.score is not None and out.probability is not None:
            score[i], probability[i], is_anomaly[i] = out.score, out.probability, bool(out.is_anomaly)
    return Served(score, probability, is_anomaly)


def trailing_alarms(flags: np.ndarray, events: Sequence[AnomalyEvent]) -> int:
    """False alarms (training.calibration.false_alarms) that begin right after a flagged reading inside
    an anomaly or its return edge: the tail of an alarm that outlasts the anomaly."""
    inside = covered(len(flags), events)
    outside = flags & ~inside
    begins = outside[1:] & flags[:-1] & inside[:-1]  # [N-1]: reading t+1 outside, reading t a flagged inside
    return int(np.count_nonzero(begins))


def _rule(name: str, threshold: float | None, streams: Sequence[Scored], at: float) -> Rule:
    trailing: dict[str, int] = {}
    for s in streams:
        n = trailing_alarms(np.nan_to_num(s.scores, nan=-np.inf) >= at, s.events)
        for kind in {ev.kind for ev in s.events} | {"all"}:
            trailing[kind] = trailing.get(kind, 0) + n
    return Rule(name, threshold, detect(streams, at), dict(sorted(trailing.items())))


def judge(
    streams: Sequence[SensorSeries], served: Sequence[Served], raw_threshold: float
) -> tuple[Rule, ...]:
    """The three rules (module docs) over the same streams."""

    def scored(values: Callable[[Served], np.ndarray]) -> list[Scored]:
        return [Scored(values(a), s.events) for s, a in zip(streams, served, strict=True)]

    probability = scored(lambda a: a.probability)
    best = best_threshold(probability)
    return (
        _rule("served", None, scored(lambda a: a.is_anomaly.astype(np.float64)), 1.0),  # flagged: 1 >= 1
        _rule("raw", raw_threshold, scored(lambda a: a.score), raw_threshold),
        _rule("best", best, probability, best),
    )


def in_warmup(streams: Sequence[SensorSeries]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in streams:
        for ev in s.events:
            counts[ev.kind] = counts.get(ev.kind, 0) + int(ev.start < WARMUP_READINGS)
    counts["all"] = sum(counts.values())
    return counts


Progress = Callable[[int], tuple[Callable[[int], object], Callable[[], object]]]


def _silent(total: int) -> tuple[Callable[[int], object], Callable[[], object]]:
    return (lambda n: None), (lambda: None)


async def evaluate(
    settings: Settings, models: Sequence[str], progress: Progress = _silent, timestamps: bool = True
) -> list[ModelReport]:
    """Each named sensor model (its default version) on its own held-out synthetic test streams, readings
    sent with their timestamps unless `timestamps` is False; `progress(total readings)` -> (advance(n),
    close())."""
    manager = SessionManager(settings, Metrics())
    await manager.start()
    try:
        loaded = [manager.registry.get(name) for name in models]
        plans = [(m, test_streams(m.manifest)) for m in loaded]
        advance, close = progress(sum(len(s.values) for _, streams in plans for s in streams))
        gate = asyncio.Semaphore(PARALLEL)

        async def one(name: str, version: str, series: SensorSeries) -> Served:
            async with gate:
                return await serve_stream(manager, name, version, series, advance, timestamps)

        reports = []
        try:
            for m, streams in plans:
                served = await asyncio.gather(*(one(m.name, m.version, s) for s in streams))
                assert m.manifest.sensor is not None  # test_streams checked it
                reports.append(
                    ModelReport(
                        model=m.name,
                        version=m.version,
                        streams=len(streams),
                        readings=sum(len(s.values) for s in streams),
                        in_warmup=in_warmup(streams),
                        rules=judge(streams, served, m.manifest.sensor.calibration.center),
                    )
                )
        finally:
            close()
        return reports
    finally:
        await manager.stop()


_LABELS = {
    "served": "served `is_anomaly`",
    "raw": "raw `score` >= manifest threshold",
    "best": "best `probability` threshold (chosen on these streams)",
}


def format_report(report: ModelReport) -> str:
    """A markdown table: per anomaly type, F1 (precision/recall, false alarms) of each rule."""
    rules = {r.name: r for r in report.rules}
    heads = []
    for name in RULES:
        t = rules[name].threshold
        heads.append(_LABELS[name] + ("" if t is None else f" {t:.4g}"))
    lines = [
        f"{report.model}/{report.version}: {report.streams} test stream(s), {report.readings:,} readings",
        "",
        "F1 (precision P, recall R; false alarms FA, of which tail: "
        "the tail of an alarm begun inside an anomaly)",
        "",
        "| anomaly | events (in warm-up) | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(RULES),
    ]
    kinds = [k for k in (*ANOMALY_TYPES, "all") if k in rules["served"].result]
    for kind in kinds:
        d = rules["served"].result[kind]
        cells = []
        for name in RULES:
            x = rules[name].result[kind]
            tails = rules[name].trailing.get(kind, 0)
            cells.append(f"**{x.f1:.3f}** (P {x.precision:.2f} R {x.recall:.2f}; FA {x.fp}, tail {tails})")
        lines.append(
            f"| {kind} | {d.tp + d.fn} ({report.in_warmup.get(kind, 0)}) | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def as_json(report: ModelReport) -> dict[str, object]:
    return {
        "model": report.model,
        "version": report.version,
        "streams": report.streams,
        "readings": report.readings,
        "in_warmup": report.in_warmup,
        "rules": {
            r.name: {
                "threshold": r.threshold,
                "trailing_false_alarms": r.trailing,
                **{
                    kind: {
                        "tp": d.tp,
                        "fp": d.fp,
                        "fn": d.fn,
                        "precision": round(d.precision, 4),
                        "recall": round(d.recall, 4),
                        "f1": round(d.f1, 4),
                    }
                    for kind, d in r.result.items()
                },
            }
            for r in report.rules
        },
    }
