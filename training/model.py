"""The recurrent networks: a pure function of (input, state) -> (outputs, state).

As in pytorch/examples' word_language_model: `forward(x, state)` and `init_state(batch)`. The server
owns the state storage; the model only maps (x, state) to (y, state), so one graph serves single steps
(T = 1) and whole chunks (T > 1) alike.

    lm:      x int64 [B, T] -> embedding [B, T, E] -> core [B, T, H] -> (dense) -> log_probs [B, T, V]
    sensor:  x f32 [B, T, F] -------------------------> core [B, T, H] -> (dense) -> mean, log_var [B, T, F]
    state:   h [L, B, H] (and c [L, B, H] for LSTM)
    prior:   h_in[L-1] [B, H] -> (dense) -> head: the prediction for x[:, 0]
             (log_probs_in | mean_in, log_var_in)

The Elman cell is torch's `nn.RNN` with tanh: `h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`, the
textbook `tanh(U x_t + W h_{t-1} + b)` with the bias split in two (b = b_ih + b_hh).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from training.regularisers import LayerwiseCore, embedding_dropout, locked_dropout

Task = Literal["lm", "sensor"]
Cell = Literal["rnn", "gru", "lstm"]
State = tuple[Tensor, ...]

# Bounds on the predicted log-variance keep the Gaussian NLL finite early in training and on
# wildly out-of-range readings; exp(-12) is far below any normalized sensor noise.
LOG_VAR_MIN, LOG_VAR_MAX = -12.0, 12.0
REGULARISERS = ("dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output", "weight_drop")


@dataclass(frozen=True)
class ModelSpec:
    task: Task
    cell: Cell
    input_size: int  # embedding size (lm) or feature count (sensor)
    hidden: int
    layers: int = 1
    vocab_size: int = 0  # lm only
    dense: int | None = None  # optional dense layer between the core and the head
    dropout: float = 0.0
    tied: bool = False  # lm only: the output layer shares the embedding's weights
    # Training-only regularisers (see regularisers.py); the exported graph does not depend on them.
    dropout_embedding: float = 0.0  # lm only: whole words dropped from the embedding
    dropout_input: float = 0.0  # locked dropout on the core's input
    dropout_hidden: float = 0.0  # locked dropout between stacked layers
    dropout_output: float = 0.0  # locked dropout on the core's output
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden matrices

    def __post_init__(self) -> None:
        for name in ("dropout", *REGULARISERS):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.dropout_embedding and self.task != "lm":
            raise ValueError("embedding dropout needs task lm (the sensor model has no embedding)")
        if self.task == "lm" and self.vocab_size < 2:
            raise ValueError("an lm model needs vocab_size >= 2")
        if self.tied:
            head_in = self.dense or self.hidden
            if self.task != "lm" or head_in != self.input_size:
                raise ValueError(
                    f"tied embeddings need task lm and the head's input ({head_in}) "
                    f"equal to the embedding size ({self.input_size})"
                )

    @property
    def state_count(self) -> int:
        return 2 if self.cell == "lstm" else 1

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def without_regularisers(self) -> ModelSpec:
        """The same network with no dropout of any kind: what eval mode and the export compute."""
        return replace(
            self, dropout=0.0, dropout_embedding=0.0, dropout_input=0.0, dropout_hidden=0.0,
            dropout_output=0.0, weight_drop=0.0,
        )  # fmt: skip


def _core(spec: ModelSpec) -> nn.RNNBase:
    """The stacked recurrent layers; PyTorch's fused modules export to ONNX's RNN/GRU/LSTM operators."""
    dropout = spec.dropout if spec.layers > 1 else 0.0  # PyTorch applies it between layers only
    if spec.cell == "rnn":
        return nn.RNN(spec.input_size, spec.hidden, spec.layers, nonlinearity="tanh", batch_first=True,
                      dropout=dropout)  # fmt: skip
    core = nn.GRU if spec.cell == "gru" else nn.LSTM
    return core(spec.input_size, spec.hidden, spec.layers, batch_first=True, dropout=dropout)


class RecurrentNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embedding = nn.Embedding(spec.vocab_size, spec.input_size) if spec.task == "lm" else None
        self.core = _core(spec)
        # Weight drop and locked dropout between layers need the layers one at a time (training only).
        layerwise = spec.weight_drop > 0 or (spec.dropout_hidden > 0 and spec.layers > 1)
        self.layerwise = LayerwiseCore(self.core) if layerwise else None
        # AR/TAR (training/awd.py) need the last layer's outputs before and after their dropout. They are
        # kept here, not returned, because under DDP the loop must call the wrapper's forward unchanged.
        self.keep_activations = False
        self.activations: tuple[Tensor, Tensor] | None = None  # (raw, dropped) [B, T, H], train mode only
        self.drop = nn.Dropout(spec.dropout)
        head_in = spec.hidden
        self.dense: nn.Module | None = None
        if spec.dense:
            self.dense = nn.Sequential(nn.Linear(spec.hidden, spec.dense), nn.Tanh())
            head_in = spec.dense
        head_out = spec.vocab_size if spec.task == "lm" else 2 * spec.input_size
        self.head = nn.Linear(head_in, head_out)
        if spec.tied:
            assert self.embedding is not None
            self.head.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        if self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if not self.spec.tied:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)

    def init_state(self, batch: int, device: torch.device | None = None) -> State:
        shape = (self.spec.layers, batch, self.spec.hidden)  # [L, B, H]
        return tuple(torch.zeros(shape, device=device) for _ in range(self.spec.state_count))

    def core_features(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Recurrent core activations [B, T, H] (dropout applied), and the new state."""
        spec, training = self.spec, self.training
        inputs = x  # [B, T, F]
        if self.embedding is not None:
            inputs = self.drop(embedding_dropout(self.embedding, x, spec.dropout_embedding, training))
        inputs = locked_dropout(inputs, spec.dropout_input, training)  # [B, T, E|F]
        new_state: State
        if training and self.layerwise is not None:
            between = spec.dropout if spec.layers > 1 else 0.0
            out, new_state = self.layerwise(
                self.core, inputs, state, spec.dropout_hidden, between, spec.weight_drop
            )
        elif self.spec.cell == "lstm":
            out, (h, c) = self.core(inputs, (state[0], state[1]))
            new_state = (h, c)
        else:
            out, h = self.core(inputs, state[0])
            new_state = (h,)
        dropped = self.drop(locked_dropout(out, spec.dropout_output, training))  # [B, T, H]
        if training and self.keep_activations:
            self.activations = (out, dropped)
        return dropped, new_state

    def predict(self, features: Tensor) -> tuple[Tensor, ...]:
        """Head on core features [..., H]: lm (log_probs [..., V],); sensor (mean, log_var) [..., F]."""
        if self.dense is not None:
            features = self.drop(self.dense(features))
        logits = self.head(features)
        if self.spec.task == "lm":
            return (torch.log_softmax(logits, dim=-1),)
        mean, log_var = logits.chunk(2, dim=-1)
        return (mean, log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX))

    def forward(self, x: Tensor, state: State) -> tuple[tuple[Tensor, ...], State]:
        """lm: ((log_probs [B, T, V],), state); sensor: ((mean, log_var) [B, T, F] each, state)."""
        out, new_state = self.core_features(x, state)
        return self.predict(out), new_state

    def predict_from_state(self, state: State) -> tuple[Tensor, ...]:
        """The prediction made before the next event: the head on the last layer's h, [B, V|F].

        The core's output at step t is the last layer's h_t for all three cells, so this equals the
        prediction at the last position of the call that produced `state`. The service uses it to
        score the first event of a request without storing the previous prediction per session.
        """
        return self.predict(self.drop(state[0][-1]))  # [B, H] -> [B, V] or [B, F] x 2


def gaussian_nll(mean: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
    """Per-element Gaussian negative log-likelihood (the service's score sums this over features)."""
    return 0.5 * (torch.log(torch.tensor(2 * torch.pi)) + log_var + (target - mean) ** 2 / log_var.exp())
