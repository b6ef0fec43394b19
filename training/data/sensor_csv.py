"""Sensor readings from CSV: a timestamp column, value columns, and optionally a label column.

    timestamp,temperature,pressure,label
    2024-01-01T00:00:00,21.3,1002.1,0
    2024-01-01T00:10:00,,1002.3,0          <- an empty cell is a missing reading (carried forward)
    2024-01-01T00:20:00,35.0,1002.2,spike  <- labels: empty/0 normal, 1 "anomaly", or a type name

Timestamps are ISO 8601 or numbers (seconds). The row order is the time order: repeated or backward
timestamps (a daylight-saving change, a clock reset) are kept where they are, with a warning. A missing
reading is an empty cell or one of NaN, NA, N/A, null, None. Anything else (a non-numeric or infinite
value, a short row, a column with no reading at all) is refused with the line and column.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import sys
from pathlib import Path

import numpy as np

from training.data.errors import DataError
from training.data.synthetic import AnomalyEvent, SensorSeries

_NORMAL_LABELS = {"", "0", "false", "normal"}
_MISSING = {"", "nan", "na", "n/a", "null", "none"}


def _timestamp(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DataError(f"{where}: timestamp {text!r} is neither ISO 8601 nor a number") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _value(text: str, where: str) -> float:
    if text.strip().lower() in _MISSING:
        return math.nan  # a missing reading
    try:
        value = float(text)
    except ValueError as exc:
        raise DataError(f"{where}: {text!r} is not a number") from exc
    if not math.isfinite(value):
        raise DataError(
            f"{where}: {text!r} is not a finite number (leave the cell empty for a missing reading)"
        )
    return value


def events_from_labels(labels: np.ndarray, kinds: tuple[str, ...]) -> tuple[AnomalyEvent, ...]:
    """Each run of one nonzero label code is one event, detectable anywhere inside it."""
    events = []
    t, n = 0, len(labels)
    while t < n:
        if labels[t] == 0:
            t += 1
            continue
        start, code = t, int(labels[t])
        while t < n and labels[t] == code:
            t += 1
        events.append(AnomalyEvent(kinds[code - 1], -1, start, t, t))
    return tuple(events)


def read_sensor_csv(
    path: Path, timestamp_column: str | None = None, label_column: str = "label"
) -> SensorSeries:
    """Parse one CSV; the first column is the timestamp unless `timestamp_column` names another."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({exc})") from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header = [h.strip() for h in rows[0]]
    ts_name = timestamp_column or header[0]
    if ts_name not in header:
        raise DataError(f"{path}: no timestamp column {ts_name!r} (columns: {', '.join(header)})")
    value_names = [h for h in header if h not in (ts_name, label_column)]
    if not value_names:
        raise DataError(f"{path}: too few columns: need a timestamp column and at least one value column")
    if len(set(header)) != len(header):
        raise DataError(f"{path}: duplicate column names in the header")
    if len(rows) < 3:
        raise DataError(f"{path}: {len(rows) - 1} data row(s); need at least 2")
    ts_col, value_cols = header.index(ts_name), [header.index(v) for v in value_names]
    label_col = header.index(label_column) if label_column in header else None
    stamps, values, label_texts = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: {len(row)} columns, the header has {len(header)}")
        stamps.append(_timestamp(row[ts_col].strip(), f"{path}:{line}"))
        values.append([_value(row[c], f"{path}:{line} column {header[c]!r}") for c in value_cols])
        label_texts.append(row[label_col].strip().lower() if label_col is not None else "")
    array = np.asarray(values, dtype=np.float64)  # [N, F]
    empty = [name for name, col in zip(value_names, array.T, strict=True) if np.isnan(col).all()]
    if empty:
        raise DataError(f"{path}: column(s) {', '.join(empty)} hold no reading at all")
    times = np.asarray(stamps)
    steps = np.diff(times)
    if np.any(steps <= 0):
        first = int(np.argmax(steps <= 0)) + 3
        print(
            f"warning: {path}:{first}: {int(np.sum(steps == 0))} repeated and {int(np.sum(steps < 0))} "
            "backward timestamp(s); the row order is taken as the time order",
            file=sys.stderr,
            flush=True,
        )
    names = sorted({t if t != "1" else "anomaly" for t in label_texts} - _NORMAL_LABELS)
    labels = np.array(
        [0 if t in _NORMAL_LABELS else 1 + names.index("anomaly" if t == "1" else t) for t in label_texts],
        dtype=np.int64,
    )
    kinds = tuple(names)
    timestamps = (times * 1000).astype("datetime64[ms]").astype("datetime64[s]")
    return SensorSeries(
        tuple(value_names), timestamps, array, labels, kinds, events_from_labels(labels, kinds)
    )
