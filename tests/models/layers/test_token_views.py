"""``map_tokens`` / ``map_rows``: the flatten-and-transpose values as views for NCHW and NHWC maps."""

from __future__ import annotations

import pytest
import torch

from masklab.models.layers.token_views import map_rows, map_tokens


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_values_equal_flatten_and_no_copy(layout: torch.memory_format) -> None:
    x = torch.randn(2, 5, 3, 4).contiguous(memory_format=layout)
    tokens, rows = map_tokens(x), map_rows(x)
    assert torch.equal(tokens, x.flatten(2).transpose(1, 2))
    assert torch.equal(rows, x.flatten(2))
    # Views of x's storage in both layouts (flatten(2) itself copies a channels-last map).
    assert tokens.data_ptr() == x.data_ptr() and rows.data_ptr() == x.data_ptr()
    x.add_(1.0)
    assert torch.equal(tokens, x.flatten(2).transpose(1, 2))


def test_a_channels_last_view_of_tokens_reads_back_as_the_same_tokens() -> None:
    """The pixel decoder's maps are (B, C, H, W) views of (B, H*W, C) token sequences."""
    seq = torch.randn(2, 12, 6)
    maps = seq.transpose(1, 2).reshape(2, 6, 3, 4)
    assert torch.equal(map_tokens(maps), seq)
    assert map_tokens(maps).data_ptr() == seq.data_ptr()


def test_gradients_flow_through_the_views() -> None:
    x = torch.randn(1, 3, 2, 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    (map_rows(x) * torch.arange(12.0).view(1, 3, 4)).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad.flatten(2), torch.arange(12.0).view(1, 3, 4))
