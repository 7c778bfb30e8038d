"""Lovász-softmax loss (Berman et al., 2018): a convex surrogate of per-class Jaccard loss.

For each class, pixel errors ``|[y == c] - p_c|`` are sorted in decreasing order and dotted with
the gradient of the Jaccard loss along that order; classes are averaged (``classes="present"``:
only those in the labels). With one channel it is the binary hinge form (Lovász hinge).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import LOSSES


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Jaccard loss w.r.t. sorted errors (``gt_sorted``: 0/1 float, sorted by error)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax_flat(probs: torch.Tensor, labels: torch.Tensor, present_only: bool) -> torch.Tensor:
    """Loss of (P, C) probabilities against (P,) labels (valid pixels only)."""
    if probs.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if present_only and fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = errors.sort(descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    return torch.stack(losses).mean() if losses else probs.sum() * 0.0


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovász hinge of (P,) logits against (P,) 0/1 labels."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels.to(logits.dtype) - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = errors.sort(descending=True)
    return torch.dot(F.relu(errors_sorted), lovasz_grad(labels.to(logits.dtype)[order]))


@LOSSES.register()
class LovaszLoss(nn.Module):
    """Lovász-softmax (multi-class) or Lovász hinge (one output channel).

    Args:
        loss_weight: multiplier of the loss.
        classes: "present" averages over classes in the labels, "all" over every class.
        per_image: compute per image and average, instead of over the whole batch.
        loss_name: log key.
        ignore_index: label left out (the head passes its own at call time). Pixels a sampler
            weighted 0 are left out too; other weights do not scale this loss.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        classes: Literal["present", "all"] = "present",
        per_image: bool = False,
        loss_name: str = "loss_lovasz",
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.present_only = classes == "present"
        self.per_image = per_image
        self.loss_name = loss_name
        self.ignore_index = ignore_index

    def forward(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> torch.Tensor:
        """Scalar loss of (B, C, H, W) logits against (B, H, W) labels."""
        ignore = self.ignore_index if ignore_index is None else ignore_index
        valid = label != ignore
        if weight is not None:
            valid = valid & (weight > 0)
        groups = [(logits[i : i + 1], label[i : i + 1], valid[i : i + 1]) for i in range(len(label))]
        if not self.per_image:
            groups = [(logits, label, valid)]
        losses = [self._flat(lg, lb, v) for lg, lb, v in groups]
        return self.loss_weight * torch.stack(losses).mean()

    def _flat(self, logits: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        c = logits.shape[1]
        flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, c)[valid.reshape(-1)]
        flat_label = label.reshape(-1)[valid.reshape(-1)]
        if c == 1:
            return lovasz_hinge_flat(flat_logits[:, 0], flat_label)
        return lovasz_softmax_flat(flat_logits.softmax(dim=1), flat_label, self.present_only)
