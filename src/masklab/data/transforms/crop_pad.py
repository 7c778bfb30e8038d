"""Cropping, padding and flipping transforms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from masklab.config.registries import TRANSFORMS
from masklab.data.transforms.base import GeometricOp, apply_geometric, finalize_instances, pair, randint
from masklab.errors import ConfigError
from masklab.structures import Instances, Sample


def pad_to(sample: Sample, height: int, width: int, pad_val: int = 0, seg_pad_val: int = 255) -> Sample:
    """Pad bottom/right up to (height, width): image ``pad_val``, semantic ``seg_pad_val``, masks False.

    The padded area becomes part of the image for later steps (its semantic label is ignored);
    ``meta.extra["unpadded_shape"]`` records the size before padding.
    """
    h, w = (int(v) for v in sample.image.shape[-2:])
    dh, dw = max(height - h, 0), max(width - w, 0)
    if dh == 0 and dw == 0:
        return sample
    border = [0, 0, dw, dh]  # left, top, right, bottom
    image = F.pad(tv_tensors.Image(sample.image), border, fill=pad_val).as_subclass(torch.Tensor)
    semantic = None
    if sample.semantic is not None:
        semantic = F.pad(tv_tensors.Mask(sample.semantic), border, fill=seg_pad_val).as_subclass(torch.Tensor)
    instances = None
    if sample.instances is not None:
        inst = sample.instances
        masks = F.pad(tv_tensors.Mask(inst.masks), border, fill=0).as_subclass(torch.Tensor).bool()
        instances = finalize_instances(
            Instances(masks, inst.boxes, inst.labels, dict(inst.attributes), inst.ignore, inst.ids)
        )
    extra = {**sample.meta.extra, "unpadded_shape": (h, w)}
    meta = replace(sample.meta, img_shape=(h + dh, w + dw), extra=extra)
    return Sample(image=image, meta=meta, semantic=semantic, instances=instances)


@TRANSFORMS.register()
class RandomCrop:
    """Crop a random ``crop_size`` window (MMSeg semantics; an image smaller than the window is not padded).

    With ``cat_max_ratio < 1`` the window is redrawn up to 10 times until no single class
    (``ignore_index`` excluded) covers ``cat_max_ratio`` or more of it, and the crop has at least two classes.

    Args:
        crop_size: (H, W) or a single side.
        cat_max_ratio: largest share one class may take of the crop.
        ignore_index: label excluded from the share computation.
    """

    def __init__(
        self, crop_size: int | Sequence[int], cat_max_ratio: float = 1.0, ignore_index: int = 255
    ) -> None:
        self.crop_size = pair(crop_size, "RandomCrop.crop_size")
        if not 0 < cat_max_ratio <= 1:
            raise ConfigError(f"RandomCrop.cat_max_ratio: {cat_max_ratio}; expected a value in (0, 1]")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index

    def _draw(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        return randint(0, h - ch + 1), randint(0, w - cw + 1), ch, cw

    def _balanced(self, semantic: torch.Tensor, box: tuple[int, int, int, int]) -> bool:
        top, left, ch, cw = box
        window = semantic[top : top + ch, left : left + cw]
        _, counts = torch.unique(window[window != self.ignore_index], return_counts=True)
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, sample: Sample) -> Sample:
        h, w = (int(v) for v in sample.image.shape[-2:])
        box = self._draw(h, w)
        if self.cat_max_ratio < 1.0 and sample.semantic is not None:
            for _ in range(10):
                if self._balanced(sample.semantic, box):
                    break
                box = self._draw(h, w)
        top, left, ch, cw = box
        if (ch, cw) == (h, w):
            return sample
        extra = {**sample.meta.extra, "crop_offset": (top, left)}
        return apply_geometric(sample, lambda t: F.crop(t, top, left, ch, cw), extra=extra)

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


@TRANSFORMS.register()
class RandomFlip:
    """Flip with probability ``prob``; ``meta.flip`` records horizontal flips.

    Args:
        prob: flip probability.
        direction: ``"horizontal"`` or ``"vertical"``.
    """

    def __init__(self, prob: float = 0.5, direction: str = "horizontal") -> None:
        if not 0 <= prob <= 1:
            raise ConfigError(f"RandomFlip.prob: {prob}; expected a probability in [0, 1]")
        if direction not in ("horizontal", "vertical"):
            raise ConfigError(f"RandomFlip.direction: {direction!r}; expected 'horizontal' or 'vertical'")
        self.prob, self.direction = float(prob), direction

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand(()).item() >= self.prob:
            return sample
        if self.direction == "horizontal":
            return apply_geometric(sample, F.horizontal_flip, flip=not sample.meta.flip)
        extra = {**sample.meta.extra, "vflip": not sample.meta.extra.get("vflip", False)}
        return apply_geometric(sample, F.vertical_flip, extra=extra)

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob}, direction={self.direction!r})"


@TRANSFORMS.register()
class Pad:
    """Pad bottom/right to a fixed ``size`` or to a multiple of ``size_divisor`` (exactly one of them).

    Args:
        size: (H, W) or a single side.
        size_divisor: pad H and W up to a multiple of this.
        pad_val: image padding value.
        seg_pad_val: semantic-map padding value.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = None,
        size_divisor: int | None = None,
        pad_val: int = 0,
        seg_pad_val: int = 255,
    ) -> None:
        if (size is None) == (size_divisor is None):
            raise ConfigError(
                f"Pad: size={size!r}, size_divisor={size_divisor!r}; expected exactly one of them"
            )
        if size_divisor is not None and not (isinstance(size_divisor, int) and size_divisor > 0):
            raise ConfigError(f"Pad.size_divisor: {size_divisor!r}; expected a positive int")
        self.size = None if size is None else pair(size, "Pad.size")
        self.size_divisor = size_divisor
        self.pad_val, self.seg_pad_val = pad_val, seg_pad_val

    def __call__(self, sample: Sample) -> Sample:
        h, w = (int(v) for v in sample.image.shape[-2:])
        if self.size is not None:
            th, tw = self.size
        else:
            d = int(self.size_divisor)  # type: ignore[arg-type]
            th, tw = -(-h // d) * d, -(-w // d) * d
        return pad_to(sample, th, tw, self.pad_val, self.seg_pad_val)

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, size_divisor={self.size_divisor})"


