"""One dataset item before batching."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from masklab.structures.instances import Instances


@dataclass
class SampleMeta:
    """Where a sample came from and how its geometry changed.

    Attributes:
        image_id: dataset image id (COCO id or running index).
        file_name: source image path ("" for in-memory inputs).
        ori_shape: (H, W) of the image as read from disk.
        img_shape: (H, W) after the transforms, before padding.
        pad_shape: (H, W) after padding in the preprocessor (filled there).
        scale_factor: (sy, sx) of img_shape / ori_shape, for mapping predictions back.
        flip: whether a horizontal flip was applied.
        extra: small free-form values a dataset wants to carry (e.g. crop offsets); never
            read by models.
    """

    image_id: int = 0
    file_name: str = ""
    ori_shape: tuple[int, int] = (0, 0)
    img_shape: tuple[int, int] = (0, 0)
    pad_shape: tuple[int, int] = (0, 0)
    scale_factor: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Sample:
    """One image with its optional annotations.

    Attributes:
        image: (3, H, W) uint8 RGB image.
        semantic: (H, W) int64 class map (255 = ignore), or None.
        instances: the objects of the image, or None for semantic-only data.
        meta: provenance and geometry.
    """

    image: torch.Tensor
    meta: SampleMeta
    semantic: torch.Tensor | None = None
    instances: Instances | None = None

    def __post_init__(self) -> None:
        assert self.image.ndim == 3 and self.image.shape[0] == 3, (
            f"image must be (3,H,W), got {tuple(self.image.shape)}"
        )
        h, w = self.image.shape[-2:]
        if self.semantic is not None:
            assert tuple(self.semantic.shape) == (h, w), (
                f"semantic {tuple(self.semantic.shape)} vs image {(h, w)}"
            )
        if self.instances is not None and len(self.instances):
            assert self.instances.image_size == (h, w), f"masks {self.instances.image_size} vs image {(h, w)}"
