"""Each training-only regulariser on tiny models: shape, active in train mode, off in eval, gone at export."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from training.export import export_onnx, verify_export
from training.model import REGULARISERS, Cell, ModelSpec, RecurrentNet
from training.regularisers import LayerwiseCore, embedding_dropout, locked_dropout

pytestmark = pytest.mark.unit
CELLS: tuple[Cell, ...] = ("rnn", "gru", "lstm")


def _spec(cell: Cell = "lstm", **regularisers: float) -> ModelSpec:
    base = ModelSpec(task="lm", cell=cell, input_size=8, hidden=12, layers=2, vocab_size=20)
    return dataclasses.replace(base, **regularisers)  # type: ignore[arg-type]


def _model(spec: ModelSpec, seed: int = 0) -> RecurrentNet:
    torch.manual_seed(seed)
    return RecurrentNet(spec)


def _x(batch: int = 3, steps: int = 7) -> torch.Tensor:
    return torch.randint(0, 20, (batch, steps), generator=torch.Generator().manual_seed(1))


def test_locked_dropout_keeps_one_mask_for_every_time_step() -> None:
    x = torch.ones(4, 9, 16)
    torch.manual_seed(0)
    y = locked_dropout(x, 0.5, training=True)
    assert y.shape == x.shape
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same units dropped at every step
    assert set(y.flatten().tolist()) == {0.0, 2.0}  # dropped, or scaled by 1 / (1 - p)
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)


def test_embedding_dropout_drops_whole_words() -> None:
    torch.manual_seed(0)
    embedding = nn.Embedding(50, 6)
    x = torch.arange(50).repeat(2, 3)  # [2, 150]: every word six times
    torch.manual_seed(3)
    y = embedding_dropout(embedding, x, 0.5, training=True)  # [2, 150, 6]
    assert y.shape == (2, 150, 6)
    dropped = y.abs().sum(-1) == 0  # [2, 150]
    kept_words = set(x[~dropped].tolist())
    assert 0 < len(kept_words) < 50
    assert not kept_words & set(x[dropped].tolist())  # a word is dropped everywhere or nowhere
    kept = ~dropped
    assert torch.allclose(y[kept], 2.0 * embedding(x)[kept])
    assert torch.equal(embedding_dropout(embedding, x, 0.5, training=False), embedding(x))


@pytest.mark.parametrize("cell", CELLS)
def test_layerwise_core_without_regularisers_equals_the_fused_core(cell: Cell) -> None:
    core = _model(_spec(cell)).core
    x = torch.randn(3, 5, 8)
    state = tuple(torch.randn(2, 3, 12) for _ in range(2 if cell == "lstm" else 1))
    want_out, want_state = core(x, state if cell == "lstm" else state[0])
    out, new_state = LayerwiseCore(core)(core, x, state, 0.0, 0.0, 0.0)
    assert torch.allclose(out, want_out, atol=1e-6)
    want = want_state if cell == "lstm" else (want_state,)
    for got, expected in zip(new_state, want, strict=True):
        assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_is_dropconnect_on_the_recurrent_weights(cell: Cell) -> None:
    """Train-mode output == an eval-mode copy whose W_hh carry the mask drawn from the same seed."""
    model = _model(_spec(cell, weight_drop=0.5)).train()
    x, state = _x(), model.init_state(3)
    torch.manual_seed(7)
    (got,), _ = model(x, state)
    reference = copy.deepcopy(model).eval()
    torch.manual_seed(7)  # the same draws, in the same order: layer 0's mask, then layer 1's
    with torch.no_grad():
        for layer in range(2):
            w = getattr(reference.core, f"weight_hh_l{layer}")
            w.copy_(F.dropout(w, 0.5, training=True))
    (want,), _ = reference(x, state)
    assert torch.allclose(got, want, atol=1e-5)
    (unmasked,), _ = model.eval()(x, state)
    assert not torch.allclose(got, unmasked, atol=1e-3)  # the mask changed the result
    # gradients reach the core's own weights (the templates hold none)
    model.train()
    (log_probs,), _ = model(x, state)
    log_probs.sum().backward()
    grad = model.core.get_parameter("weight_hh_l1").grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert sorted(model.state_dict()) == sorted(_model(_spec(cell)).state_dict())


@pytest.mark.parametrize("name", REGULARISERS)
def test_each_regulariser_is_active_in_training_and_off_in_eval(name: str) -> None:
    regularised = _model(_spec("lstm", **{name: 0.4}))
    plain = _model(_spec())
    plain.load_state_dict(regularised.state_dict())
    x, state = _x(), plain.init_state(3)
    with torch.no_grad():
        (want,), want_state = plain.eval()(x, state)
        (got,), got_state = regularised.eval()(x, state)
        assert torch.equal(got, want) and all(
            torch.equal(a, b) for a, b in zip(got_state, want_state, strict=True)
        )
        (trained,), _ = regularised.train()(x, state)
        assert trained.shape == want.shape == (3, 7, 20)
        assert not torch.allclose(trained, want, atol=1e-4)


def _graph(path: Path) -> Any:
    graph = onnx.load(str(path)).graph
    return graph.SerializeToString()


@pytest.mark.parametrize("cell", CELLS)
def test_all_regularisers_are_gone_at_export(tmp_path: Path, cell: Cell) -> None:
    regularised = _model(_spec(cell, **dict.fromkeys(REGULARISERS, 0.3), dropout=0.2))
    plain = _model(regularised.spec.without_regularisers())
    plain.load_state_dict(regularised.state_dict())
    export_onnx(regularised.train(), tmp_path / "regularised.onnx")  # export switches to eval itself
    export_onnx(plain, tmp_path / "plain.onnx")
    assert _graph(tmp_path / "regularised.onnx") == _graph(tmp_path / "plain.onnx")
    report = verify_export(regularised, tmp_path / "regularised.onnx")  # ORT == PyTorch, step == chunk
    assert report.checks > 0


@pytest.mark.parametrize(("name", "value"), [("weight_drop", 1.0), ("dropout_input", -0.1)])
def test_impossible_probabilities_are_refused(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        _spec("lstm", **{name: value})
    with pytest.raises(ValueError, match="embedding"):
        ModelSpec(task="sensor", cell="gru", input_size=3, hidden=4, dropout_embedding=0.1)
