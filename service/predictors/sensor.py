"""Streaming anomaly scoring of multivariate sensor readings.

    readings [T, F] -> normalized x = (r - mu) / sigma, float32 [T, F] (manifest normalization "fixed")
                    -> raw readings float64 [T, F], normalised per session in the runner ("online")
                    each followed by the reading's hour of the day (service.daytime; NaN: unknown),
                    x [T, F + 1], which the runner splits off for the daily profile
    mean, log_var [T, F] (prediction for the reading after each event), mean_in, log_var_in [F] (prior)

Reading t is scored against the prediction made one step before it: the prior for the first reading of
a request, row t-1 otherwise; the raw score is the Gaussian NLL in normalized space summed over features
(the manifest's Calibration formula). The served probability is not the manifest's logistic of that
score but the anomaly likelihood of the session's own recent surprises (service.anomaly), so that one
threshold means the same on every stream. The very first reading of a session (seq 0) has nothing to be
scored against: its score, probability, is_anomaly, likelihood, surprise and alarm are null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service import schemas
from service.anomaly import ALERT, SessionStats
from service.daytime import hours_grid, hours_of
from service.errors import InvalidInput
from service.metrics import Metrics
from service.predictors.base import Decoded, DecodedMany, check_event_count, fingerprint, validate
from service.predictors.jsonout import filled, numbers, rows
from service.registry import LoadedModel
from service.runner import StepResult
from service.settings import Settings

_LOG_2PI = math.log(2 * math.pi)


_EVENTS_KEYS = frozenset(("seq", "readings", "timestamps"))
_BIG = float(2**53)  # an int beyond this is left to the schema (float conversion)


# a plain step's (seq, readings, timestamps as the schema has them)
_Head = tuple[int | None, list[list[float]], list[float | str] | None]


def _number(v: object) -> bool:
    return type(v) is float or (type(v) is int and -_BIG <= v <= _BIG)


def _plain_events(
    payload: dict[str, object],
) -> _Head | None:
    """(seq, readings, timestamps) of a body that `schemas.SensorEvents` takes as it is (ints of
    timestamps become floats, as the schema makes them), without building the model; None for any
    other body (the schema then accepts it, converting, or refuses it)."""
    head = _plain_head(payload)
    if head is None or not all(type(r) is list and all(_number(v) for v in r) for r in head[1]):
        return None
    return head


def _plain_head(payload: dict[str, object], stamps_checked: bool = True) -> _Head | None:
    """`_plain_events` but for the readings' values (bulk ingest checks them all at once); with
    `stamps_checked` False, the timestamps' values too (a list of as many as readings, as given:
    `_plain_stamps` checks a group's at once)."""
    if type(payload) is not dict or not payload.keys() <= _EVENTS_KEYS:
        return None
    seq, readings, stamps = payload.get("seq"), payload.get("readings"), payload.get("timestamps")
    if not (seq is None or (type(seq) is int and seq >= 0)) or type(readings) is not list:
        return None
    if stamps is None:
        return seq, readings, None
    if type(stamps) is not list or len(stamps) != len(readings):
        return None
    if not stamps_checked:
        return seq, readings, stamps
    if not all((type(t) is str and schemas.is_text(t)) or (_number(t) and math.isfinite(t)) for t in stamps):
        return None  # the schema refuses non-finite stamps and text the answer cannot echo
    return seq, readings, [t if type(t) is str else float(t) for t in stamps]


def _plain_stamps(heads: list[_Head]) -> list[_Head] | None:
    """The heads, their timestamps unchecked, as `_plain_head` would give them (ints made floats):
    checked a group at a time (texts by one search over their join: what it looks for is one
    character, so no match spans two texts); None if it would refuse any of them."""
    stamps = [t for head in heads if head[2] is not None for t in head[2]]
    kinds = set(map(type, stamps))
    if not schemas.is_text("".join(t for t in stamps if isinstance(t, str))):
        return None
    if kinds <= {str}:
        return heads
    if not all(_number(t) and math.isfinite(t) for t in stamps if not isinstance(t, str)):  # bool, None
        return None
    if int not in kinds:
        return heads
    return [
        (seq, readings, None if given is None else [t if type(t) is str else float(t) for t in given])
        for seq, readings, given in heads
    ]


