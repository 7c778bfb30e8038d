"""Online hard example mining over pixels (MMSeg's ``OHEMPixelSampler`` semantics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import LOSSES
from masklab.errors import ModelError


@LOSSES.register()
class OHEMPixelSampler(nn.Module):
    """Per-pixel 0/1 loss weights keeping the hard pixels.

    With ``thresh``: keep pixels whose probability of their true class is below
    ``max(thresh, p_k)``, where ``p_k`` is the ``min_kept * B``-th smallest such probability (so at
    least that many pixels train). Without: keep the ``min_kept * B`` pixels of highest
    cross-entropy. Ignored pixels always get 0.

    Args:
        thresh: probability threshold, or None for the top-k mode.
        min_kept: minimum number of kept pixels per image.
        ignore_index: label that never trains.
    """

    def __init__(self, thresh: float | None = None, min_kept: int = 100000, ignore_index: int = 255) -> None:
        super().__init__()
        if thresh is not None and not 0 < thresh <= 1:
            raise ModelError(f"OHEMPixelSampler.thresh: expected a probability in (0, 1], got {thresh}")
        if min_kept < 1:
            raise ModelError(f"OHEMPixelSampler.min_kept: expected >= 1, got {min_kept}")
        self.thresh = thresh
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    @torch.no_grad()
    def forward(self, seg_logits: torch.Tensor, seg_label: torch.Tensor) -> torch.Tensor:
        """(B, H, W) float weights for (B, C, H, W) logits and (B, H, W) labels of the same size."""
        batch_kept = self.min_kept * seg_label.shape[0]
        valid = seg_label != self.ignore_index
        safe = torch.where(valid, seg_label, torch.zeros_like(seg_label))
        weight = torch.zeros(seg_label.shape, dtype=seg_logits.dtype, device=seg_logits.device)
        valid_weight = weight[valid]
        if self.thresh is not None:
            prob = self._true_class_prob(seg_logits, safe)[valid]
            if prob.numel() == 0:
                return weight
            sorted_prob = prob.sort().values
            floor = float(sorted_prob[min(batch_kept, prob.numel() - 1)])
            valid_weight[prob < max(floor, self.thresh)] = 1.0
        else:
            if seg_logits.shape[1] == 1:
                losses = F.binary_cross_entropy_with_logits(
                    seg_logits[:, 0], safe.to(seg_logits.dtype), reduction="none"
                )
            else:
                losses = F.cross_entropy(seg_logits, safe, reduction="none")
            order = losses[valid].argsort(descending=True)
            valid_weight[order[:batch_kept]] = 1.0
        weight[valid] = valid_weight
        return weight

    @staticmethod
    def _true_class_prob(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            fg = logits[:, 0].sigmoid()
            return torch.where(label == 1, fg, 1 - fg)
        return logits.softmax(dim=1).gather(1, label.unsqueeze(1)).squeeze(1)
