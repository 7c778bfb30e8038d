"""The semantic FPN head (Kirillov et al., 2019, "Panoptic Feature Pyramid Networks")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct
from masklab.models.layers.resize import BilinearUpsample, resize_bilinear
from masklab.models.semantic.decode_head import DecodeHead


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


@HEADS.register()
class FPNHead(DecodeHead):
    """Each pyramid level is brought to the finest level's resolution by (3x3 conv, 2x upsample)
    stages, one per octave, and the levels are summed before the classifier.

    Args:
        feature_strides: stride of each selected level (e.g. an FPN neck's 4, 8, 16, 32); only the
            ratios matter, and each must be a power-of-two multiple of the first.
        **kwargs: :class:`DecodeHead` arguments; defaults ``in_index: [0, 1, 2, 3]`` and
            ``input_transform: multiple_select``.
    """

    def __init__(self, feature_strides: tuple[int, ...] = (4, 8, 16, 32), **kwargs: Any) -> None:
        kwargs.setdefault("in_index", [0, 1, 2, 3])
        kwargs.setdefault("input_transform", "multiple_select")
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, list):
            raise ModelError("FPNHead: needs input_transform 'multiple_select'")
        if len(feature_strides) != len(self.in_channels):
            raise ModelError(
                f"FPNHead.feature_strides: {len(feature_strides)} strides for {len(self.in_channels)} levels"
            )
        self.scale_heads = nn.ModuleList()
        for i, (in_ch, stride) in enumerate(zip(self.in_channels, feature_strides, strict=True)):
            octaves = math.log2(stride / feature_strides[0])
            if octaves < 0 or octaves != int(octaves):
                raise ModelError(
                    f"FPNHead.feature_strides[{i}]: {stride} is not a power-of-two multiple of {feature_strides[0]}"
                )
            layers: list[nn.Module] = []
            for k in range(max(1, int(octaves))):
                layers.append(
                    ConvNormAct(in_ch if k == 0 else self.channels, self.channels, 3, norm=self.norm)
                )
                if octaves > 0:
                    layers.append(BilinearUpsample(2, self.align_corners))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the finest selected level's resolution."""
        inputs = self.transform_inputs(features)
        assert isinstance(inputs, list)
        out = self.scale_heads[0](inputs[0])
        for i, (head, x) in enumerate(zip(self.scale_heads[1:], inputs[1:], strict=True)):
            y = head(x)
            # Sizes that are not a multiple of the output stride leave a coarse level's upsampled map a
            # pixel off the finest one; resize it onto the finest. A trace (ONNX export) records one
            # branch for every later input size, so it always resizes: at the same size a bilinear
            # resize is the identity, and a graph traced at a multiple of 32 still takes any size.
            if _tracing() or y.shape[-2:] != out.shape[-2:]:
                y = resize_bilinear(y, out.shape[-2:], self.align_corners)
            # The first sum is a new tensor (ReLU's backward reads the level-0 output); later ones
            # accumulate into it in place, saving a full-resolution buffer per level.
            out = out + y if i == 0 else out.add_(y)
        return self.cls_seg(out)