def _all_numbers(values: list[object]) -> bool:
    """`_number` of every value, at C speed in the common case (all floats)."""
    kinds = set(map(type, values))
    if kinds <= {float}:
        return True
    return kinds <= {float, int} and all(_number(v) for v in values)


def _in_range(readings: list[list[float]], raw: np.ndarray) -> bool:
    """Every value below 1e30 in magnitude (NaN is not): in Python for a request's few values (a numpy
    reduction costs microseconds), in numpy beyond."""
    if raw.size <= 16:
        return all(-1e30 < v < 1e30 for reading in readings for v in reading)
    return bool(np.abs(raw).max() < 1e30)


@dataclass(slots=True)
class _Group:
    """Plain steps with the same count of readings, as `decode_many` collects them."""

    index: list[int]
    heads: list[_Head]
    values: list[object]  # every reading's values, in order


@dataclass(slots=True, frozen=True)
class SensorContext:
    timestamps: list[float | str] | None


_NO_STAMPS = SensorContext(None)  # every step without timestamps shares it: no object per step


class SensorPredictor:
    task = "sensor"

    def __init__(self, model: LoadedModel, settings: Settings, metrics: Metrics | None = None) -> None:
        spec = model.manifest.sensor
        assert spec is not None
        self.features = list(spec.features)
        self.mu = np.asarray(spec.mean, np.float64)  # [F]
        self.sigma = np.asarray(spec.std, np.float64)  # [F]
        self.calibration = spec.calibration
        self.online = spec.normalization == "online"
        # a fixed-normalisation model was trained on this sensor's history: its calibration holds for it
        prior = None if self.online else (self.calibration.center, self.calibration.scale)
        self.session_stats = SessionStats(
            len(self.features),
            self.online,
            self.mu,
            self.sigma,
            prior,
            prior is not None and self.calibration.labelled,
        )
        self.settings = settings
        self.anomaly_counter = metrics.anomalies.labels(model.name, model.version) if metrics else None

    def decode(self, payload: dict[str, object]) -> Decoded:
        plain = _plain_events(payload)
        if plain is None:  # anything unusual: the schema decides, and words its error
            request = validate(schemas.SensorEvents, payload)
            plain = request.seq, request.readings, request.timestamps
        seq, readings, timestamps = plain
        check_event_count(len(readings), self.settings.max_events_per_request)
        width = len(self.features)
        for i, reading in enumerate(readings):
            if len(reading) != width:
                raise InvalidInput(
                    f"reading {i} has {len(reading)} values; this model takes {width} "
                    f"({', '.join(self.features)})",
                    index=i,
                    expected=width,
                    got=len(reading),
                )
        raw = np.asarray(readings, np.float64).reshape(len(readings), width)  # [T, F]
        if not _in_range(readings, raw):  # NaN compares False: take the careful path
            self._refuse_non_finite(raw)
        # online: the runner normalises with the session's running moments (service.anomaly)
        normalized = raw if self.online else ((raw - self.mu) / self.sigma).astype(np.float32)
        # each reading's hour of the day rides along as a last column, for the daily profile
        x = np.empty((len(readings), width + 1), normalized.dtype)  # [T, F + 1]
        x[:, :width], x[:, width] = normalized, hours_of(timestamps, len(readings))
        fp = 0
        if seq is not None:
            fp = fingerprint(raw.tobytes(), repr(timestamps).encode())
        context = _NO_STAMPS if timestamps is None else SensorContext(timestamps)
        return Decoded(x=x, seq=seq, fingerprint=fp, context=context)

    def _refuse_non_finite(self, raw: np.ndarray) -> None:
        """InvalidInput naming the first reading that is not finite once normalized to float32."""
        with np.errstate(over="ignore", invalid="ignore"):
            bad = ~np.isfinite(raw if self.online else ((raw - self.mu) / self.sigma).astype(np.float32))
        if not bad.any():
            return
        i, f = (int(v) for v in np.argwhere(bad)[0])
        value = json.dumps(float(raw[i, f]))  # as the client wrote it: NaN, Infinity, 1e+300
        raise InvalidInput(
            f"reading {i}, feature {self.features[f]!r}: {value} is not a finite number in range",
            index=i,
            feature=self.features[f],
        )

    def postprocess(self, outputs: list[np.ndarray], x: np.ndarray, params: np.ndarray) -> list[np.ndarray]:
        """Unused: a sensor model's runner derives its answers with `session_stats.after`, which needs the
        session statistics that this hook does not see."""
        return outputs

    def decode_many(self, payloads: Sequence[dict[str, Any]]) -> tuple[list[DecodedMany], list[int]]:
        """`decode` of many steps: each plain step's readings join one flat list per count of readings,
        checked and converted in one go; a step that is not plain, holds a reading of the wrong width,
        no reading, too many, or a value that is not finite (normalized) is left to `decode`."""
        width, limit = len(self.features), self.settings.max_events_per_request
        groups: dict[int, _Group] = {}
        rest: list[int] = []
        for n, payload in enumerate(payloads):
            head = _plain_head(payload, stamps_checked=False)  # the group's, at once, below
            steps = 0 if head is None else len(head[1])
            if head is None or not 0 < steps <= limit:
                rest.append(n)
                continue
            group = groups.get(steps)
            if group is None:
                group = groups[steps] = _Group([], [], [])
            values, mark = group.values, len(group.values)
            for reading in head[1]:
                if type(reading) is not list or len(reading) != width:
                    del values[mark:]
                    rest.append(n)
                    break
                values.extend(reading)
            else:
                group.index.append(n)
                group.heads.append(head)
        decoded = []
        for steps, group in groups.items():
            heads = _plain_stamps(group.heads)
            if heads is not None:
                group.heads = heads
            if heads is None or not _all_numbers(group.values):  # rare: which are plain
                strict = {j: _plain_events(payloads[n]) for j, n in enumerate(group.index)}
                rest.extend(n for j, n in enumerate(group.index) if strict[j] is None)
                heads = [h for h in strict.values() if h is not None]  # timestamps as the schema has them
                values = [v for head in heads for reading in head[1] for v in reading]
                group = _Group([n for j, n in enumerate(group.index) if strict[j] is not None], heads, values)
            if group.index:
                decoded.extend(self._decoded(group, steps, width, rest))
        rest.sort()
        return decoded, rest

    def _decoded(self, group: _Group, steps: int, width: int, rest: list[int]) -> list[DecodedMany]:
        raw = np.array(group.values, np.float64).reshape(len(group.index), steps, width)  # [B, T, F]
        with np.errstate(over="ignore", invalid="ignore"):  # rows out of range leave below, to `decode`
            x = raw if self.online else ((raw - self.mu) / self.sigma).astype(np.float32)
        finite = np.abs(raw).max(axis=(1, 2)) < 1e30  # as `decode`: anything else takes its careful path
        seqs = [head[0] for head in group.heads]
        stamps = [head[2] for head in group.heads]
        hours = hours_grid(stamps, steps)  # [B, T], as `decode`'s last column
        x = np.concatenate([x, hours[:, :, None].astype(x.dtype)], axis=2)  # [B, T, F + 1]
        fingerprints = [
            0 if seq is None else fingerprint(raw[j].tobytes(), repr(stamps[j]).encode())
            for j, seq in enumerate(seqs)
        ]
        many = DecodedMany(
            group.index,
            x,
            seqs,
            fingerprints,
            [_NO_STAMPS if t is None else SensorContext(t) for t in stamps],
            np.zeros(len(seqs), np.int64),
        )
        if finite.all():
            return [many]
        rest.extend(np.asarray(group.index)[~finite].tolist())
        keep = np.flatnonzero(finite).tolist()
        return [many.take(keep)] if keep else []

    def encode(self, decoded: Decoded, result: StepResult, seq_before: int) -> list[dict[str, Any]]:
        outputs, flagged = self._outputs(
            [a.tolist() for a in result.outputs], decoded.context.timestamps, seq_before == 0
        )
        if flagged and self.anomaly_counter is not None:
            self.anomaly_counter.inc(flagged)
        return outputs

    def encode_many_json(
        self, group: DecodedMany, outputs: list[np.ndarray], seq_before: list[int]
    ) -> list[bytes]:
        """`encode` of each step as the JSON orjson writes for it, from the batch's arrays: each
        field's values as JSON by one orjson pass per array (`numbers`: NaN null, as for a float), in
        columns, each event written by one %-format over its row, with no dict per event."""
        mean, std, score, probability, likelihood, surprise, alarm = outputs  # [B, T, F] x 2, [B, T] x 5
        t = score.shape[1]
        flagged = probability.reshape(-1) >= ALERT  # [N = B * T], as the columns below
        is_anomaly: list[bytes] = np.where(flagged, b"true", b"false").tolist()
        scalars = [numbers(score), numbers(probability), is_anomaly]
        scalars += [numbers(likelihood), numbers(surprise), numbers(alarm)]
        for n in [j * t for j, before in enumerate(seq_before) if before == 0]:
            flagged[n] = False  # a session's first reading: nothing was predicted, all null
            for column in scalars:
                column[n] = b"null"
        events = score.size
        vectors = [rows(a.reshape(events, a.shape[-1])) for a in (mean, std)]  # [N]: "m1,...,mF"
        columns = [*scalars, *vectors, self._timestamps_json(group.contexts, t)]
        count = int(np.count_nonzero(flagged))
        if count and self.anomaly_counter is not None:
            self.anomaly_counter.inc(count)
        return filled(_EVENT_JSON, zip(*columns, strict=True), t)

    @staticmethod
    def _timestamps_json(contexts: Sequence[SensorContext], t: int) -> list[bytes]:
        """Each event's timestamp as JSON (the request's value, null where it gave none), by event: one
        pass over them all, each distinct text written once (a bulk request's few moments)."""
        none: list[float | str | None] = [None] * t
        written: dict[str | None, bytes] = {None: b"null"}
        return [
            (written[s] if s in written else written.setdefault(s, orjson.dumps(s)))
            if s is None or type(s) is str
            else orjson.dumps(s)  # numbers as they are: 0.0 and -0.0 would be one key
            for context in contexts
            for s in (none if context.timestamps is None else context.timestamps)
        ]

    @staticmethod
    def _outputs(
        rows: Sequence[list[Any]], timestamps: list[float | str] | None, first: bool
    ) -> tuple[list[dict[str, Any]], int]:
        """One step's outputs from its rows of the derived arrays (as lists), and how many it flags;
        `first`: the step starts the session (its first reading has no prediction)."""
        predicted_mean, predicted_std, score, probability, likelihood, surprise, alarm = rows
        flagged: list[bool | None] = [p >= ALERT for p in probability]
        if first:  # nothing was predicted before a session's first reading
            score[0] = probability[0] = flagged[0] = likelihood[0] = surprise[0] = alarm[0] = None
        count = flagged.count(True)
        stamps: list[float | str | None] = [None] * len(score) if timestamps is None else list(timestamps)
        return [
            {
                "score": s,
                "probability": p,
                "is_anomaly": f,
                "likelihood": lk,
                "surprise": su,
                "alarm": al,
                "predicted_mean": m,
                "predicted_std": sd,
                "timestamp": ts,
            }
            for s, p, f, lk, su, al, m, sd, ts in zip(
                score,
                probability,
                flagged,
                likelihood,
                surprise,
                alarm,
                predicted_mean,
                predicted_std,
                stamps,
                strict=True,
            )
        ], count


# one event's output as orjson writes `_outputs`'s dicts: the six scalars, the predicted mean's and
# std's values (each one piece: `jsonout.rows`), the timestamp (JSON)
_EVENT_JSON = (
    b'{"score":%s,"probability":%s,"is_anomaly":%s,"likelihood":%s,"surprise":%s,"alarm":%s,'
    b'"predicted_mean":[%s],"predicted_std":[%s],"timestamp":%s}'
)
