"""The MAL model's data preprocessor: normalise both crop views and move the batch to the model's device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from masklab.structures.box_crops import MalBatch


class MalDataPreprocessor(nn.Module):
    """``(x - mean) / std`` on the student and teacher views of a :class:`MalBatch`.

    Args:
        mean: per-channel mean in 0..255 units (ImageNet by default).
        std: per-channel std in 0..255 units.
    """

    def __init__(
        self,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, batch: MalBatch, training: bool = False) -> MalBatch:
        """Normalised float views on the model's device (``training`` changes nothing here)."""
        moved = batch.to(self.mean.device)
        return replace(
            moved, images=self._norm(moved.images), teacher_images=self._norm(moved.teacher_images)
        )

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8, (
            "MalDataPreprocessor expects the uint8 crops that collate_box_crops stacks"
        )
        return (x.float() - self.mean) / self.std
