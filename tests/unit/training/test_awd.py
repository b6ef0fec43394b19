"""AWD-LSTM's variable-length BPTT and AR/TAR, against hand computation and hand-written loops."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from training.awd import activation_penalty, draw_length, variable_windows
from training.cli import parse_args
from training.config import TrainConfig, config_from_args
from training.distributed import DistContext
from training.model import ModelSpec, RecurrentNet
from training.tasks.lm import lm_loss, token_streams
from training.tbptt import evaluate, train_epoch

pytestmark = pytest.mark.unit
CTX = DistContext()


def test_ar_and_tar_equal_the_hand_computed_terms() -> None:
    raw = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]]])  # [B=1, T=3, H=2]
    dropped = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]])
    # AR: mean of dropped^2 = (4 + 4) / 6; TAR: steps differ by (2, -2), (-3, 1): (4 + 4 + 9 + 1) / 4
    assert float(activation_penalty(raw, dropped, 2.0, 1.0)) == pytest.approx(2 * 8 / 6 + 18 / 4)
    assert float(activation_penalty(raw, dropped, 0.0, 1.0)) == pytest.approx(4.5)
    assert float(activation_penalty(raw[:, :1], dropped[:, :1], 2.0, 1.0)) == pytest.approx(2 * 4 / 2)


def test_window_lengths_follow_the_awd_distribution() -> None:
    rng = random.Random(7)
    lengths = [draw_length(70, rng) for _ in range(20_000)]
    short = [n for n in lengths if n < 52]  # N(35, 5) draws; N(70, 5) is below 52 with p ~ 1e-4
    long = [n for n in lengths if n >= 52]
    assert len(short) / len(lengths) == pytest.approx(0.05, abs=0.006)
    # int() truncates a N(mu, 5) draw: mean mu - 0.5, standard deviation sqrt(25 + 1/12)
    assert statistics.fmean(long) == pytest.approx(69.5, abs=0.15)
    assert statistics.fmean(short) == pytest.approx(34.5, abs=0.5)
    assert statistics.stdev(long) == pytest.approx(5.0, abs=0.15)
    assert min(draw_length(6, rng) for _ in range(2000)) == 5  # never below 5, even around bptt 3


def test_variable_windows_cover_every_step_once_in_order() -> None:
    streams = token_streams(torch.arange(301), 3)  # [3, 100]
    windows = list(variable_windows(streams, 12, random.Random(0)))
    assert len({x.shape[1] for x, _, _ in windows}) > 3  # the lengths do vary
    assert torch.equal(torch.cat([x for x, _, _ in windows], dim=1), streams.inputs)
    assert torch.equal(torch.cat([m for _, _, m in windows], dim=1), streams.mask)


def _lm(dropout_output: float = 0.0) -> RecurrentNet:
    torch.manual_seed(0)
    spec = ModelSpec(
        task="lm", cell="lstm", input_size=8, hidden=8, layers=2, vocab_size=20, dropout_output=dropout_output
    )
    return RecurrentNet(spec)


def _config(tmp_path: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(batch_size=2, bptt=8, clip=0.0, progress=False, checkpoint_dir=tmp_path)
    return TrainConfig(**{**base.__dict__, **changes})


def _hand_loop(
    model: RecurrentNet,
    streams_windows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    lr: Callable[[int], float],
    alpha: float = 0.0, beta: float = 0.0,
) -> None:  # fmt: skip
    """SGD on mean NLL (+ AR/TAR written out here), state carried detached, one step per window."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    state = model.init_state(2)
    for x, y, _ in streams_windows:
        out, state = model.core_features(x, tuple(s.detach() for s in state))
        (log_probs,) = model.predict(out)
        loss = -log_probs.gather(-1, y[..., None]).mean()
        loss = loss + alpha * (out**2).mean() + beta * ((out[:, 1:] - out[:, :-1]) ** 2).mean()
        opt.param_groups[0]["lr"] = lr(x.shape[1])
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()


