"""Bilinear resize whose CPU backward is two small matrix products instead of a serial scatter."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from masklab.errors import ModelError


@functools.lru_cache(maxsize=256)
def interpolation_weights(n_in: int, n_out: int, align_corners: bool, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation, with ``upsample_bilinear2d``'s source
    coordinates (output size given, no antialias): ``max((i + 0.5) * n_in / n_out - 0.5, 0)``, or
    ``i * (n_in - 1) / (n_out - 1)`` with ``align_corners``."""
    dst = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    rows = torch.arange(n_out)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.to(dtype)


# (8, 7, 32, 32) NHWC logits -> 128x128: 20 ms forward + backward through the NHWC products, 4 ms
# through a copy to NCHW; (8, 128, 16, 16) -> 32x32 is faster NHWC.
_MIN_NHWC_CHANNELS = 16
# The products cost O(input side) per output pixel where the kernel's interpolation costs O(1): forward
# + backward on 2 threads, (2, 128, 32, 32) -> 64x64 8.9 -> 3.2 ms, (2, 128, 64, 64) -> 128x128 25.3 ->
# 21.3 ms, but (2, 12, 128, 128) -> 512x512 31.9 -> 35.6 ms. So the input must be at most this large.
_MAX_MATMUL_SIDE = 64


def _use_matmul(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.float64)
        and x.requires_grad
        and torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
        and max(x.shape[-2:]) <= _MAX_MATMUL_SIDE
    )


def resize_bilinear(
    x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False
) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=align_corners)`` for (B, C, H, W) ``x``.

    When autograd will differentiate it on the CPU (training) and the input is at most 64 pixels a
    side, the same values (to float rounding) are computed as ``A_h @ x @ A_w^T`` with the 1-D
    interpolation matrices of the two axes, so the backward is two matrix products where
    ``upsample_bilinear2d_backward`` scatters serially; an ``x`` that already has the size is then
    returned as it is. Measured on one thread, forward + backward: (8, 128, 4, 4) -> 32x32 12.9 ->
    1.9 ms, (8, 128, 16, 16) -> 32x32 17.4 -> 4.1 ms, (8, 7, 32, 32) -> 128x128 10.1 -> 3.7 ms.
    Everywhere else (no grad, CUDA, larger inputs, tracing or ONNX export, where the graph must keep a
    ``Resize`` with dynamic sizes) it is ``F.interpolate`` itself.
    """
    if not _use_matmul(x):
        # ``size`` as given: under tracing its entries are traced sizes, and int() would bake them in.
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
    out_h, out_w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (out_h, out_w):
        return x
    b, c, h, w = x.shape
    rows = interpolation_weights(h, out_h, align_corners, x.dtype)
    cols = interpolation_weights(w, out_w, align_corners, x.dtype)
    if c >= _MIN_NHWC_CHANNELS and x.is_contiguous(memory_format=torch.channels_last):
        # NHWC in memory (runtime.channels_last, or a conv fed NHWC-strided tokens): mix rows over
        # (w, C) panels, then columns per row, so the result is NHWC too (a layout change would cost a
        # copy here and slow strided adds later). With few channels (logits) the NCHW products win.
        nhwc = x.permute(0, 2, 3, 1)
        y = torch.matmul(rows, nhwc.reshape(b, h, w * c)).view(b * out_h, w, c)
        return torch.matmul(cols, y).view(b, out_h, out_w, c).permute(0, 3, 1, 2)
    y = (x.reshape(b * c * h, w) @ cols.t()).view(b * c, h, out_w)
    return torch.matmul(rows, y).view(b, c, out_h, out_w)


class BilinearUpsample(torch.nn.Module):
    """``nn.Upsample(scale_factor=k, mode="bilinear")`` for an integer ``k`` through :func:`resize_bilinear`
    (the same source coordinates: with an integer factor, ``1 / k`` equals ``n_in / n_out``)."""

    def __init__(self, scale_factor: int = 2, align_corners: bool = False) -> None:
        super().__init__()
        if int(scale_factor) != scale_factor or scale_factor < 1:
            raise ModelError(f"BilinearUpsample: scale_factor must be a positive integer, got {scale_factor}")
        self.scale_factor = int(scale_factor)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.scale_factor
        return resize_bilinear(x, (x.shape[-2] * k, x.shape[-1] * k), self.align_corners)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, align_corners={self.align_corners}"
