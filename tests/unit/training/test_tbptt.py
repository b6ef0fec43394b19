"""The truncated-BPTT loop against independent reference computations."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from training import checkpoint
from training.config import TrainConfig
from training.data.streams import Streams
from training.distributed import DistContext
from training.model import RecurrentNet
from training.tasks.lm import lm_loss, token_streams
from training.tbptt import evaluate, fit, train_epoch

pytestmark = pytest.mark.unit
CTX = DistContext()


def _ids(n: int, vocab: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_windowed_evaluation_with_carried_state_equals_one_pass_over_each_stream(
    tiny_lm: Callable[..., RecurrentNet],
) -> None:
    model = tiny_lm().eval()
    ids = _ids(101)
    streams = token_streams(ids, 3)  # 100 pairs -> 3 streams of 34, the last one padded
    got = evaluate(model, streams, bptt=5, loss_fn=lm_loss, ctx=CTX)
    # reference: every stream in one call from the zero state, no windows at all
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(3):
            chunk = ids[b * 34 : min(100, (b + 1) * 34) + 1]
            (log_probs,), _ = model(chunk[None, :-1], model.init_state(1))
            total += float(-log_probs[0].gather(-1, chunk[1:, None]).sum())
            count += len(chunk) - 1
    assert got.targets == count == 100
    assert got.loss == pytest.approx(total / count, rel=1e-6)
    # and the check has teeth: restarting the state in every window gives a different loss
    restarted = [evaluate(model, Streams(x, y, m), 5, lm_loss, CTX) for x, y, m in streams.windows(5)]
    restarted_loss = sum(r.loss * r.targets for r in restarted) / 100
    assert restarted_loss != pytest.approx(got.loss, rel=1e-6)


def test_training_carries_detached_state_like_a_hand_written_loop(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet], quiet_config: Callable[..., TrainConfig]
) -> None:
    model = tiny_lm()
    reference = copy.deepcopy(model)
    streams = token_streams(_ids(41), 2)  # [2, 20]
    cfg = quiet_config(tmp_path, bptt=7, clip=0.0)
    train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.5), streams, lm_loss, cfg, CTX)
    # the hand-written loop: per window, loss = mean NLL over the window, SGD step, state carried detached
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    state = reference.init_state(2)
    for start in range(0, 20, 7):
        x, y = streams.inputs[:, start : start + 7], streams.targets[:, start : start + 7]
        (log_probs,), state = reference(x, tuple(s.detach() for s in state))
        loss = -log_probs.gather(-1, y[..., None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_padded_positions_contribute_nothing(tiny_lm: Callable[..., RecurrentNet]) -> None:
    model = tiny_lm()
    streams = token_streams(_ids(30), 4)  # 29 pairs in [4, 8]: 3 padded positions
    pad = streams.mask == 0
    assert int(pad.sum()) == 3
    scrambled = Streams(
        torch.where(pad, 7, streams.inputs), torch.where(pad, 5, streams.targets), streams.mask
    )

    def loss_and_grads(s: Streams) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        (log_probs,), _ = model(s.inputs, model.init_state(4))
        total, count = lm_loss((log_probs,), s.targets, s.mask)
        (total / count).backward()  # type: ignore[no-untyped-call]
        return total.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    # Padding sits at the end of a stream, so no real position ever sees a padded input.
    loss_a, grads_a = loss_and_grads(streams)
    loss_b, grads_b = loss_and_grads(scrambled)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    # reference: the same NLL summed over the real positions only
    with torch.no_grad():
        (log_probs,), _ = model(streams.inputs, model.init_state(4))
        nll = -log_probs.gather(-1, streams.targets[..., None])[..., 0]
    assert float(loss_a) == pytest.approx(float(nll[~pad].sum()), rel=1e-6)


def test_gradient_norm_is_clipped(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet], quiet_config: Callable[..., TrainConfig]
) -> None:
    def norms_seen(clip: float) -> list[float]:
        model = tiny_lm()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        seen: list[float] = []

        def record(*_: object) -> None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        opt.register_step_pre_hook(record)
        train_epoch(model, opt, token_streams(_ids(61), 2), lm_loss, quiet_config(tmp_path, clip=clip), CTX)
        return seen

    unclipped = norms_seen(0.0)
    assert max(unclipped) > 0.05  # the check would be empty otherwise
    assert max(norms_seen(0.05)) <= 0.05 * (1 + 1e-4)


def test_lr_decays_on_plateau_and_training_stops_early(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet], quiet_config: Callable[..., TrainConfig]
) -> None:
    train, valid = token_streams(_ids(200), 4), token_streams(_ids(60, seed=1), 2)
    # min_delta so large that no epoch after the first can count as progress
    cfg = quiet_config(tmp_path, epochs=10, patience=3, lr_decay=0.5, min_delta=1e9)
    result = fit(tiny_lm(), train, valid, lm_loss, cfg, CTX, {})
    assert result.stopped == "early_stop"
    assert result.epochs == 4  # one improvement, then `patience` epochs without
    assert [h["lr"] for h in result.history] == pytest.approx([cfg.lr, cfg.lr / 2, cfg.lr / 4, cfg.lr / 8])


def test_best_checkpoint_is_kept_and_restored(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet], quiet_config: Callable[..., TrainConfig]
) -> None:
    train, valid = token_streams(_ids(300), 4), token_streams(_ids(80, seed=1), 2)
    model = tiny_lm()
    result = fit(model, train, valid, lm_loss, quiet_config(tmp_path, epochs=4, patience=4), CTX, {})
    best = min(result.history, key=lambda h: h["valid_loss"])
    assert result.best_loss == pytest.approx(best["valid_loss"])
    # the model handed back holds the best weights: its validation loss is the best one
    assert evaluate(model, valid, 6, lm_loss, CTX).loss == pytest.approx(best["valid_loss"], rel=1e-6)
    saved = checkpoint.load(tmp_path / "ckpt" / checkpoint.BEST)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.model_state.items())


def test_resume_continues_to_the_same_result_as_an_uninterrupted_run(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet], quiet_config: Callable[..., TrainConfig]
) -> None:
    train, valid = token_streams(_ids(300), 4), token_streams(_ids(80, seed=1), 2)
    whole = quiet_config(tmp_path / "a", epochs=3, patience=5)
    fit(tiny_lm(dropout=0.3), train, valid, lm_loss, whole, CTX, {})
    first = quiet_config(tmp_path / "b", epochs=1, patience=5)
    fit(tiny_lm(dropout=0.3), train, valid, lm_loss, first, CTX, {})
    resumed = quiet_config(tmp_path / "b", epochs=3, patience=5, resume=True)
    fit(tiny_lm(dropout=0.3, seed=99), train, valid, lm_loss, resumed, CTX, {})
    a = checkpoint.load(tmp_path / "a" / "ckpt" / checkpoint.LAST)
    b = checkpoint.load(tmp_path / "b" / "ckpt" / checkpoint.LAST)
    assert a.progress["epoch"] == b.progress["epoch"] == 3
    assert [h["valid_loss"] for h in a.progress["history"]] == [
        h["valid_loss"] for h in b.progress["history"]
    ]
    assert all(torch.equal(v, b.model_state[k]) for k, v in a.model_state.items())


def test_wall_clock_budget_stops_cleanly_and_keeps_a_model(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet], quiet_config: Callable[..., TrainConfig]
) -> None:
    train, valid = token_streams(_ids(2000), 2), token_streams(_ids(80, seed=1), 2)
    cfg = quiet_config(tmp_path, epochs=50, budget_minutes=1e-9)
    result = fit(tiny_lm(), train, valid, lm_loss, cfg, CTX, {})
    assert result.stopped == "budget" and result.epochs == 1
    assert result.history[0]["partial"] is True
    assert (tmp_path / "ckpt" / checkpoint.BEST).is_file()
