"""COCO run-length encoding helpers, thin wrappers over ``pycocotools.mask``.

RLE here is always the *compressed* form ``{"size": [h, w], "counts": str}`` that COCO results
files use (pycocotools yields ``bytes`` counts; they are decoded to ``str`` so the dict is JSON-ready).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from masklab.data.coco.records import CocoAnnotation, CocoImage, Segmentation

Rle = dict[str, Any]


def segmentation_to_rle(segm: Segmentation, height: int, width: int) -> Rle:
    """Polygons, uncompressed RLE or compressed RLE -> one compressed RLE (polygons are merged)."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    counts = segm["counts"]
    # pycocotools wants bytes counts; JSON gives str.
    return {
        "size": list(segm["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def ann_to_rle(ann: CocoAnnotation, image: CocoImage) -> Rle:
    """The annotation's region as compressed RLE; box-only annotations give their filled box."""
    if ann.segmentation is None:
        x, y, w, h = ann.bbox
        return mask_utils.frPyObjects([[x, y, x, y + h, x + w, y + h, x + w, y]], image.height, image.width)[
            0
        ]
    return segmentation_to_rle(ann.segmentation, image.height, image.width)


def ann_to_mask(ann: CocoAnnotation, image: CocoImage) -> np.ndarray:
    """The annotation's region as an (H, W) bool array."""
    return mask_utils.decode(ann_to_rle(ann, image)).astype(bool)


def segmentation_area(segm: Segmentation, height: int, width: int) -> float:
    """Pixel area of a segmentation."""
    return float(mask_utils.area(segmentation_to_rle(segm, height, width)))


def segmentation_bbox(segm: Segmentation, height: int, width: int) -> tuple[float, float, float, float]:
    """Tight ``x, y, w, h`` box of a segmentation."""
    x, y, w, h = mask_utils.toBbox(segmentation_to_rle(segm, height, width)).tolist()
    return (float(x), float(y), float(w), float(h))


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[Rle]:
    """(K, H, W) binary masks -> K compressed RLEs with ``str`` counts (JSON-ready)."""
    arr = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if arr.shape[0] == 0:
        return []
    # pycocotools wants Fortran-ordered uint8 (H, W, K).
    rles = mask_utils.encode(np.asfortranarray(arr.astype(np.uint8).transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def rle_to_pycoco(rle: Rle) -> Rle:
    """A compressed RLE with ``bytes`` counts, as pycocotools' C functions expect."""
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
