"""Sigmoid focal loss (Lin et al., 2017) over one-vs-all targets, as MMSeg's ``FocalLoss``.

Per pixel and channel: ``-alpha_t * (1 - p_t)^gamma * log(p_t)`` with ``p_t`` the probability of the
right answer and ``alpha_t = alpha`` for the target channel, ``1 - alpha`` for the others. The
loss is summed over channels and averaged over valid pixels (pixel weights multiply it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from masklab.config.registries import LOSSES
from masklab.errors import ModelError
from masklab.models.losses.base import PixelLoss


@LOSSES.register()
class FocalLoss(PixelLoss):
    """Focal loss.

    Args:
        loss_weight: multiplier of the loss.
        gamma: focusing exponent (0 = plain BCE weighted by alpha).
        alpha: weight of the positive (target) channel; negatives get ``1 - alpha``.
        class_weight: per-channel multipliers, or None.
        loss_name: log key.
        ignore_index: label left out (the head passes its own at call time).
    """

    use_sigmoid = True

    def __init__(
        self,
        loss_weight: float = 1.0,
        gamma: float = 2.0,
        alpha: float = 0.5,
        class_weight: list[float] | None = None,
        loss_name: str = "loss_focal",
        ignore_index: int = 255,
    ) -> None:
        if gamma < 0 or not 0 <= alpha <= 1:
            raise ModelError(f"FocalLoss: need gamma >= 0 and 0 <= alpha <= 1, got {gamma} and {alpha}")
        super().__init__(
            loss_weight=loss_weight, class_weight=class_weight, loss_name=loss_name, ignore_index=ignore_index
        )
        self.gamma = gamma
        self.alpha = alpha

    def forward(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> torch.Tensor:
        """Scalar loss of (B, C, H, W) logits against (B, H, W) labels."""
        ignore = self.resolve_ignore(ignore_index)
        valid = label != ignore
        safe = torch.where(valid, label, torch.zeros_like(label))
        if logits.shape[1] == 1:
            target = safe.unsqueeze(1).to(logits.dtype)
        else:
            target = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        p = logits.sigmoid()
        p_t = p * target + (1 - p) * (1 - target)
        alpha_t = self.alpha * target + (1 - self.alpha) * (1 - target)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = alpha_t * (1 - p_t).pow(self.gamma) * ce
        if self.class_weight is not None:
            loss = loss * self.class_weight.to(loss).view(1, -1, 1, 1)
        pixel = loss.sum(dim=1) * valid.to(loss.dtype)
        if weight is not None:
            pixel = pixel * weight.to(loss.dtype)
        return self.loss_weight * pixel.sum() / valid.sum().clamp(min=1)