def _same_weights(a: RecurrentNet, b: RecurrentNet) -> bool:
    return all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_variable_bptt_scales_each_steps_lr_by_its_length(tmp_path: Path) -> None:
    streams = token_streams(torch.randint(0, 20, (121,), generator=torch.Generator().manual_seed(1)), 2)
    cfg = _config(tmp_path, variable_bptt=True, seed=3)
    model, reference, unscaled = _lm(), _lm(), _lm()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    train_epoch(model, optimizer, streams, lm_loss, cfg, CTX, epoch=2)
    assert optimizer.param_groups[0]["lr"] == 0.5  # the schedule's rate is left as it was
    windows = list(variable_windows(streams, 8, random.Random(3 * 1_000_003 + 2)))
    assert len({x.shape[1] for x, _, _ in windows}) > 2
    _hand_loop(reference, windows, lambda n: 0.5 * n / 8)
    assert _same_weights(model, reference)
    _hand_loop(unscaled, windows, lambda n: 0.5)  # teeth: the same windows without the scaling differ
    assert not _same_weights(model, unscaled)


def test_ar_and_tar_join_the_training_loss_like_a_hand_written_loop(tmp_path: Path) -> None:
    streams = token_streams(torch.randint(0, 20, (49,), generator=torch.Generator().manual_seed(2)), 2)
    cfg = _config(tmp_path, ar=2.0, tar=1.0)
    model, reference, plain = _lm(), _lm(), _lm()
    stats = train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.5), streams, lm_loss, cfg, CTX)
    _hand_loop(reference, list(streams.windows(8)), lambda n: 0.5, alpha=2.0, beta=1.0)
    assert _same_weights(model, reference)
    _hand_loop(plain, list(streams.windows(8)), lambda n: 0.5)
    assert not _same_weights(model, plain)
    assert model.activations is None and not model.keep_activations  # nothing kept after the epoch
    assert stats.loss > 0  # the reported loss is the cross-entropy alone (checked in test_tbptt)


def test_the_activations_ar_sees_are_the_dropped_outputs_and_tar_the_raw_ones() -> None:
    model = _lm(dropout_output=0.5).train()
    model.keep_activations = True
    out, _ = model.core_features(torch.zeros(2, 5, dtype=torch.long), model.init_state(2))
    assert model.activations is not None
    raw, dropped = model.activations
    assert torch.equal(dropped, out) and not torch.equal(raw, dropped)
    kept = dropped != 0  # [B, T, H]: a locked mask keeps or drops a unit for every step alike
    assert torch.equal(kept, kept[:, :1].expand_as(kept)) and bool(kept.any()) and not bool(kept.all())
    assert torch.allclose(dropped[kept], 2 * raw[kept])  # the kept units scaled by 1 / (1 - 0.5)
    model.eval()
    model.activations = None
    model.core_features(torch.zeros(2, 5, dtype=torch.long), model.init_state(2))
    assert model.activations is None  # eval (and export) keeps nothing


def test_a_few_awd_epochs_reduce_the_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(
        task="lm", cell="lstm", input_size=16, hidden=16, layers=2, vocab_size=10, tied=True,
        dropout_embedding=0.05, dropout_input=0.1, dropout_hidden=0.1, dropout_output=0.1, weight_drop=0.2,
    )  # fmt: skip
    model = RecurrentNet(spec)
    streams = token_streams(torch.arange(801) % 7, 2)  # a period-7 pattern to learn
    cfg = _config(tmp_path, bptt=10, variable_bptt=True, ar=2.0, tar=1.0, clip=0.25)
    before = evaluate(model, streams, 10, lm_loss, CTX).loss
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    for epoch in range(1, 5):
        train_epoch(model, optimizer, streams, lm_loss, cfg, CTX, epoch=epoch)
    after = evaluate(model, streams, 10, lm_loss, CTX).loss
    assert after < 0.5 * before, (before, after)


def test_the_awd_recipe_turns_them_on_and_flags_still_win() -> None:
    cfg = config_from_args(parse_args(["lm", "--recipe", "awd"]), "lm")
    assert (cfg.variable_bptt, cfg.ar, cfg.tar) == (True, 2.0, 1.0)
    cfg = config_from_args(parse_args(["lm", "--recipe", "awd", "--no-variable-bptt", "--ar", "0"]), "lm")
    assert (cfg.variable_bptt, cfg.ar, cfg.tar) == (False, 0.0, 1.0)
    plain = config_from_args(parse_args(["lm"]), "lm")
    assert (plain.variable_bptt, plain.ar, plain.tar) == (False, 0.0, 0.0)
