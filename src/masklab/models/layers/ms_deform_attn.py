"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

On CPU the core reads each sampling point's four bilinear corners from one table of all value rows (every
batch item, level and head) with ``F.embedding_bag`` (fbgemm), the corner weights already multiplied by
the attention weights: one gather-and-sum per level and corner replaces ``grid_sample`` per level followed
by a weighted sum over points. Each level's map carries a one-pixel zero border and points are clamped
into it, which reproduces ``grid_sample``'s zeros padding (``align_corners=False``) without validity masks.
Gradients come from a sampled dense-dense product (per-corner weight gradients) and a sort-based
transposed gather (value gradients); ``embedding_bag``'s own backward was measured about 2x slower than
``grid_sample``'s. This is the CPU hot spot of Mask2Former; :func:`ms_deform_attn_core_grid_sample` is
the straightforward version, kept as the reference and used off CPU.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from masklab.models.layers.small_softmax import softmax_last_dim


def ms_deform_attn_core_grid_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`ms_deform_attn_core` as one ``grid_sample`` per level plus a weighted sum (the reference)."""
    b, s, m, ch = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    assert sum(h * w for h, w in spatial_shapes) == s, "spatial shapes do not cover the value sequence"
    grids = (2.0 * sampling_locations - 1.0).permute(0, 2, 3, 4, 1, 5).reshape(b * m, num_levels, p, lq, 2)
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(b * m, num_levels, p, lq)
    out: torch.Tensor | None = None
    levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    for lvl, (h, w) in enumerate(spatial_shapes):
        value_l = levels[lvl].permute(0, 2, 3, 1).reshape(b * m, ch, h, w)
        sampled = F.grid_sample(
            value_l, grids[:, lvl], mode="bilinear", padding_mode="zeros", align_corners=False
        )
        contrib = (sampled * weights[:, lvl].unsqueeze(1)).sum(2)  # (B*M, Ch, Lq)
        out = contrib if out is None else out + contrib
    assert out is not None
    return out.reshape(b, m * ch, lq).transpose(1, 2)


class _WeightedGather(torch.autograd.Function):
    """``out[n] = sum_{l, c, k} weights[l, c, n, k] * table[row[l, n, k] + corners[l, c]]``: (R, C) -> (N, C).

    ``row`` holds each sampling point's top-left corner row per level, ``corners`` the four corners'
    constant row offsets per level. The forward regroups the (L * 4, N, K) entries once into one bag per
    output row (a single ``embedding_bag``, no partial sums); the backward's transposed gather sorts
    ``row`` per level (4x fewer keys than all corners) and reuses that order for the four corners,
    whose keys differ by a constant (session 10: the 1M-key sort of the benchmark model's layer took
    ~40 of its ~100 ms forward + backward).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        table: torch.Tensor,
        weights: torch.Tensor,
        row: torch.Tensor,
        corners: torch.Tensor,
    ) -> torch.Tensor:
        levels, n, k = row.shape
        index = (row.unsqueeze(1) + corners.view(levels, 4, 1, 1)).permute(2, 0, 1, 3).reshape(n, -1)
        bag_weights = weights.view(levels * 4, n, k).permute(1, 0, 2).reshape(n, -1)
        out = F.embedding_bag(index, table, per_sample_weights=bag_weights, mode="sum")
        ctx.save_for_backward(table, bag_weights, index, row, corners)
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        table, weights, index, row, corners = ctx.saved_tensors  # type: ignore[attr-defined]
        n, bag = index.shape
        levels, _, k = row.shape
        grad_out = grad_out.contiguous()
        grad_table = grad_weights = None
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            # d out / d weights[n, e] = grad_out[n] . table[index[n, e]]: a sampled matrix product.
            crow = torch.arange(0, n * bag + 1, bag, dtype=index.dtype, device=index.device)
            zeros = weights.new_zeros(n * bag)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
                pattern = torch.sparse_csr_tensor(
                    crow, index.reshape(-1), zeros, (n, table.shape[0]), check_invariants=False
                )
                values = torch.sparse.sampled_addmm(pattern, grad_out, table.t()).values()
            grad_weights = values.view(n, levels * 4, k).permute(1, 0, 2)
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            # The transposed gather, per level and corner: entries sorted by table row (one sort per
            # level serves its four corners), then one bag per table row over grad_out.
            grad_table = torch.zeros_like(table)
            per_entry = weights.view(n, levels, 4, k)
            for lvl in range(levels):
                keys, order = torch.sort(row[lvl].reshape(-1))
                bags = torch.div(order, k, rounding_mode="floor")
                lo, hi = int(keys[0]), int(keys[-1])
                counts = torch.bincount(keys - lo, minlength=hi - lo + 1)
                offsets = counts.cumsum(0).roll(1)
                offsets[0] = 0
                for c in range(4):
                    shift = int(corners[lvl, c])
                    w = per_entry[:, lvl, c].reshape(-1).index_select(0, order)
                    part = F.embedding_bag(bags, grad_out, offsets, per_sample_weights=w, mode="sum")
                    grad_table[lo + shift : hi + shift + 1].add_(part)
        return grad_table, grad_weights, None, None


