"""The `sensor` task: next-reading Gaussian model, trained by NLL, with an anomaly calibration.

Readings are normalized with the training split's mean and std. The model's input is the normalized
reading with missing values carried forward (0, the mean, before the first one); the target is the next
normalized reading, and missing target values are masked out of the loss.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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
from training.data.synthetic import ANOMALY_TYPES, WEEK, SensorSeries, generate
from training.distributed import DistContext
from training.export import TaskData
from training.model import RecurrentNet, gaussian_nll
from training.options import SENSOR_DEFAULTS as DEFAULTS
from training.options import add_sensor_arguments as add_arguments
from training.tasks import Prepared, model_spec

EVAL_STREAMS = 4


def carry_forward(z: np.ndarray) -> np.ndarray:
    """[N, F] with NaN -> the last seen value of that feature (0 before the first)."""
    out = z.copy()
    last = np.zeros(z.shape[1])
    for t in range(len(out)):
        missing = np.isnan(out[t])
        out[t, missing] = last[missing]
        last = out[t]
    return out


def pairs(
    series: SensorSeries, mean: np.ndarray, std: np.ndarray, normal_only: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, targets, mask), each [N-1, F]: reading t (filled) -> reading t+1 (missing masked).

    `normal_only` also masks labelled anomalies (and their return edge): the validation loss that drives
    early stopping measures how well normal behaviour is predicted, not how surprised the model is.
    """
    z = (series.values - mean) / std  # [N, F]
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
def score(model: RecurrentNet, series: list[SensorSeries], mean: np.ndarray, std: np.ndarray) -> list[Scored]:
    """Each reading's score (summed NLL under the previous step's prediction), as the service computes it."""
    parts = [pairs(s, mean, std) for s in series]
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
            if not (0 < args.valid_fraction < 1 and 0 < args.test_fraction < 1 and 2 <= a < b <= n - 2):
                raise DataError(
                    f"{args.csv}: {n} rows cannot be split {args.valid_fraction}/{args.test_fraction}"
                )
            train, one_valid, one_test = _slice(whole, 0, a), _slice(whole, a, b), _slice(whole, b, n)
            digest_source: Path = args.csv
        else:
            train, one_valid, one_test = (
                read_sensor_csv(p, args.timestamp_column, args.label_column) for p in given
            )
            digest_source = args.train_csv
        for other in (one_valid, one_test):
            if other.features != train.features:
                raise DataError(f"value columns differ between splits: {train.features} vs {other.features}")
        return train, [one_valid], [one_test], hashlib.sha256(digest_source.read_bytes()).hexdigest()
    weeks, eval_weeks = int(args.synthetic_weeks * WEEK), int(args.synthetic_eval_weeks * WEEK)
    if weeks < 2 or eval_weeks < 2 or args.synthetic_events < 0:
        raise DataError(
            "--synthetic-weeks and --synthetic-eval-weeks must be positive, --synthetic-events >= 0"
        )
    try:
        train = generate(weeks, seed=1, plant_seed=args.plant_seed, per_kind=args.synthetic_train_anomalies)
        offset = weeks
        valid, test = [], []
        for i, kind in enumerate(ANOMALY_TYPES):
            valid.append(
                generate(
                    eval_weeks,
                    seed=100 + i,
                    plant_seed=args.plant_seed,
                    offset=offset,
                    kinds=(kind,),
                    per_kind=args.synthetic_events,
                )
            )
            test.append(
                generate(
                    eval_weeks,
                    seed=200 + i,
                    plant_seed=args.plant_seed,
                    offset=offset + eval_weeks,
                    kinds=(kind,),
                    per_kind=args.synthetic_events,
                )
            )
    except ValueError as exc:
        raise DataError(f"synthetic data: {exc}") from exc
    digest = hashlib.sha256(
        f"synthetic plant {args.plant_seed}".encode() + train.values.tobytes()
    ).hexdigest()
    return train, valid, test, digest


def prepare(args: argparse.Namespace, cfg: TrainConfig, ctx: DistContext) -> Prepared:
    """Load or generate the readings, normalize them, lay out the streams; `args` from the CLI."""
    train, valid, test, fingerprint = _load(args)
    mean = np.nanmean(train.values, axis=0)  # [F]
    std = np.nanstd(train.values, axis=0)
    flat = [name for name, s in zip(train.features, std, strict=True) if not (np.isfinite(s) and s > 0)]
    if flat:
        raise DataError(
            f"feature(s) {', '.join(flat)} do not vary in the training split: nothing to normalize"
        )
    if not 0 < args.contamination < 1:
        raise DataError("--contamination must be in (0, 1)")
    features = len(train.features)
    spec = model_spec(args, "sensor", features)
    if ctx.is_main:
        print(
            f"sensor data: {len(train.values):,} training readings of {features} features "
            f"({', '.join(train.features)}), {np.isnan(train.values).mean():.2%} missing; "
            f"{len(valid)} validation and {len(test)} test stream(s) with "
            f"{sum(len(s.events) for s in valid)} / {sum(len(s.events) for s in test)} labelled anomalies",
            flush=True,
        )
    train_pairs = pairs(train, mean, std)
    valid_parts = [pairs(s, mean, std, normal_only=True) for s in valid]
    valid_inputs, valid_targets, valid_mask = (torch.cat(p) for p in zip(*valid_parts, strict=True))

    def finish(model: RecurrentNet) -> tuple[dict[str, float], TaskData]:
        metrics: dict[str, float] = {}
        valid_scored, test_scored = score(model, valid, mean, std), score(model, test, mean, std)
        for split, scored in (("valid", valid_scored), ("test", test_scored)):
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
            features=list(train.features), mean=mean.tolist(), std=std.tolist(), calibration=calibration
        )
        return metrics, TaskData(sensor=spec)

    return Prepared(
        spec=spec,
        train=batchify(*train_pairs, cfg.batch_size * ctx.world_size),
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
            "synthetic_events": args.synthetic_events,
        },
        partial_task_data={"features": list(train.features), "mean": mean.tolist(), "std": std.tolist()},
    )


__all__ = ["DEFAULTS", "Streams", "add_arguments", "prepare"]
