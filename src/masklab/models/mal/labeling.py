"""Batched MAL labeling: many box crops per forward, vectorised paste-back.

Labeling cost per box on CPU is what matters against classical labelers (GrabCut), so:

* each image is decoded once and all its boxes are cropped from it in one batched product
  (:func:`crop_boxes`: the reflect-padded, antialiased crops of ``make_box_crop`` as
  ``W_y @ region @ W_x^T``); whole images are packed into forwards of up to ``batch_size``
  crops, so one forward serves boxes of several images;
* the forward runs under ``torch.inference_mode`` in ``channels_last`` layout (about 2x faster
  for the small convolutions of the CPU encoders with one thread); the crops are written in that
  layout directly;
* paste-back is a batched matrix product: bilinear resizing is separable, so the crop
  probabilities of K boxes go to image resolution as ``R_y @ P @ R_x^T`` with (K, H, h) and
  (K, w, W) interpolation matrices that also clip the window at the image borders and zero the
  rows / columns outside the box (:func:`paste_probs`, one image). The result equals
  :func:`masklab.inference.paste_back.paste_crop_probs` (resize to the window, paste, clip, zero
  outside the box) up to float rounding (tested). Labeling needs only the box pixels (the rest is
  0), so :func:`label_masks` builds the matrices for each box's own rows and columns and pastes a
  whole forward batch, crops of several images together, in one product.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from masklab.data.datasets.box_crops import (
    BoxCropDataset,
    box_pixel_spans,
    box_regions,
    crop_window,
    labeling_margins,
)
from masklab.inference.paste_back import threshold_for_area
from masklab.models.mal.atlas import pack_regions
from masklab.models.mal.crf import RegionRefinement, refine_box_regions
from masklab.structures.box_crops import CropWindow

if TYPE_CHECKING:
    from masklab.models.mal.model import MALModel

__all__ = [
    "BoxRegions",
    "crop_boxes",
    "label_dataset",
    "label_masks",
    "label_regions",
    "paste_box_regions",
    "paste_probs",
    "paste_thresholded",
    "refine_regions",
    "regions_to_masks",
]


def _interp_matrix(
    starts: torch.Tensor, lengths: torch.Tensor, src: int, out: int, first: torch.Tensor | None = None
) -> torch.Tensor:
    """(K, out, src) weights of ``F.interpolate(bilinear, align_corners=False)`` from ``src`` samples
    to a window of ``lengths`` pixels starting at ``starts``, for the ``out`` image pixels from
    ``first`` on (0: the whole axis of an ``out``-pixel image); pixels outside the window get
    all-zero rows (clipping happens here)."""
    pos = torch.arange(out, dtype=torch.float32)[None] - starts[:, None].float()  # window coordinate
    if first is not None:
        pos = pos + first[:, None].float()
    valid = (pos >= 0) & (pos < lengths[:, None])
    # PyTorch's source index for align_corners=False: (dst + 0.5) * in / out - 0.5, clamped at 0.
    scale = src / lengths.float()
    s = ((pos + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    i0 = s.floor().clamp(max=src - 1)
    lam = (s - i0) * (i0 < src - 1)
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=src - 1)
    mat = torch.zeros((starts.shape[0], out, src), dtype=torch.float32)
    mat.scatter_add_(2, i0[..., None], ((1 - lam) * valid)[..., None])
    mat.scatter_add_(2, i1[..., None], (lam * valid)[..., None])
    return mat


def paste_probs(
    probs: torch.Tensor, windows: Sequence[CropWindow], image_boxes: torch.Tensor
) -> torch.Tensor:
    """(K, H, W) image-resolution probabilities of K crop probability maps of one image.

    Args:
        probs: (K, h, w) probabilities over the whole crops.
        windows: where each crop came from (all on the same image).
        image_boxes: (K, 4) ``x1, y1, x2, y2`` image boxes; pixels whose centre is outside are 0.
    """
    k, h, w = probs.shape
    if k == 0:
        return probs.new_zeros((0, 0, 0))
    height, width = windows[0].image_size
    assert all(win.image_size == (height, width) for win in windows), "paste_probs: one image at a time"
    probs = probs.float().cpu()
    flipped = torch.tensor([win.flipped for win in windows])
    if flipped.any():
        probs = torch.where(flipped[:, None, None], probs.flip(-1), probs)
    ry = _interp_matrix(
        torch.tensor([win.y0 for win in windows]), torch.tensor([win.height for win in windows]), h, height
    )
    rx = _interp_matrix(
        torch.tensor([win.x0 for win in windows]), torch.tensor([win.width for win in windows]), w, width
    )
    # The box rectangle is separable too: zero the rows / columns outside it in R_y / R_x.
    boxes = image_boxes.float().cpu()
    ry = ry * _box_axis(boxes[:, 1], boxes[:, 3], height)[..., None]
    rx = rx * _box_axis(boxes[:, 0], boxes[:, 2], width)[..., None]
    return torch.bmm(torch.bmm(ry, probs), rx.transpose(1, 2))


def _box_axis(lo: torch.Tensor, hi: torch.Tensor, size: int) -> torch.Tensor:
    """(K, size) bool: pixels of one axis inside ``[lo, hi)`` by their centre, as
    :func:`~masklab.structures.box_crops.rasterize_boxes` (a box thinner than a pixel keeps the
    pixel holding its centre)."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    inside = (centres[None] >= lo[:, None]) & (centres[None] < hi[:, None])
    mid = ((lo + hi) / 2).floor().long().clamp(0, size - 1)
    return inside | (~inside.any(1, keepdim=True) & (torch.arange(size)[None] == mid[:, None]))


