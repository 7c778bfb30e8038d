"""CocoEvaluator across 2 gloo processes, each fed half the images, equals one process fed all."""

from __future__ import annotations

from pathlib import Path

import pytest

from masklab.data.coco import parse_coco
from masklab.evaluation.coco.evaluator import CocoEvaluator
from masklab.evaluation.coco.synthetic_case import random_coco_case
from tests.two_ranks import metrics_per_rank, same_metrics

from .test_evaluator import _batch, _predictions

WORLD = 2


def _metrics(rank: int, world: int) -> dict[str, float]:
    """Evaluate the case's images ``rank::world`` (every image when ``world == 1``)."""
    gt_dict, dets = random_coco_case(11, num_images=6, attributes=True)
    ev = CocoEvaluator(parse_coco(gt_dict), iou_types=("segm", "bbox"))
    # Interleaved as DistributedSampler splits, so the gathered order differs from one process's.
    mine = _predictions(gt_dict, dets)[rank::world]
    for i in range(0, len(mine), 2):
        ev.process(_batch(len(mine[i : i + 2])), mine[i : i + 2])
    return ev.compute()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_gather_equals_single_process(tmp_path: Path) -> None:
    ranks = metrics_per_rank(_metrics, tmp_path, WORLD)
    single = _metrics(0, 1)
    assert {"segm/AP", "bbox/AP", "joint/AP", "attr/color/acc"} <= single.keys()
    assert single["segm/AP"] > 0
    # Every rank gets rank 0's numbers (broadcast), and they equal the single-process ones exactly.
    assert same_metrics(ranks[0], single) and same_metrics(ranks[1], single)
