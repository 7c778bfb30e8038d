"""Shared machinery of the joint transforms: one geometric op applied to every part of a sample.

A :class:`~masklab.structures.Sample` is unpacked into torchvision ``tv_tensors`` (``Image``,
``Mask`` for the semantic map and the instance masks, ``BoundingBoxes`` in XYXY), one
``torchvision.transforms.v2.functional`` op with already-drawn parameters is applied to each (the
tv_tensor type picks nearest interpolation for masks), and the result is packed back. Boxes are
then recomputed from the masks and instances whose mask became empty are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torchvision import tv_tensors

from masklab.config.registries import TRANSFORMS
from masklab.errors import ConfigError
from masklab.structures import Instances, Sample
from masklab.structures.instances import masks_to_boxes

Transform = Callable[[Sample], Sample]
GeometricOp = Callable[[torch.Tensor], torch.Tensor]


def apply_geometric(sample: Sample, op: GeometricOp, **meta_changes: object) -> Sample:
    """Apply ``op`` to the image, semantic map, instance masks and boxes of ``sample``.

    ``op`` receives tv_tensors and must dispatch on their type (``torchvision.transforms.v2.functional``
    ops do). ``meta_changes`` are set on the meta, and ``img_shape`` always follows the new image.
    """
    h, w = sample.image.shape[-2:]
    image = op(tv_tensors.Image(sample.image)).as_subclass(torch.Tensor)
    semantic = None
    if sample.semantic is not None:
        semantic = op(tv_tensors.Mask(sample.semantic)).as_subclass(torch.Tensor)
    instances = None
    if sample.instances is not None:
        inst = sample.instances
        masks = op(tv_tensors.Mask(inst.masks)).as_subclass(torch.Tensor)
        boxes = tv_tensors.BoundingBoxes(inst.boxes, format="XYXY", canvas_size=(int(h), int(w)))
        boxes = op(boxes).as_subclass(torch.Tensor)
        moved = Instances(
            masks=masks.bool(),
            boxes=boxes.float(),
            labels=inst.labels,
            attributes=dict(inst.attributes),
            ignore=inst.ignore,
            ids=inst.ids,
        )
        instances = finalize_instances(moved)
    meta = replace(sample.meta, img_shape=(int(image.shape[-2]), int(image.shape[-1])), **meta_changes)
    return Sample(image=image, meta=meta, semantic=semantic, instances=instances)


def finalize_instances(inst: Instances) -> Instances:
    """Drop instances whose mask is empty and make every box the tight box of its mask."""
    kept = inst.non_empty()
    kept.boxes = masks_to_boxes(kept.masks)
    if len(kept) == 0:  # keep the (0, H, W) shape the structures expect
        kept.masks = kept.masks.reshape(0, *inst.masks.shape[-2:])
    return kept


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(a, b)`` from a positive int or a 2-sequence of them (sizes); else a ConfigError naming ``name``."""
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise ConfigError(f"{name}: {value!r}; expected a positive int or a pair of positive ints")


def uniform(low: float, high: float) -> float:
    """A float in [low, high) from torch's global RNG (seeded by the engine and the loader workers)."""
    return float(low + (high - low) * torch.rand(()).item())


def randint(low: int, high: int) -> int:
    """An int in [low, high) from torch's global RNG."""
    return int(torch.randint(low, high, ()).item())


@TRANSFORMS.register()
class Compose:
    """Apply transforms in order.

    Args:
        transforms: built transforms (callables ``Sample -> Sample``).
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"
