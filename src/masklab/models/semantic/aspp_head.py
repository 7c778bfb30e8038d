"""DeepLabV3's atrous spatial pyramid pooling head (Chen et al., 2017), as configured in MMSegmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct, NormType
from masklab.models.layers.resize import resize_bilinear
from masklab.models.semantic.decode_head import DecodeHead
from masklab.models.semantic.resized_levels import ResizedLevels

# (in_channels, out_channels, dilation, norm) -> a 3x3 dilated conv block.
DilatedConv = Callable[[int, int, int, NormType | None], nn.Module]


def plain_dilated_conv(in_ch: int, out_ch: int, dilation: int, norm: NormType | None) -> nn.Module:
    """A 3x3 conv-norm-ReLU with ``dilation`` ("same" padding)."""
    return ConvNormAct(in_ch, out_ch, 3, dilation=dilation, norm=norm)


class ASPP(nn.Module):
    """Image pooling + one branch per dilation (1x1 for dilation 1), concatenated and fused by a 3x3 conv.

    MMSeg fuses the ``(len(dilations) + 1) * channels`` concat with a 3x3 conv; torchvision and
    segmentation_models_pytorch project it with a 1x1 conv (``fusion_kernel=1``, 9x fewer FLOPs).

    Args:
        in_channels: input channels.
        channels: channels of every branch and of the output.
        dilations: one branch per value.
        norm: normalisation of every conv.
        align_corners: of the image-pool upsampling.
        dilated_conv: builds the 3x3 branches (plain or depthwise separable).
        fusion_kernel: kernel size of the fusing conv ``bottleneck`` (3 = MMSeg, 1 = smp).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        dilations: Sequence[int],
        norm: NormType | None,
        align_corners: bool,
        dilated_conv: DilatedConv = plain_dilated_conv,
        fusion_kernel: int = 3,
    ) -> None:
        super().__init__()
        if not dilations or any(d < 1 for d in dilations):
            raise ModelError(f"dilations: expected positive values, got {list(dilations)}")
        self.align_corners = align_corners
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvNormAct(in_channels, channels, 1, norm=norm)
        )
        self.branches = nn.ModuleList(
            ConvNormAct(in_channels, channels, 1, norm=norm)
            if d == 1
            else dilated_conv(in_channels, channels, d, norm)
            for d in dilations
        )
        if fusion_kernel not in (1, 3):
            raise ModelError(f"fusion_kernel: expected 1 or 3, got {fusion_kernel}")
        self.bottleneck = ConvNormAct((len(dilations) + 1) * channels, channels, fusion_kernel, norm=norm)

    def forward(self, x: torch.Tensor | ResizedLevels) -> torch.Tensor:
        """(B, channels, H, W) fused pyramid at the input's resolution."""
        if isinstance(x, ResizedLevels):
            if not self.reads_levels():
                return self.forward(x.concat())
            return self._forward_levels(x)
        pooled = resize_bilinear(self.image_pool(x), x.shape[-2:], self.align_corners)
        return self.bottleneck(torch.cat([pooled, *(b(x) for b in self.branches)], dim=1))

    def reads_levels(self) -> bool:
        """Whether every branch starts with a conv :meth:`ResizedLevels.conv2d` computes."""
        return all(ResizedLevels.computes(branch[0]) for branch in self.branches)

    def _forward_levels(self, levels: ResizedLevels) -> torch.Tensor:
        """:meth:`forward` of ``levels.concat()`` without building it: the same function and parameters,
        each branch's conv run level by level (:meth:`ResizedLevels.conv2d`) and the image pool's mean
        taken from the levels. On the stride-4 concatenation of MiT-B0's levels (512 channels) the
        branches then read 32 full-size channels, the other levels at their own sizes.
        """
        outs = [levels.conv_block(branch) for branch in self.branches]
        pooled = resize_bilinear(self.image_pool[1](levels.mean()), levels.size, self.align_corners)
        return self.bottleneck(torch.cat([pooled, *outs], dim=1))


@HEADS.register()
class ASPPHead(DecodeHead):
    """DeepLabV3: ASPP over one level, then the classifier.

    Args:
        dilations: ASPP dilations (MMSeg's D8 configs: 1, 12, 24, 36; output stride 16: 1, 6, 12, 18).
        **kwargs: :class:`DecodeHead` arguments.
    """

    def __init__(self, dilations: tuple[int, ...] = (1, 6, 12, 18), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, int):
            raise ModelError(
                "ASPPHead: reads one tensor; set in_index to an int, or a list with input_transform resize_concat"
            )
        self.aspp = ASPP(self.in_channels, self.channels, dilations, self.norm, self.align_corners)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the resolution of the selected level."""
        levels = self.resized_levels(features)
        if levels is not None:
            return self.cls_seg(self.aspp(levels))
        x = self.transform_inputs(features)
        assert isinstance(x, torch.Tensor)
        return self.cls_seg(self.aspp(x))
