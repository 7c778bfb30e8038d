"""COCO's greedy detection-to-ground-truth matching, vectorised over groups, area ranges and IoU thresholds.

pycocotools walks every (image, category, area range) with three nested Python loops (thresholds,
detections, ground truths). The detections of a group must still be visited in score order (each
one claims a ground truth before the next looks), but all groups, area ranges and thresholds are
independent, so here one step handles the d-th detection of every group at once.

Rules reproduced from ``COCOeval.evaluateImg``:
- a ground truth is ignored when it is crowd or its area is outside the range;
- a detection takes the unmatched (crowd: any) ground truth with the highest IoU >= threshold,
  preferring non-ignored ones; ties go to the later ground truth in file order;
- a detection matched to an ignored ground truth is ignored; an unmatched detection whose area is
  outside the range is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from masklab.evaluation.coco.params import CocoEvalParams
from masklab.evaluation.coco.tables import Groups


@dataclass
class Matches:
    """Per kept detection and ground truth, for A area ranges and T thresholds.

    Attributes:
        dt_matched: (M', A, T) bool, detection matched some ground truth.
        dt_ignored: (M', A, T) bool, detection does not count (matched an ignored GT, or out of range).
        gt_ignored: (N', A) bool.
        dt_gt: (M',) index into the sorted ground truth of the match at area "all" and the first
            threshold (0.5), -1 if none; used by the attribute metrics.
    """

    dt_matched: np.ndarray
    dt_ignored: np.ndarray
    gt_ignored: np.ndarray
    dt_gt: np.ndarray


def _last_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the last maximum along the last axis (pycocotools' ``>=`` scan keeps the later tie)."""
    n = values.shape[-1]
    return n - 1 - np.argmax(values[..., ::-1], axis=-1)


def match_groups(
    groups: Groups, gt_iscrowd: np.ndarray, gt_area: np.ndarray, dt_area: np.ndarray, params: CocoEvalParams
) -> Matches:
    """Match every group; ``gt_*`` / ``dt_area`` are aligned with ``groups.gt_order`` / ``det_order``."""
    lo = np.array([r[0] for r in params.area_rngs])
    hi = np.array([r[1] for r in params.area_rngs])
    thr = np.minimum(params.iou_thrs, 1 - 1e-10)
    n_a, n_t = len(lo), len(thr)
    gt_ig = gt_iscrowd[:, None] | (gt_area[:, None] < lo) | (gt_area[:, None] > hi)
    dt_out = (dt_area[:, None] < lo) | (dt_area[:, None] > hi)
    m = len(dt_area)
    dt_matched = np.zeros((m, n_a, n_t), dtype=bool)
    dt_ignored = np.zeros((m, n_a, n_t), dtype=bool)
    dt_gt = np.full(m, -1, dtype=np.int64)

    active = np.nonzero((groups.g_count > 0) & (groups.d_count > 0))[0]
    # Bucket groups by padded ground-truth count (powers of two) to bound padding waste.
    pad = np.maximum(1, 2 ** np.ceil(np.log2(np.maximum(groups.g_count[active], 1)))).astype(np.int64)
    for size in np.unique(pad):
        sel = active[pad == size]
        sel = sel[np.argsort(-groups.d_count[sel], kind="stable")]
        _match_bucket(groups, sel, int(size), gt_ig, gt_iscrowd, thr, dt_matched, dt_ignored, dt_gt)
    dt_ignored |= ~dt_matched & dt_out[:, :, None]
    return Matches(dt_matched, dt_ignored, gt_ig, dt_gt)


def _match_bucket(
    groups: Groups,
    sel: np.ndarray,
    width: int,
    gt_ig: np.ndarray,
    gt_iscrowd: np.ndarray,
    thr: np.ndarray,
    dt_matched: np.ndarray,
    dt_ignored: np.ndarray,
    dt_gt: np.ndarray,
) -> None:
    """Greedy matching of the groups ``sel`` (sorted by detection count, descending), G padded to ``width``."""
    g_count = groups.g_count[sel]
    d_count = groups.d_count[sel]
    cols = np.arange(width)
    valid = cols[None, :] < g_count[:, None]  # (n, W) real ground truths
    gidx = groups.g_start[sel][:, None] + np.minimum(cols[None, :], g_count[:, None] - 1)
    ig = np.where(valid[:, None, :], gt_ig[gidx].transpose(0, 2, 1), True)  # (n, A, W)
    crowd = gt_iscrowd[gidx] & valid  # (n, W)
    iou_base = groups.iou_off[sel][:, None] + np.minimum(cols[None, :], g_count[:, None] - 1)
    n_a, n_t = gt_ig.shape[1], len(thr)
    taken = np.zeros((len(sel), n_a, n_t, width), dtype=bool)
    for d in range(int(d_count.max(initial=0))):
        k = int(np.count_nonzero(d_count > d))  # sorted descending: the first k groups have a d-th detection
        ious = np.where(valid[:k], groups.iou_flat[iou_base[:k] + d * g_count[:k, None]], -1.0)  # (k, W)
        iou4 = ious[:, None, None, :]
        ok = (iou4 >= thr[None, None, :, None]) & (~taken[:k] | crowd[:k, None, None, :])  # (k, A, T, W)
        ig4 = ig[:k, :, None, :]
        ok_real = ok & ~ig4
        ok_ign = ok & ig4
        best_real = _last_argmax(np.where(ok_real, iou4, -np.inf))
        best_ign = _last_argmax(np.where(ok_ign, iou4, -np.inf))
        match = np.where(ok_real.any(-1), best_real, np.where(ok_ign.any(-1), best_ign, -1))  # (k, A, T)
        hit = match >= 0
        det = groups.d_start[sel[:k]] + d
        dt_matched[det] = hit
        ig_of_match = np.take_along_axis(
            np.broadcast_to(ig4, ok.shape), np.maximum(match, 0)[..., None], axis=-1
        )[..., 0]
        dt_ignored[det] = hit & ig_of_match
        taken[:k] |= cols[None, None, None, :] == match[..., None]
        first = match[:, 0, 0]
        dt_gt[det] = np.where(first >= 0, groups.g_start[sel[:k]] + first, -1)
