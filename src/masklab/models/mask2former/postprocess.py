"""From decoder outputs to predictions at the original image resolution: instance, semantic, panoptic."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from masklab.errors import ModelError
from masklab.models.mask2former.attribute_spec import AttributeSpec
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput
from masklab.structures import AttributePrediction, InstancePrediction, SampleMeta, SemanticPrediction
from masklab.structures.instances import masks_to_boxes

RANKINGS = ("class", "product", "mean")
NO_OBJECT_POLICIES = ("drop", "unknown")
# Masks are resized to the original resolution this many at a time, bounding memory at large images.
_CHUNK = 16


def _shapes(meta: SampleMeta, pad_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(img_shape, ori_shape), falling back to the padded size when a meta leaves them unset."""
    img = tuple(meta.img_shape) if min(meta.img_shape) > 0 else pad_size
    ori = tuple(meta.ori_shape) if min(meta.ori_shape) > 0 else img
    return (int(img[0]), int(img[1])), (int(ori[0]), int(ori[1]))


def resize_mask_logits(
    logits: torch.Tensor, pad_size: tuple[int, int], img_shape: tuple[int, int], ori_shape: tuple[int, int]
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(slice, chunk)`` of (K, h, w) logits upsampled to the padded input, cropped, resized to the original."""
    for start in range(0, logits.shape[0], _CHUNK):
        chunk = logits[start : start + _CHUNK].float().unsqueeze(0)
        chunk = F.interpolate(chunk, size=pad_size, mode="bilinear", align_corners=False)
        chunk = chunk[..., : img_shape[0], : img_shape[1]]
        if tuple(chunk.shape[-2:]) != ori_shape:
            chunk = F.interpolate(chunk, size=ori_shape, mode="bilinear", align_corners=False)
        yield slice(start, start + chunk.shape[1]), chunk[0]


def mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """(K, K) IoU between (K, H, W) boolean masks."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)


class Mask2FormerPostProcessor:
    """Turns one image's final-layer outputs into a prediction.

    Args:
        num_classes: C real classes.
        attributes: attribute specs.
        test_topk: (query, class) pairs kept per image; the evaluator's ``maxDets`` must use the same value.
        ranking: instance score: ``class`` (class prob x mask score, the paper's), ``product`` (times every
            attribute probability) or ``mean`` (mean of the class score and attribute probabilities).
        min_class_score: drop instances whose class probability is below this.
        min_attribute_score: drop instances with an attribute probability below this.
        attribute_no_object: when an attribute's "no object" slot wins: ``unknown`` keeps the instance
            with value -1, ``drop`` removes it.
        duplicate_iou: if set, of two instances whose masks overlap above this IoU keep the better scored
            one (for downstream output; leave None for metrics).
        object_mask_threshold: panoptic: minimum class probability of a kept query.
        overlap_threshold: panoptic: minimum visible share of a segment's own mask.
        stuff_classes: panoptic: classes merged into one segment per class and left out of instance mode.
    """

    def __init__(
        self,
        num_classes: int,
        attributes: Sequence[AttributeSpec] = (),
        test_topk: int = 100,
        ranking: str = "class",
        min_class_score: float = 0.0,
        min_attribute_score: float = 0.0,
        attribute_no_object: str = "unknown",
        duplicate_iou: float | None = None,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        stuff_classes: Sequence[int] = (),
    ) -> None:
        if ranking not in RANKINGS:
            raise ModelError(f"model.ranking: {ranking!r} is not one of {RANKINGS}")
        if attribute_no_object not in NO_OBJECT_POLICIES:
            raise ModelError(
                f"model.attribute_no_object: {attribute_no_object!r} is not one of {NO_OBJECT_POLICIES}"
            )
        if test_topk < 1:
            raise ModelError(f"model.test_topk: expected >= 1, got {test_topk}")
        for key, value in (
            ("min_class_score", min_class_score),
            ("min_attribute_score", min_attribute_score),
            ("duplicate_iou", duplicate_iou),
            ("object_mask_threshold", object_mask_threshold),
            ("overlap_threshold", overlap_threshold),
        ):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and 0.0 <= value <= 1.0):
                raise ModelError(f"model.{key}: expected a value in [0, 1], got {value!r}")
        bad = [
            c
            for c in stuff_classes
            if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_classes
        ]
        if bad:
            raise ModelError(
                f"model.stuff_classes: {bad[0]!r} is not a class label (expected 0..{num_classes - 1})"
            )
        self.num_classes = num_classes
        self.attributes = tuple(attributes)
        self.test_topk = test_topk
        self.ranking = ranking
        self.min_class_score = min_class_score
        self.min_attribute_score = min_attribute_score
        self.attribute_no_object = attribute_no_object
        self.duplicate_iou = duplicate_iou
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.stuff_classes = tuple(int(c) for c in stuff_classes)

    def instance(
        self, out: Mask2FormerLayerOutput, index: int, meta: SampleMeta, pad_size: tuple[int, int]
    ) -> InstancePrediction:
        """Top-k (query, class) pairs of image ``index``; attributes are read from the selected *query*."""
        img_shape, ori_shape = _shapes(meta, pad_size)
        probs = out.class_logits[index].float().softmax(-1)[:, :-1]  # (Q, C)
        if self.stuff_classes:
            probs[:, list(self.stuff_classes)] = 0.0
        num_classes = probs.shape[1]
        # Stuff classes take no (query, class) pair, however large the top-k.
        k = min(self.test_topk, probs.shape[0] * (num_classes - len(set(self.stuff_classes))))
        class_scores, flat = probs.flatten().topk(k)
        labels = flat % num_classes
        queries = torch.div(flat, num_classes, rounding_mode="floor")
        logits = out.mask_logits[index][queries]
        masks = torch.zeros((k, *ori_shape), dtype=torch.bool, device=logits.device)
        mask_scores = torch.zeros(k, device=logits.device)
        for sl, chunk in resize_mask_logits(logits, pad_size, img_shape, ori_shape):
            binary = chunk > 0
            masks[sl] = binary
            mask_scores[sl] = (chunk.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        scores = class_scores * mask_scores
        keep = class_scores >= self.min_class_score
        attrs = self._attributes(out, index, queries)
        attr_scores = []
        for attr in attrs.values():
            if self.attribute_no_object == "drop":
                keep &= attr.labels >= 0
            keep &= attr.scores >= self.min_attribute_score
            attr_scores.append(attr.scores)
        if attr_scores and self.ranking == "product":
            scores = scores * torch.stack(attr_scores).prod(0)
        elif attr_scores and self.ranking == "mean":
            scores = torch.stack([scores, *attr_scores]).mean(0)
        order = scores.argsort(descending=True)
        order = order[keep[order]]
        if self.duplicate_iou is not None and order.numel() > 1:
            order = order[self._non_duplicates(masks[order])]
        return InstancePrediction(
            masks=masks[order],
            boxes=masks_to_boxes(masks[order]),
            labels=labels[order],
            scores=scores[order],
            meta=meta,
            attributes={n: AttributePrediction(a.labels[order], a.scores[order]) for n, a in attrs.items()},
            query_index=queries[order],
            source_ids=torch.full((order.numel(),), -1, dtype=torch.int64, device=order.device),
        )

    def _attributes(
        self, out: Mask2FormerLayerOutput, index: int, queries: torch.Tensor
    ) -> dict[str, AttributePrediction]:
        """Each attribute's value (-1 where its "no object" slot wins) and probability, per query."""
        attrs: dict[str, AttributePrediction] = {}
        for spec in self.attributes:
            a_probs = out.attribute_logits[spec.name][index].float().softmax(-1)[queries]  # (k, V + 1)
            a_score, a_label = a_probs.max(-1)
            no_object = a_label == spec.no_object_index
            a_label = torch.where(no_object, torch.full_like(a_label, -1), a_label)
            attrs[spec.name] = AttributePrediction(labels=a_label, scores=a_score)
        return attrs

    def _non_duplicates(self, masks: torch.Tensor) -> torch.Tensor:
        """Greedy keep over score-sorted masks: drop one that overlaps a kept one above ``duplicate_iou``."""
        assert self.duplicate_iou is not None
        iou = mask_iou(masks)
        kept: list[int] = []
        for i in range(masks.shape[0]):
            if all(iou[i, j] <= self.duplicate_iou for j in kept):
                kept.append(i)
        return torch.as_tensor(kept, dtype=torch.long, device=masks.device)

    def semantic(
        self, out: Mask2FormerLayerOutput, index: int, meta: SampleMeta, pad_size: tuple[int, int]
    ) -> SemanticPrediction:
        """Per-pixel class scores: sum over queries of class prob (no-object dropped) x mask prob."""
        img_shape, ori_shape = _shapes(meta, pad_size)
        probs = out.class_logits[index].float().softmax(-1)[:, :-1]
        scores = torch.zeros((probs.shape[1], *ori_shape), device=probs.device)
        for sl, chunk in resize_mask_logits(out.mask_logits[index], pad_size, img_shape, ori_shape):
            scores += torch.einsum("qc,qhw->chw", probs[sl], chunk.sigmoid())
        return SemanticPrediction(label_map=scores.argmax(0), meta=meta, logits=scores)

    def panoptic(
        self, out: Mask2FormerLayerOutput, index: int, meta: SampleMeta, pad_size: tuple[int, int]
    ) -> InstancePrediction:
        """Non-overlapping segments (one per thing query, stuff merged per class) as an InstancePrediction."""
        img_shape, ori_shape = _shapes(meta, pad_size)
        scores, labels = out.class_logits[index].float().softmax(-1).max(-1)
        keep = (labels != self.num_classes) & (scores > self.object_mask_threshold)
        device = scores.device
        cur_scores, cur_labels = scores[keep], labels[keep]
        queries = keep.nonzero().flatten()
        mask_probs = torch.zeros((queries.numel(), *ori_shape), device=device)
        for sl, chunk in resize_mask_logits(out.mask_logits[index][queries], pad_size, img_shape, ori_shape):
            mask_probs[sl] = chunk.sigmoid()
        segments: list[tuple[torch.Tensor, int, float, int]] = []
        stuff_seen: dict[int, int] = {}
        if queries.numel():
            owner = (cur_scores[:, None, None] * mask_probs).argmax(0)
            for k in range(queries.numel()):
                own = mask_probs[k] >= 0.5
                mask = (owner == k) & own
                area, own_area = int(mask.sum()), int(own.sum())
                if area == 0 or own_area == 0 or area / own_area < self.overlap_threshold:
                    continue
                label = int(cur_labels[k])
                if label in self.stuff_classes and label in stuff_seen:
                    j = stuff_seen[label]
                    segments[j] = (segments[j][0] | mask, label, segments[j][2], segments[j][3])
                    continue
                if label in self.stuff_classes:
                    stuff_seen[label] = len(segments)
                segments.append((mask, label, float(cur_scores[k]), int(queries[k])))
        masks = (
            torch.stack([s[0] for s in segments])
            if segments
            else torch.zeros((0, *ori_shape), dtype=torch.bool)
        )
        segment_queries = torch.tensor([s[3] for s in segments], dtype=torch.int64, device=device)
        return InstancePrediction(
            masks=masks,
            boxes=masks_to_boxes(masks),
            labels=torch.tensor([s[1] for s in segments], dtype=torch.int64),
            scores=torch.tensor([s[2] for s in segments], dtype=torch.float32),
            meta=meta,
            # A merged stuff segment reports the attributes of its first query.
            attributes=self._attributes(out, index, segment_queries),
            query_index=segment_queries,
            source_ids=torch.full((len(segments),), -1, dtype=torch.int64),
        )
