"""Pixel-wise cross-entropy with MMSegmentation's exact averaging rules.

MMSeg's default divides the summed loss by *all* pixels, ignored ones included (they contribute 0),
unlike ``torch.nn.functional.cross_entropy`` which divides by the non-ignored count (and, with class
weights, by the summed weights). ``avg_non_ignore=True`` divides by the number of non-ignored pixels
but still not by the class weights. Matching this keeps loss curves and learning rates comparable
with the MMSeg zoo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from masklab.config.registries import LOSSES
from masklab.models.losses.base import PixelLoss, reduce_pixel_loss


@LOSSES.register()
class CrossEntropyLoss(PixelLoss):
    """Softmax (or sigmoid) cross-entropy over pixels.

    Args:
        loss_weight: multiplier of the loss.
        class_weight: per-class weights (length = number of output channels), or None. With
            ``use_sigmoid`` it is BCE's ``pos_weight``.
        avg_non_ignore: divide by the non-ignored pixel count instead of all pixels.
        use_sigmoid: binary cross-entropy per channel (one channel = binary segmentation).
        loss_name: the key the loss is logged under; names starting with ``loss`` are optimised.
        ignore_index: label ignored by the loss (the decode head passes its own at call time).
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        class_weight: list[float] | None = None,
        avg_non_ignore: bool = False,
        use_sigmoid: bool = False,
        loss_name: str = "loss_ce",
        ignore_index: int = 255,
    ) -> None:
        super().__init__(
            loss_weight=loss_weight, class_weight=class_weight, loss_name=loss_name, ignore_index=ignore_index
        )
        self.avg_non_ignore = avg_non_ignore
        self.use_sigmoid = use_sigmoid

    def forward(
        self,
        logits: torch.Tensor,
        label: torch.Tensor,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = None,
    ) -> torch.Tensor:
        """Mean loss of (B, C, H, W) logits against (B, H, W) int64 labels.

        Args:
            logits: raw scores, already at the label's resolution.
            label: class ids; ``ignore_index`` pixels add nothing.
            weight: optional (B, H, W) per-pixel weights (e.g. from an OHEM sampler).
            ignore_index: overrides the constructor's value.
        """
        ignore = self.resolve_ignore(ignore_index)
        if self.use_sigmoid:
            loss = self._sigmoid(logits, label, weight, ignore)
        else:
            loss = self._softmax(logits, label, weight, ignore)
        return self.loss_weight * loss

    def _softmax(
        self, logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None, ignore: int
    ) -> torch.Tensor:
        class_weight = None if self.class_weight is None else self.class_weight.to(logits)
        loss = F.cross_entropy(logits, label, weight=class_weight, reduction="none", ignore_index=ignore)
        avg_factor = None
        if self.avg_non_ignore:
            avg_factor = float(label.numel() - int((label == ignore).sum()))
        return reduce_pixel_loss(loss, None if weight is None else weight.float(), avg_factor)

    def _sigmoid(
        self, logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None, ignore: int
    ) -> torch.Tensor:
        valid = (label >= 0) & (label != ignore)
        if logits.shape[1] == 1:
            # Binary segmentation: one channel, the label is the foreground indicator.
            pred = logits[:, 0]
            target = torch.where(valid, label, torch.zeros_like(label)).to(pred.dtype)
            valid_f = valid.to(pred.dtype)
            pixel_weight = valid_f if weight is None else weight.float() * valid_f
        else:
            # One-vs-all over C channels: one-hot targets, ignored pixels masked in every channel.
            pred = logits
            safe = torch.where(valid, label, torch.zeros_like(label))
            target = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(pred.dtype)
            valid_f = valid.unsqueeze(1).expand_as(pred).to(pred.dtype)
            pixel_weight = valid_f if weight is None else weight.float().unsqueeze(1) * valid_f
        pos_weight = None if self.class_weight is None else self.class_weight.to(pred)
        if pos_weight is not None and pred.ndim == 4:
            pos_weight = pos_weight.view(1, -1, 1, 1)
        loss = F.binary_cross_entropy_with_logits(pred, target, pos_weight=pos_weight, reduction="none")
        avg_factor = float(valid_f.sum()) if self.avg_non_ignore else None
        return reduce_pixel_loss(loss, pixel_weight, avg_factor)
