"""The EMA teacher of MAL: a frozen copy of the student that follows it by exponential averaging."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EmaTeacher(nn.Module):
    """A copy of ``student`` (same weights at start), updated as ``t <- m * t + (1 - m) * s``.

    The teacher never receives gradients and always runs in eval mode. Its predictions only enter
    the CRF start state, which steadies the self-training target of a fast-moving student.

    Args:
        student: the network to copy (deep-copied; later changes to it do not alias).
        momentum: ``m`` of the update (MAL: 0.996).
    """

    def __init__(self, student: nn.Module, momentum: float = 0.996) -> None:
        super().__init__()
        assert 0.0 <= momentum <= 1.0, f"momentum {momentum} outside [0, 1]"
        self.momentum = float(momentum)
        self.network = copy.deepcopy(student)
        self.network.requires_grad_(False)
        self.network.eval()

    def train(self, mode: bool = True) -> EmaTeacher:
        """Stay in eval mode whatever the parent does (no dropout / drop-path in the teacher)."""
        super().train(False)
        return self

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step over parameters; buffers (e.g. norm statistics) are copied."""
        m = self.momentum
        for t, s in zip(self.network.parameters(), student.parameters(), strict=True):
            t.mul_(m).add_(s.detach(), alpha=1.0 - m)
        for t, s in zip(self.network.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    @torch.no_grad()
    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.network(*args, **kwargs)
