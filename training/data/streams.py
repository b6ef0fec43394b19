"""Lay a sequence out as B parallel streams for truncated BPTT, with padding masks.

A sequence of N (input, target) pairs, t = 0..N-1 (lm: x_t = token t, y_t = token t+1; sensor:
x_t = reading t, y_t = reading t+1), is cut into B contiguous streams of L = ceil(N / B) pairs. The
last streams are padded with mask 0, so no pair is dropped and none is seen twice::

    N = 10, B = 3, L = 4                        windows of bptt = 2 (time runs left to right)
    stream 0:  x0 x1 x2 x3                      | x0 x1 | x2 x3 |   state of stream 0 flows
    stream 1:  x4 x5 x6 x7          ->          | x4 x5 | x6 x7 |   from window k into k+1,
    stream 2:  x8 x9 __ __                      | x8 x9 | __ __ |   detached between windows
                     (__ = padding, mask 0)

Tensors are batch first like the model: inputs [B, L] (lm) or [B, L, F] (sensor).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Streams:
    inputs: Tensor  # [B, L] int64 | [B, L, F] float32
    targets: Tensor  # same shape as inputs: what comes after each input
    mask: Tensor  # [B, L] | [B, L, F] float32: 1 where the target counts in the loss, 0 for padding

    @property
    def batch(self) -> int:
        return self.inputs.shape[0]

    @property
    def length(self) -> int:
        return self.inputs.shape[1]

    def windows(self, bptt: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(x, y, mask) for consecutive windows of up to `bptt` steps, each [B, <=bptt, ...]."""
        for start in range(0, self.length, bptt):
            end = min(start + bptt, self.length)
            yield self.inputs[:, start:end], self.targets[:, start:end], self.mask[:, start:end]

    def window_count(self, bptt: int) -> int:
        return math.ceil(self.length / bptt)

    def select(self, first: int, count: int) -> Streams:
        """Streams first..first+count-1 (one rank's share under DistributedDataParallel)."""
        part = slice(first, first + count)
        return Streams(self.inputs[part], self.targets[part], self.mask[part])


def pad_sequences(inputs: list[Tensor], targets: list[Tensor], masks: list[Tensor]) -> Streams:
    """Variable-length sequences [N_i, ...] -> Streams [len(list), max N_i, ...], padded with mask 0."""
    if not inputs:
        raise ValueError("no sequences to lay out")
    longest = max(x.shape[0] for x in inputs)

    def pad(parts: list[Tensor]) -> Tensor:
        out = parts[0].new_zeros((len(parts), longest, *parts[0].shape[1:]))  # [B, L, ...]
        for i, part in enumerate(parts):
            out[i, : part.shape[0]] = part
        return out

    return Streams(pad(inputs), pad(targets), pad(masks))


def batchify(inputs: Tensor, targets: Tensor, mask: Tensor, streams: int) -> Streams:
    """One sequence of N pairs (inputs/targets/mask [N, ...]) -> `streams` padded streams (see above)."""
    if streams < 1:
        raise ValueError("need at least one stream")
    n = inputs.shape[0]
    length = max(1, math.ceil(n / streams))
    cuts = [(b * length, min(n, (b + 1) * length)) for b in range(streams)]
    return pad_sequences(
        [inputs[a:z] for a, z in cuts], [targets[a:z] for a, z in cuts], [mask[a:z] for a, z in cuts]
    )
