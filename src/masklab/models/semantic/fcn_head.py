"""FCN head (Long et al., 2015) as configured in MMSegmentation: a few convs, optionally fused with the input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct
from masklab.models.semantic.decode_head import DecodeHead
from masklab.models.semantic.resized_levels import ResizedLevels


@HEADS.register()
class FCNHead(DecodeHead):
    """``num_convs`` conv-norm-ReLU blocks, then (``concat_input``) a conv over [input, output].

    Args:
        num_convs: number of convs; 0 passes the input through (it must then have ``channels`` channels).
        kernel_size: kernel of every conv.
        concat_input: concatenate the input with the conv output and fuse them with one more conv.
        dilation: dilation of the ``num_convs`` convs.
        **kwargs: :class:`DecodeHead` arguments (``in_channels``, ``channels``, ``num_classes``, ...).
    """

    def __init__(
        self,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        dilation: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_convs < 0 or dilation < 1:
            raise ModelError(
                f"FCNHead: num_convs must be >= 0 and dilation >= 1, got {num_convs} and {dilation}"
            )
        if not isinstance(self.in_channels, int):
            raise ModelError(
                "FCNHead: input_transform 'multiple_select' is not supported; use resize_concat or none"
            )
        in_ch = self.in_channels
        if num_convs == 0 and in_ch != self.channels:
            raise ModelError(
                f"FCNHead: num_convs=0 needs channels == input channels ({in_ch}), got {self.channels}"
            )
        self.concat_input = concat_input
        convs: list[nn.Module] = []
        for i in range(num_convs):
            convs.append(
                ConvNormAct(
                    in_ch if i == 0 else self.channels,
                    self.channels,
                    kernel_size,
                    padding=(kernel_size // 2) * dilation,
                    dilation=dilation,
                    norm=self.norm,
                )
            )
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        self.conv_cat = (
            ConvNormAct(in_ch + self.channels, self.channels, kernel_size, norm=self.norm)
            if concat_input
            else None
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the resolution of the selected level."""
        levels = self.resized_levels(features)
        if (
            levels is not None
            and self.conv_cat is None
            and isinstance(self.convs, nn.Sequential)
            and ResizedLevels.computes(self.convs[0][0])
        ):
            first, *rest = self.convs
            feats = levels.conv_block(first)
            for block in rest:
                feats = block(feats)
            return self.cls_seg(feats)
        x = self.transform_inputs(features)
        assert isinstance(x, torch.Tensor)
        feats = self.convs(x)
        if self.conv_cat is not None:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return self.cls_seg(feats)
