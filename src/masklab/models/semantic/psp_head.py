"""PSPNet's pyramid pooling head (Zhao et al., 2017), as configured in MMSegmentation."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import HEADS
from masklab.errors import ModelError
from masklab.models.layers.conv_module import ConvNormAct, NormType
from masklab.models.layers.resize import interpolation_weights, resize_bilinear
from masklab.models.semantic.decode_head import DecodeHead
from masklab.models.semantic.resized_levels import ResizedLevels


def _bin_edges(length: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive pooling's bins over ``length``: ``floor(i * L / s)`` to ``ceil((i + 1) * L / s)``."""
    idx = torch.arange(size, device=device)
    return (idx * length) // size, ((idx + 1) * length + size - 1) // size


def _bin_matrix(length: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """(size, length) averaging matrix of the bins of :func:`_bin_edges`."""
    start, end = _bin_edges(length, size, like.device)
    pos = torch.arange(length, device=like.device)
    inside = (pos >= start[:, None]) & (pos < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def _pool_grid(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows @ x @ cols^T`` for (B, C, H, W) ``x``, (n, H) ``rows`` and (n, W) ``cols``, in the
    input's memory layout (no NCHW copy of a channels-last map): (B, C, n, n)."""
    b, c, h, w = x.shape
    n = rows.shape[0]
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return rows @ x @ cols.T
    nhwc = x.permute(0, 2, 3, 1)  # a contiguous (B, H, W, C) view
    pooled_rows = torch.matmul(rows, nhwc.reshape(b, h, w * c))  # (B, n, W * C)
    cells = torch.matmul(cols, pooled_rows.reshape(b * n, w, c))  # (B * n, n, C)
    return cells.reshape(b, n, n, c).permute(0, 3, 1, 2)


def _split_grid(grid: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """The per-size diagonal blocks of a grid pooled with the bin matrices of ``sizes`` stacked."""
    starts = [0, *itertools.accumulate(sizes)]
    return [grid[:, :, a : a + s, a : a + s] for a, s in zip(starts, sizes, strict=False)]


def _stacked_bins(length: int, sizes: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.cat([_bin_matrix(length, s, like) for s in sizes])


def _matmul_pool(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Adaptive average pooling to every size in one pass: ``M_h @ x @ M_w^T`` with the bin matrices
    of all sizes stacked (:func:`_pool_grid`).

    The map is read once for all sizes (forward and backward); the second product computes the
    cross-size cells too, which on the pooled rows costs little.
    """
    h, w = x.shape[-2:]
    return _split_grid(_pool_grid(x, _stacked_bins(h, sizes, x), _stacked_bins(w, sizes, x)), sizes)


def levels_adaptive_avg_pools(levels: ResizedLevels, sizes: Sequence[int]) -> list[torch.Tensor]:
    """``adaptive_avg_pools(levels.concat(), sizes)`` without building the concatenation.

    Pooling a resized level is one linear map per axis: the stacked bin matrices times the level's
    1-D interpolation matrix, applied to the level at its own size (:func:`_pool_grid`). CPU only,
    as :func:`adaptive_avg_pools`' matrix path (``DecodeHead.resized_levels`` hands out levels on
    the CPU alone).
    """
    first = levels.levels[0]
    out_h, out_w = levels.size
    bins_h, bins_w = _stacked_bins(out_h, sizes, first), _stacked_bins(out_w, sizes, first)
    grids = []
    for level in levels.levels:
        h, w = level.shape[-2:]
        rows = (
            bins_h @ interpolation_weights(h, out_h, levels.align_corners, level.dtype)
            if h != out_h
            else bins_h
        )
        cols = (
            bins_w @ interpolation_weights(w, out_w, levels.align_corners, level.dtype)
            if w != out_w
            else bins_w
        )
        grids.append(_pool_grid(level, rows, cols))
    return _split_grid(torch.cat(grids, dim=1), sizes)


def _integral_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling summed from an integral image (traces to ONNX with free sizes)."""
    h, w = x.shape[-2:]
    integral = F.pad(x.cumsum(2).cumsum(3), (1, 0, 1, 0))
    hs, he = _bin_edges(h, size, x.device)
    ws, we = _bin_edges(w, size, x.device)

    def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return integral.index_select(2, rows).index_select(3, cols)

    total = corner(he, we) - corner(hs, we) - corner(he, ws) + corner(hs, ws)
    area = ((he - hs).view(-1, 1) * (we - ws).view(1, -1)).to(x.dtype)
    return total / area


def adaptive_avg_pools(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """``[F.adaptive_avg_pool2d(x, s) for s in sizes]``, faster on CPU and exportable to ONNX.

    On CPU all sizes are two matrix products in the input's layout: pooling a (8, 512, 32, 32)
    channels-last map to 1/2/3/6 and back-propagating costs ~10 ms instead of ~150 (1 thread). Other
    devices keep ``adaptive_avg_pool2d`` (exact fp32 there, where a matrix product may run in TF32).
    ONNX has no adaptive pooling; during export the same bins (:func:`_bin_edges`) are summed from
    an integral image, which traces with free sizes.
    """
    if torch.onnx.is_in_onnx_export():
        return [x.mean(dim=(2, 3), keepdim=True) if s == 1 else _integral_pool(x, s) for s in sizes]
    if x.device.type != "cpu":
        return [F.adaptive_avg_pool2d(x, s) for s in sizes]
    return _matmul_pool(x, sizes)


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

    def pooled(self, x: torch.Tensor | ResizedLevels) -> list[torch.Tensor]:
        """One (B, channels, s, s) map per scale ``s``, before the upsampling."""
        if isinstance(x, ResizedLevels):
            pools = levels_adaptive_avg_pools(x, self.pool_scales)
        else:
            pools = adaptive_avg_pools(x, self.pool_scales)
        return [branch(pool) for pool, branch in zip(pools, self.branches, strict=True)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (B, channels, H, W) map per scale, at the input's resolution."""
        return [resize_bilinear(p, x.shape[-2:], self.align_corners) for p in self.pooled(x)]


@HEADS.register()
class PSPHead(DecodeHead):
    """Pyramid pooling over one level, concatenated with it and fused by a 3x3 conv.

    Args:
        pool_scales: grid sizes of the pyramid (MMSeg: 1, 2, 3, 6).
        bottleneck_kernel_size: kernel of the fusing conv (MMSeg: 3, not configurable there); 1 makes
            the head affordable on a stride-4 input, as FCNHead's ``kernel_size`` does for MMSeg's
            HRNet configs.
        **kwargs: :class:`DecodeHead` arguments (``in_channels``, ``channels``, ``num_classes``, ...).
    """

    def __init__(
        self, pool_scales: tuple[int, ...] = (1, 2, 3, 6), bottleneck_kernel_size: int = 3, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if bottleneck_kernel_size < 1 or bottleneck_kernel_size % 2 == 0:
            raise ModelError(
                f"PSPHead: bottleneck_kernel_size: expected an odd size >= 1, got {bottleneck_kernel_size}"
            )
        if not isinstance(self.in_channels, int):
            raise ModelError(
                "PSPHead: reads one tensor; set in_index to an int, or a list with input_transform resize_concat"
            )
        self.psp = PyramidPooling(pool_scales, self.in_channels, self.channels, self.norm, self.align_corners)
        self.bottleneck = ConvNormAct(
            self.in_channels + len(pool_scales) * self.channels,
            self.channels,
            bottleneck_kernel_size,
            norm=self.norm,
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, out_channels, h, w) logits at the resolution of the selected level."""
        if self.bottleneck[0].kernel_size == (1, 1):
            levels = self.resized_levels(features)
            x_or_levels = self.transform_inputs(features) if levels is None else levels
            assert not isinstance(x_or_levels, list)
            return self.cls_seg(self._pointwise_bottleneck(x_or_levels))
        x = self.transform_inputs(features)
        assert isinstance(x, torch.Tensor)
        return self.cls_seg(self.bottleneck(torch.cat([x, *self.psp(x)], dim=1)))

    def _pointwise_bottleneck(self, x: torch.Tensor | ResizedLevels) -> torch.Tensor:
        """``bottleneck(cat([x, *psp(x)]))`` for a 1x1 bottleneck, without the concatenation.

        A 1x1 conv is linear in its input channels and a bilinear resize is linear per channel, so
        each pooled branch's slice of the bottleneck weight is applied at the pool's own size and the
        products are resized and summed (as :class:`SegformerHead` fuses its levels). On a
        ``resize_concat`` input the same holds for the input's own slice, which then runs level by
        level (:class:`ResizedLevels`), and the pyramid pools the levels; the 512-channel stride-4
        concatenation of MiT-B0's levels is never built. Same function, same parameters.
        """
        conv, *post = self.bottleneck
        x_weight, *branch_weights = conv.weight.split(
            [self.in_channels] + [self.channels] * len(self.psp.branches), 1
        )
        if isinstance(x, ResizedLevels):
            size = x.size
            fused = x.conv2d(x_weight, bias=conv.bias)
        else:
            size = x.shape[-2:]
            fused = F.conv2d(x, x_weight, conv.bias)
        for pooled, weight in zip(self.psp.pooled(x), branch_weights, strict=True):
            fused = fused + resize_bilinear(F.conv2d(pooled, weight), size, self.align_corners)
        for layer in post:
            fused = layer(fused)
        return fused
