"""MAL's two losses: multiple-instance projection (box tightness) and CRF self-training, both dice."""

from __future__ import annotations

import torch


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """(B,) ``1 - 2 sum(p t) / (sum(p^2) + eps + sum(t^2) + eps)`` over all but the first dimension.

    The squared denominators and the two ``eps`` follow MAL; ``eps`` keeps empty targets finite.
    """
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    inter = (p * t).sum(dim=1)
    return 1.0 - 2.0 * inter / (p.pow(2).sum(dim=1) + eps + t.pow(2).sum(dim=1) + eps)


def mil_projection_loss(probs: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """(B,) dice between the max-projections of the prediction and of the box on both axes.

    Every column and every row of the crop is a bag: positive if it crosses the box, negative if
    it lies in the added context; a bag's score is its maximum probability. The target is the box
    rectangle, never a ground-truth mask.

    Args:
        probs: (B, H, W) foreground probabilities.
        box_masks: (B, H, W) box rectangles (bool or float) at the same resolution.
    """
    box = box_masks.to(probs.dtype)
    along_x = dice_loss(probs.amax(dim=1), box.amax(dim=1))  # per column
    along_y = dice_loss(probs.amax(dim=2), box.amax(dim=2))  # per row
    return along_x + along_y


def crf_self_training_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) dice between the student's probabilities and the binary CRF target (a constant)."""
    return dice_loss(probs, target.detach().to(probs.dtype))
