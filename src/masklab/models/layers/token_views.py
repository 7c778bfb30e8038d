"""(B, C, H, W) maps as (B, H*W, C) tokens or (B, C, H*W) rows without a copy, whatever their layout.

``x.flatten(2)`` copies a channels-last (NHWC-strided) map; these return views for both layouts, so a
matrix product reads either through its transpose flag instead of a copy per use.
"""

from __future__ import annotations

import torch


def _nhwc(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def map_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major over (H, W); a view for NCHW and NHWC layouts."""
    if _nhwc(x):
        return x.permute(0, 2, 3, 1).flatten(1, 2)
    return x.flatten(2).transpose(1, 2)


def map_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*W); a view for NCHW and NHWC layouts."""
    return map_tokens(x).transpose(1, 2)