def paste_thresholded(
    probs: torch.Tensor, windows: Sequence[CropWindow], image_boxes: torch.Tensor, mask_thres: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (K, H, W) bool, probabilities (K, H, W)) with the per-size-bucket threshold applied."""
    pasted = paste_probs(probs, windows, image_boxes)
    boxes = image_boxes.float().cpu()
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
    thres = torch.tensor([threshold_for_area(mask_thres, a) for a in areas], dtype=pasted.dtype)
    # ">" so that a zero threshold still leaves pixels outside the box (probability 0) empty.
    return pasted > thres[:, None, None], pasted


@dataclass(frozen=True)
class BoxRegions:
    """Pasted probabilities over each box's pixels, grown by a margin, in padded slots.

    Attributes:
        probs: (K, Hb, Wb) probabilities; 0 outside the box (and past the region's extent).
        inside: (K, Hb, Wb) bool, the box's pixels (by their centre).
        valid: (K, Hb, Wb) bool, the region's pixels (box and margin, clipped to the image); the
            rest of a slot is padding (Hb, Wb: the tallest / widest region).
        rows: (K, 2) ``(first, count)`` image rows of each region.
        cols: (K, 2) ``(first, count)`` image columns of each region.
    """

    probs: torch.Tensor
    inside: torch.Tensor
    valid: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor


def _slot_axis(box: torch.Tensor, region: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, length) bool box / region pixels of one axis of the padded slots."""
    at = torch.arange(length)[None]
    offset = (box[:, 0] - region[:, 0])[:, None]
    return (at >= offset) & (at < offset + box[:, 1:]), at < region[:, 1:]


def paste_box_regions(
    probs: torch.Tensor, windows: Sequence[CropWindow], image_boxes: torch.Tensor, grow: int = 0
) -> BoxRegions:
    """:func:`paste_probs` restricted to each box grown by ``grow`` pixels (clipped to its image):
    the same values, without the zeros farther out.

    The crops may come from different images (each window knows its image's size), so one call
    serves a whole labeling batch.
    """
    _, h, w = probs.shape
    probs = probs.float().cpu()
    flipped = torch.tensor([win.flipped for win in windows])
    if flipped.any():
        probs = torch.where(flipped[:, None, None], probs.flip(-1), probs)
    boxes = image_boxes.float().cpu()
    geometry = torch.tensor([[win.y0, win.height, win.x0, win.width, *win.image_size] for win in windows])
    box_rows = box_pixel_spans(boxes[:, 1], boxes[:, 3], geometry[:, 4])
    box_cols = box_pixel_spans(boxes[:, 0], boxes[:, 2], geometry[:, 5])
    rows = box_pixel_spans(boxes[:, 1], boxes[:, 3], geometry[:, 4], grow) if grow else box_rows
    cols = box_pixel_spans(boxes[:, 0], boxes[:, 2], geometry[:, 5], grow) if grow else box_cols
    ry = _interp_matrix(geometry[:, 0], geometry[:, 1], h, int(rows[:, 1].max()), rows[:, 0])
    rx = _interp_matrix(geometry[:, 2], geometry[:, 3], w, int(cols[:, 1].max()), cols[:, 0])
    in_y, valid_y = _slot_axis(box_rows, rows, ry.shape[1])
    in_x, valid_x = _slot_axis(box_cols, cols, rx.shape[1])
    # Rows / columns outside the box (the margin, or past a shorter region in the slot) are zeroed.
    region = torch.bmm(torch.bmm(ry * in_y[..., None], probs), (rx * in_x[..., None]).transpose(1, 2))
    return BoxRegions(
        probs=region,
        inside=in_y[:, :, None] & in_x[:, None, :],
        valid=valid_y[:, :, None] & valid_x[:, None, :],
        rows=rows,
        cols=cols,
    )


def _logit(p: float) -> float:
    return -math.inf if p <= 0 else math.log(p / (1 - p))


def refine_regions(
    regions: BoxRegions, pixels: Sequence[torch.Tensor], refinement: RegionRefinement
) -> torch.Tensor:
    """(K, Hb, Wb) refined logits of the regions (:func:`~masklab.models.mal.crf.refine_box_regions`),
    computed on one canvas that holds every region (:func:`~masklab.models.mal.atlas.pack_regions`)
    instead of padded slots. Only box pixels are updated and they read at most ``refinement.pad``
    pixels away, which is the region's own margin unless the image border clipped it: each region
    is packed as its box grown by the full ``pad`` on every side, the clipped part left empty (as
    the image's outside), so regions can touch and none reads another's pixels. Regions needing
    more than ``CANVAS_PIXELS`` together are refined on several canvases (bounded memory).

    Args:
        regions: the pasted probabilities over each box grown by ``refinement.pad``.
        pixels: each region's (C, h, w) image pixels (uint8 or float, 0..255), ``h, w`` its extent.
        refinement: the settings (kernel, dilation, zeta, clamps, pixel normalisation).
    """
    sizes = [
        (int(r[1]), int(c[1])) for r, c in zip(regions.rows.tolist(), regions.cols.tolist(), strict=True)
    ]
    for k, (size, region) in enumerate(zip(sizes, pixels, strict=True)):
        if tuple(region.shape[-2:]) != size:
            raise ValueError(
                f"refine_regions: region {k} has {tuple(region.shape[-2:])} pixels, expected {size}"
            )
    pad = refinement.pad
    in_rows, in_cols = regions.inside.any(2), regions.inside.any(1)  # (K, Hb), (K, Wb)
    box_rows = torch.stack([in_rows.float().argmax(1), in_rows.sum(1)], 1).tolist()
    box_cols = torch.stack([in_cols.float().argmax(1), in_cols.sum(1)], 1).tolist()
    # Each region as packed: the margin the image border clipped above / left of it (its offset in
    # its packed rectangle) and that rectangle's size (the box grown by the full pad).
    packed = [
        (pad - r0, pad - c0, nr + 2 * pad, nc + 2 * pad)
        for (r0, nr), (c0, nc) in zip(box_rows, box_cols, strict=True)
    ]
    out = torch.zeros_like(regions.probs)
    group: list[int] = []
    area = 0
    for k, (_, _, gh, gw) in enumerate(packed):
        if group and area + gh * gw > CANVAS_PIXELS:
            _refine_on_canvas(group, regions, pixels, sizes, packed, refinement, out)
            group, area = [], 0
        group.append(k)
        area += gh * gw
    _refine_on_canvas(group, regions, pixels, sizes, packed, refinement, out)
    return out


# Pixels of one refinement canvas (the weights are 25 float maps of it for 5x5 taps: ~200 MB at 2 M);
# a batch whose regions need more is refined on several canvases.
CANVAS_PIXELS = 1 << 21


def _refine_on_canvas(
    group: list[int],
    regions: BoxRegions,
    pixels: Sequence[torch.Tensor],
    sizes: list[tuple[int, int]],
    packed: list[tuple[int, int, int, int]],
    refinement: RegionRefinement,
    out: torch.Tensor,
) -> None:
    """Refine the regions ``group`` on one canvas and write their logits into ``out``."""
    full = pack_regions([packed[k][2:] for k in group], 0)
    origins = [(y + packed[k][0], x + packed[k][1]) for (y, x), k in zip(full.origins, group, strict=True)]
    channels = pixels[group[0]].shape[0]
    probs = torch.zeros((1, full.height, full.width))
    inside = torch.zeros((1, full.height, full.width), dtype=torch.bool)
    valid = torch.zeros_like(inside)
    colours = torch.zeros((1, channels, full.height, full.width))
    for k, (y, x) in zip(group, origins, strict=True):
        h, w = sizes[k]
        probs[0, y : y + h, x : x + w] = regions.probs[k, :h, :w]
        inside[0, y : y + h, x : x + w] = regions.inside[k, :h, :w]
        valid[0, y : y + h, x : x + w] = True
        colours[0, :, y : y + h, x : x + w] = pixels[k]
    mean = torch.tensor(refinement.pixel_mean).view(1, -1, 1, 1)
    std = torch.tensor(refinement.pixel_std).view(1, -1, 1, 1)
    logits = refine_box_regions(
        probs,
        (colours - mean) / std,
        inside,
        valid,
        kernel_size=refinement.kernel_size,
        zeta=refinement.zeta,
        num_iter=refinement.num_iter,
        low=refinement.low,
        high=refinement.high,
        dilation=refinement.dilation,
    )[0]
    for k, (y, x) in zip(group, origins, strict=True):
        h, w = sizes[k]
        out[k, :h, :w] = logits[y : y + h, x : x + w]


def label_regions(
    probs: torch.Tensor,
    windows: Sequence[CropWindow],
    image_boxes: torch.Tensor,
    mask_thres: Sequence[float],
    *,
    refinement: RegionRefinement | None = None,
    pixels: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, BoxRegions]:
    """(K, Hb, Wb) bool foreground of K crops over their box regions, and the regions (whose
    ``probs`` are the final probabilities: refined when asked).

    Args:
        probs: (K, h, w) crop probabilities.
        windows: each crop's window.
        image_boxes: (K, 4) image boxes.
        mask_thres: one or three per-size-bucket thresholds.
        refinement: refine at image resolution (:func:`refine_regions`) over the box grown by
            ``refinement.pad``; None: threshold the pasted probabilities.
        pixels: with ``refinement``: each box's image pixels over that grown region
            (:func:`~masklab.data.datasets.box_crops.box_regions`).
    """
    regions = paste_box_regions(probs, windows, image_boxes, refinement.pad if refinement else 0)
    boxes = image_boxes.float().cpu()
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
    thres = [threshold_for_area(mask_thres, a) for a in areas]
    if refinement is None:
        # ">" so that a zero threshold still leaves pixels outside the box (probability 0) empty.
        fg = regions.probs > torch.tensor(thres, dtype=regions.probs.dtype)[:, None, None]
        return fg, regions
    if pixels is None:
        raise ValueError("label_regions: the image-resolution refinement needs the regions' pixels")
    logits = refine_regions(regions, pixels, refinement)
    fg = (logits > torch.tensor([_logit(t) for t in thres])[:, None, None]) & regions.inside
    refined = torch.where(regions.inside, torch.sigmoid(logits), torch.zeros_like(logits))
    return fg, dataclasses.replace(regions, probs=refined)


def label_masks(
    probs: torch.Tensor,
    windows: Sequence[CropWindow],
    image_boxes: torch.Tensor,
    mask_thres: Sequence[float],
    *,
    refinement: RegionRefinement | None = None,
    pixels: Sequence[torch.Tensor] | None = None,
) -> list[np.ndarray]:
    """K (H, W) bool masks of K crops (of any images): :func:`paste_thresholded`'s masks, computed
    only over each box (the only place a mask can be non-zero); refined at image resolution when
    asked (see :func:`label_regions`)."""
    if len(windows) == 0:
        return []
    fg, regions = label_regions(probs, windows, image_boxes, mask_thres, refinement=refinement, pixels=pixels)
    return regions_to_masks(fg, regions, [win.image_size for win in windows])


def regions_to_masks(
    fg: torch.Tensor, regions: BoxRegions, image_sizes: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    """Whole-image (H, W) bool masks from per-region foreground slots."""
    fg_np = fg.numpy()
    masks = []
    for k, ((r0, nr), (c0, nc)) in enumerate(zip(regions.rows.tolist(), regions.cols.tolist(), strict=True)):
        mask = np.zeros(image_sizes[k], dtype=bool)
        mask[r0 : r0 + nr, c0 : c0 + nc] = fg_np[k, :nr, :nc]
        masks.append(mask)
    return masks


@functools.lru_cache(maxsize=1024)
def _resize_weights(length: int, size: int) -> torch.Tensor:
    """(size, length) weights of ``F.interpolate(bilinear, align_corners=False, antialias=True)``
    along one axis, read off by resizing an identity (exactly the filter :func:`crop_image` applies)."""
    eye = torch.eye(length, dtype=torch.float32)[None, None]
    return F.interpolate(eye, size=(size, length), mode="bilinear", align_corners=False, antialias=True)[0, 0]


@functools.lru_cache(maxsize=4096)
def _padded_resize_weights(length: int, size: int, longest: int) -> torch.Tensor:
    """:func:`_resize_weights` with zero columns up to ``longest`` source pixels."""
    return F.pad(_resize_weights(length, size), (0, longest - length))


def _axis_weights(
    starts: list[int], lengths: list[int], size: int, extent: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices (K, L) into an image axis of ``extent`` (reflected like
    :func:`~masklab.data.datasets.box_crops.reflect_indices`)
    and (K, size, L) resize weights of K windows; L is the longest window, padding has weight 0."""
    longest = max(lengths)
    index = torch.tensor(starts)[:, None] + torch.arange(longest)[None]
    if extent == 1:
        index = torch.zeros_like(index)
    else:  # reflect_indices for all windows at once (past a window's end: any valid index, weight 0)
        period = 2 * (extent - 1)
        index = index.remainder(period)
        index = torch.where(index >= extent, period - index, index)
    weights = torch.stack([_padded_resize_weights(n, size, longest) for n in lengths])
    return index, weights


def crop_boxes(
    image: torch.Tensor, image_boxes: torch.Tensor, margins: tuple[float, float, float, float], crop_size: int
) -> tuple[torch.Tensor, list[CropWindow]]:
    """(K, 3, S, S) float crops (0..255, rounded; channels_last) of K boxes of one (3, H, W) uint8
    image, and their windows.

    The same crops as :func:`~masklab.data.datasets.box_crops.make_box_crop` (reflect padding,
    antialiased bilinear resize; equal up to float rounding, tested) in one batched product
    ``W_y @ region @ W_x^T`` instead of K separate gathers and resizes.
    """
    height, width = image.shape[-2:]
    windows = [crop_window(box, margins, (int(height), int(width)), crop_size) for box in image_boxes]
    rows, wy = _axis_weights([w.y0 for w in windows], [w.height for w in windows], crop_size, int(height))
    cols, wx = _axis_weights([w.x0 for w in windows], [w.width for w in windows], crop_size, int(width))
    region = image.float()[:, rows[:, :, None], cols[:, None, :]]  # (3, K, Ly, Lx)
    # Columns first, then rows into (K, S, S, 3): the crops come out in channels_last layout,
    # which the forward wants (no copy later).
    crops = torch.einsum("ksy,kcyt->kstc", wy, torch.einsum("ckyx,ktx->kcyt", region, wx))
    return crops.permute(0, 3, 1, 2).round_().clamp_(0, 255), windows


def label_dataset(model: MALModel, dataset: BoxCropDataset, *, batch_size: int = 64) -> dict[int, np.ndarray]:
    """Annotation id -> (H, W) bool mask for every box of a labeling-mode ``dataset``.

    Each image is decoded once and all its boxes are cropped together (:func:`crop_boxes`); whole
    images are packed into forwards of up to ``batch_size`` crops (an image with more boxes runs
    in ``batch_size`` chunks); the masks of a whole batch are pasted in one product over the box
    pixels only (:func:`label_masks`, equal to :func:`paste_thresholded`). The model is
    put in eval mode and ``channels_last`` layout (it stays so). Every box of the dataset gets a
    mask: the dataset already refused the boxes it cannot label.
    """
    if dataset.training:
        raise ValueError("label_dataset: expects a labeling-mode dataset (training=False)")
    if batch_size < 1:
        raise ValueError(f"label_dataset: batch_size must be >= 1, got {batch_size}")
    model.eval().to(memory_format=torch.channels_last)
    pre = model.data_preprocessor
    device = pre.mean.device
    margins = labeling_margins(dataset.test_margin_rate)
    by_image: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for ann, box in dataset.entries:
        by_image.setdefault(ann.image_id, []).append((ann.id, box))
    refinement = model.image_refinement
    masks: dict[int, np.ndarray] = {}
    pending: list[tuple[list[int], torch.Tensor, list[CropWindow], torch.Tensor]] = []
    regions: list[torch.Tensor] = []  # image pixels around each pending box (image refinement)

    def flush() -> None:
        crops = torch.cat([p[1] for p in pending]).to(device)
        boxes = torch.cat([p[3] for p in pending])
        images = ((crops - pre.mean) / pre.std).contiguous(memory_format=torch.channels_last)
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).to(device)
        probs = torch.cat(
            [
                model._label_probs(images[i : i + batch_size], areas[i : i + batch_size]).float().cpu()
                for i in range(0, len(images), batch_size)
            ]
        )
        windows = [win for p in pending for win in p[2]]
        got = label_masks(probs, windows, boxes, model.mask_thres, refinement=refinement, pixels=regions)
        masks.update(zip([i for p in pending for i in p[0]], got, strict=True))
        pending.clear()
        regions.clear()

    with torch.inference_mode():
        for image_id, boxes in by_image.items():
            if pending and sum(len(p[0]) for p in pending) + len(boxes) > batch_size:
                flush()
            image_boxes = torch.stack([b for _, b in boxes]).float()
            image = dataset.read_image(image_id)
            crops, windows = crop_boxes(image, image_boxes, margins, dataset.crop_size)
            pending.append(([i for i, _ in boxes], crops, windows, image_boxes))
            if refinement is not None:
                regions.extend(box_regions(image, image_boxes, refinement.pad)[0])
        if pending:
            flush()
    return masks
