"""UPerNet's head (Xiao et al., 2018): pyramid pooling on the top level, an FPN, and a fused output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct
from masklab.models.layers.resize import resize_bilinear
from masklab.models.semantic.decode_head import DecodeHead
from masklab.models.semantic.psp_head import PyramidPooling


@HEADS.register()
class UPerHead(DecodeHead):
    """Unified perceptual parsing head over several levels (``input_transform: multiple_select``).

    The coarsest level goes through pyramid pooling; every finer level gets a 1x1 lateral conv; a
    top-down pass adds each coarser map (upsampled) to the next finer one; each but the top is
    refined by a 3x3 conv; all are upsampled to the finest and fused by a 3x3 conv.

    Args:
        pool_scales: pyramid grid sizes on the coarsest level.
        **kwargs: :class:`DecodeHead` arguments; defaults ``in_index: [0, 1, 2, 3]`` and
            ``input_transform: multiple_select``.
    """

    def __init__(self, pool_scales: tuple[int, ...] = (1, 2, 3, 6), **kwargs: Any) -> None:
        kwargs.setdefault("in_index", [0, 1, 2, 3])
        kwargs.setdefault("input_transform", "multiple_select")
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, list) or len(self.in_channels) < 2:
            raise ModelError("UPerHead: needs input_transform 'multiple_select' over at least two levels")
        *fine, top = self.in_channels
        ch, norm = self.channels, self.norm
        self.psp = PyramidPooling(pool_scales, top, ch, norm, self.align_corners)
        self.psp_bottleneck = ConvNormAct(top + len(pool_scales) * ch, ch, 3, norm=norm)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, ch, 1, norm=norm) for c in fine)
        self.fpn_convs = nn.ModuleList(ConvNormAct(ch, ch, 3, norm=norm) for _ in fine)
        self.fpn_bottleneck = ConvNormAct(len(self.in_channels) * ch, ch, 3, norm=norm)

    def _resize(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return resize_bilinear(x, like.shape[-2:], self.align_corners)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the finest selected level's resolution."""
        inputs = self.transform_inputs(features)
        assert isinstance(inputs, list)
        *fine, top = inputs
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, fine, strict=True)]
        laterals.append(self.psp_bottleneck(torch.cat([top, *self.psp(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)]
        outs.append(laterals[-1])
        outs = [outs[0], *(self._resize(o, outs[0]) for o in outs[1:])]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))
