"""Dice loss over softmax (or sigmoid, for one channel) probabilities, MMSeg 0.x form.

Per image and class: ``1 - (2 * sum(p * t) + smooth) / (sum(p^e) + sum(t^e) + smooth)``; the
result is averaged over classes (``class_weight`` multiplies each class first) and over images.
Ignored pixels (and pixels a sampler weighted 0) are left out of every sum.
"""

from __future__ import annotations

import torch

from masklab.config.registries import LOSSES
from masklab.models.losses._common import probs_and_targets
from masklab.models.losses.base import PixelLoss


@LOSSES.register()
class DiceLoss(PixelLoss):
    """Soft Dice loss.

    Args:
        loss_weight: multiplier of the loss.
        smooth: added to numerator and denominator (keeps empty classes finite).
        exponent: power of the probabilities and targets in the denominator.
        class_weight: per-class multipliers (length = output channels), or None.
        loss_name: log key; names starting with ``loss`` are optimised.
        ignore_index: label left out (the head passes its own at call time).
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        smooth: float = 1.0,
        exponent: int = 2,
        class_weight: list[float] | None = None,
        loss_name: str = "loss_dice",
        ignore_index: int = 255,
    ) -> None:
        super().__init__(
            loss_weight=loss_weight, class_weight=class_weight, loss_name=loss_name, ignore_index=ignore_index
        )
        self.smooth = smooth
        self.exponent = exponent

    def forward(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> torch.Tensor:
        """Scalar loss of (B, C, H, W) logits against (B, H, W) labels."""
        ignore = self.resolve_ignore(ignore_index)
        probs, target, valid = probs_and_targets(logits, label, ignore, weight)
        probs, target = (probs * valid).flatten(2), (target * valid).flatten(2)
        inter = (probs * target).sum(-1)
        denom = probs.pow(self.exponent).sum(-1) + target.pow(self.exponent).sum(-1)
        dice = 1 - (2 * inter + self.smooth) / (denom + self.smooth)  # (B, C)
        if self.class_weight is not None:
            dice = dice * self.class_weight.to(dice)
        return self.loss_weight * dice.mean(dim=1).mean()
