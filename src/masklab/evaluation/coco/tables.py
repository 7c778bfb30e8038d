"""Ground truth and detections as flat arrays, grouped per (category, image) with their IoUs.

This replaces pycocotools' per-annotation dicts: everything downstream (matching, accumulation)
works on numpy arrays indexed by these groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from masklab.data.coco.records import CocoFile
from masklab.data.coco.results import CocoDetection
from masklab.data.coco.rle import ann_to_rle
from masklab.errors import DataError
from masklab.evaluation.coco.params import CocoEvalParams


@dataclass
class GtTable:
    """N ground-truth regions.

    Attributes:
        image_ids, category_ids, ann_ids: (N,) int64.
        iscrowd: (N,) bool.
        areas: (N,) float64 area from the file (drives the size buckets).
        geoms: N compressed RLEs (segm) or an (N, 4) xywh float64 array (bbox).
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    ann_ids: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray
    geoms: list[dict] | np.ndarray

    @classmethod
    def from_coco(cls, gt: CocoFile, iou_type: str) -> GtTable:
        """Tables of ``gt``'s annotations; polygons are rasterised to RLE for ``segm``."""
        anns = gt.annotations
        if iou_type == "segm":
            images = gt.image_by_id()
            geoms: list[dict] | np.ndarray = [ann_to_rle(a, images[a.image_id]) for a in anns]
        else:
            geoms = np.array([a.bbox for a in anns], dtype=np.float64).reshape(-1, 4)
        return cls(
            image_ids=np.array([a.image_id for a in anns], dtype=np.int64),
            category_ids=np.array([a.category_id for a in anns], dtype=np.int64),
            ann_ids=np.array([a.id for a in anns], dtype=np.int64),
            iscrowd=np.array([a.iscrowd for a in anns], dtype=bool),
            areas=np.array([a.area for a in anns], dtype=np.float64),
            geoms=geoms,
        )


