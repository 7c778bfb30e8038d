"""Photometric transforms: change pixel values only, never geometry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torchvision.transforms.v2 import functional as F

from masklab.config.registries import TRANSFORMS
from masklab.data.transforms.base import uniform
from masklab.structures import Sample


def _coin() -> bool:
    return bool(torch.rand(()).item() < 0.5)


@TRANSFORMS.register()
class PhotoMetricDistortion:
    """MMSeg's PhotoMetricDistortion: brightness, contrast, saturation, hue, each applied with probability 0.5.

    Contrast goes either first or last (a coin decides). Brightness and contrast follow MMSeg
    exactly (add ``U(-delta, delta)``, multiply by ``U(range)``, clip to 0-255); saturation and hue
    use torchvision's ``adjust_saturation`` (blend with grey) and ``adjust_hue`` (``hue_delta`` in
    OpenCV's 0-180 hue units), which are close to but not bit-identical with MMSeg's HSV maths.

    Args:
        brightness_delta: largest brightness shift (0-255 units).
        contrast_range: (low, high) contrast factor range.
        saturation_range: (low, high) saturation factor range.
        hue_delta: largest hue shift in OpenCV units (180 = full circle).
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = hue_delta

    def _contrast(self, img: torch.Tensor) -> torch.Tensor:
        if _coin():
            img = (img * uniform(*self.contrast_range)).clamp(0, 255)
        return img

    def __call__(self, sample: Sample) -> Sample:
        img = sample.image.float()
        if _coin():
            img = (img + uniform(-self.brightness_delta, self.brightness_delta)).clamp(0, 255)
        contrast_first = _coin()
        if contrast_first:
            img = self._contrast(img)
        if _coin():
            img = F.adjust_saturation(img / 255.0, uniform(*self.saturation_range)).clamp(0, 1) * 255.0
        if _coin():
            img = F.adjust_hue(img / 255.0, uniform(-self.hue_delta, self.hue_delta) / 180.0) * 255.0
        if not contrast_first:
            img = self._contrast(img)
        image = img.round().clamp(0, 255).to(torch.uint8)
        return replace(sample, image=image)

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, contrast_range={self.contrast_range}, "
            f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta})"
        )
