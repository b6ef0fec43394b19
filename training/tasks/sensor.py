"""The `sensor` task: next-reading Gaussian model, trained by NLL, with an anomaly calibration.

Readings are normalized with the training split's mean and std. The model's input is the normalized
reading with missing values carried forward (0, the mean, before the first one); the target is the next
normalized reading, and missing target values are masked out of the loss.

`--fleet N` trains a one-feature fleet model instead: every sensor of N synthetic plants is a stream of
its own, normalized online by its own running mean and std exactly as the service normalizes a session of
an `online` model (service.anomaly.SessionStats: the same code), so the model learns shapes, not scales,
and serves streams it has never seen.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from service.anomaly import SCALE_FLOOR, SessionStats
from service.manifest import SensorSpec
from training.calibration import (
    Scored,
    calibrate,
    covered,
    detect,
    format_table,
    metrics_summary,
    quantile_calibration,
)
from training.config import TrainConfig
from training.data.errors import DataError
from training.data.sensor_csv import events_from_labels, read_sensor_csv
from training.data.streams import Streams, batchify, pad_sequences
from training.data.synthetic import WEEK, SensorSeries, carry_forward, generate, held_out, univariate
from training.distributed import DistContext
from training.export import TaskData
from training.model import RecurrentNet, gaussian_nll
from training.options import SENSOR_DEFAULTS as DEFAULTS
from training.options import add_sensor_arguments as add_arguments
from training.tasks import Prepared, model_spec

EVAL_STREAMS = 4


# raw readings [N, F] (NaN where missing) -> normalized readings [N, F] (NaN where missing)
Normalize = Callable[[np.ndarray], np.ndarray]


def fixed(mean: np.ndarray, std: np.ndarray) -> Normalize:
    return lambda values: (values - mean) / std


def online(values: np.ndarray) -> np.ndarray:
    """What the service feeds an `online` model for these readings, one session from its start (missing
    readings are carried forward for the running moments, as a client would have to, and stay NaN)."""
    first = np.array([col[np.isfinite(col)][0] if np.isfinite(col).any() else 0.0 for col in values.T])
    filled = carry_forward(values, first=first)
    hooks = SessionStats(values.shape[1], online=True, mean=np.zeros(1), std=np.ones(1))
    x, _ = hooks.before(filled[None], np.zeros((1, hooks.floats)))
    z: np.ndarray = x[0].astype(np.float64)
    z[np.isnan(values)] = np.nan
    return z


def pairs(
    series: SensorSeries, normalize: Normalize, normal_only: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, targets, mask), each [N-1, F]: reading t (filled) -> reading t+1 (missing masked).

    `normal_only` also masks labelled anomalies (and their return edge): the validation loss that drives
    early stopping measures how well normal behaviour is predicted, not how surprised the model is.
    """
    z = normalize(series.values)  # [N, F]
    inputs = torch.from_numpy(carry_forward(z)[:-1]).float()
    present = np.isfinite(z[1:])
    if normal_only:
        present &= ~covered(len(z), series.events)[1:, None]
    targets = torch.from_numpy(np.where(present, z[1:], 0.0)).float()
    return inputs, targets, torch.from_numpy(present).float()


