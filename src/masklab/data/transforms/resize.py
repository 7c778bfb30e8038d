"""Resizing transforms: fixed scale, random scale (MMSeg) and large-scale jitter (Mask2Former)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torchvision.transforms.v2 import functional as F

from masklab.config.registries import TRANSFORMS
from masklab.data.transforms.base import apply_geometric, pair, randint, uniform
from masklab.data.transforms.crop_pad import pad_to
from masklab.errors import ConfigError
from masklab.structures import Sample


def rescale_size(height: int, width: int, scale: tuple[int, int], keep_ratio: bool) -> tuple[int, int]:
    """Target (H, W) for MMSeg's ``scale`` convention.

    With ``keep_ratio`` the image is scaled as large as possible with its long edge at most
    ``max(scale)`` and its short edge at most ``min(scale)``; otherwise ``scale`` is ``(W, H)``.
    """
    if not keep_ratio:
        return int(scale[1]), int(scale[0])
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize_to(sample: Sample, height: int, width: int) -> Sample:
    """Resize every part of ``sample`` to (height, width); updates ``scale_factor`` relative to ``ori_shape``."""
    h0, w0 = sample.meta.ori_shape if sample.meta.ori_shape != (0, 0) else tuple(sample.image.shape[-2:])
    size = [int(height), int(width)]
    out = apply_geometric(sample, lambda t: F.resize(t, size, antialias=True))
    return Sample(
        image=out.image,
        meta=replace(out.meta, scale_factor=(height / h0, width / w0)),
        semantic=out.semantic,
        instances=out.instances,
    )


@TRANSFORMS.register()
class Resize:
    """Resize to a fixed scale (bilinear for the image, nearest for maps and masks).

    Args:
        scale: ``(W, H)`` target, or with ``keep_ratio`` the ``(long, short)`` edge limits (MMSeg convention).
        keep_ratio: keep the aspect ratio.
    """

    def __init__(self, scale: int | Sequence[int], keep_ratio: bool = True) -> None:
        self.scale = pair(scale, "Resize.scale")
        self.keep_ratio = keep_ratio

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample.image.shape[-2:]
        return resize_to(sample, *rescale_size(int(h), int(w), self.scale, self.keep_ratio))

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale}, keep_ratio={self.keep_ratio})"


@TRANSFORMS.register()
class RandomResize:
    """Resize to ``scale`` multiplied by a ratio drawn uniformly from ``ratio_range`` (MMSeg's RandomResize).

    Args:
        scale: base scale, as in :class:`Resize`.
        ratio_range: (low, high) multiplier range.
        keep_ratio: keep the aspect ratio.
    """

    def __init__(
        self, scale: int | Sequence[int], ratio_range: Sequence[float] = (0.5, 2.0), keep_ratio: bool = True
    ) -> None:
        self.scale = pair(scale, "RandomResize.scale")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ConfigError(
                f"RandomResize.ratio_range: {list(ratio_range)}; expected [low, high] with 0 < low <= high"
            )
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.keep_ratio = keep_ratio

    def __call__(self, sample: Sample) -> Sample:
        ratio = uniform(*self.ratio_range)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        h, w = sample.image.shape[-2:]
        return resize_to(sample, *rescale_size(int(h), int(w), scale, self.keep_ratio))

    def __repr__(self) -> str:
        return (
            f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})"
        )


@TRANSFORMS.register()
class LargeScaleJitter:
    """Mask2Former's LSJ: resize to ``output_size * U(min_scale, max_scale)`` keeping the ratio,
    then randomly crop to ``output_size`` and pad what is missing (detectron2's ResizeScale + FixedSizeCrop).

    Args:
        output_size: (H, W) or a single side of the output.
        min_scale: smallest scale multiplier.
        max_scale: largest scale multiplier.
        pad_val: image padding value.
        seg_pad_val: semantic-map padding value.
    """

    def __init__(
        self,
        output_size: int | Sequence[int] = 1024,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
        pad_val: int = 0,
        seg_pad_val: int = 255,
    ) -> None:
        self.output_size = pair(output_size, "LargeScaleJitter.output_size")
        if not 0 < min_scale <= max_scale:
            raise ConfigError(
                f"LargeScaleJitter: min_scale={min_scale}, max_scale={max_scale}; expected 0 < min <= max"
            )
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.pad_val, self.seg_pad_val = pad_val, seg_pad_val

    def __call__(self, sample: Sample) -> Sample:
        out_h, out_w = self.output_size
        s = uniform(self.min_scale, self.max_scale)
        h, w = (int(v) for v in sample.image.shape[-2:])
        factor = min(out_h * s / h, out_w * s / w)
        sample = resize_to(sample, max(1, round(h * factor)), max(1, round(w * factor)))
        h, w = (int(v) for v in sample.image.shape[-2:])
        top, left = randint(0, max(h - out_h, 0) + 1), randint(0, max(w - out_w, 0) + 1)
        ch, cw = min(out_h, h), min(out_w, w)
        if (ch, cw) != (h, w):
            sample = apply_geometric(sample, lambda t: F.crop(t, top, left, ch, cw))
        return pad_to(sample, out_h, out_w, self.pad_val, self.seg_pad_val)

    def __repr__(self) -> str:
        return f"LargeScaleJitter(output_size={self.output_size}, min_scale={self.min_scale}, max_scale={self.max_scale})"
