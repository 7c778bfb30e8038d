"""Tiny Mask2Former pieces for fast tests: a 4-level conv backbone and small model/batch builders.

Imported by the tests of this folder (pytest puts the folder on sys.path); fixtures live in conftest.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from masklab.models.mask2former import (
    AttributeSpec,
    Mask2Former,
    Mask2FormerTransformerDecoder,
    MSDeformAttnPixelDecoder,
)
from masklab.structures import Batch, Instances, SampleMeta
from masklab.structures.instances import masks_to_boxes


@dataclass
class TinyFeatureInfo:
    channels: list[int] = field(default_factory=lambda: [8, 16, 24, 32])
    strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])


class TinyBackbone(nn.Module):
    """Strided convs giving maps at strides 4, 8, 16, 32."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_info = TinyFeatureInfo()
        chans = self.feature_info.channels
        self.stem = nn.Conv2d(3, chans[0], 4, stride=4)
        self.stages = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:])
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [torch.relu(self.stem(x))]
        for stage in self.stages:
            feats.append(torch.relu(stage(feats[-1])))
        return feats


def build_tiny(
    num_classes: int = 3,
    attributes: tuple[AttributeSpec, ...] = (AttributeSpec("color", 4),),
    num_queries: int = 6,
    num_layers: int = 2,
    pixel_kwargs: dict[str, object] | None = None,
    **kwargs: object,
) -> Mask2Former:
    pixel = functools.partial(
        MSDeformAttnPixelDecoder,
        conv_dim=32,
        mask_dim=16,
        num_layers=1,
        num_heads=2,
        num_points=2,
        ffn_dim=32,
        **(pixel_kwargs or {}),
    )
    decoder = functools.partial(
        Mask2FormerTransformerDecoder,
        num_queries=num_queries,
        hidden_dim=32,
        num_layers=num_layers,
        nheads=2,
        dim_feedforward=32,
    )
    kwargs.setdefault("num_points", 64)
    return Mask2Former(
        TinyBackbone(),
        num_classes=num_classes,
        attributes=attributes,
        pixel_decoder=pixel,
        decoder=decoder,
        data_preprocessor=nn.Identity(),
        **kwargs,  # type: ignore[arg-type]
    )


def make_instances(
    boxes: list[tuple[int, int, int, int]], labels: list[int], size: int, **attrs: list[int]
) -> Instances:
    masks = torch.zeros((len(boxes), size, size), dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = True
    return Instances(
        masks=masks,
        boxes=masks_to_boxes(masks),
        labels=torch.tensor(labels, dtype=torch.int64),
        attributes={k: torch.tensor(v, dtype=torch.int64) for k, v in attrs.items()},
    )


def make_batch(instances: list[Instances], size: int = 64, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(instances), 3, size, size, generator=g)
    metas = [
        SampleMeta(image_id=i, ori_shape=(size, size), img_shape=(size, size), pad_shape=(size, size))
        for i in range(len(instances))
    ]
    return Batch(images=images, metas=metas, instances=instances)
