"""Feature pyramid network neck (Lin et al., 2017), as configured in MMSegmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import NECKS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct, NormType


@NECKS.register()
class FPN(nn.Module):
    """1x1 laterals, a top-down pass (nearest upsampling + add) and 3x3 output convs.

    ``output_convs=False`` drops the 3x3 output convs and returns the summed laterals: the layout of
    segmentation_models_pytorch's FPN decoder (its pyramid ``p2..p5``), which spends about half
    the FLOPs of MMSeg's on ResNet-18 at stride 4 (the stride-4 output conv alone is 256x256x3x3).

    Args:
        in_channels: channels of every backbone level (derived and passed by the segmentor).
        out_channels: width of every output map.
        num_outs: number of outputs; more than the used levels adds stride-2 max-pooled maps on top.
        start_level: first backbone level used.
        end_level: last backbone level used (inclusive); -1 = the last one.
        norm: normalisation of the convs (MMSeg's FPN has none by default).
        output_convs: a 3x3 conv on every used level after the top-down pass (MMSeg, the paper);
            False = no output convs and no ``fpn_convs`` parameters (smp's layout).
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        num_outs: int | None = None,
        start_level: int = 0,
        end_level: int = -1,
        norm: NormType | None = None,
        output_convs: bool = True,
    ) -> None:
        super().__init__()
        n = len(in_channels)
        end = n - 1 if end_level == -1 else end_level
        if not 0 <= start_level <= end < n:
            raise ModelError(
                f"neck: start_level {start_level} / end_level {end_level} do not select levels of 0..{n - 1}"
            )
        used = end - start_level + 1
        num_outs = used if num_outs is None else num_outs
        if num_outs < used:
            raise ModelError(f"neck.num_outs: {num_outs} is fewer than the {used} levels used")
        self.start_level = start_level
        self.end_level = end
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(in_channels[i], out_channels, 1, norm=norm, act=None)
            for i in range(start_level, end + 1)
        )
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, act=None)
            for _ in range(used if output_convs else 0)
        )
        #: one entry per output map, for the heads that read them.
        self.out_channels = [out_channels] * num_outs

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``num_outs`` maps of ``out_channels`` channels, fine to coarse."""
        feats = features[self.start_level : self.end_level + 1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            # In place: the lateral is a fresh conv output that nothing else reads, and the add's
            # backward needs neither operand, so this saves a full-size buffer per level.
            laterals[i - 1].add_(F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"))
        if self.fpn_convs:
            outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]
        else:
            outs = laterals
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
