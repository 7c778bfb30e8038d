"""Random COCO ground truth and detections for parity tests and benchmarks.

The cases exercise what COCO AP is sensitive to: crowd regions, empty images, images with
detections but no ground truth, declared categories without ground truth, score ties, all three
size buckets, polygons next to RLE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def _random_mask(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    bh = max(2, int(h * rng.uniform(0.05, scale)))
    bw = max(2, int(w * rng.uniform(0.05, scale)))
    y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    yy, xx = np.ogrid[:bh, :bw]
    if rng.random() < 0.5:
        ell = ((yy - bh / 2 + 0.5) / (bh / 2)) ** 2 + ((xx - bw / 2 + 0.5) / (bw / 2)) ** 2 <= 1.0
        mask[y0 : y0 + bh, x0 : x0 + bw] = ell
    else:
        mask[y0 : y0 + bh, x0 : x0 + bw] = 1
    return mask


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _jitter(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
    out = np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    if rng.random() < 0.3:
        out = out | np.roll(mask, 2, axis=1)
    return out


def random_coco_case(
    seed: int,
    *,
    num_images: int = 8,
    max_gt: int = 6,
    max_dets: int = 12,
    size: tuple[int, int] = (48, 224),
    attributes: bool = False,
    exact_counts: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A random COCO instances dict and a results list for it (JSON-ready).

    Args:
        seed: RNG seed (the case is deterministic).
        num_images: images; roughly one in six has no ground truth.
        max_gt: at most this many ground-truth objects per image.
        max_dets: at most this many detections per image.
        size: (min, max) image side.
        attributes: add ``color`` (3 values) and ``shape`` (2 values) attributes.
        exact_counts: every image gets exactly ``max_gt`` objects and ``max_dets`` detections.
    """
    rng = np.random.default_rng(seed)
    cat_ids = [1, 3, 7, 8, 20]  # non-contiguous; 20 never gets ground truth
    gt: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids],
    }
    if attributes:
        gt["attributes"] = [
            {"name": "color", "values": ["r", "g", "b"]},
            {"name": "shape", "values": ["box", "round"]},
        ]
    dets: list[dict[str, Any]] = []
    ann_id = 1
    for img_id in range(1, num_images + 1):
        h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, size=2))
        gt["images"].append({"id": img_id * 3, "file_name": f"{img_id}.png", "height": h, "width": w})
        n_gt = max_gt if exact_counts else (0 if rng.random() < 0.17 else int(rng.integers(1, max_gt + 1)))
        masks = []
        for _ in range(n_gt):
            mask = _random_mask(rng, h, w, scale=0.9)
            crowd = bool(rng.random() < 0.1)
            rle = _rle(mask)
            ann: dict[str, Any] = {
                "id": ann_id,
                "image_id": img_id * 3,
                "category_id": int(rng.choice(cat_ids[:4])),
                "iscrowd": int(crowd),
                "bbox": mask_utils.toBbox(rle).tolist(),
                # The file's area differs a little from the mask area, as in real COCO files.
                "area": float(mask_utils.area(rle)) * float(rng.uniform(0.9, 1.1)),
                "segmentation": rle,
            }
            if not crowd and rng.random() < 0.3:
                ys, xs = np.nonzero(mask)
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                ann["segmentation"] = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
            if attributes:
                ann["attributes"] = {"color": int(rng.integers(-1, 3)), "shape": int(rng.integers(0, 2))}
            gt["annotations"].append(ann)
            masks.append((mask, ann))
            ann_id += 1
        for _ in range(max_dets if exact_counts else int(rng.integers(0, max_dets + 1))):
            if masks and rng.random() < 0.7:
                src_mask, src = masks[int(rng.integers(len(masks)))]
                mask = _jitter(rng, src_mask)
                cat = src["category_id"] if rng.random() < 0.8 else int(rng.choice(cat_ids))
            else:
                mask = _random_mask(rng, h, w, scale=0.6)
                cat = int(rng.choice(cat_ids))
            if not mask.any():
                continue
            rle = _rle(mask)
            det: dict[str, Any] = {
                "image_id": img_id * 3,
                "category_id": cat,
                "segmentation": rle,
                "bbox": mask_utils.toBbox(rle).tolist(),
                # Two decimals make score ties common, which exercises the stable ordering.
                "score": round(float(rng.random()), 2),
            }
            if attributes:
                det["attributes"] = {"color": int(rng.integers(-1, 3)), "shape": int(rng.integers(0, 2))}
                det["attribute_scores"] = {"color": float(rng.random()), "shape": float(rng.random())}
            dets.append(det)
    return gt, dets
