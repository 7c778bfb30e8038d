"""The AP engine gives pycocotools' numbers exactly, on random cases built to hit its corner cases."""

from __future__ import annotations

import numpy as np
import pytest

from masklab.data.coco import parse_coco
from masklab.data.coco.results import parse_coco_results
from masklab.evaluation.coco.ap import evaluate_ap
from masklab.evaluation.coco.params import CocoEvalParams
from masklab.evaluation.coco.synthetic_case import random_coco_case

from .pycoco_reference import KEYS, pycoco_eval, stats_dict


def _ours(gt_dict, dets, iou_type, max_dets=(1, 10, 100)):
    gt = parse_coco(gt_dict)
    results = parse_coco_results(dets, gt)
    return evaluate_ap(gt, results, CocoEvalParams(iou_type=iou_type, max_dets=max_dets))


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_and_tables_equal_pycocotools(seed: int, iou_type: str) -> None:
    gt, dets = random_coco_case(seed, num_images=10)
    ref = pycoco_eval(gt, dets, iou_type)
    ours = _ours(gt, dets, iou_type)
    assert ours.stats == stats_dict(ref)  # exact float equality, every one of the 12
    np.testing.assert_array_equal(ours.tables.precision, ref.eval["precision"])
    np.testing.assert_array_equal(ours.tables.recall, ref.eval["recall"])
    assert ours.per_category[20] == -1.0  # declared, never in the ground truth


@pytest.mark.parametrize("max_dets", [(1, 3, 5), (2, 4, 100)])
def test_other_max_dets(max_dets: tuple[int, ...]) -> None:
    gt, dets = random_coco_case(5, num_images=8, max_dets=15)
    ref = pycoco_eval(gt, dets, "segm", max_dets)
    ours = _ours(gt, dets, "segm", max_dets)
    np.testing.assert_array_equal(ours.tables.precision, ref.eval["precision"])
    np.testing.assert_array_equal(ours.tables.recall, ref.eval["recall"])
    ref_stats = stats_dict(ref)
    got = list(ours.stats.values())
    # pycocotools hard-codes maxDets=100 for stats[0]; everything else must agree exactly.
    assert got[1:] == [ref_stats[k] for k in KEYS[1:]]
    if max_dets[-1] == 100:
        assert got[0] == ref_stats["AP"]


def test_mask_area_rule_without_boxes() -> None:
    # Results without "bbox": pycocotools takes the mask area for the size buckets.
    gt, dets = random_coco_case(7, num_images=8)
    for d in dets:
        del d["bbox"]
    assert _ours(gt, dets, "segm").stats == stats_dict(pycoco_eval(gt, dets, "segm"))


def test_per_category_ap_matches_precision_slices() -> None:
    gt, dets = random_coco_case(3, num_images=8)
    ref = pycoco_eval(gt, dets, "segm")
    ours = _ours(gt, dets, "segm")
    for k, cat in enumerate(sorted(c["id"] for c in gt["categories"])):
        p = ref.eval["precision"][:, :, k, 0, -1]
        want = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
        assert ours.per_category[cat] == want


def test_no_detections_and_perfect_detections() -> None:
    gt, _ = random_coco_case(4, num_images=6)
    ours = _ours(gt, [], "segm")
    assert ours.stats["AP"] == 0.0 and ours.stats["AR100"] == 0.0
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    assert _ours(gt, perfect, "bbox").stats["AP50"] == pytest.approx(1.0)
