"""Panoptic quality (PQ = SQ x RQ) with the official COCO-panoptic (panopticapi) semantics.

Per image, ground-truth and predicted segments of the same category match when their IoU > 0.5
(unique by construction, since segments do not overlap). The IoU's union leaves out the part of
the prediction that lies on void (unlabeled, id 0) pixels. Crowd ground truth is never matched;
an unmatched prediction whose pixels lie more than half on void plus crowd regions of its own
category is not a false positive. Unmatched non-crowd ground truth is a false negative.

Per category: PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP, RQ = TP / (TP +
FP/2 + FN/2); the "All", "Things" and "Stuff" numbers average categories with TP + FP + FN > 0.
One deliberate difference: panopticapi keeps one crowd segment per (image, category) (the last
one); here all crowd segments of the category count (COCO has at most one, so numbers agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from masklab.errors import DataError
from masklab.evaluation.panoptic.records import (
    VOID,
    PanopticCategory,
    PanopticFile,
    PanopticImage,
    load_panoptic_json,
    read_id_map,
)

_OFFSET = 256**3  # larger than any PNG id, so gt * OFFSET + pred is a unique pair key


@dataclass
class PQCounts:
    """Matching counts of one category.

    Attributes:
        tp, fp, fn: true positives, false positives, false negatives.
        iou: sum of the IoUs of the true positives.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou: float = 0.0

    def add(self, other: PQCounts) -> None:
        """Accumulate ``other`` into this one."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou

    @property
    def pq(self) -> float:
        """Panoptic quality (0 without any segment)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.iou / denom if denom else 0.0

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matches (0 without a match)."""
        return self.iou / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        """Recognition quality: an F1 score of the matching (0 without any segment)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.tp / denom if denom else 0.0


@dataclass(frozen=True)
class PQSummary:
    """PQ/SQ/RQ (fractions) averaged over ``n`` categories that have any segment."""

    pq: float
    sq: float
    rq: float
    n: int


@dataclass
class PQResult:
    """What :func:`pq_compute` returns.

    Attributes:
        all, things, stuff: averages over every / thing / stuff category with TP + FP + FN > 0.
        per_category: category id -> its counts (``.pq``, ``.sq``, ``.rq`` give its numbers).
        categories: the ground-truth categories, by id.
    """

    all: PQSummary
    things: PQSummary
    stuff: PQSummary
    per_category: dict[int, PQCounts]
    categories: dict[int, PanopticCategory] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """Flat metrics: ``PQ SQ RQ PQ_th SQ_th RQ_th PQ_st SQ_st RQ_st`` (fractions)."""
        out: dict[str, float] = {}
        for suffix, s in (("", self.all), ("_th", self.things), ("_st", self.stuff)):
            out.update({f"PQ{suffix}": s.pq, f"SQ{suffix}": s.sq, f"RQ{suffix}": s.rq})
        return out


