"""Run pycocotools' COCOeval on in-memory dicts (the reference the AP engine must equal)."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def pycoco_eval(
    gt: dict[str, Any], dets: list[dict[str, Any]], iou_type: str, max_dets: tuple[int, ...] = (1, 10, 100)
) -> COCOeval:
    """COCOeval after evaluate/accumulate/summarize, its prints swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        # pycocotools 2.0.9 / 2.0.10 (allowed by pyproject) read dataset["info"] in loadRes; 2.0.11 does not.
        coco.dataset.setdefault("info", {})
        coco.createIndex()
        res = coco.loadRes(copy.deepcopy(dets)) if dets else COCO()
        ev = COCOeval(coco, res, iou_type)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def stats_dict(ev: COCOeval) -> dict[str, float]:
    return dict(zip(KEYS, (float(v) for v in np.asarray(ev.stats))))
