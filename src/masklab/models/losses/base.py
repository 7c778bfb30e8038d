"""What the per-class semantic losses share: their common settings, the class-weight check, the reduction.

``CrossEntropyLoss``, ``DiceLoss`` and ``FocalLoss`` each keep their own ``__init__`` signature (the
config schema) and pass the four common settings to :class:`PixelLoss`, one level deep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from masklab.errors import ModelError

# MMSeg adds float32 eps to the divisor so an all-ignored batch gives 0, not NaN.
_EPS = torch.finfo(torch.float32).eps


def check_class_weight(class_weight: torch.Tensor | None, num_channels: int, where: str) -> None:
    """Raise when ``class_weight`` does not have one entry per output channel.

    Raises:
        ModelError: the lengths differ.
    """
    if class_weight is not None and len(class_weight) != num_channels:
        raise ModelError(
            f"{where}.class_weight has {len(class_weight)} entries but the head predicts "
            f"{num_channels} channels; give one weight per class"
        )


def reduce_pixel_loss(
    loss: torch.Tensor, weight: torch.Tensor | None, avg_factor: float | None
) -> torch.Tensor:
    """Weight a per-element loss and average it: over all elements, or ``sum / avg_factor`` when given."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / (avg_factor + _EPS)


class PixelLoss(nn.Module):
    """A semantic loss with a multiplier, optional per-class weights, a log key and an ignore label.

    Args:
        loss_weight: multiplier of the loss.
        class_weight: one weight per output channel, or None; kept as a float32 buffer that is not
            saved in checkpoints (it comes from the config).
        loss_name: the key the loss is logged under; names starting with ``loss`` are optimised.
        ignore_index: label left out (the decode head passes its own at call time).
    """

    def __init__(
        self,
        *,
        loss_weight: float,
        class_weight: Sequence[float] | None,
        loss_name: str,
        ignore_index: int,
    ) -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.loss_name = loss_name
        self.ignore_index = ignore_index
        self.class_weight: torch.Tensor | None
        self.register_buffer(
            "class_weight",
            None if class_weight is None else torch.tensor(class_weight, dtype=torch.float32),
            persistent=False,
        )

    def check_num_classes(self, num_channels: int, where: str = "loss_decode") -> None:
        """Fail at build time when ``class_weight`` does not have one entry per output channel.

        Raises:
            ModelError: the lengths differ.
        """
        check_class_weight(self.class_weight, num_channels, where)

    def resolve_ignore(self, ignore_index: int | None) -> int:
        """The call's ``ignore_index`` when given, else the constructor's."""
        return self.ignore_index if ignore_index is None else ignore_index
