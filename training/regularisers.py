"""Training-time regularisers of a word-level RNN (Gal & Ghahramani 2016; Merity et al. 2017, AWD-LSTM).

All of them act only while the model is in train mode and change no parameter: in eval mode (and so in
the exported ONNX graph) the model is exactly the same network without them.

- locked (variational) dropout: one mask per sequence, shared by every time step, on the core's input,
  between layers and on its output; a unit dropped in a window stays dropped for the whole window.
- embedding dropout: whole words dropped from the embedding matrix (every occurrence of a word in the
  window gets a zero vector), the rest scaled by 1 / (1 - p).
- weight drop (DropConnect): a mask on the hidden-to-hidden matrices W_hh, drawn once per forward call,
  so the recurrence itself is regularised while the fused cuDNN/oneDNN kernels still run it.

The weight-dropped core runs layer by layer through one-layer "template" modules fed the core's own
parameters with `torch.func.functional_call`: the core's parameters, names and state_dict stay as they
are (checkpoints and export unchanged), and gradients flow to them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout of x [B, T, D] with one mask [B, 1, D] for all T steps; identity when off."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p) / (1.0 - p)
    dropped: Tensor = x * mask
    return dropped


def embedding_dropout(embedding: nn.Embedding, x: Tensor, p: float, training: bool) -> Tensor:
    """Look up x [B, T] in `embedding` with whole rows (words) dropped: [B, T, E]."""
    if not training or p == 0.0:
        looked_up: Tensor = embedding(x)
        return looked_up
    weight = embedding.weight
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1.0 - p) / (1.0 - p)
    return F.embedding(x, weight * mask)


def _layer_names(layer: int) -> list[tuple[str, str]]:
    """(name in the L-layer core, name in a one-layer module) of each parameter of one layer."""
    return [(f"{kind}_l{layer}", f"{kind}_l0") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def _one_layer(core: nn.RNNBase, input_size: int) -> nn.RNNBase:
    """A one-layer module of `core`'s kind (and nonlinearity) reading `input_size` features."""
    if isinstance(core, nn.RNN):
        return nn.RNN(input_size, core.hidden_size, 1, nonlinearity=core.nonlinearity, batch_first=True)
    kind = nn.LSTM if isinstance(core, nn.LSTM) else nn.GRU
    return kind(input_size, core.hidden_size, 1, batch_first=True)


class LayerwiseCore(nn.Module):
    """Runs an L-layer nn.RNN/GRU/LSTM `core` one layer at a time with regularisers between the layers.

    Holds no parameters of its own that matter: the templates' parameters are replaced by the core's on
    every call (they exist only because functional_call needs a module to call).
    """

    def __init__(self, core: nn.RNNBase) -> None:
        super().__init__()
        self.is_lstm = isinstance(core, nn.LSTM)
        sizes = [core.input_size] + [core.hidden_size] * (core.num_layers - 1)
        # A list, not an nn.ModuleList: the templates stay out of parameters() and state_dict().
        self.templates: list[nn.RNNBase] = [_one_layer(core, size) for size in sizes]
        for template in self.templates:
            template.requires_grad_(False)

    def forward(
        self,
        core: nn.RNNBase,
        x: Tensor,
        state: tuple[Tensor, ...],
        hidden_dropout: float,
        plain_dropout: float,
        weight_drop: float,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """x [B, T, I], state ([L, B, H],...) -> (last layer's output [B, T, H], new state)."""
        finals: list[tuple[Tensor, ...]] = []
        out = x
        for layer, template in enumerate(self.templates):
            if layer > 0:  # between layers: PyTorch's own dropout (spec.dropout), then the locked one
                out = F.dropout(out, plain_dropout, training=True)
                out = locked_dropout(out, hidden_dropout, training=True)
            params = {short: getattr(core, full) for full, short in _layer_names(layer)}
            if weight_drop > 0.0:
                params["weight_hh_l0"] = F.dropout(params["weight_hh_l0"], weight_drop, training=True)
            layer_state = tuple(s[layer : layer + 1] for s in state)  # [1, B, H] each
            hx = layer_state if self.is_lstm else layer_state[0]
            out, new = functional_call(template, params, (out, hx))
            finals.append(tuple(new) if self.is_lstm else (new,))
        merged = tuple(torch.cat([f[k] for f in finals], dim=0) for k in range(len(finals[0])))  # [L, B, H]
        return out, merged
