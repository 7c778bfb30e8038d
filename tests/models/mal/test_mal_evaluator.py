"""MalEvaluator across 2 gloo processes, each fed half of every image's boxes, equals one process fed all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from masklab.data.coco import parse_coco
from masklab.data.coco.rle import ann_to_mask
from masklab.models.mal.evaluator import MalEvaluator
from masklab.structures import InstancePrediction
from masklab.structures.sample import SampleMeta
from tests.two_ranks import metrics_per_rank, same_metrics

WORLD = 2
SIZE = 48


def _gt() -> dict:
    """Three images, three squares each, in two categories."""
    images = [{"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE} for i in (1, 2, 3)]
    anns = []
    for i in (1, 2, 3):
        for k in range(3):
            x, y, s = 2 + 14 * k, 4 + 5 * i, 8 + 2 * k
            anns.append(
                {
                    "id": 10 * i + k,
                    "image_id": i,
                    "category_id": 1 + k % 2,
                    "bbox": [x, y, s, s],
                    "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]],
                }
            )
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _metrics(rank: int, world: int) -> dict[str, float]:
    """Score the boxes ``rank::world`` (every box when ``world == 1``).

    A MAL val loader samples boxes, not images: each rank gets some boxes of every image.
    """
    gt = parse_coco(_gt())
    images = gt.image_by_id()
    ev = MalEvaluator(gt)
    for image_id in images:
        mine = [a for a in gt.annotations if a.image_id == image_id][rank::world]
        if not mine:
            continue
        # Each box's mask is its GT square shifted by a box-dependent amount: IoUs differ per box.
        masks = np.stack([np.roll(ann_to_mask(a, images[image_id]), a.id % 4, axis=1) for a in mine])
        pred = InstancePrediction(
            masks=torch.from_numpy(masks).bool(),
            boxes=torch.zeros((len(mine), 4)),
            labels=torch.tensor([a.category_id - 1 for a in mine]),
            scores=torch.tensor([0.5 + a.id / 100 for a in mine], dtype=torch.float64),
            meta=SampleMeta(image_id=image_id),
            source_ids=torch.tensor([a.id for a in mine]),
        )
        ev.process(None, [pred])
    return ev.compute()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_mask_iou_equals_single_process(tmp_path: Path) -> None:
    ranks = metrics_per_rank(_metrics, tmp_path, WORLD)
    single = _metrics(0, 1)
    assert single["count"] == 9 and single["missing"] == 0 and 0 < single["mask_iou"] < 1
    # Every rank reports the whole set: no box of the other rank counted as missing.
    assert same_metrics(ranks[0], single) and same_metrics(ranks[1], single)


def test_ground_truth_without_masks_is_refused(tmp_path: Path) -> None:
    """A boxes-only val file was scored against the filled boxes: a model returning the box got
    mask_iou 1.0 and segm/AP 1.0."""
    import json

    from masklab.errors import DataError

    raw = _gt()
    for ann in raw["annotations"][1:]:
        del ann["segmentation"]
    path = tmp_path / "val.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError) as err:
        MalEvaluator(str(path))
    assert str(err.value).startswith(f"{path}: 8 of 9 annotations (first id=11) have no 'segmentation'")
    assert "\n" not in str(err.value)
