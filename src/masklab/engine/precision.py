"""Mixed precision: the autocast context and the gradient scaler for a precision setting."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from masklab.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]


def check_precision(precision: str, device: torch.device) -> None:
    """Reject unknown precisions and fp16 off CUDA (GradScaler and fp16 kernels need CUDA)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"runtime.precision: expected 'fp32', 'bf16' or 'fp16', got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"runtime.precision: fp16 needs a CUDA device (got {device.type}); use 'bf16' or 'fp32' on {device.type}"
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` for bf16/fp16 on ``device``; a null context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (bf16 has fp32's exponent range and needs none)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
