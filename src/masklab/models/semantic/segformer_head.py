"""SegFormer's all-MLP decoder (Xie et al., 2021), as configured in MMSegmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct
from masklab.models.semantic.decode_head import DecodeHead


@HEADS.register()
class SegformerHead(DecodeHead):
    """Project every level to ``channels`` (1x1), upsample to the finest, concatenate, fuse (1x1).

    Args:
        **kwargs: :class:`DecodeHead` arguments; defaults ``in_index: [0, 1, 2, 3]`` and
            ``input_transform: multiple_select``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("in_index", [0, 1, 2, 3])
        kwargs.setdefault("input_transform", "multiple_select")
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, list):
            raise ModelError("SegformerHead: needs input_transform 'multiple_select'")
        self.projections = nn.ModuleList(
            ConvNormAct(c, self.channels, 1, norm=self.norm) for c in self.in_channels
        )
        self.fusion = ConvNormAct(len(self.in_channels) * self.channels, self.channels, 1, norm=self.norm)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the finest selected level's resolution."""
        inputs = self.transform_inputs(features)
        assert isinstance(inputs, list)
        size = inputs[0].shape[-2:]
        outs = [
            F.interpolate(proj(x), size=size, mode="bilinear", align_corners=self.align_corners)
            for proj, x in zip(self.projections, inputs, strict=True)
        ]
        return self.cls_seg(self.fusion(torch.cat(outs, dim=1)))
