"""The original Swin's window padding for timm's Swin blocks: pad to whole windows, then shift.

The original Swin (and detectron2's / Mask2Former's copy of it, and HF transformers) pads a feature map to
a multiple of the window size and then applies the cyclic shift; timm shifts first and pads after. The
two agree only where every stage's size is a multiple of the window (e.g. 224 x 224 for window 7); at
other sizes (1024 x 1024 for window 7) the padded tokens land in different windows, so weights trained
with the original order give different features under timm's. :func:`pad_windows_first` switches timm's
blocks to the original order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn


class _PadFirstSwinBlock(SwinTransformerBlock):
    """A timm Swin block whose window attention pads before the cyclic shift (the original order)."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, C = x.shape
        pad_h = (self.window_size[0] - H % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - W % self.window_size[1]) % self.window_size[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        _, Hp, Wp, _ = x.shape
        has_shift = any(self.shift_size)
        if has_shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        # The mask's regions are laid out on the padded map, as in the original.
        mask = self.get_attn_mask(x) if getattr(self, "dynamic_mask", False) else self.attn_mask
        windows = self.attn(windows, mask=mask).view(-1, self.window_size[0], self.window_size[1], C)
        x = window_reverse(windows, self.window_size, Hp, Wp)
        if has_shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


def pad_windows_first(model: nn.Module) -> int:
    """Make every timm ``SwinTransformerBlock`` in ``model`` pad before shifting; returns how many.

    The blocks keep their parameters, buffers and ``isinstance`` checks; only the class changes (a
    subclass overriding the window attention), so copies and ``state_dict`` are unaffected.
    """
    blocks = [m for m in model.modules() if type(m) is SwinTransformerBlock]
    for block in blocks:
        block.__class__ = _PadFirstSwinBlock
    return len(blocks)
