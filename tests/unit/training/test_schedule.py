"""NT-ASGD's trigger and weight average against hand-computed cases, and inside the training loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from training import checkpoint
from training.config import TrainConfig
from training.distributed import DistContext
from training.model import RecurrentNet
from training.schedule import WeightAverage, averaging_due, make_optimizer
from training.tasks.lm import lm_loss, token_streams
from training.tbptt import evaluate, fit

pytestmark = pytest.mark.unit
CTX = DistContext()


@pytest.mark.parametrize(
    ("previous", "loss", "nonmono", "due"),
    [
        ([5.0, 4.0, 3.0], 3.5, 2, False),  # still better than the best before the last two (5.0)
        ([3.0, 4.0, 5.0], 3.5, 2, True),  # worse than 3.0, the best before the last two
        ([3.0, 4.0], 9.0, 2, False),  # not enough epochs yet: nothing lies before the last two
        ([3.0, 4.0, 5.0], 9.0, 0, False),  # 0 never averages
        ([3.0, 2.0], 2.5, 1, False),  # [3.0] is all that counts; 2.5 beats it
    ],
)
def test_averaging_starts_on_awd_lstm_s_non_monotone_criterion(
    previous: list[float], loss: float, nonmono: int, due: bool
) -> None:
    assert averaging_due(previous, loss, nonmono) is due


def test_the_average_is_the_mean_of_the_weights_after_each_step_since_the_start(
    tiny_lm: Callable[..., RecurrentNet],
) -> None:
    model = tiny_lm()
    average = WeightAverage(model)
    assert average.current() is model and average.state_dict() is None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    snapshots = []
    for step in range(4):
        if step == 1:
            average.start()  # the weights after step 0 do not count
        (log_probs,), _ = model(x, model.init_state(2))
        optimizer.zero_grad()
        log_probs.mean().neg().backward()
        optimizer.step()
        average.update()
        if step >= 1:
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    averaged = average.current().state_dict()
    for name, value in averaged.items():
        assert torch.allclose(value, torch.stack([s[name] for s in snapshots]).mean(0), atol=1e-6)
    restored = WeightAverage(tiny_lm(seed=5))
    restored.load_state_dict(average.state_dict())
    assert all(torch.equal(v, restored.current().state_dict()[k]) for k, v in averaged.items())


@pytest.mark.parametrize(("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                            ("sgd", torch.optim.SGD)])  # fmt: skip
def test_optimizer_choice(
    tmp_path: Path, name: str, kind: type, tiny_lm: Callable[..., RecurrentNet],
    quiet_config: Callable[..., TrainConfig],
) -> None:  # fmt: skip
    optimizer = make_optimizer(tiny_lm(), quiet_config(tmp_path, optimizer=name, weight_decay=0.1))
    assert type(optimizer) is kind and optimizer.param_groups[0]["weight_decay"] == 0.1


def test_training_switches_to_the_average_and_keeps_it(
    tmp_path: Path, tiny_lm: Callable[..., RecurrentNet], quiet_config: Callable[..., TrainConfig]
) -> None:
    # Validation text the training text makes ever less likely: one ascending cycle vs. its reverse.
    cycle = torch.arange(2, 20)
    train = token_streams(cycle.repeat(30), 4)
    valid = token_streams(cycle.flip(0).repeat(4), 2)
    cfg = quiet_config(tmp_path, epochs=6, patience=10, nonmono=1, lr=3e-2)
    model = tiny_lm()
    result = fit(model, train, valid, lm_loss, cfg, CTX, {})
    losses = [h["valid_loss"] for h in result.history]
    flags = [h["averaged"] for h in result.history]
    first = flags.index(True)  # the epoch after the trigger is the first validated on the average
    due = [averaging_due(losses[:e], losses[e], 1) for e in range(first)]
    assert due == [False] * (first - 1) + [True]  # the trigger fired exactly at epoch `first - 1`
    assert all(flags[first:])
    # what was validated after the switch is the average that last.pt carries (to resume with)
    average = WeightAverage(tiny_lm(seed=3))
    average.load_state_dict(checkpoint.load(tmp_path / "ckpt" / checkpoint.LAST).progress["average"])
    last = evaluate(average.current(), valid, cfg.bptt, lm_loss, CTX).loss
    assert last == pytest.approx(losses[-1], rel=1e-6)
    # the model handed back and best.pt hold what was validated best
    assert evaluate(model, valid, cfg.bptt, lm_loss, CTX).loss == pytest.approx(result.best_loss, rel=1e-6)
    saved = checkpoint.load(tmp_path / "ckpt" / checkpoint.BEST)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.model_state.items())
