"""Softmax over a short last dimension, several times faster than ``torch.softmax`` on the CPU.

torch's CPU softmax kernel vectorises along the reduced dimension; for the deformable attention's
weights (reduced over ``levels * points`` = 12 values, hundreds of thousands of rows) it spends
~5 ms on a (2, 1344, 8, 12) tensor at one thread where ``exp(x - max) / sum`` over the same last
dimension, as a handful of whole-tensor element-wise passes, takes ~0.9 ms (forward + backward
7.5 -> 2.0 ms; values and gradients equal to float rounding, ``tests/models/test_small_softmax.py``).
Other devices keep ``torch.softmax`` (it also keeps autocast's float32 policy there).
"""

from __future__ import annotations

from typing import Any

import torch


class _SoftmaxLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        e = (x - x.amax(-1, keepdim=True)).exp_()
        y = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        gy = grad * y
        return gy.sub_(y * gy.sum(-1, keepdim=True))


def softmax_last_dim(x: torch.Tensor) -> torch.Tensor:
    """``x.softmax(-1)``; on the CPU through element-wise passes (for short last dimensions)."""
    if x.device.type != "cpu":
        return x.softmax(-1)
    return _SoftmaxLastDim.apply(x)