def _bordered_table(value: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, int]:
    """(B*S'*M + tail, Ch) rows of every level's (H+2, W+2) zero-bordered map, and S' (rows per item / M).

    The tail of zero rows is read, with weight 0, by corners one row past the last level's border.
    """
    b, _, m, ch = value.shape
    maps = value.split([h * w for h, w in spatial_shapes], dim=1)
    bordered = [
        F.pad(v.reshape(b, h, w, m * ch), (0, 0, 1, 1, 1, 1)).view(b, -1, m, ch)
        for v, (h, w) in zip(maps, spatial_shapes)
    ]
    rows_per_item = sum((h + 2) * (w + 2) for h, w in spatial_shapes)
    tail = value.new_zeros((max(w for _, w in spatial_shapes) + 3) * m, ch)
    return torch.cat([torch.cat(bordered, 1).view(-1, ch), tail]), rows_per_item


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
    if value.device.type != "cpu":  # the gather path was written and measured for CPU only
        return ms_deform_attn_core_grid_sample(value, spatial_shapes, sampling_locations, attention_weights)
    wh = _level_sizes(spatial_shapes, sampling_locations.dtype, value.device)
    # Work level-major, x and y planes apart: (2, L, B, Lq, M, P), so that every per-level constant
    # broadcasts over one contiguous block (a trailing size-2 or size-P broadcast is several times slower).
    # Pixel coordinates in the bordered map: grid_sample's x * W - 0.5, plus 1.
    pos = sampling_locations.permute(5, 3, 0, 1, 2, 4).contiguous() * wh + 0.5
    return _gather_core(value, spatial_shapes, pos, attention_weights)


