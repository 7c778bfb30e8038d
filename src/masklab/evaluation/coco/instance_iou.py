"""Per-instance mask IoU for box-conditioned predictions (the metric mask auto-labeling reports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from masklab.data.coco.records import CocoFile
from masklab.data.coco.rle import Rle, ann_to_rle, rle_to_pycoco

_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


@dataclass(frozen=True)
class InstanceIouResult:
    """Mask IoU of each prediction with the ground-truth annotation it was conditioned on.

    Attributes:
        miou: mean over categories of the per-category mean IoU.
        per_category: category id -> mean IoU of its instances.
        per_size: ``small``/``medium``/``large`` (COCO buckets of the annotation area) -> mean IoU; NaN if empty.
        count: instances scored (crowd annotations are skipped).
        missing: annotations without a prediction (scored as IoU 0).
    """

    miou: float
    per_category: dict[int, float]
    per_size: dict[str, float]
    count: int
    missing: int


def instance_iou(gt: CocoFile, predictions: Mapping[int, Rle]) -> InstanceIouResult:
    """Score ``predictions`` (annotation id -> predicted RLE) against every non-crowd annotation of ``gt``."""
    images = gt.image_by_id()
    ious, cats, areas = [], [], []
    missing = 0
    for ann in gt.annotations:
        if ann.iscrowd:
            continue
        pred = predictions.get(ann.id)
        if pred is None:
            missing += 1
            iou = 0.0
        else:
            iou = float(
                mask_utils.iou([rle_to_pycoco(pred)], [ann_to_rle(ann, images[ann.image_id])], [0])[0, 0]
            )
        ious.append(iou)
        cats.append(ann.category_id)
        areas.append(ann.area)
    iou_a, cat_a, area_a = np.array(ious), np.array(cats), np.array(areas)
    per_cat = {int(c): float(iou_a[cat_a == c].mean()) for c in np.unique(cat_a)}
    per_size = {}
    for name, lo, hi in _BUCKETS:
        sel = (area_a >= lo) & (area_a < hi)
        per_size[name] = float(iou_a[sel].mean()) if sel.any() else float("nan")
    miou = float(np.mean(list(per_cat.values()))) if per_cat else float("nan")
    return InstanceIouResult(miou, per_cat, per_size, len(ious), missing)
