"""COCO AP for instance masks or boxes: numbers identical to pycocotools' COCOeval, computed faster."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from masklab.data.coco.gc_pause import gc_paused
from masklab.data.coco.records import CocoFile
from masklab.data.coco.results import CocoDetection
from masklab.evaluation.coco.accumulate import PrecisionRecall, accumulate, per_category_ap, summarize
from masklab.evaluation.coco.match import Matches, match_groups
from masklab.evaluation.coco.params import CocoEvalParams
from masklab.evaluation.coco.tables import DetTable, Groups, GtTable, build_groups


@dataclass
class CocoApResult:
    """What :func:`evaluate_ap` returns.

    Attributes:
        stats: the 12 COCO numbers (fractions; -1 where undefined), keys ``AP AP50 AP75 APs APm APl
            AR1 AR10 AR100 ARs ARm ARl`` (AR keys follow ``max_dets``).
        per_category: category id -> AP (area all, last maxDets; -1 without ground truth).
        tables: precision/recall arrays in pycocotools' layout.
        params: the settings used.
        groups: the grouped ground truth/detections (for metrics built on the same matching).
        matches: the matching (for metrics built on the same matching).
    """

    stats: dict[str, float]
    per_category: dict[int, float]
    tables: PrecisionRecall
    params: CocoEvalParams
    groups: Groups
    matches: Matches


def evaluate_ap(
    gt: CocoFile | GtTable,
    dets: Sequence[CocoDetection] | DetTable,
    params: CocoEvalParams | None = None,
    *,
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
) -> CocoApResult:
    """COCO AP of ``dets`` against ``gt``, as ``COCOeval(gt, dt, iou_type)`` evaluate/accumulate/summarize.

    Args:
        gt: ground truth (a validated :class:`CocoFile`, or a prebuilt :class:`GtTable`).
        dets: detections (validated records, or a prebuilt :class:`DetTable`).
        params: settings; default segm with maxDets 1, 10, 100.
        image_ids: images to evaluate (default: every ground-truth image; requires a CocoFile or this).
        category_ids: categories to evaluate (default: every ground-truth category).
    """
    with gc_paused():  # the tables and groups are large and acyclic (see gc_pause)
        return _evaluate_ap(gt, dets, params or CocoEvalParams(), image_ids, category_ids)


def _evaluate_ap(
    gt: CocoFile | GtTable,
    dets: Sequence[CocoDetection] | DetTable,
    params: CocoEvalParams,
    image_ids: Sequence[int] | None,
    category_ids: Sequence[int] | None,
) -> CocoApResult:
    if isinstance(gt, CocoFile):
        img_ids = np.unique([im.id for im in gt.images] if image_ids is None else list(image_ids)).astype(
            np.int64
        )
        cat_ids = np.unique(list(gt.category_ids) if category_ids is None else list(category_ids)).astype(
            np.int64
        )
        gt_table = GtTable.from_coco(gt, params.iou_type)
    else:
        assert image_ids is not None and category_ids is not None, (
            "a GtTable needs explicit image and category ids"
        )
        img_ids = np.unique(np.asarray(image_ids, dtype=np.int64))
        cat_ids = np.unique(np.asarray(category_ids, dtype=np.int64))
        gt_table = gt
    dt_table = dets if isinstance(dets, DetTable) else DetTable.from_detections(dets, params.iou_type)
    groups = build_groups(gt_table, dt_table, params, img_ids, cat_ids)
    matches = match_groups(
        groups,
        gt_table.iscrowd[groups.gt_order],
        gt_table.areas[groups.gt_order],
        dt_table.areas[groups.det_order],
        params,
    )
    tables = accumulate(groups, matches, dt_table.scores[groups.det_order], params)
    per_cat = per_category_ap(tables)
    return CocoApResult(
        stats=summarize(tables, params),
        per_category={int(c): float(v) for c, v in zip(cat_ids, per_cat)},
        tables=tables,
        params=params,
        groups=groups,
        matches=matches,
    )
