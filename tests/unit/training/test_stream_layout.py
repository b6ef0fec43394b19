"""Stream layout: batchify's B contiguous streams with padding, and window slicing."""

from __future__ import annotations

import math

import pytest
import torch

from training.data.streams import batchify, pad_sequences

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("n", "streams"), [(10, 3), (12, 4), (5, 8), (1, 1)])
def test_batchify_lays_pairs_out_contiguously_with_padding(n: int, streams: int) -> None:
    x = torch.arange(n)
    layout = batchify(x, x + 100, torch.ones(n), streams)
    length = max(1, math.ceil(n / streams))
    assert layout.inputs.shape == (streams, length)
    for b in range(streams):
        for t in range(length):
            i = b * length + t  # the pair that belongs at stream b, step t
            if i < n:
                assert layout.inputs[b, t] == i and layout.targets[b, t] == i + 100 and layout.mask[b, t] == 1
            else:
                assert layout.mask[b, t] == 0
    # every pair appears exactly once
    assert sorted(layout.inputs[layout.mask > 0].tolist()) == list(range(n))


def test_windows_cover_the_time_axis_in_order() -> None:
    x = torch.arange(20)
    layout = batchify(x, x, torch.ones(20), 2)  # [2, 10]
    windows = list(layout.windows(4))
    assert [w[0].shape[1] for w in windows] == [4, 4, 2]
    assert layout.window_count(4) == 3
    assert torch.equal(torch.cat([w[0] for w in windows], dim=1), layout.inputs)


def test_pad_sequences_keeps_features_and_masks_the_tail() -> None:
    a, b = torch.ones(3, 2), torch.full((5, 2), 2.0)
    s = pad_sequences([a, b], [a, b], [torch.ones(3, 2), torch.ones(5, 2)])
    assert s.inputs.shape == (2, 5, 2)
    assert s.mask[0, 3:].sum() == 0 and s.mask[1].sum() == 10


def test_select_gives_each_rank_its_own_streams() -> None:
    x = torch.arange(16)
    layout = batchify(x, x, torch.ones(16), 4)
    r0, r1 = layout.select(0, 2), layout.select(2, 2)
    assert set(r0.inputs.flatten().tolist()).isdisjoint(r1.inputs.flatten().tolist())
    assert torch.equal(torch.cat([r0.inputs, r1.inputs]), layout.inputs)
