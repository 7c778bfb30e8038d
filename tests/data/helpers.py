"""Small sample factories shared by the data tests."""

from __future__ import annotations

import torch

from masklab.structures import Instances, Sample, SampleMeta
from masklab.structures.instances import masks_to_boxes


def make_sample(h: int, w: int, n: int = 2, seed: int = 0, with_instances: bool = True) -> Sample:
    """A random image with ``n`` non-overlapping-or-overlapping rectangles as instances.

    The semantic map carries each instance's class (later instances on top) so that the
    instance/semantic agreement invariant holds by construction.
    """
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    semantic = torch.zeros((h, w), dtype=torch.int64)
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    labels = torch.randint(1, 5, (n,), generator=g)
    for i in range(n):
        y1 = int(torch.randint(0, max(1, h - 2), (1,), generator=g))
        x1 = int(torch.randint(0, max(1, w - 2), (1,), generator=g))
        y2 = min(h, y1 + int(torch.randint(2, max(3, h // 2 + 1), (1,), generator=g)))
        x2 = min(w, x1 + int(torch.randint(2, max(3, w // 2 + 1), (1,), generator=g)))
        masks[i, y1:y2, x1:x2] = True
    for i in range(n):  # visible parts: later objects occlude earlier ones
        masks[i] &= ~masks[i + 1 :].any(0) if i + 1 < n else masks[i]
        semantic[masks[i]] = labels[i]
    instances = None
    if with_instances:
        instances = Instances(
            masks=masks,
            boxes=masks_to_boxes(masks),
            labels=labels,
            attributes={"color": torch.arange(n) % 3},
            ids=torch.arange(n) + 10,
        ).non_empty()
    meta = SampleMeta(image_id=seed, ori_shape=(h, w), img_shape=(h, w))
    return Sample(image=image, meta=meta, semantic=semantic, instances=instances)
