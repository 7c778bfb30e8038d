"""The input of a ``resize_concat`` head before it is built: levels, the size they go to, and the
linear maps of their concatenation computed level by level."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from masklab.models.layers.resize import interpolation_weights, resize_bilinear


@dataclass(frozen=True)
class ResizedLevels:
    """``cat([resize(level, size) for level in levels], dim=1)``, not yet built.

    A conv is linear in its input channels and a bilinear resize is linear per channel, so a conv of
    the concatenation equals the sum over levels of each level's weight slice applied to that level's
    resize, which :meth:`conv2d` computes from the level at its own size. On a stride-4 concatenation
    of MiT-B0's levels (32 + 64 + 160 + 256 channels) the conv then reads 32 + 64/4 + 160/16 + 256/64
    = 62 channels' worth of pixels instead of 512, and the 512-channel map is never built. Its global
    mean (:meth:`mean`) is likewise taken from each level with the resize's weights.

    Attributes:
        levels: (B, C_i, h_i, w_i) maps, in the order of the concatenation.
        size: (H, W) every level is resized to (the first level's size in ``DecodeHead``).
        align_corners: of the bilinear resize.
    """

    levels: tuple[torch.Tensor, ...]
    size: tuple[int, int]
    align_corners: bool

    @property
    def channels(self) -> list[int]:
        """Channels of each level (their sum is the concatenation's)."""
        return [level.shape[1] for level in self.levels]

    def concat(self) -> torch.Tensor:
        """The (B, sum C_i, H, W) concatenation itself."""
        return torch.cat([self._resized(level) for level in self.levels], dim=1)

    @staticmethod
    def computes(conv: nn.Module) -> bool:
        """Whether :meth:`conv2d` computes ``conv``: an ungrouped, unstrided ``nn.Conv2d`` with a square
        odd kernel and "same" zero padding (not DeepLabV3+'s depthwise separable convs)."""
        if not isinstance(conv, nn.Conv2d):
            return False
        (k, k_w), (d, d_w) = conv.kernel_size, conv.dilation
        return (
            k == k_w
            and k % 2 == 1
            and d == d_w
            and conv.padding == (d * (k // 2),) * 2
            and conv.groups == 1
            and conv.stride == (1, 1)
            and conv.padding_mode == "zeros"
        )

    def conv_block(self, block: nn.Sequential) -> torch.Tensor:
        """``block(self.concat())`` for a conv-first block (``ConvNormAct``) whose conv :meth:`computes`."""
        conv, *post = block
        assert isinstance(conv, nn.Conv2d)
        out = self.conv2d(conv.weight, conv.dilation[0], conv.bias)
        for layer in post:
            out = layer(out)
        return out

    def conv2d(
        self, weight: torch.Tensor, dilation: int = 1, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``F.conv2d(self.concat(), weight, bias, padding=dilation * (k // 2), dilation=dilation)`` for a
        (O, sum C_i, k, k) ``weight`` with odd ``k`` (stride 1, zero padding), level by level.

        A level already at ``size`` is convolved as it is. For a smaller level, the conv of its
        resized map is, per tap ``(ky, kx)``, the tap's 1x1 projection resized and shifted by the
        tap's offset: ``sum_taps (S_ky A_h) (W_tap x) (S_kx A_w)^T`` with ``A`` the 1-D interpolation
        matrices and ``S`` the shifts (zeros past the border, as the conv's padding gives). The
        projections run at the level's own size; the column products of a row of taps go in one
        product (their matrices stacked along the contraction), and the row products of every tap
        and every smaller level in one more, which sums them. Only the O-channel output is ever at
        ``size``: on the stride-4 concatenation of MiT-B0's levels a 32-channel 3x3 conv reads 32
        full-size channels plus the three smaller levels at their sizes, instead of 512 full-size.
        """
        out_channels, _, k, _ = weight.shape
        out_h, out_w = self.size
        direct: torch.Tensor | None = None
        row_blocks, products = [], []
        for level, part in zip(self.levels, weight.split(self.channels, dim=1), strict=True):
            b, c, h, w = level.shape
            if (h, w) == (out_h, out_w):
                y = F.conv2d(level, part, padding=dilation * (k // 2), dilation=dilation)
                direct = y if direct is None else direct + y
                continue
            # the taps as 1x1 weights, rows ordered (out channel, ky, kx)
            taps = _conv1x1(level, part.permute(0, 2, 3, 1).reshape(out_channels * k * k, c, 1, 1))
            # (B*O, ky, kx, h, w) -> (B*O*ky, h, kx*w): each row of taps meets its stacked column matrix
            taps = (
                taps.view(b * out_channels, k, k, h, w)
                .permute(0, 1, 3, 2, 4)
                .reshape(b * out_channels * k, h, k * w)
            )
            cols = _shifted_weights(w, out_w, k, dilation, self.align_corners, level.dtype).to(level.device)
            products.append(torch.matmul(taps, cols.T).view(b * out_channels, k * h, out_w))
            row_blocks.append(
                _shifted_weights(h, out_h, k, dilation, self.align_corners, level.dtype).to(level.device)
            )
        out = direct
        if products:
            b = self.levels[0].shape[0]
            resized = torch.matmul(torch.cat(row_blocks, dim=1), torch.cat(products, dim=1))
            resized = resized.view(b, out_channels, out_h, out_w)
            out = resized if out is None else out + resized
        assert out is not None
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    def mean(self) -> torch.Tensor:
        """(B, sum C_i, 1, 1): the concatenation's mean over H and W.

        The mean of a resized map is a weighted sum of the level's pixels whose row (column) weights
        are the column means of the 1-D interpolation matrix.
        """
        out_h, out_w = self.size
        means = []
        for level in self.levels:
            h, w = level.shape[-2:]
            if (h, w) == (out_h, out_w):
                means.append(level.mean(dim=(2, 3)))
                continue
            rows = interpolation_weights(h, out_h, self.align_corners, level.dtype).to(level.device).mean(0)
            cols = interpolation_weights(w, out_w, self.align_corners, level.dtype).to(level.device).mean(0)
            means.append(torch.einsum("bchw,h,w->bc", level, rows, cols))
        return torch.cat(means, dim=1)[:, :, None, None]

    def _resized(self, x: torch.Tensor) -> torch.Tensor:
        return (
            x
            if tuple(x.shape[-2:]) == tuple(self.size)
            else resize_bilinear(x, self.size, self.align_corners)
        )


@functools.lru_cache(maxsize=256)
def _shifted_weights(
    n_in: int, n_out: int, k: int, dilation: int, align_corners: bool, dtype: torch.dtype
) -> torch.Tensor:
    """(n_out, k * n_in): block ``j`` holds the 1-D interpolation matrix (n_in -> n_out) with its rows
    moved by ``(j - k // 2) * dilation``: row ``i`` of the block is row ``i + offset`` of the matrix,
    or zeros where that falls outside (a conv tap's zero padding)."""
    base = interpolation_weights(n_in, n_out, align_corners, dtype)
    blocks = []
    for j in range(k):
        offset = (j - k // 2) * dilation
        block = torch.zeros_like(base)
        lo, hi = max(0, -offset), min(n_out, n_out - offset)
        if lo < hi:
            block[lo:hi] = base[lo + offset : hi + offset]
        blocks.append(block)
    return torch.cat(blocks, dim=1)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight)`` for a 1x1 ``weight``, as one batched matrix product whose result is
    NCHW-contiguous whatever ``x``'s layout (``x.flatten(2)`` of a channels-last map is a transposed
    view the product reads as it is). Every later step (the resize products, ``F.fold``) then runs
    on NCHW without a layout copy: for the 896 outputs of a 32-channel ASPP's taps, transposing
    copies between NHWC and NCHW had been most of the head's time (1 thread).
    """
    b, _, h, w = x.shape
    return torch.bmm(weight.flatten(1).expand(b, -1, -1), x.flatten(2)).view(b, weight.shape[0], h, w)
