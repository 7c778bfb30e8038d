"""The model-owned step between collate and ``model(batch)``: to device, normalise, pad."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from masklab.config.registries import MODELS
from masklab.data.collate import _pad_instances, _pad_to
from masklab.errors import ModelError
from masklab.structures import Batch

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@MODELS.register()
class DataPreprocessor(nn.Module):
    """Move a collated batch to the model's device, normalise it and pad it to a size divisor.

    Args:
        mean: per-channel mean in 0-255 RGB space.
        std: per-channel standard deviation in 0-255 RGB space.
        size_divisor: pad H and W up to a multiple of this (None: no extra padding).
        size: training batches only: pad H and W up to at least this ``(H, W)``, usually the crop
            size (MMSeg's ``data_preprocessor.size``), so a crop taken from an image smaller than
            the window trains at the full size with the rest ignored. Evaluation batches are not
            padded to it (MMSeg pads them only by its ``test_cfg``).
        pad_val: value of padded image pixels *after* normalisation (0 = the mean colour).
        seg_pad_val: value of padded semantic-map pixels (the ignore index).
        bgr_to_rgb: flip the channel order first (for BGR-trained weights fed RGB images).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        size_divisor: int | None = None,
        pad_val: float = 0.0,
        seg_pad_val: int = 255,
        bgr_to_rgb: bool = False,
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ModelError(
                f"data_preprocessor: mean {list(mean)} / std {list(std)}; expected 3 values each"
            )
        if any(s <= 0 for s in std):
            raise ModelError(f"data_preprocessor.std: {list(std)}; expected positive values")
        if size_divisor is not None and size_divisor < 1:
            raise ModelError(
                f"data_preprocessor.size_divisor: {size_divisor}; expected a positive integer or null"
            )
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ModelError(
                f"data_preprocessor.size: {list(size)}; expected [height, width] of at least 1 pixel"
            )
        self.size_divisor = size_divisor
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.pad_val = float(pad_val)
        self.seg_pad_val = int(seg_pad_val)
        self.bgr_to_rgb = bgr_to_rgb
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the owning model lives (the buffers follow ``model.to``)."""
        return self.mean.device

    def forward(self, batch: Batch, training: bool = False) -> Batch:
        """Return a new normalised, padded :class:`Batch` on :attr:`device`; ``meta.pad_shape`` is set.

        ``training`` pads to at least :attr:`size` when one is set.
        """
        batch = batch.to(self.device, non_blocking=True)
        images = batch.images.float()
        if self.bgr_to_rgb:
            images = images.flip(1)
        images = (images - self.mean) / self.std
        height, width = images.shape[-2:]
        if training and self.size is not None:
            height, width = max(height, self.size[0]), max(width, self.size[1])
        if self.size_divisor:
            d = self.size_divisor
            height, width = -(-height // d) * d, -(-width // d) * d
        images = _pad_to(images, height, width, self.pad_val)
        semantic = (
            None if batch.semantic is None else _pad_to(batch.semantic, height, width, self.seg_pad_val)
        )
        # Collate padded to the largest image with 0 / 255; make that area match pad_val / seg_pad_val too.
        for i, meta in enumerate(batch.metas):
            h, w = meta.img_shape
            images[i, :, h:, :] = self.pad_val
            images[i, :, :, w:] = self.pad_val
            if semantic is not None:
                semantic[i, h:, :] = self.seg_pad_val
                semantic[i, :, w:] = self.seg_pad_val
        instances = None
        if batch.instances is not None:
            instances = [_pad_instances(inst, height, width) for inst in batch.instances]
        metas = [replace(m, pad_shape=(int(height), int(width))) for m in batch.metas]
        return Batch(images=images, metas=metas, semantic=semantic, instances=instances)
