"""Attribute metrics on COCO-matched detections, and joint AP over class x attribute categories.

Matching is exactly COCO's (IoU >= 0.5, greedy by score, area "all", the last maxDets); a
detection matched to a crowd region is ignored, as it is for AP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from masklab.data.coco.records import CocoFile
from masklab.data.coco.results import CocoDetection
from masklab.evaluation.coco.ap import CocoApResult, evaluate_ap
from masklab.evaluation.coco.params import CocoEvalParams
from masklab.evaluation.coco.tables import DetTable, GtTable


@dataclass(frozen=True)
class AttributeScores:
    """One attribute's scores on matched detections whose ground truth labels it.

    Attributes:
        name: attribute name.
        count: matched pairs scored.
        accuracy: fraction of pairs whose predicted value is right (unknown = wrong); NaN if no pair.
        macro_f1: F1 averaged over the values that occur in the truth or the predictions; NaN if no pair.
        confusion: (V, V + 1) counts, rows = true value, columns = predicted value, last = unknown.
    """

    name: str
    count: int
    accuracy: float
    macro_f1: float
    confusion: np.ndarray


def matched_pairs(result: CocoApResult) -> tuple[np.ndarray, np.ndarray]:
    """(detection index, ground-truth index) into the tables given to :func:`evaluate_ap`, at IoU 0.5."""
    m = result.matches
    dt_gt = m.dt_gt
    ok = dt_gt >= 0
    ok[ok] = ~m.gt_ignored[dt_gt[ok], 0]
    return result.groups.det_order[ok], result.groups.gt_order[dt_gt[ok]]


def attribute_scores(
    gt: CocoFile, dets: Sequence[CocoDetection], result: CocoApResult, names: Sequence[str]
) -> list[AttributeScores]:
    """Accuracy, macro-F1 and confusion matrix of each attribute in ``names``."""
    det_idx, gt_idx = matched_pairs(result)
    metas = {a.name: a for a in gt.attributes}
    out = []
    for name in names:
        n_values = len(metas[name].values)
        truth = np.array([gt.annotations[g].attributes.get(name, -1) for g in gt_idx], dtype=np.int64)
        pred = np.array([dets[d].attributes.get(name, -1) for d in det_idx], dtype=np.int64)
        labelled = truth >= 0
        truth, pred = truth[labelled], pred[labelled]
        confusion = np.zeros((n_values, n_values + 1), dtype=np.int64)
        np.add.at(confusion, (truth, np.where(pred >= 0, pred, n_values)), 1)
        out.append(AttributeScores(name, len(truth), _accuracy(truth, pred), _macro_f1(confusion), confusion))
    return out


def _accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(truth == pred)) if len(truth) else float("nan")


def _macro_f1(confusion: np.ndarray) -> float:
    n_values = confusion.shape[0]
    tp = np.diag(confusion[:, :n_values]).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion[:, :n_values].sum(axis=0)
    present = (support > 0) | (predicted > 0)
    if not present.any():
        return float("nan")
    f1 = 2 * tp / np.maximum(support + predicted, 1)
    return float(f1[present].mean())


def joint_ap(
    gt: CocoFile,
    gt_table: GtTable,
    dets: Sequence[CocoDetection],
    dt_table: DetTable,
    params: CocoEvalParams,
    image_ids: Sequence[int],
    names: Sequence[str],
) -> CocoApResult:
    """COCO AP over composite categories (class, value of each attribute in ``names``).

    A detection is a true positive only if its class and every attribute are right. Ground truth
    with an unlabelled attribute forms its own composite (value -1), which only detections that
    predict "unknown" can match.
    """
    gt_keys = [(a.category_id, *(a.attributes.get(n, -1) for n in names)) for a in gt.annotations]
    dt_keys = [(d.category_id, *(d.attributes.get(n, -1) for n in names)) for d in dets]
    ids = {key: i for i, key in enumerate(sorted(set(gt_keys) | set(dt_keys)))}
    gt_cat = np.array([ids[k] for k in gt_keys], dtype=np.int64)
    dt_cat = np.array([ids[k] for k in dt_keys], dtype=np.int64)
    evaluated = np.unique(gt_cat) if len(gt_cat) else np.zeros(0, np.int64)
    return evaluate_ap(
        replace(gt_table, category_ids=gt_cat),
        replace(dt_table, category_ids=dt_cat),
        params,
        image_ids=image_ids,
        category_ids=evaluated,
    )
