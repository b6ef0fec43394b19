"""AWD-LSTM's two loop-level regularisers (Merity et al. 2017, "Regularizing and Optimizing LSTM
Language Models", sections 4.1 and 4.6), as in their code (salesforce/awd-lstm-lm, main.py).

- Variable-length BPTT: each window's length is drawn as seq_len = max(5, int(N(b, 5))) with b = bptt
  with probability 0.95 and bptt / 2 otherwise, so the window boundaries move from epoch to epoch and
  every token is, over time, at every position of a window. The learning rate of that step is scaled
  by seq_len / bptt: the loss is a mean over the window's tokens, so without the scaling tokens of
  short windows would weigh more.
- Activation regularisation (AR) alpha * mean(m_t^2) on the last layer's outputs after their dropout,
  and temporal activation regularisation (TAR) beta * mean((h_t - h_{t-1})^2) on the same outputs
  before it: they keep the activations small and slowly changing. They only add to the training loss;
  the reported losses (and validation) are the plain cross-entropy.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch import Tensor

from training.data.streams import Streams

MIN_WINDOW = 5  # the shortest window variable BPTT draws (as in AWD-LSTM's code)
HALF_PROBABILITY = 0.05  # chance that a window is drawn around bptt / 2 instead of bptt
SPREAD = 5.0  # standard deviation of the window length, in steps


def draw_length(bptt: int, rng: random.Random) -> int:
    """One window length of variable BPTT: max(5, int(N(b, 5))), b = bptt (p 0.95) or bptt / 2."""
    centre = bptt if rng.random() >= HALF_PROBABILITY else bptt / 2
    return max(MIN_WINDOW, int(rng.gauss(centre, SPREAD)))


def variable_windows(
    streams: Streams, bptt: int, rng: random.Random
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(x, y, mask) windows of drawn lengths covering `streams` once, in order, each [B, <=len, ...]."""
    start = 0
    while start < streams.length:
        end = min(start + draw_length(bptt, rng), streams.length)
        yield streams.inputs[:, start:end], streams.targets[:, start:end], streams.mask[:, start:end]
        start = end


def lr_scale(window: int, bptt: int) -> float:
    """The factor on a step's learning rate for a window of `window` steps (1 for fixed windows)."""
    return window / bptt


def activation_penalty(raw: Tensor, dropped: Tensor, alpha: float, beta: float) -> Tensor:
    """AR + TAR of the last layer's outputs [B, T, H]: `dropped` after the output dropout, `raw` before.

    Means over every element, as in AWD-LSTM (where time is the first axis; here it is the second).
    """
    penalty = alpha * dropped.pow(2).mean()
    if raw.shape[1] > 1:  # TAR needs two steps
        penalty = penalty + beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    return penalty