@dataclass
class DetTable:
    """M detections.

    Attributes:
        image_ids, category_ids: (M,) int64.
        scores, areas: (M,) float64.
        geoms: M compressed RLEs (segm) or an (M, 4) xywh array (bbox).
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray
    areas: np.ndarray
    geoms: list[dict] | np.ndarray

    @classmethod
    def from_detections(
        cls, dets: Sequence[CocoDetection], iou_type: str, where: str = "results"
    ) -> DetTable:
        """Tables of ``dets``; ``segm`` needs every detection to carry an RLE."""
        if iou_type == "segm":
            missing = next((i for i, d in enumerate(dets) if d.segmentation is None), None)
            if missing is not None:
                raise DataError(
                    f"{where}: result [{missing}] has no 'segmentation'; segm evaluation needs RLE masks (or use --iou-type bbox)"
                )
            # pycocotools' C functions take ``str`` counts as they are: no per-detection copy.
            geoms: list[dict] | np.ndarray = [d.segmentation for d in dets]  # type: ignore[misc]
        else:
            geoms = np.array([d.bbox for d in dets], dtype=np.float64).reshape(-1, 4)
        return cls(
            image_ids=np.array([d.image_id for d in dets], dtype=np.int64),
            category_ids=np.array([d.category_id for d in dets], dtype=np.int64),
            scores=np.array([d.score for d in dets], dtype=np.float64),
            areas=np.array([d.area for d in dets], dtype=np.float64),
            geoms=geoms,
        )


@dataclass
class Groups:
    """Ground truth and detections sorted by (category, image) with per-group IoU matrices.

    Detections are sorted by descending score inside each group (stable, file order on ties, as
    pycocotools' mergesort) and truncated to ``max_dets[-1]``.

    Attributes:
        cat_ids: (K,) evaluated category ids, ascending.
        gt_order: (N',) indices into the GtTable, grouped by (category, image).
        det_order: (M',) indices into the DetTable, grouped by (category, image), score-sorted.
        det_rank: (M',) rank of each kept detection inside its group.
        det_cat: (M',) index into ``cat_ids`` of each kept detection.
        gt_cat: (N',) index into ``cat_ids`` of each ground truth.
        g_start, g_count, d_start, d_count: (P,) per-group slices of the sorted arrays.
        iou_flat: concatenated row-major (d_count, g_count) IoU matrices; ``iou_off`` (P,) offsets.
    """

    cat_ids: np.ndarray
    gt_order: np.ndarray
    det_order: np.ndarray
    det_rank: np.ndarray
    det_cat: np.ndarray
    gt_cat: np.ndarray
    g_start: np.ndarray
    g_count: np.ndarray
    d_start: np.ndarray
    d_count: np.ndarray
    iou_flat: np.ndarray
    iou_off: np.ndarray


def _group_keys(cat: np.ndarray, img: np.ndarray, cat_ids: np.ndarray, img_ids: np.ndarray) -> np.ndarray:
    # One int64 key per (category index, image index): sorting by it groups by category, then image.
    ci = np.searchsorted(cat_ids, cat)
    ii = np.searchsorted(img_ids, img)
    return ci.astype(np.int64) * (len(img_ids) + 1) + ii


def build_groups(
    gt: GtTable, dt: DetTable, params: CocoEvalParams, image_ids: np.ndarray, cat_ids: np.ndarray
) -> Groups:
    """Group both tables per (category, image) and compute every group's IoU matrix."""
    keep_g = np.isin(gt.category_ids, cat_ids) & np.isin(gt.image_ids, image_ids)
    keep_d = np.isin(dt.category_ids, cat_ids) & np.isin(dt.image_ids, image_ids)
    g_idx = np.nonzero(keep_g)[0]
    d_idx = np.nonzero(keep_d)[0]
    g_key = _group_keys(gt.category_ids[g_idx], gt.image_ids[g_idx], cat_ids, image_ids)
    d_key = _group_keys(dt.category_ids[d_idx], dt.image_ids[d_idx], cat_ids, image_ids)
    # lexsort is stable and sorts by the last key first: group key, then -score, then file order.
    g_sorted = g_idx[np.lexsort((g_idx, g_key))]
    g_key = np.sort(g_key, kind="stable")
    d_perm = np.lexsort((d_idx, -dt.scores[d_idx], d_key))
    d_sorted, d_key = d_idx[d_perm], d_key[d_perm]
    # Rank inside each group, then keep the top max_dets[-1] as pycocotools does.
    starts = np.r_[0, np.nonzero(np.diff(d_key))[0] + 1] if len(d_key) else np.zeros(0, np.int64)
    lens = np.diff(np.r_[starts, len(d_key)])
    rank = np.arange(len(d_key)) - np.repeat(starts, lens)
    keep = rank < params.max_dets[-1]
    d_sorted, d_key, rank = d_sorted[keep], d_key[keep], rank[keep]

    keys = np.union1d(g_key, d_key)
    g_start = np.searchsorted(g_key, keys, side="left")
    g_count = np.searchsorted(g_key, keys, side="right") - g_start
    d_start = np.searchsorted(d_key, keys, side="left")
    d_count = np.searchsorted(d_key, keys, side="right") - d_start
    sizes = d_count * g_count
    iou_off = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64) if len(sizes) else np.zeros(0, np.int64)
    iou_flat = np.empty(int(sizes.sum()), dtype=np.float64)
    _fill_ious(gt, dt, g_sorted, d_sorted, g_start, g_count, d_start, d_count, iou_off, iou_flat)
    return Groups(
        cat_ids=cat_ids,
        gt_order=g_sorted,
        det_order=d_sorted,
        det_rank=rank,
        det_cat=np.searchsorted(cat_ids, dt.category_ids[d_sorted]),
        gt_cat=np.searchsorted(cat_ids, gt.category_ids[g_sorted]),
        g_start=g_start,
        g_count=g_count,
        d_start=d_start,
        d_count=d_count,
        iou_flat=iou_flat,
        iou_off=iou_off,
    )


def _fill_ious(
    gt: GtTable,
    dt: DetTable,
    g_sorted: np.ndarray,
    d_sorted: np.ndarray,
    g_start: np.ndarray,
    g_count: np.ndarray,
    d_start: np.ndarray,
    d_count: np.ndarray,
    iou_off: np.ndarray,
    out: np.ndarray,
) -> None:
    """pycocotools' ``mask.iou`` per group (crowd: intersection over detection area).

    One call per (category, image) group: batching whole images would make the C code compare
    every cross-category pair too, which costs more than the calls save. The geometry lists are
    put in group order once so that each call takes plain slices.
    """
    boxes = isinstance(gt.geoms, np.ndarray)
    if boxes:
        g_geo, d_geo = gt.geoms[g_sorted], dt.geoms[d_sorted]  # type: ignore[index]
    else:
        g_geo = [gt.geoms[i] for i in g_sorted.tolist()]
        d_geo = [dt.geoms[i] for i in d_sorted.tolist()]
    crowd = gt.iscrowd[g_sorted].astype(np.uint8).tolist()
    todo = np.nonzero((g_count > 0) & (d_count > 0))[0]
    for gs, gn, ds, dn, off in zip(
        g_start[todo].tolist(),
        g_count[todo].tolist(),
        d_start[todo].tolist(),
        d_count[todo].tolist(),
        iou_off[todo].tolist(),
    ):
        ious = mask_utils.iou(d_geo[ds : ds + dn], g_geo[gs : gs + gn], crowd[gs : gs + gn])
        out[off : off + dn * gn] = np.asarray(ious, dtype=np.float64).reshape(-1)
