"""Helpers shared by the region losses: probabilities, one-hot targets and the valid-pixel mask.

Settings, the class-weight check and the reduction are in :mod:`masklab.models.losses.base`.
"""

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