def sensor_loss(outputs: tuple[Tensor, ...], targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed Gaussian NLL over present values: mean, log_var, targets, mask all [B, T, F]."""
    nll = gaussian_nll(outputs[0], outputs[1], targets)
    return torch.where(mask > 0, nll, torch.zeros_like(nll)).sum(), mask.sum()


def describe(loss: float) -> str:
    return f"{loss:.3f} nll"


@torch.no_grad()
def score(model: RecurrentNet, series: list[SensorSeries], normalize: Normalize) -> list[Scored]:
    """Each reading's score (summed NLL under the previous step's prediction), as the service computes it."""
    parts = [pairs(s, normalize) for s in series]
    streams = pad_sequences(*(list(p) for p in zip(*parts, strict=True)))  # [K, max N-1, F]
    model.eval()
    (pred_mean, log_var), _ = model(streams.inputs, model.init_state(streams.batch))
    nll = gaussian_nll(pred_mean, log_var, streams.targets).sum(-1)  # [K, T]
    complete = streams.mask.amin(-1) > 0  # the service only ever sees complete readings
    raw = torch.where(complete, nll, torch.full_like(nll, float("nan"))).double().numpy()
    return [
        Scored(np.concatenate([[np.nan], raw[i, : len(s.values) - 1]]), s.events)
        for i, s in enumerate(series)
    ]


def _slice(s: SensorSeries, a: int, b: int) -> SensorSeries:
    labels = s.labels[a:b]
    return replace(
        s,
        timestamps=s.timestamps[a:b],
        values=s.values[a:b],
        labels=labels,
        events=events_from_labels(labels, s.kinds),
    )


def _load(args: argparse.Namespace) -> tuple[SensorSeries, list[SensorSeries], list[SensorSeries], str]:
    """(train, valid streams, test streams, fingerprint)."""
    given = [args.train_csv, args.valid_csv, args.test_csv]
    if args.csv is not None or any(given):
        if args.csv is None and not all(given):
            raise DataError("--train-csv, --valid-csv and --test-csv go together")
        if args.csv is not None:
            whole = read_sensor_csv(args.csv, args.timestamp_column, args.label_column)
            n = len(whole.values)
            a = round(n * (1 - args.valid_fraction - args.test_fraction))
            b = round(n * (1 - args.test_fraction))
            test_rows = 2 if args.test_fraction > 0 else 0  # --test-fraction 0: no test split
            if not (
                0 < args.valid_fraction < 1
                and 0 <= args.test_fraction < 1
                and a >= 2
                and a + 2 <= b <= n - test_rows
            ):
                raise DataError(
                    f"{args.csv}: {n} rows cannot be split {args.valid_fraction}/{args.test_fraction} "
                    "(validation/test): each split needs 2 rows or more; change --valid-fraction "
                    "(in (0, 1)) or --test-fraction (0 for none)"
                )
            train, one_valid = _slice(whole, 0, a), _slice(whole, a, b)
            tests = [_slice(whole, b, n)] if b < n else []
            digest_source: Path = args.csv
        else:
            train, one_valid, one_test = (
                read_sensor_csv(p, args.timestamp_column, args.label_column) for p in given
            )
            tests = [one_test]
            digest_source = args.train_csv
        for other in (one_valid, *tests):
            if other.features != train.features:
                raise DataError(f"value columns differ between splits: {train.features} vs {other.features}")
        return train, [one_valid], tests, hashlib.sha256(digest_source.read_bytes()).hexdigest()
    weeks, eval_weeks = int(args.synthetic_weeks * WEEK), int(args.synthetic_eval_weeks * WEEK)
    if weeks < 2 or eval_weeks < 2 or args.synthetic_events < 0:
        raise DataError(
            "--synthetic-weeks and --synthetic-eval-weeks must be positive, --synthetic-events >= 0"
        )
    try:
        train = generate(weeks, seed=1, plant_seed=args.plant_seed, per_kind=args.synthetic_train_anomalies)
        where = (args.plant_seed, args.synthetic_weeks, args.synthetic_eval_weeks, args.synthetic_events)
        valid, test = held_out("valid", *where), held_out("test", *where)
    except ValueError as exc:
        raise DataError(f"synthetic data: {exc}") from exc
    digest = hashlib.sha256(
        f"synthetic plant {args.plant_seed}".encode() + train.values.tobytes()
    ).hexdigest()
    return train, valid, test, digest


def _moments(train: SensorSeries) -> tuple[np.ndarray, np.ndarray]:
    """The training split's mean and std [F]; a feature that does not vary gets a floor on its scale (with
    a warning): a later change of it is then a large surprise, which is what it is."""
    mean = np.nanmean(train.values, axis=0)  # [F]
    std = np.nanstd(train.values, axis=0)
    floor = np.maximum(SCALE_FLOOR * np.abs(mean), 1e-6)
    flat = [name for name, s, f in zip(train.features, std, floor, strict=True) if not s > f]
    if flat:
        print(
            f"warning: feature(s) {', '.join(flat)} (nearly) constant in the training split; their scale "
            "is floored at 0.1% of their level (1e-6 at least)",
            file=sys.stderr,
            flush=True,
        )
    return mean, np.maximum(std, floor)


def _load_fleet(
    args: argparse.Namespace,
) -> tuple[list[SensorSeries], list[SensorSeries], list[SensorSeries], str]:
    """Every sensor of `--fleet` synthetic plants as a training stream; validation and test streams from
    plants not trained on (one anomaly type per stream, as for the multi-feature model)."""
    if args.csv is not None or args.train_csv is not None:
        raise DataError("--fleet trains on synthetic plants: leave out --csv/--train-csv (or drop --fleet)")
    weeks, eval_weeks = int(args.synthetic_weeks * WEEK), int(args.synthetic_eval_weeks * WEEK)
    if weeks < 2 or eval_weeks < 2 or args.synthetic_events < 0 or args.fleet < 0:
        raise DataError("--synthetic-weeks, --synthetic-eval-weeks and --fleet must be positive")
    try:
        trains = [
            s
            for plant in range(args.fleet)
            for s in univariate(
                generate(
                    weeks, seed=1, plant_seed=args.plant_seed + plant, per_kind=args.synthetic_train_anomalies
                )
            )
        ]
        where = (args.plant_seed, args.synthetic_weeks, args.synthetic_eval_weeks, args.synthetic_events)
        valid = held_out("valid", *where, fleet=args.fleet)
        test = held_out("test", *where, fleet=args.fleet)
    except ValueError as exc:
        raise DataError(f"synthetic data: {exc}") from exc
    digest = hashlib.sha256(b"".join(s.values.tobytes() for s in trains)).hexdigest()
    return trains, valid, test, digest


def prepare(args: argparse.Namespace, cfg: TrainConfig, ctx: DistContext) -> Prepared:
    """Load or generate the readings, normalize them, lay out the streams; `args` from the CLI."""
    if args.fleet:
        trains, valid, test, fingerprint = _load_fleet(args)
        normalize: Normalize = online
        mean, std = np.zeros(1), np.ones(1)
    else:
        train, valid, test, fingerprint = _load(args)
        trains = [train]
        mean, std = _moments(train)
        normalize = fixed(mean, std)
    if not 0 < args.contamination < 1:
        raise DataError("--contamination must be in (0, 1)")
    names = trains[0].features
    features = len(names)
    spec = model_spec(args, "sensor", features)
    if ctx.is_main:
        readings = sum(len(t.values) for t in trains)
        missing = sum(int(np.isnan(t.values).sum()) for t in trains) / max(readings * features, 1)
        print(
            f"sensor data: {readings:,} training readings of {features} features in {len(trains)} stream(s) "
            f"({', '.join(names)}), {missing:.2%} missing; "
            f"{len(valid)} validation and {len(test)} test stream(s) with "
            f"{sum(len(s.events) for s in valid)} / {sum(len(s.events) for s in test)} labelled anomalies",
            flush=True,
        )
    train_parts = [pairs(t, normalize) for t in trains]
    train_pairs = [torch.cat(p) for p in zip(*train_parts, strict=True)]
    valid_parts = [pairs(s, normalize, normal_only=True) for s in valid]
    valid_inputs, valid_targets, valid_mask = (torch.cat(p) for p in zip(*valid_parts, strict=True))

    def finish(model: RecurrentNet) -> tuple[dict[str, float], TaskData]:
        metrics: dict[str, float] = {}
        valid_scored = score(model, valid, normalize)
        test_scored = score(model, test, normalize) if test else []
        for split, scored in (("valid", valid_scored), ("test", test_scored)):
            if not scored:
                continue
            values = np.concatenate([s.scores[np.isfinite(s.scores)] for s in scored])
            metrics[f"{split}_score_median"] = float(np.median(values))
        if any(s.events for s in valid_scored):
            calibration, valid_result = calibrate(valid_scored)
            print(
                f"validation calibration: threshold {calibration.center:.3f}, scale {calibration.scale:.3f}\n"
                f"{format_table(valid_result)}",
                flush=True,
            )
        else:
            calibration = quantile_calibration([s.scores for s in valid_scored], args.contamination)
            print(f"calibration (no labels): threshold {calibration.center:.3f}", flush=True)
        if any(s.events for s in test_scored):
            test_result = detect(test_scored, calibration.center)
            print(f"held-out test streams at that threshold:\n{format_table(test_result)}", flush=True)
            metrics.update(metrics_summary(test_result, "test"))
        metrics.update({k: float(v) for k, v in calibration.summary.items() if not isinstance(v, str)})
        spec = SensorSpec(
            features=list(names),
            mean=mean.tolist(),
            std=std.tolist(),
            calibration=calibration,
            normalization="online" if args.fleet else "fixed",
        )
        return metrics, TaskData(sensor=spec)

    return Prepared(
        spec=spec,
        train=batchify(train_pairs[0], train_pairs[1], train_pairs[2], cfg.batch_size * ctx.world_size),
        valid=batchify(valid_inputs, valid_targets, valid_mask, EVAL_STREAMS * ctx.world_size),
        loss_fn=sensor_loss,
        describe=describe,
        fingerprint=fingerprint,
        finish=finish,
        data_config={
            "source": "csv" if (args.csv or args.train_csv) else "synthetic",
            "csv": str(args.csv or args.train_csv or ""),
            "plant_seed": args.plant_seed,
            "synthetic_weeks": args.synthetic_weeks,
            "synthetic_eval_weeks": args.synthetic_eval_weeks,
            "synthetic_events": args.synthetic_events,
            "fleet_plants": args.fleet,
        },
        partial_task_data={"features": list(names), "mean": mean.tolist(), "std": std.tolist()},
    )


__all__ = ["DEFAULTS", "Streams", "add_arguments", "prepare"]
