"""MAL's metric: per-instance mask IoU of each pseudo-label against its box's GT mask, plus COCO segm AP."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from masklab.data.coco.load import load_coco
from masklab.data.coco.records import CocoFile
from masklab.data.coco.rle import Rle, encode_masks
from masklab.engine.distributed import all_gather_object
from masklab.errors import DataError
from masklab.evaluation.coco.evaluator import CocoEvaluator
from masklab.evaluation.coco.instance_iou import instance_iou
from masklab.structures.predictions import InstancePrediction

__all__ = ["MalEvaluator"]


class MalEvaluator:
    """Scores labeled boxes against the GT masks of the same COCO file (``dataset.val_ann_path``).

    Keys: ``mask_iou`` (mean over categories of the per-category mean IoU, as TAO/MAL report it),
    ``mask_iou_small/medium/large`` (COCO area buckets of the GT annotation), ``mask_iou/<category>``,
    and ``segm/AP``... (COCO AP of the pseudo-labels as detections ranked by their score). Boxes of
    images never processed are not counted; a processed box without prediction scores IoU 0.

    Under a process group every rank holds the boxes its sampler gave it (an image's boxes are
    spread over the ranks: one sample per box), so :meth:`compute` gathers every rank's masks and
    image ids before scoring, and the COCO part gathers its detections itself: every rank returns
    the numbers of the whole set, equal to one process's.

    Args:
        gt: the COCO file with ground-truth masks (or its path); a non-crowd annotation without a
            ``segmentation`` is a one-line :class:`DataError`.
        max_dets: COCO maxDets.
    """

    def __init__(self, gt: CocoFile | str, *, max_dets: tuple[int, ...] = (1, 10, 100)) -> None:
        self.gt = gt if isinstance(gt, CocoFile) else load_coco(gt)
        boxes_only = [a.id for a in self.gt.annotations if a.segmentation is None and not a.iscrowd]
        if boxes_only:
            # Scored against its filled box, such an annotation rewards box-shaped labels (a model
            # that returns the box would reach mask_iou 1.0).
            raise DataError(
                f"{gt if isinstance(gt, str) else 'the ground truth'}: {len(boxes_only)} of "
                f"{len(self.gt.annotations)} annotations (first id={boxes_only[0]}) have no 'segmentation'; "
                "MAL evaluation scores the labels against ground-truth masks (dataset.val_ann_path: use a "
                "file with masks, or leave it out to train without validation)"
            )
        self.coco = CocoEvaluator(self.gt, iou_types=("segm",), max_dets=max_dets, attribute_names=())
        self.metrics: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the predictions processed so far."""
        self._masks: dict[int, Rle] = {}
        self._image_ids: set[int] = set()
        self.coco.reset()

    def process(self, batch: Any, predictions: list[InstancePrediction]) -> None:
        """Keep each prediction's RLE under the annotation id it was conditioned on."""
        for pred in predictions:
            if pred.source_ids is None:
                raise ValueError("MalEvaluator: predictions need source_ids (the labeled annotation ids)")
            self._image_ids.add(int(pred.meta.image_id))
            for ann_id, rle in zip(pred.source_ids.tolist(), encode_masks(pred.masks), strict=True):
                self._masks[int(ann_id)] = rle
        self.coco.process(batch, predictions)

    @property
    def metric_description(self) -> str:
        """How the numbers are computed."""
        return (
            "mask_iou: per-instance mask IoU vs the GT mask of the same annotation, mean per category then "
            "over categories; size buckets by GT area (<32^2, <96^2, rest); " + self.coco.metric_description
        )

    def compute(self) -> dict[str, float]:
        """Instance IoU over the processed images' annotations (all ranks' boxes), then COCO AP."""
        masks, image_ids = self._masks, self._image_ids
        # The same gather the COCO evaluator does for its detections (all_gather_object; one
        # process gets its own part back). A box a padded sampler gave two ranks has one id,
        # so it is counted once.
        parts = all_gather_object((masks, sorted(image_ids)))
        if len(parts) > 1:
            masks = {ann_id: rle for part, _ in parts for ann_id, rle in part.items()}
            image_ids = {i for _, ids in parts for i in ids}
        anns = tuple(a for a in self.gt.annotations if a.image_id in image_ids)
        subset = dataclasses.replace(self.gt, annotations=anns)
        res = instance_iou(subset, masks)
        names = {c.id: c.name for c in self.gt.categories}
        metrics = {"mask_iou": res.miou, "count": float(res.count), "missing": float(res.missing)}
        metrics.update({f"mask_iou_{k}": v for k, v in res.per_size.items()})
        metrics.update({f"mask_iou/{names.get(c, c)}": v for c, v in res.per_category.items()})
        metrics.update(self.coco.compute())
        self.metrics = metrics
        return metrics

    def format_report(self) -> str:
        """A small console table of the last :meth:`compute`."""
        rows = [f"{'metric':<28}{'value':>8}"]
        for key, value in self.metrics.items():
            if key.startswith("mask_iou") or key in ("segm/AP", "segm/AP50", "segm/AP75", "count", "missing"):
                shown = "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"
                rows.append(f"{key:<28}{shown:>8}")
        rows.append(f"({self.metric_description})")
        return "\n".join(rows)
