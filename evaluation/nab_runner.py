"""Run a detector over NAB-layout data through the serving code, write NAB's results layout, score it.

    DATA/<category>/<file>.csv (timestamp,value)
        -> one session per file on the in-process SessionManager (the code the HTTP API runs: registry,
           batcher, runner, session statistics, store), readings streamed from the file's start in
           sequenced requests of CHUNK readings, many files at once so that their steps share batches
        -> RESULTS/<detector>/<category>/<detector>_<file>.csv (timestamp,value,anomaly_score)
        -> with labels (combined_windows.json): our NAB scorer over the corpus, all three profiles

NAB's rules hold by construction: each file from its start, one session per file, no look-ahead (the
model and the session statistics are causal, so a reading's answer depends only on the readings up to
it; a request of CHUNK readings answers what CHUNK one-reading requests would, up to the float32 rounding
of the statistics stored between requests), one set of parameters for all files, labels never reach the
detector. The anomaly score is the served `alarm` (`probability`, quiet for the rest period after each
raised alarm but for escalations: one detection per anomalous episode, and another where it gets much
worse, as an operator is paged); a session's first reading, which nothing predicted, scores 0.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.nab_scorer import FileScores, ProfileResult, score_all, window_rows
from service import schemas
from service.metrics import Metrics
from service.sessions import SessionManager
from service.settings import Settings

CHUNK = 256  # readings per step request
PARALLEL = 64  # files streamed at once (sessions in one batch)


class NabError(Exception):
    """Bad input to the runner: a message that says what to change."""


@dataclass(frozen=True)
class NabFile:
    relative: str  # "<category>/<file>.csv", the key of NAB's label files
    timestamps: list[str]
    values: np.ndarray  # [N] float64


def _stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.strip()).replace(tzinfo=dt.UTC).timestamp()


def read_corpus(data: Path) -> list[NabFile]:
    """Every <category>/<file>.csv under `data`, sorted by name."""
    if not data.is_dir():
        raise NabError(f"{data}: no such directory (--data takes NAB's data/ folder: <category>/<file>.csv)")
    paths = sorted(data.glob("*/*.csv"))
    if not paths:
        raise NabError(f"{data}: no <category>/<file>.csv files (--data takes NAB's data/ folder)")
    files = []
    for path in paths:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows or [h.strip() for h in rows[0][:2]] != ["timestamp", "value"]:
            raise NabError(f"{path}: the header must be `timestamp,value` (NAB's data layout)")
        try:
            values = np.array([float(r[1]) for r in rows[1:]], np.float64)
        except (ValueError, IndexError) as exc:
            raise NabError(f"{path}: a row without a numeric value ({exc})") from exc
        if not np.isfinite(values).all():
            raise NabError(f"{path}: non-finite values; NAB files hold numbers only")
        files.append(NabFile(path.relative_to(data).as_posix(), [r[0] for r in rows[1:]], values))
    return files


async def stream_readings(
    manager: SessionManager,
    model: str,
    version: str | None,
    readings: np.ndarray,
    timestamps: Sequence[str] | None,
    advance: Callable[[int], object],
) -> list[schemas.SensorOutput]:
    """Readings [N, F] through one new session from its first, in sequenced requests of CHUNK readings
    (with their timestamps, when given: the hour of the day feeds the daily profile); each reading's
    answer. The session is deleted after."""
    created = await manager.create(schemas.CreateSession(model=model, version=version), None)
    outputs: list[schemas.SensorOutput] = []
    try:
        for start in range(0, len(readings), CHUNK):
            body: dict[str, object] = {"readings": readings[start : start + CHUNK].tolist(), "seq": start}
            if timestamps is not None:
                body["timestamps"] = list(timestamps[start : start + CHUNK])
            response = await manager.step(created.session_id, None, body)
            for out in response.outputs:
                assert isinstance(out, schemas.SensorOutput)
                outputs.append(out)
            advance(len(response.outputs))
    finally:
        await manager.delete(created.session_id, None)
    return outputs


async def _score_file(
    manager: SessionManager, model: str, f: NabFile, advance: Callable[[int], object]
) -> np.ndarray:
    outputs = await stream_readings(manager, model, None, f.values[:, None], f.timestamps, advance)
    return np.array([0.0 if out.alarm is None else out.alarm for out in outputs])


async def run_detector(
    files: Sequence[NabFile], settings: Settings, models: Sequence[str], advance: Callable[[int], object]
) -> list[np.ndarray]:
    """Every file's anomaly scores, through an in-process SessionManager; `models[i]` scores file i."""
    manager = SessionManager(settings, Metrics())
    await manager.start()
    try:
        gate = asyncio.Semaphore(PARALLEL)

        async def one(f: NabFile, model: str) -> np.ndarray:
            async with gate:
                return await _score_file(manager, model, f, advance)

        return list(await asyncio.gather(*(one(f, m) for f, m in zip(files, models, strict=True))))
    finally:
        await manager.stop()


def write_results(
    results: Path, detector: str, files: Sequence[NabFile], scores: Sequence[np.ndarray]
) -> None:
    """NAB's results layout: RESULTS/<detector>/<category>/<detector>_<file>.csv."""
    for f, s in zip(files, scores, strict=True):
        category, name = f.relative.split("/", 1)
        out = results / detector / category / f"{detector}_{name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["timestamp", "value", "anomaly_score"])
            for stamp, value, score in zip(f.timestamps, f.values.tolist(), s.tolist(), strict=True):
                writer.writerow(
                    [stamp, repr(value) if not value.is_integer() else int(value), f"{score:.6f}"]
                )


def read_windows(labels: Path, files: Sequence[NabFile]) -> list[list[tuple[int, int]]]:
    """combined_windows.json -> each file's windows as inclusive row ranges; every file must be labelled."""
    try:
        table = json.loads(labels.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NabError(f"{labels}: not a readable JSON label file ({exc})") from exc
    out = []
    for f in files:
        if f.relative not in table:
            raise NabError(f"{labels}: no windows for {f.relative} (give NAB's combined_windows.json)")
        stamps = [_stamp(t) for t in f.timestamps]
        windows = [(_stamp(a), _stamp(b)) for a, b in table[f.relative]]
        out.append(window_rows(stamps, windows))
    return out


def score_results(
    files: Sequence[NabFile], scores: Sequence[np.ndarray], windows: Sequence[list[tuple[int, int]]]
) -> dict[str, ProfileResult]:
    corpus = [FileScores(f.relative, s, w) for f, s, w in zip(files, scores, windows, strict=True)]
    return dict(score_all(corpus))


def summary(results: dict[str, ProfileResult], readings: int, seconds: float) -> dict[str, object]:
    return {
        "readings": readings,
        "seconds": round(seconds, 1),
        "readings_per_second": round(readings / seconds, 1) if seconds > 0 else math.inf,
        "profiles": {
            name: {
                "score": round(r.normalized, 2),
                "threshold": r.threshold,
                "tp": r.tp,
                "fp": r.fp,
                "fn": r.fn,
            }
            for name, r in results.items()
        },
    }


def elapsed_since(start: float) -> float:
    return time.perf_counter() - start
