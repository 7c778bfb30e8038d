"""Precision/recall tables and the 12 summary numbers, as ``COCOeval.accumulate``/``summarize``.

Detections of one category are pooled over all images at once (pycocotools concatenates
per-image lists in image-id order, then mergesorts by score; the groups here are already in that
order, so a stable sort of the pooled scores gives the same sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from masklab.evaluation.coco.match import Matches
from masklab.evaluation.coco.params import CocoEvalParams
from masklab.evaluation.coco.tables import Groups


@dataclass
class PrecisionRecall:
    """pycocotools' ``eval`` arrays.

    Attributes:
        precision: (T, R, K, A, M) interpolated precision, -1 where a category has no ground truth.
        recall: (T, K, A, M) final recall, -1 likewise.
    """

    precision: np.ndarray
    recall: np.ndarray


def accumulate(
    groups: Groups, matches: Matches, dt_scores: np.ndarray, params: CocoEvalParams
) -> PrecisionRecall:
    """Build precision/recall for every category, area range and maxDets."""
    n_t, n_r = len(params.iou_thrs), len(params.rec_thrs)
    n_k, n_a, n_m = len(groups.cat_ids), len(params.area_rngs), len(params.max_dets)
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))
    recall = -np.ones((n_t, n_k, n_a, n_m))
    # Detections and ground truths are sorted by category, so each category is one slice.
    d_bounds = np.searchsorted(groups.det_cat, np.arange(n_k + 1))
    g_bounds = np.searchsorted(groups.gt_cat, np.arange(n_k + 1))
    eps = np.spacing(1)
    for k in range(n_k):
        ds, de = d_bounds[k], d_bounds[k + 1]
        gs, ge = g_bounds[k], g_bounds[k + 1]
        rank = groups.det_rank[ds:de]
        scores = dt_scores[ds:de]
        for a in range(n_a):
            npig = int(np.count_nonzero(~matches.gt_ignored[gs:ge, a]))
            if npig == 0:
                continue
            tp_all = matches.dt_matched[ds:de, a, :] & ~matches.dt_ignored[ds:de, a, :]  # (n, T)
            fp_all = ~matches.dt_matched[ds:de, a, :] & ~matches.dt_ignored[ds:de, a, :]
            for mi, max_det in enumerate(params.max_dets):
                sel = np.nonzero(rank < max_det)[0]
                order = sel[np.argsort(-scores[sel], kind="mergesort")]
                tp_sum = np.cumsum(tp_all[order].T, axis=1).astype(float)  # (T, n)
                fp_sum = np.cumsum(fp_all[order].T, axis=1).astype(float)
                nd = len(order)
                rc = tp_sum / npig
                pr = tp_sum / (fp_sum + tp_sum + eps)
                recall[:, k, a, mi] = rc[:, -1] if nd else 0.0
                # Make precision monotone from the right (pycocotools' backwards loop).
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(n_t):
                    inds = np.searchsorted(rc[t], params.rec_thrs, side="left")
                    ok = inds < nd
                    q = np.zeros(n_r)
                    q[ok] = pr[t, inds[ok]]
                    precision[t, :, k, a, mi] = q
    return PrecisionRecall(precision, recall)


def _mean_valid(s: np.ndarray) -> float:
    valid = s[s > -1]
    return -1.0 if len(valid) == 0 else float(np.mean(valid))


def summarize(pr: PrecisionRecall, params: CocoEvalParams) -> dict[str, float]:
    """The 12 COCO numbers under ``AP AP50 AP75 APs APm APl AR<m>... ARs ARm ARl``.

    ``AP`` uses the last maxDets (pycocotools hard-codes 100, which only differs when 100 is not
    the last maxDets; there pycocotools gives -1 or a number at another maxDets).
    """
    m_last = len(params.max_dets) - 1
    labels = list(params.area_labels)

    def ap(iou: float | None = None, area: str = "all") -> float:
        s = pr.precision
        if iou is not None:
            s = s[np.where(iou == params.iou_thrs)[0]]
        return _mean_valid(s[:, :, :, [labels.index(area)], [m_last]])

    def ar(mi: int, area: str = "all") -> float:
        return _mean_valid(pr.recall[:, :, [labels.index(area)], [mi]])

    stats = {
        "AP": ap(),
        "AP50": ap(0.5),
        "AP75": ap(0.75),
        "APs": ap(area="small"),
        "APm": ap(area="medium"),
        "APl": ap(area="large"),
    }
    for mi, max_det in enumerate(params.max_dets):
        stats[f"AR{max_det}"] = ar(mi)
    stats.update({"ARs": ar(m_last, "small"), "ARm": ar(m_last, "medium"), "ARl": ar(m_last, "large")})
    return stats


def per_category_ap(pr: PrecisionRecall) -> np.ndarray:
    """(K,) AP per category at area "all" and the last maxDets (-1 for categories without ground truth)."""
    return np.array([_mean_valid(pr.precision[:, :, k, 0, -1]) for k in range(pr.precision.shape[2])])
