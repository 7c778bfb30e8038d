"""What models return in evaluation/inference mode. Evaluators and writers consume these."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from masklab.structures.sample import SampleMeta


@dataclass
class SemanticPrediction:
    """Per-pixel prediction for one image, at the image's original resolution.

    Attributes:
        logits: (C, H, W) float scores before softmax (C = num_classes; 1 in binary mode), or
            None when the producer dropped them to save memory.
        label_map: (H, W) int64 predicted class per pixel.
        meta: the input's meta.
    """

    label_map: torch.Tensor
    meta: SampleMeta
    logits: torch.Tensor | None = None


@dataclass
class AttributePrediction:
    """One attribute's prediction for K instances.

    Attributes:
        labels: (K,) int64 value ids; ``-1`` = unknown (its "no object" slot won and the
            post-processor kept the instance as unknown).
        scores: (K,) float probability of the predicted value.
    """

    labels: torch.Tensor
    scores: torch.Tensor


@dataclass
class InstancePrediction:
    """K detected instances of one image, at its original resolution.

    Attributes:
        masks: (K, H, W) bool binarised masks.
        boxes: (K, 4) float ``x1, y1, x2, y2`` boxes derived from the masks.
        labels: (K,) int64 contiguous class labels.
        scores: (K,) float ranking scores.
        attributes: attribute name -> :class:`AttributePrediction`.
        query_index: (K,) int64 decoder query each instance came from (for debugging/tests).
        source_ids: (K,) int64 annotation id the prediction was conditioned on (box-prompted
            models such as MAL), -1 otherwise.
        meta: the input's meta.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    meta: SampleMeta
    attributes: dict[str, AttributePrediction] = field(default_factory=dict)
    query_index: torch.Tensor | None = None
    source_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        k = int(self.labels.shape[0])
        assert self.masks.shape[0] == k and self.boxes.shape == (k, 4) and self.scores.shape == (k,)
        for name, attr in self.attributes.items():
            assert attr.labels.shape == (k,) and attr.scores.shape == (k,), f"attribute {name!r} length"

    def __len__(self) -> int:
        return int(self.labels.shape[0])