def ms_deform_attn_offsets(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    reference_points: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`ms_deform_attn_core` at ``reference_points + offsets / (W_l, H_l)``, without forming them.

    Args:
        value: (B, S, M, Ch).
        spatial_shapes: (H_l, W_l) per level.
        reference_points: (B, Lq, 2) or (1, Lq, 2) normalised (x, y), shared by all levels.
        offsets: (B, Lq, M, L, P, 2) in pixels of each level.
        attention_weights: (B, Lq, M, L, P).

    Returns:
        (B, Lq, M * Ch).
    """
    wh = _level_sizes(spatial_shapes, offsets.dtype, value.device)
    if value.device.type != "cpu":
        locations = reference_points[:, :, None, None, None, :] + offsets / wh.view(2, -1).t()[:, None, :]
        return ms_deform_attn_core_grid_sample(value, spatial_shapes, locations, attention_weights)
    # Pixel coordinates ref * W + offset (+ 0.5 - 0.5 + 1, as in ms_deform_attn_core) straight away: the
    # normalised locations would be divided by (W, H) here only to be multiplied back in the core.
    ref = reference_points.permute(2, 0, 1)[:, None, :, :, None, None] * wh + 0.5  # (2, L, B, Lq, 1, 1)
    pos = offsets.permute(5, 3, 0, 1, 2, 4).contiguous() + ref
    return _gather_core(value, spatial_shapes, pos, attention_weights)


def _level_sizes(
    spatial_shapes: list[tuple[int, int]], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(2, L, 1, 1, 1, 1): the widths, then the heights, of the levels."""
    wh = torch.tensor([[w for _, w in spatial_shapes], [h for h, _ in spatial_shapes]], dtype=dtype)
    return wh.to(device).view(2, len(spatial_shapes), 1, 1, 1, 1)


def _gather_core(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    pos: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The core from (2, L, B, Lq, M, P) pixel coordinates in the zero-bordered maps."""
    b, s, m, ch = value.shape
    _, num_levels, _, lq, _, p = pos.shape
    assert sum(h * w for h, w in spatial_shapes) == s, "spatial shapes do not cover the value sequence"
    table, rows_per_item = _bordered_table(value, spatial_shapes)
    device = value.device
    # Clamped to [0, W + 1]: a point beyond the border reads only zeros either way, and gets no gradient
    # either way.
    wh = _level_sizes(spatial_shapes, pos.dtype, device)
    pos = torch.clamp(pos.clamp(min=0.0), max=wh + 1)
    with torch.no_grad():
        corner0 = pos.floor()
        xy = corner0.to(torch.int32)
        row_stride = [(w + 2) * m for _, w in spatial_shapes]
        int32 = {"dtype": torch.int32, "device": device}
        strides = torch.tensor(row_stride, **int32).view(num_levels, 1, 1, 1, 1)
        starts = torch.tensor([0] + [(h + 2) * (w + 2) for h, w in spatial_shapes[:-1]], **int32)
        base = (
            torch.arange(b, **int32).view(1, b, 1) * rows_per_item
            + starts.cumsum(0, dtype=torch.int32).view(-1, 1, 1)
        ) * m + torch.arange(m, **int32).view(1, 1, m)
        # Materialised (L, B, 1, M, P) so that it broadcasts over Lq as one contiguous block of M * P.
        base = base.view(num_levels, b, 1, m, 1).expand(-1, -1, -1, -1, p).contiguous()
        row = (xy[1] * strides).add_(xy[0], alpha=m).add_(base)
        # Corners (y, x) in {0, 1}^2 are constant row offsets: 0, M, (W+2)*M, (W+2)*M + M.
        offsets = torch.tensor([[0, m, rs, rs + m] for rs in row_stride], **int32)
    frac = pos - corner0
    fx, fy = frac[0], frac[1]
    attn = attention_weights.permute(3, 0, 1, 2, 4).contiguous()  # (L, B, Lq, M, P)
    wy1 = fy * attn
    wy0 = attn - wy1
    gx = 1.0 - fx
    # The four corners' products one by one: a broadcast (L, 2, 1, ...) x (L, 1, 2, ...) product reduces
    # its gradient over a size-2 middle dimension, several times slower in backward.
    weights = torch.stack([wy0 * gx, wy0 * fx, wy1 * gx, wy1 * fx], 1)  # (L, 4, B, Lq, M, P)
    weights = weights.view(num_levels * 4, b * lq * m, p).to(table.dtype)
    out = _WeightedGather.apply(table, weights, row.view(num_levels, b * lq * m, p), offsets)
    return out.view(b, lq, m * ch)


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
        weights = softmax_last_dim(self.attention_weights(query).view(b, lq, m, lvl * p)).view(
            b, lq, m, lvl, p
        )
        # Offsets are in pixels of each level: the locations are ref + offset / (W_l, H_l).
        ref = reference_points if reference_points.dim() == 3 else reference_points.unsqueeze(0)
        out = ms_deform_attn_offsets(v, spatial_shapes, ref, offsets, weights)
        return self.output_proj(out)
