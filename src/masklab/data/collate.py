"""Batching samples of different sizes into one :class:`Batch`."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from masklab.structures import Batch, Instances, Sample

SEG_PAD_VALUE = 255


def _pad_to(t: torch.Tensor, height: int, width: int, value: float | bool) -> torch.Tensor:
    """Pad the last two dims of ``t`` at the bottom/right to ``height`` x ``width``."""
    dh, dw = height - t.shape[-2], width - t.shape[-1]
    if dh == 0 and dw == 0:
        return t
    if t.dtype == torch.bool:
        # F.pad has no bool kernel; go through uint8 and back.
        return F.pad(t.to(torch.uint8), (0, dw, 0, dh), value=int(value)).bool()
    return F.pad(t, (0, dw, 0, dh), value=value)


def _pad_instances(inst: Instances, height: int, width: int) -> Instances:
    return Instances(
        masks=_pad_to(inst.masks, height, width, False),
        boxes=inst.boxes,
        labels=inst.labels,
        attributes=dict(inst.attributes),
        ignore=inst.ignore,
        ids=inst.ids,
    )


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a :class:`Batch`, padding bottom/right to the largest H and W.

    Images stay uint8 and are padded with 0, semantic maps with 255, instance masks with False;
    each ``meta.img_shape`` records the unpadded size. Normalisation and size-divisor padding
    happen later in :class:`~masklab.data.preprocessor.DataPreprocessor`, on the model's device.
    """
    assert samples, "collate needs at least one sample"
    height = max(int(s.image.shape[-2]) for s in samples)
    width = max(int(s.image.shape[-1]) for s in samples)
    images = torch.stack([_pad_to(s.image, height, width, 0) for s in samples])
    metas = [replace(s.meta, img_shape=(int(s.image.shape[-2]), int(s.image.shape[-1]))) for s in samples]

    has_sem = [s.semantic is not None for s in samples]
    assert all(has_sem) or not any(has_sem), "some samples have a semantic map and others not"
    semantic = None
    if all(has_sem):
        semantic = torch.stack([_pad_to(s.semantic, height, width, SEG_PAD_VALUE) for s in samples])  # type: ignore[arg-type]

    has_inst = [s.instances is not None for s in samples]
    assert all(has_inst) or not any(has_inst), "some samples have instances and others not"
    instances = None
    if all(has_inst):
        instances = [_pad_instances(s.instances, height, width) for s in samples]  # type: ignore[arg-type]
    return Batch(images=images, metas=metas, semantic=semantic, instances=instances)
