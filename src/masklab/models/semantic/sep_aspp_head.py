"""DeepLabV3+ (Chen et al., 2018): depthwise-separable ASPP plus a low-level decoder branch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct, NormType
from masklab.models.layers.resize import resize_bilinear
from masklab.models.semantic.aspp_head import ASPP
from masklab.models.semantic.decode_head import DecodeHead

SepASPPLayout = Literal["mmseg", "smp"]


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 conv-norm-ReLU followed by a pointwise 1x1 conv-norm-ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        dilation: dilation of the depthwise conv.
        norm: normalisation after each conv.
        inner_norm_act: norm + ReLU after the depthwise conv (MMSeg's DepthwiseSeparableConvModule);
            False = a bare bias-free depthwise conv straight into the pointwise one (smp's
            SeparableConv2d + BatchNorm + ReLU).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilation: int = 1,
        norm: NormType | None = "bn",
        inner_norm_act: bool = True,
    ) -> None:
        depthwise: nn.Module = (
            ConvNormAct(in_channels, in_channels, 3, dilation=dilation, groups=in_channels, norm=norm)
            if inner_norm_act
            else nn.Conv2d(
                in_channels,
                in_channels,
                3,
                padding=dilation,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            )
        )
        super().__init__(depthwise, ConvNormAct(in_channels, out_channels, 1, norm=norm))


@HEADS.register()
class DepthwiseSeparableASPPHead(DecodeHead):
    """DeepLabV3+: separable ASPP on a deep level, fused at the resolution of a low-level one.

    The low-level map (``c1_index``, default the first level) is projected to ``c1_channels`` with a
    1x1 conv, concatenated with the upsampled ASPP output and refined by two separable 3x3 convs.
    Its channel count comes from the backbone like every other input.

    ``layout`` picks between two published layer layouts of the same architecture:

    - ``"mmseg"`` (default, MMSeg's ``DepthwiseSeparableASPPHead``, its checkpoints load): ASPP
      fused by a 3x3 conv; separable convs with norm + ReLU after the depthwise conv; two of them
      after the concat.
    - ``"smp"`` (segmentation_models_pytorch's ``DeepLabV3PlusDecoder``): ASPP projected by a 1x1
      conv and refined by one separable conv (``aspp_refine``); separable convs without norm/ReLU
      between depthwise and pointwise; one after the concat. With ``channels=256``,
      ``c1_channels=48``, ``dilations=(1, 12, 24, 36)`` and no dropout it has exactly smp's
      parameters and FLOPs (the ASPP concat order differs: image pool first here, last in smp).

    Args:
        dilations: ASPP dilations.
        c1_channels: width of the low-level projection (48 in the paper); 0 disables the branch.
        c1_index: which level feeds the low-level branch.
        layout: "mmseg" or "smp", see above.
        **kwargs: :class:`DecodeHead` arguments.
    """

    def __init__(
        self,
        dilations: tuple[int, ...] = (1, 6, 12, 18),
        c1_channels: int = 48,
        c1_index: int = 0,
        layout: SepASPPLayout = "mmseg",
        **kwargs: Any,
    ) -> None:
        all_channels = list(kwargs.get("in_channels", []))
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, int):
            raise ModelError(
                "DepthwiseSeparableASPPHead: reads one deep tensor; set in_index to an int, or a list with "
                "input_transform resize_concat"
            )
        if c1_channels < 0:
            raise ModelError(f"DepthwiseSeparableASPPHead.c1_channels: must be >= 0, got {c1_channels}")
        if c1_channels and not -len(all_channels) <= c1_index < len(all_channels):
            raise ModelError(
                f"DepthwiseSeparableASPPHead.c1_index: {c1_index} is out of range for {len(all_channels)} levels"
            )

        if layout not in ("mmseg", "smp"):
            raise ModelError(f"DepthwiseSeparableASPPHead.layout: unknown {layout!r}; expected mmseg or smp")
        mmseg = layout == "mmseg"

        def separable(
            in_ch: int, out_ch: int, dilation: int = 1, norm: NormType | None = self.norm
        ) -> nn.Module:
            return SeparableConv(in_ch, out_ch, dilation, norm, inner_norm_act=mmseg)

        self.layout = layout
        self.aspp = ASPP(
            self.in_channels,
            self.channels,
            dilations,
            self.norm,
            self.align_corners,
            separable,
            fusion_kernel=3 if mmseg else 1,
        )
        # smp refines the 1x1-projected ASPP output once more before upsampling it.
        self.aspp_refine = None if mmseg else separable(self.channels, self.channels)
        self.c1_index = c1_index
        self.c1_bottleneck = (
            ConvNormAct(all_channels[c1_index], c1_channels, 1, norm=self.norm) if c1_channels else None
        )
        fuse = [separable(self.channels + c1_channels, self.channels)]
        if mmseg:
            fuse.append(separable(self.channels, self.channels))
        self.sep_bottleneck = nn.Sequential(*fuse)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the low-level map's resolution (or the deep one without it)."""
        x = self.transform_inputs(features)
        assert isinstance(x, torch.Tensor)
        out = self.aspp(x)
        if self.aspp_refine is not None:
            out = self.aspp_refine(out)
        if self.c1_bottleneck is not None:
            c1 = self.c1_bottleneck(features[self.c1_index])
            out = resize_bilinear(out, c1.shape[-2:], self.align_corners)
            out = torch.cat([out, c1], dim=1)
        return self.cls_seg(self.sep_bottleneck(out))
