"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

One ``grid_sample`` per level over all batch items and heads at once, (B*heads, C_head, H, W), bilinear,
zeros padding, ``align_corners=False``: the same arithmetic as the reference CUDA kernel, with no compiled
op to build and no Python loop over heads or points. This is the CPU hot spot of Mask2Former.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample values at the given locations of every level and sum them with the attention weights.

    Args:
        value: (B, S, M, Ch) values of all levels, levels concatenated along S (row-major per level).
        spatial_shapes: (H_l, W_l) per level, with sum(H_l * W_l) == S.
        sampling_locations: (B, Lq, M, L, P, 2) normalised (x, y) in [0, 1] over each level.
        attention_weights: (B, Lq, M, L, P), already softmax-ed over L * P.

    Returns:
        (B, Lq, M * Ch).
    """
    b, s, m, ch = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    assert sum(h * w for h, w in spatial_shapes) == s, "spatial shapes do not cover the value sequence"
    # Points before queries: (B, Lq, M, L, P, 2) -> (B*M, L, P, Lq, 2), so that grid_sample returns
    # (B*M, Ch, P, Lq) and the weighted sum over P reduces a non-innermost axis: contiguous rows of Lq,
    # measured 3x faster on CPU than reducing a trailing axis of size P.
    grids = (2.0 * sampling_locations - 1.0).permute(0, 2, 3, 4, 1, 5).reshape(b * m, num_levels, p, lq, 2)
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(b * m, num_levels, p, lq)
    out: torch.Tensor | None = None
    levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    for lvl, (h, w) in enumerate(spatial_shapes):
        # A contiguous (B*M, Ch, H, W) copy per level: grid_sample's CPU kernels (backward above all)
        # are several times slower on a strided view.
        value_l = levels[lvl].permute(0, 2, 3, 1).reshape(b * m, ch, h, w)
        sampled = F.grid_sample(
            value_l, grids[:, lvl], mode="bilinear", padding_mode="zeros", align_corners=False
        )
        contrib = (sampled * weights[:, lvl].unsqueeze(1)).sum(2)  # (B*M, Ch, Lq)
        out = contrib if out is None else out + contrib
    assert out is not None
    return out.reshape(b, m * ch, lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module.

    Args:
        embed_dim: model width d (divisible by ``num_heads``).
        num_heads: attention heads M.
        num_levels: feature levels L.
        num_points: sampling points P per head and level.
    """

    def __init__(
        self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on a ring of directions growing with the point index."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Attend from each query to P points per head around its reference point on every level.

        Args:
            query: (B, Lq, d) queries (with position embedding added).
            reference_points: (B, Lq, 2) or (Lq, 2) normalised (x, y) in [0, 1], shared by all levels
                (valid ratios are 1: padding is not masked, as in Mask2Former).
            value: (B, S, d) flattened features of all levels.
            spatial_shapes: (H_l, W_l) per level.

        Returns:
            (B, Lq, d).
        """
        b, lq, _ = query.shape
        m, lvl, p = self.num_heads, self.num_levels, self.num_points
        assert len(spatial_shapes) == lvl, f"{len(spatial_shapes)} levels given, module built for {lvl}"
        v = self.value_proj(value).view(b, value.shape[1], m, self.embed_dim // m)
        offsets = self.sampling_offsets(query).view(b, lq, m, lvl, p, 2)
        weights = self.attention_weights(query).view(b, lq, m, lvl * p).softmax(-1).view(b, lq, m, lvl, p)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to move in normalised coordinates.
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        ref = reference_points if reference_points.dim() == 3 else reference_points.unsqueeze(0)
        locations = ref[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn_core(v, spatial_shapes, locations, weights)
        return self.output_proj(out)