def pq_image(
    gt_ids: np.ndarray,
    gt: PanopticImage,
    pred_ids: np.ndarray,
    pred: PanopticImage,
    categories: Mapping[int, PanopticCategory],
    where: str = "",
) -> dict[int, PQCounts]:
    """Counts per category for one image, given its ground-truth and predicted PNG id maps."""
    if gt_ids.shape != pred_ids.shape:
        raise DataError(
            f"{where}image_id {gt.image_id}: prediction PNG is {pred_ids.shape}, ground truth {gt_ids.shape}"
        )
    keys, counts = np.unique(gt_ids.astype(np.int64) * _OFFSET + pred_ids, return_counts=True)
    pairs = {(int(k // _OFFSET), int(k % _OFFSET)): int(c) for k, c in zip(keys, counts)}
    gt_segs = {s.id: s for s in gt.segments}
    pred_segs = {s.id: s for s in pred.segments}
    gt_area = _areas(gt_ids, gt_segs, f"{where}ground truth image_id {gt.image_id}", use_json=True)
    pred_area = _areas(pred_ids, pred_segs, f"{where}prediction image_id {pred.image_id}", use_json=False)
    for s in pred.segments:
        if s.category_id not in categories:
            raise DataError(
                f"{where}prediction image_id {pred.image_id}: segment {s.id} has unknown category_id {s.category_id}"
            )
    stats: dict[int, PQCounts] = {}
    gt_hit: set[int] = set()
    pred_hit: set[int] = set()
    for (g, p), inter in pairs.items():
        gs, ps = gt_segs.get(g), pred_segs.get(p)
        if gs is None or ps is None or gs.iscrowd or gs.category_id != ps.category_id:
            continue
        union = pred_area[p] + gt_area[g] - inter - pairs.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            c = stats.setdefault(gs.category_id, PQCounts())
            c.tp += 1
            c.iou += iou
            gt_hit.add(g)
            pred_hit.add(p)
    crowd: dict[int, list[int]] = {}
    for s in gt.segments:
        if s.iscrowd:
            crowd.setdefault(s.category_id, []).append(s.id)
        elif s.id not in gt_hit:
            stats.setdefault(s.category_id, PQCounts()).fn += 1
    for s in pred.segments:
        if s.id in pred_hit:
            continue
        excused = pairs.get((VOID, s.id), 0) + sum(
            pairs.get((g, s.id), 0) for g in crowd.get(s.category_id, ())
        )
        if excused / pred_area[s.id] > 0.5:
            continue
        stats.setdefault(s.category_id, PQCounts()).fp += 1
    return stats


def _areas(ids: np.ndarray, segs: dict[int, object], here: str, *, use_json: bool) -> dict[int, int]:
    """Pixel area per segment; PNG ids and JSON segments must correspond one to one."""
    labels, counts = np.unique(ids, return_counts=True)
    found = dict(zip(labels.tolist(), counts.tolist()))
    found.pop(VOID, None)
    extra = sorted(set(found) - set(segs))
    if extra:
        raise DataError(f"{here}: PNG has segment id {extra[0]} that is not in segments_info")
    missing = sorted(set(segs) - set(found))
    if missing:
        raise DataError(f"{here}: segments_info has segment id {missing[0]} that is absent from the PNG")
    if use_json:
        # panopticapi takes ground-truth areas from the JSON; predicted areas always from the PNG.
        return {k: (s.area if s.area is not None else found[k]) for k, s in segs.items()}  # type: ignore[attr-defined]
    return found


def summarize_pq(
    per_category: Mapping[int, PQCounts], categories: Mapping[int, PanopticCategory]
) -> PQResult:
    """Average the per-category counts into All / Things / Stuff numbers."""

    def average(isthing: bool | None) -> PQSummary:
        rows = [
            per_category[c]
            for c, cat in categories.items()
            if (isthing is None or cat.isthing == isthing)
            and c in per_category
            and per_category[c].tp + per_category[c].fp + per_category[c].fn > 0
        ]
        if not rows:
            return PQSummary(0.0, 0.0, 0.0, 0)
        n = len(rows)
        return PQSummary(
            sum(r.pq for r in rows) / n, sum(r.sq for r in rows) / n, sum(r.rq for r in rows) / n, n
        )

    full = {c: per_category.get(c, PQCounts()) for c in categories}
    return PQResult(average(None), average(True), average(False), full, dict(categories))


def pq_compute(
    gt_json: str | Path | PanopticFile,
    gt_folder: str | Path,
    pred_json: str | Path | PanopticFile,
    pred_folder: str | Path,
) -> PQResult:
    """Panoptic quality of a COCO-panoptic prediction against ground truth.

    Args:
        gt_json: ground-truth panoptic JSON (needs ``categories`` with ``isthing``).
        gt_folder: folder of the ground-truth PNGs.
        pred_json: predicted panoptic JSON (``annotations`` only is enough).
        pred_folder: folder of the predicted PNGs.

    Raises:
        DataError: an image without a prediction, a PNG/JSON mismatch, an unknown category.
    """
    gt = gt_json if isinstance(gt_json, PanopticFile) else load_panoptic_json(gt_json)
    pred = pred_json if isinstance(pred_json, PanopticFile) else load_panoptic_json(pred_json)
    categories = {c.id: c for c in gt.categories}
    if not categories:
        raise DataError(f"{gt.path}: no 'categories'; panoptic ground truth must list them with 'isthing'")
    preds = pred.by_image()
    total: dict[int, PQCounts] = {}
    for ann in gt.annotations:
        p = preds.get(ann.image_id)
        if p is None:
            raise DataError(f"{pred.path}: no prediction for image_id {ann.image_id}")
        for s in ann.segments:
            if s.category_id not in categories:
                raise DataError(
                    f"{gt.path}: image_id {ann.image_id} segment {s.id} has unknown category_id {s.category_id}"
                )
        gt_ids = read_id_map(Path(gt_folder) / ann.file_name)
        pred_ids = read_id_map(Path(pred_folder) / p.file_name)
        for cat, counts in pq_image(gt_ids, ann, pred_ids, p, categories).items():
            total.setdefault(cat, PQCounts()).add(counts)
    return summarize_pq(total, categories)
