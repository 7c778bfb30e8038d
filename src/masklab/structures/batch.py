"""A collated, preprocessed batch: what ``model(batch)`` receives."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from masklab.structures.instances import Instances
from masklab.structures.sample import SampleMeta


@dataclass
class Batch:
    """B images padded to a common size.

    Attributes:
        images: (B, 3, H, W) float images; normalised once the DataPreprocessor has run.
        metas: one :class:`SampleMeta` per image (``img_shape`` is the unpadded size).
        semantic: (B, H, W) int64 class maps padded with ``seg_pad_val`` (255), or None.
        instances: one :class:`Instances` per image (masks padded to H, W), or None.
    """

    images: torch.Tensor
    metas: list[SampleMeta] = field(default_factory=list)
    semantic: torch.Tensor | None = None
    instances: list[Instances] | None = None

    def __post_init__(self) -> None:
        b = self.images.shape[0]
        assert self.images.ndim == 4, f"images must be (B,3,H,W), got {tuple(self.images.shape)}"
        assert len(self.metas) == b, f"{len(self.metas)} metas for {b} images"
        if self.semantic is not None:
            assert self.semantic.shape[0] == b and self.semantic.shape[-2:] == self.images.shape[-2:]
        if self.instances is not None:
            assert len(self.instances) == b

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return replace(
            self,
            images=self.images.to(device, non_blocking=non_blocking),
            semantic=None if self.semantic is None else self.semantic.to(device, non_blocking=non_blocking),
            instances=None
            if self.instances is None
            else [inst.to(device, non_blocking=non_blocking) for inst in self.instances],
        )

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors (the DataLoader's ``pin_memory`` calls this)."""
        return replace(
            self,
            images=self.images.pin_memory(),
            semantic=None if self.semantic is None else self.semantic.pin_memory(),
            instances=None if self.instances is None else [inst.pin_memory() for inst in self.instances],
        )
