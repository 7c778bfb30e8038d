"""Set loss of Mask2Former with attribute heads, applied to every prediction point (deep supervision).

Loss names (all start with ``loss`` so the engine sums them; values are already weighted):

* final prediction: ``loss_cls``, ``loss_mask``, ``loss_dice``, ``loss_attr_<name>``;
* earlier prediction point i (0 = query input, ..., N-1 = layer N-1): the same names with ``_d{i}``
  appended, e.g. ``loss_cls_d0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from masklab.errors import ModelError
from masklab.models.mask2former.attribute_spec import AttributeSpec
from masklab.models.mask2former.matcher import Mask2FormerMatcher
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput, Mask2FormerOutput
from masklab.models.mask2former.point_sampling import point_sample, uncertain_point_coords
from masklab.models.mask2former.targets import Mask2FormerTargets


class Mask2FormerCriterion(nn.Module):
    """Class CE (no-object weight), point-sampled mask BCE + dice, and one CE per attribute.

    Args:
        num_classes: C real classes.
        attributes: attribute specs (their ``loss_weight``, ``cost_weight`` and ``eos_coef``).
        class_weight: weight of ``loss_cls`` (and of the class matching cost).
        mask_weight: weight of ``loss_mask`` (and of the BCE matching cost).
        dice_weight: weight of ``loss_dice`` (and of the dice matching cost).
        eos_coef: class-CE weight of the "no object" slot.
        num_points: points per mask in losses and matching.
        oversample_ratio: candidate points per kept point for importance sampling.
        importance_sample_ratio: share of points picked by uncertainty.
        loss_weights: optional overrides by base loss name (``loss_cls``, ``loss_attr_color``, ...);
            a key that names no loss is a :class:`ModelError`.
    """

    def __init__(
        self,
        num_classes: int,
        attributes: Sequence[AttributeSpec] = (),
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"model.num_classes: expected >= 1, got {num_classes}")
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ModelError(
                f"criterion: oversample_ratio {oversample_ratio} must be >= 1 and importance_sample_ratio "
                f"{importance_sample_ratio} in [0, 1]"
            )
        self.num_classes = num_classes
        self.attributes = tuple(attributes)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        weights = {"loss_cls": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        weights.update({f"loss_attr_{s.name}": s.loss_weight for s in self.attributes})
        unknown = sorted(set(loss_weights or {}) - set(weights))
        if unknown:
            raise ModelError(
                f"criterion.loss_weights: {unknown[0]!r} names no loss (losses: {sorted(weights)})"
            )
        weights.update(loss_weights or {})
        self.weights: dict[str, float] = weights
        self.matcher = Mask2FormerMatcher(
            weights["loss_cls"], weights["loss_mask"], weights["loss_dice"], self.attributes, num_points
        )
        empty = torch.ones(num_classes + 1)
        empty[-1] = eos_coef
        self.register_buffer("empty_weight", empty, persistent=False)
        for spec in self.attributes:
            w = torch.ones(spec.num_outputs)
            w[-1] = spec.eos_coef
            self.register_buffer(f"empty_weight_{spec.name}", w, persistent=False)
        self._check_names()

    def loss_names(self) -> list[str]:
        """Base names of the losses this criterion computes for one prediction point."""
        return ["loss_cls", "loss_mask", "loss_dice"] + [f"loss_attr_{s.name}" for s in self.attributes]

    def _check_names(self) -> None:
        """A loss without a weight or a weight without a loss would be silently dropped or ignored."""
        names, weighted = set(self.loss_names()), set(self.weights)
        if names != weighted:
            odd = sorted(names ^ weighted)[0]
            raise ModelError(f"criterion: {odd!r} has a loss without a weight or a weight without a loss")

    def num_masks(self, targets: Sequence[Mask2FormerTargets], device: torch.device) -> torch.Tensor:
        """Objects in the batch averaged over workers, clamped to >= 1 (the mask-loss normaliser)."""
        total = torch.tensor(float(sum(len(t) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            total = total / dist.get_world_size()
        return total.clamp(min=1.0)

    def forward(
        self, outputs: Mask2FormerOutput, targets: Sequence[Mask2FormerTargets]
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of every prediction point (see the module docstring for names)."""
        device = outputs.last.class_logits.device
        num_masks = self.num_masks(targets, device)
        losses: dict[str, torch.Tensor] = {}
        last = len(outputs.layers) - 1
        for i, out in enumerate(outputs.layers):
            indices = self.matcher(out, targets, layer=i)
            suffix = "" if i == last else f"_d{i}"
            for name, value in self._layer_losses(out, targets, indices, num_masks).items():
                losses[name + suffix] = value * self.weights[name]
        return losses

    def _layer_losses(
        self,
        out: Mask2FormerLayerOutput,
        targets: Sequence[Mask2FormerTargets],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_masks: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        device = out.class_logits.device
        b, q = out.class_logits.shape[:2]
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([src for src, _ in indices]).to(device)
        losses = {}
        cls_target = torch.full((b, q), self.num_classes, dtype=torch.long, device=device)
        cls_target[batch_idx, query_idx] = torch.cat(
            [t.labels[j.to(t.labels.device)] for t, (_, j) in zip(targets, indices)]
        ).to(device)
        losses["loss_cls"] = F.cross_entropy(
            out.class_logits.float().transpose(1, 2), cls_target, self.empty_weight
        )
        losses.update(self._mask_losses(out, targets, indices, batch_idx, query_idx, num_masks))
        for spec in self.attributes:
            logits = out.attribute_logits[spec.name].float()
            tgt = torch.full((b, q), spec.no_object_index, dtype=torch.long, device=device)
            matched = [t.attributes[spec.name][j.to(t.labels.device)] for t, (_, j) in zip(targets, indices)]
            tgt[batch_idx, query_idx] = torch.cat(matched).to(device)  # -1 stays -1: ignored below
            weight = getattr(self, f"empty_weight_{spec.name}")
            if (tgt >= 0).any():
                losses[f"loss_attr_{spec.name}"] = F.cross_entropy(
                    logits.transpose(1, 2), tgt, weight, ignore_index=-1
                )
            else:  # every query matched an unlabelled object: nothing to learn, keep the graph
                losses[f"loss_attr_{spec.name}"] = logits.sum() * 0.0
        return losses

    def _mask_losses(
        self,
        out: Mask2FormerLayerOutput,
        targets: Sequence[Mask2FormerTargets],
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        batch_idx: torch.Tensor,
        query_idx: torch.Tensor,
        num_masks: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if query_idx.numel() == 0:  # no object in the batch: zero that still reaches the mask head
            zero = out.mask_logits.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src = out.mask_logits[batch_idx, query_idx].float().unsqueeze(1)  # (N, 1, h, w)
        tgt = torch.cat([t.masks[j.to(t.masks.device)] for t, (_, j) in zip(targets, indices)]).to(src.device)
        coords = uncertain_point_coords(
            src, self.num_points, self.oversample_ratio, self.importance_sample_ratio
        )
        with torch.no_grad():
            point_labels = point_sample(tgt.float().unsqueeze(1), coords).squeeze(1)
        point_logits = point_sample(src, coords).squeeze(1)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)
        probs = point_logits.sigmoid()
        dice = 1 - (2 * (probs * point_labels).sum(-1) + 1) / (probs.sum(-1) + point_labels.sum(-1) + 1)
        return {"loss_mask": bce.sum() / num_masks, "loss_dice": dice.sum() / num_masks}
