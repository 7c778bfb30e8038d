"""PSPNet's pyramid pooling head (Zhao et al., 2017), as configured in MMSegmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct, NormType
from masklab.models.layers.resize import resize_bilinear
from masklab.models.semantic.decode_head import DecodeHead


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` that also exports to ONNX with dynamic height and width.

    ONNX has no adaptive pooling; during export the same bins (``floor(i * H / s)`` to
    ``ceil((i + 1) * H / s)``) are summed from an integral image, which traces with free sizes.
    """
    if size == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    if not torch.onnx.is_in_onnx_export():
        return F.adaptive_avg_pool2d(x, size)
    h, w = x.shape[-2:]
    integral = F.pad(x.cumsum(2).cumsum(3), (1, 0, 1, 0))
    idx = torch.arange(size, device=x.device)
    hs, he = (idx * h) // size, ((idx + 1) * h + size - 1) // size
    ws, we = (idx * w) // size, ((idx + 1) * w + size - 1) // size

    def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return integral.index_select(2, rows).index_select(3, cols)

    total = corner(he, we) - corner(hs, we) - corner(he, ws) + corner(hs, ws)
    area = ((he - hs).view(-1, 1) * (we - ws).view(1, -1)).to(x.dtype)
    return total / area


class PyramidPooling(nn.Module):
    """Average-pool the input to each ``pool_scales`` grid, project with a 1x1 conv, upsample back.

    Args:
        pool_scales: output grid sizes of the adaptive average pools.
        in_channels: input channels.
        channels: output channels of every branch.
        norm: normalisation of the 1x1 convs.
        align_corners: of the upsampling.
    """

    def __init__(
        self,
        pool_scales: Sequence[int],
        in_channels: int,
        channels: int,
        norm: NormType | None,
        align_corners: bool,
    ) -> None:
        super().__init__()
        if not pool_scales or any(s < 1 for s in pool_scales):
            raise ModelError(f"pool_scales: expected positive grid sizes, got {list(pool_scales)}")
        self.align_corners = align_corners
        self.pool_scales = tuple(pool_scales)
        self.branches = nn.ModuleList(ConvNormAct(in_channels, channels, 1, norm=norm) for _ in pool_scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (B, channels, H, W) map per scale, at the input's resolution."""
        size = x.shape[-2:]
        return [
            resize_bilinear(branch(adaptive_avg_pool(x, s)), size, self.align_corners)
            for s, branch in zip(self.pool_scales, self.branches, strict=True)
        ]


@HEADS.register()
class PSPHead(DecodeHead):
    """Pyramid pooling over one level, concatenated with it and fused by a 3x3 conv.

    Args:
        pool_scales: grid sizes of the pyramid (MMSeg: 1, 2, 3, 6).
        **kwargs: :class:`DecodeHead` arguments (``in_channels``, ``channels``, ``num_classes``, ...).
    """

    def __init__(self, pool_scales: tuple[int, ...] = (1, 2, 3, 6), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, int):
            raise ModelError(
                "PSPHead: reads one tensor; set in_index to an int, or a list with input_transform resize_concat"
            )
        self.psp = PyramidPooling(pool_scales, self.in_channels, self.channels, self.norm, self.align_corners)
        self.bottleneck = ConvNormAct(
            self.in_channels + len(pool_scales) * self.channels, self.channels, 3, norm=self.norm
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the resolution of the selected level."""
        x = self.transform_inputs(features)
        assert isinstance(x, torch.Tensor)
        return self.cls_seg(self.bottleneck(torch.cat([x, *self.psp(x)], dim=1)))
