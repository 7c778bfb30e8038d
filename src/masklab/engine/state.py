"""What one training iteration produced, handed to every hook."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TrainState:
    """The record of one optimiser step.

    Attributes:
        iteration: completed iterations after this step (1 for the first step).
        losses: named losses as floats, averaged over accumulation micro-steps; ``loss`` is the
            total (sum of the model's ``loss*`` keys); other keys (``acc_seg``) are logged only.
        lr: learning rate of the first param group used for this step.
        grad_norm: global gradient norm before clipping (None when not clipping).
        data_time: seconds spent waiting for batches.
        iter_time: seconds for the whole step (data included, hooks excluded).
        skipped: True when the optimiser did not step because a loss or gradient was not finite.
    """

    iteration: int
    losses: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    grad_norm: float | None = None
    data_time: float = 0.0
    iter_time: float = 0.0
    skipped: bool = False

    def describe_nonfinite(self) -> str:
        """One line naming the iteration and every loss term's value."""
        terms = ", ".join(f"{k}={v:.6g}" for k, v in self.losses.items())
        grad = (
            "" if self.grad_norm is None or math.isfinite(self.grad_norm) else f", grad_norm={self.grad_norm}"
        )
        return f"non-finite loss at iteration {self.iteration}: {terms}{grad}"
