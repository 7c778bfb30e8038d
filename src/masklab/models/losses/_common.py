"""Helpers shared by the region losses: probabilities, one-hot targets and the valid-pixel mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def probs_and_targets(
    logits: torch.Tensor, label: torch.Tensor, ignore_index: int, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, H, W) probabilities, one-hot targets and (B, 1, H, W) float valid mask.

    One channel means binary segmentation: sigmoid and the foreground indicator. Ignored pixels and
    pixels a sampler gave weight 0 are invalid (weights only select pixels here).
    """
    valid = label != ignore_index
    if weight is not None:
        valid = valid & (weight > 0)
    safe = torch.where(valid, label, torch.zeros_like(label))
    if logits.shape[1] == 1:
        probs = logits.sigmoid()
        target = safe.unsqueeze(1).to(probs.dtype)
    else:
        probs = logits.softmax(dim=1)
        target = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return probs, target, valid.unsqueeze(1).to(probs.dtype)


def check_class_weight(class_weight: torch.Tensor | None, num_channels: int, where: str) -> None:
    """Raise when ``class_weight`` does not have one entry per output channel."""
    from masklab.errors import ModelError

    if class_weight is not None and len(class_weight) != num_channels:
        raise ModelError(
            f"{where}.class_weight has {len(class_weight)} entries but the head predicts "
            f"{num_channels} channels; give one weight per class"
        )
