"""CocoEvaluator across 2 gloo processes, each fed half the images, equals one process fed all."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from masklab.data.coco import parse_coco
from masklab.evaluation.coco.evaluator import CocoEvaluator
from masklab.evaluation.coco.synthetic_case import random_coco_case

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


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        metrics = _metrics(rank, WORLD)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_gather_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    single = _metrics(0, 1)
    assert {"segm/AP", "bbox/AP", "joint/AP", "attr/color/acc"} <= single.keys()
    assert single["segm/AP"] > 0
    # Every rank gets rank 0's numbers (broadcast), and they equal the single-process ones exactly.
    assert _same(ranks[0], single) and _same(ranks[1], single)
