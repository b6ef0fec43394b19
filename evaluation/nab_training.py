"""NAB's per-file detector: a model trained on each file's probationary rows, and only those.

NAB allows a detector to learn from the first min(floor(0.15 N), 750) rows of a file (the rows its
scorer never scores), so a user with a history of a sensor is modelled by training on exactly them:
`rnnserve train sensor --csv <those rows> --test-fraction 0` with one fixed set of training options for
every file (NAB's one-set-of-parameters rule), written as models/<nab-...>/1. The models are then served
by the same SessionManager as the fleet model. Each training is its own process (torch stays out of
the runner; a failure names its file), `jobs` of them at a time.
"""

from __future__ import annotations

import asyncio
import csv
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from evaluation.nab_scorer import probation

# One recipe for every file: the CLI's sensor defaults, one thread per training (files run side by
# side), no test split (a short history has no rows to spare) and a fixed seed.
TRAIN_OPTIONS = ("--test-fraction", "0", "--threads", "1", "--seed", "1234", "--no-progress")


class TrainingFailed(Exception):
    """A file's training ended with an error: the file and the training's own last line."""


def model_name(relative: str) -> str:
    """A models-directory name for a file `<category>/<file>.csv`: `nab-<category>-<file>`."""
    stem = relative.removesuffix(".csv").replace("/", "-")
    return "nab-" + re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def write_probation(timestamps: Sequence[str], values: Sequence[float], path: Path) -> int:
    """The file's probationary rows as a `timestamp,value` CSV; returns how many rows."""
    rows = probation(len(values))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "value"])
        writer.writerows(zip(timestamps[:rows], [repr(float(v)) for v in values[:rows]], strict=True))
    return rows


async def _train_one(relative: str, csv_path: Path, work: Path) -> str:
    name = model_name(relative)
    command = [sys.executable, "-m", "training", "sensor", "--csv", str(csv_path), *TRAIN_OPTIONS]
    command += ["--out", str(work / "models"), "--name", name, "--version", "1", "--overwrite"]
    command += ["--checkpoint-dir", str(work / "checkpoints" / name)]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        lines = (err or out).decode("utf-8", "replace").strip().splitlines() or ["(no output)"]
        raise TrainingFailed(f"{relative}: training on its probationary rows failed: {lines[-1]}")
    return name


async def train_per_file(
    files: Sequence[tuple[str, Sequence[str], Sequence[float]]],
    work: Path,
    jobs: int,
    done: Callable[[], object],
) -> list[str]:
    """Train a model for each (relative, timestamps, values) on its probationary rows into
    WORK/models (WORK/probation holds the rows trained on, WORK/checkpoints the runs); the models'
    names in file order. `done()` is called as each training ends."""
    gate = asyncio.Semaphore(max(1, jobs))

    async def one(relative: str, stamps: Sequence[str], values: Sequence[float]) -> str:
        csv_path = work / "probation" / f"{model_name(relative)}.csv"
        write_probation(stamps, values, csv_path)
        async with gate:
            name = await _train_one(relative, csv_path, work)
        done()
        return name

    return list(await asyncio.gather(*(one(*f) for f in files)))
