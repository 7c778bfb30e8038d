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
    """Greedy matching of the groups ``sel`` (sorted by detection count, descending), G padded to ``width``.

    Each step turns a detection's IoUs into unique integer keys: the IoU's rank in its row (ties
    ranked by column, so the later ground truth wins as in pycocotools), plus ``width`` for a
    non-ignored ground truth (so those are preferred). One argmax over the available candidates
    then gives pycocotools' choice without comparing floats twice.
    """
    g_count = groups.g_count[sel]
    d_count = groups.d_count[sel]
    cols = np.arange(width)
    valid = cols[None, :] < g_count[:, None]  # (n, W) real ground truths
    gidx = groups.g_start[sel][:, None] + np.minimum(cols[None, :], g_count[:, None] - 1)
    # Padding columns count as ignored; their IoU of -1 never passes a threshold anyway.
    real_bonus = np.where(valid[:, None, :], ~gt_ig[gidx].transpose(0, 2, 1), False) * width  # (n, A, W)
    real_bonus = real_bonus.astype(np.int32)
    crowd = gt_iscrowd[gidx] & valid  # (n, W)
    iou_base = groups.iou_off[sel][:, None] + np.minimum(cols[None, :], g_count[:, None] - 1)
    n_sel, n_a, n_t = len(sel), gt_ig.shape[1], len(thr)
    avail = np.ones((n_sel, n_a, n_t, width), dtype=bool)  # not yet taken (crowd stays available)
    ranks = np.broadcast_to(np.arange(width, dtype=np.int32), (n_sel, width))
    for d in range(int(d_count.max(initial=0))):
        k = int(np.count_nonzero(d_count > d))  # sorted descending: the first k groups have a d-th detection
        ious = np.where(valid[:k], groups.iou_flat[iou_base[:k] + d * g_count[:k, None]], -1.0)  # (k, W)
        key = np.empty((k, width), dtype=np.int32)
        np.put_along_axis(key, np.argsort(ious, axis=1, kind="stable"), ranks[:k], axis=1)
        passes = ious[:, None, :] >= thr[None, :, None]  # (k, T, W)
        cand = np.where(passes[:, None, :, :], (key[:, None, :] + real_bonus[:k])[:, :, None, :], -1)
        cand = np.where(avail[:k], cand, -1)  # (k, A, T, W)
        match = np.argmax(cand, axis=-1)  # (k, A, T)
        best = np.take_along_axis(cand, match[..., None], axis=-1)[..., 0]
        hit = best >= 0
        det = groups.d_start[sel[:k]] + d
        dt_matched[det] = hit
        dt_ignored[det] = hit & (best < width)
        gk, ga, gt_ = np.nonzero(hit)
        gm = match[gk, ga, gt_]
        avail[gk, ga, gt_, gm] = crowd[gk, gm]
        first = np.where(hit[:, 0, 0], match[:, 0, 0], -1)
        dt_gt[det] = np.where(first >= 0, groups.g_start[sel[:k]] + first, -1)