def _rot90_op(k: int) -> GeometricOp:
    """A joint op turning a tv_tensor ``k`` quarter turns counter-clockwise (boxes turned exactly)."""

    def op(x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, tv_tensors.BoundingBoxes):
            h, w = x.canvas_size
            boxes = x.as_subclass(torch.Tensor)
            for _ in range(k):  # one counter-clockwise quarter turn: (x, y) -> (y, W - x)
                x1, y1, x2, y2 = boxes.unbind(-1)
                boxes = torch.stack([y1, w - x2, y2, w - x1], dim=-1)
                h, w = w, h
            return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
        return type(x)(torch.rot90(x.as_subclass(torch.Tensor), k, dims=(-2, -1)))

    return op


@TRANSFORMS.register()
class RandomRotate90:
    """Turn by a random multiple of 90 degrees (1, 2 or 3 quarter turns) with probability ``prob``.

    Exact (no interpolation): image, semantic map, instance masks and boxes move together, and
    height and width swap on odd turns. With ``RandomFlip`` it draws all eight symmetries of the
    square, which is free extra data where the scene has no preferred orientation (aerial,
    microscopy, the synthetic shapes); leave it out where "up" means something (street scenes).
    ``meta.extra["rot90"]`` accumulates the quarter turns applied.

    Args:
        prob: probability of turning at all.
    """

    def __init__(self, prob: float = 0.75) -> None:
        if not 0 <= prob <= 1:
            raise ConfigError(f"RandomRotate90.prob: {prob}; expected a probability in [0, 1]")
        self.prob = float(prob)

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand(()).item() >= self.prob:
            return sample
        k = randint(1, 4)
        extra = {**sample.meta.extra, "rot90": (sample.meta.extra.get("rot90", 0) + k) % 4}
        return apply_geometric(sample, _rot90_op(k), extra=extra)

    def __repr__(self) -> str:
        return f"RandomRotate90(prob={self.prob})"
