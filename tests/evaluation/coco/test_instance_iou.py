"""Per-instance mask IoU against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from masklab.data.coco import parse_coco
from masklab.evaluation.coco.instance_iou import instance_iou


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def test_instance_iou_by_hand() -> None:
    gt = parse_coco(
        {
            "images": [{"id": 1, "file_name": "x", "height": 10, "width": 10}],
            "categories": [{"id": 2, "name": "a"}, {"id": 9, "name": "b"}],
            "annotations": [
                {
                    "id": 5,
                    "image_id": 1,
                    "category_id": 2,
                    "bbox": [0, 0, 4, 4],
                    "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
                },
                {
                    "id": 6,
                    "image_id": 1,
                    "category_id": 9,
                    "bbox": [5, 5, 2, 2],
                    "segmentation": [[5, 5, 7, 5, 7, 7, 5, 7]],
                },
            ],
        }
    )
    pred = np.zeros((10, 10), bool)
    pred[0:4, 0:2] = True  # half of annotation 5's 4x4 square -> IoU 8/16
    result = instance_iou(gt, {5: _rle(pred)})  # annotation 6 has no prediction -> IoU 0
    assert result.per_category == {2: pytest.approx(0.5), 9: 0.0}
    assert result.miou == pytest.approx(0.25) and result.missing == 1 and result.count == 2
    assert result.per_size["small"] == pytest.approx(0.25) and np.isnan(result.per_size["large"])
