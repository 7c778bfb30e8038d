"""Mask2Former pixel decoder: deformable-attention encoder over 1/32, 1/16, 1/8, then FPN to 1/4.

Input channels come from the backbone's ``feature_info`` (passed in by the model), never from a config.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.linear_relu import linear_relu
from masklab.models.layers.ms_deform_attn import MSDeformAttn
from masklab.models.layers.position_encoding import PositionEmbeddingSine
from masklab.models.layers.resize import resize_bilinear
from masklab.models.mask2former.position_cache import (
    TensorCache,
    level_reference_points,
    sine_position_tokens,
)


@dataclass
class PixelDecoderOutput:
    """What the pixel decoder hands the transformer decoder.

    Attributes:
        mask_features: (B, mask_dim, H/4, W/4) per-pixel embeddings dotted with query embeddings.
        multi_scale_features: (B, conv_dim, H_l, W_l) maps at the decoder's ``out_strides`` (32, 16, 8
            by default; low to high resolution), the memory of the masked-attention decoder.
    """

    mask_features: torch.Tensor
    multi_scale_features: list[torch.Tensor]


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, residual + LayerNorm, FFN, residual + LayerNorm."""

    def __init__(
        self, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """(B, S, d) tokens of all levels -> (B, S, d)."""
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, shapes)))
        ffn = self.linear2(self.dropout(linear_relu(self.linear1, src)))
        return self.norm2(src + self.dropout(ffn))


def _conv_gn(in_ch: int, out_ch: int, kernel: int, bias: bool, groups: int) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(groups, out_ch))


@HEADS.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder of Mask2Former.

    Args:
        in_channels: channels of the backbone maps at strides 4, 8, 16, 32 (from ``feature_info``).
        conv_dim: width of the encoder and the FPN (a multiple of ``num_groups``).
        mask_dim: width of the mask features.
        num_layers: deformable encoder layers (6 in the paper).
        num_heads: deformable attention heads.
        num_points: sampling points per head and level.
        ffn_dim: encoder FFN width (1024 in the paper).
        dropout: dropout in the encoder.
        num_groups: GroupNorm groups.
        out_strides: strides of the maps the transformer decoder attends, coarse to fine, from the
            encoder's 32, 16, 8 and the FPN output at 4 (before the mask-feature projection). The
            paper's (32, 16, 8) is the default; (16, 8, 4) lets the decoder read finer maps, for small
            inputs whose stride-32 map is a few cells.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        num_groups: int = 32,
        out_strides: Sequence[int] = (32, 16, 8),
    ) -> None:
        super().__init__()
        strides = [int(x) for x in out_strides]
        if (
            not strides
            or any(x not in (32, 16, 8, 4) for x in strides)
            or strides != sorted(set(strides), reverse=True)
        ):
            raise ModelError(
                f"pixel_decoder.out_strides: expected distinct strides from [32, 16, 8, 4], coarse to fine, got {list(out_strides)}"
            )
        self.out_strides = tuple(strides)
        if len(in_channels) != 4:
            raise ModelError(
                f"pixel_decoder.in_channels: expected 4 maps (strides 4/8/16/32), got {list(in_channels)}"
            )
        if conv_dim % num_groups or conv_dim % num_heads:
            raise ModelError(
                f"pixel_decoder.conv_dim: {conv_dim} must be divisible by num_groups {num_groups} and num_heads {num_heads}"
            )
        self.conv_dim = conv_dim
        self.mask_dim = mask_dim
        self.num_levels = 3
        # Encoder inputs ordered low -> high resolution (res5, res4, res3), as in the reference weights.
        self.input_proj = nn.ModuleList(
            _conv_gn(c, conv_dim, 1, True, num_groups) for c in reversed(in_channels[1:])
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, conv_dim))
        nn.init.normal_(self.level_embed)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, num_heads, self.num_levels, num_points, ffn_dim, dropout)
            for _ in range(num_layers)
        )
        self.lateral = _conv_gn(in_channels[0], conv_dim, 1, False, num_groups)
        self.output = _conv_gn(conv_dim, conv_dim, 3, False, num_groups)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        nn.init.xavier_uniform_(self.mask_features.weight)
        nn.init.zeros_(self.mask_features.bias)
        self.position_tokens = TensorCache(functools.partial(sine_position_tokens, self.pe_layer))
        self.reference_points = TensorCache(level_reference_points)

    def forward(self, features: Sequence[torch.Tensor]) -> PixelDecoderOutput:
        """Backbone maps (strides 4, 8, 16, 32) -> mask features and three multi-scale maps."""
        assert len(features) == 4, f"expected 4 backbone maps, got {len(features)}"
        srcs, pos, shapes = [], [], []
        for lvl, feat in enumerate(reversed(features[1:])):
            x = self.input_proj[lvl](feat)
            h, w = int(x.shape[-2]), int(x.shape[-1])
            shapes.append((h, w))
            srcs.append(x.flatten(2).transpose(1, 2))
            sine = self.position_tokens(h, w, x.dtype, x.device).expand(x.shape[0], -1, -1)
            pos.append(sine + self.level_embed[lvl].view(1, 1, -1))
        src = torch.cat(srcs, 1)
        pos_all = torch.cat(pos, 1)
        ref = self.reference_points(tuple(shapes), src.dtype, src.device)
        for layer in self.layers:
            src = layer(src, pos_all, ref, shapes)
        b = src.shape[0]
        maps, start = [], 0
        for h, w in shapes:
            maps.append(src[:, start : start + h * w].transpose(1, 2).reshape(b, self.conv_dim, h, w))
            start += h * w
        # The encoder's maps are channels-last views of the token sequence, so the stride-4 branch runs
        # channels-last too: a sum across two layouts is several times slower ((2, 256, 64, 64): 17 vs
        # 5 ms), and the benchmark model's tail (lateral, sum, output conv, mask features) took 121 ms
        # this way against 150 ms with an NCHW backbone map (1 thread).
        lateral = self.lateral(features[0].contiguous(memory_format=torch.channels_last))
        up = resize_bilinear(maps[-1], lateral.shape[-2:])
        fine = F.relu(self.output(lateral + up), inplace=True)
        by_stride = {32: maps[0], 16: maps[1], 8: maps[2], 4: fine}
        return PixelDecoderOutput(
            mask_features=self.mask_features(fine),
            multi_scale_features=[by_stride[s] for s in self.out_strides],
        )
