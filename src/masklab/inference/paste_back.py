"""Paste box-crop mask probabilities back onto their source image (MAL labeling).

A crop covers an integer window of the image (possibly reaching outside it, see
:class:`~masklab.structures.box_crops.CropWindow`). Its probability map is resized to the window's
size in image pixels, placed at the window's offset, clipped at the image borders, and zeroed outside
the prompting box (MAL labels exactly the box it was given).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from masklab.errors import ConfigError
from masklab.structures.box_crops import CropWindow, rasterize_boxes

# COCO's size buckets on the box area in image pixels: small < 32^2 <= medium < 96^2 <= large.
SIZE_EDGES = (32.0**2, 96.0**2)


def paste_crop_probs(
    probs: torch.Tensor, window: CropWindow, image_box: torch.Tensor | None = None
) -> torch.Tensor:
    """(H, W) float image-resolution probabilities of one (h, w) crop probability map.

    Args:
        probs: (h, w) probabilities over the whole crop (any resolution; bilinearly resized).
        window: where the crop came from.
        image_box: optional (4,) ``x1, y1, x2, y2`` image box; pixels whose centre is outside it
            become 0.
    """
    height, width = window.image_size
    if window.flipped:
        probs = probs.flip(-1)
    resized = F.interpolate(
        probs[None, None].float(), size=(window.height, window.width), mode="bilinear", align_corners=False
    )[0, 0]
    canvas = probs.new_zeros((height, width), dtype=torch.float32)
    # Intersection of the window with the image, in image and in window coordinates.
    ix0, iy0 = max(window.x0, 0), max(window.y0, 0)
    ix1, iy1 = min(window.x0 + window.width, width), min(window.y0 + window.height, height)
    if ix1 > ix0 and iy1 > iy0:
        canvas[iy0:iy1, ix0:ix1] = resized[
            iy0 - window.y0 : iy1 - window.y0, ix0 - window.x0 : ix1 - window.x0
        ]
    if image_box is not None:
        canvas = canvas * rasterize_boxes(image_box.reshape(1, 4).to(canvas), height, width)[0]
    return canvas


def size_bucket(area: float) -> int:
    """0 (small), 1 (medium) or 2 (large) for a box area in image pixels squared."""
    return 0 if area < SIZE_EDGES[0] else (1 if area < SIZE_EDGES[1] else 2)


def threshold_for_area(mask_thres: Sequence[float], area: float) -> float:
    """The probability threshold for a box of ``area``: one value for all, or one per size bucket."""
    if len(mask_thres) == 1:
        return float(mask_thres[0])
    if len(mask_thres) == 3:
        return float(mask_thres[size_bucket(area)])
    raise ConfigError(
        f"model.mask_thres: expected 1 value or 3 (small, medium, large), got {list(mask_thres)}"
    )


def paste_masks(
    probs: torch.Tensor, windows: Sequence[CropWindow], image_boxes: torch.Tensor, mask_thres: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks of K crops of one image at its resolution.

    Args:
        probs: (K, h, w) crop probabilities.
        windows: K windows, all over the same image.
        image_boxes: (K, 4) image boxes (masks are zero outside them; their area picks the threshold).
        mask_thres: one threshold, or three for small / medium / large boxes.

    Returns:
        (masks (K, H, W) bool, probabilities (K, H, W) float).
    """
    assert len(windows) == probs.shape[0] == image_boxes.shape[0], "one window and box per crop"
    if not windows:
        return torch.zeros((0, 0, 0), dtype=torch.bool), torch.zeros((0, 0, 0))
    assert len({w.image_size for w in windows}) == 1, "paste_masks expects crops of one image"
    pasted = torch.stack(
        [paste_crop_probs(p, w, b) for p, w, b in zip(probs, windows, image_boxes, strict=True)]
    )
    areas = ((image_boxes[:, 2] - image_boxes[:, 0]) * (image_boxes[:, 3] - image_boxes[:, 1])).tolist()
    thres = torch.tensor(
        [threshold_for_area(mask_thres, a) for a in areas], dtype=pasted.dtype, device=pasted.device
    )
    # ">" so that a zero threshold still leaves pixels outside the box (probability 0) empty.
    return pasted > thres[:, None, None], pasted
