"""Batched MAL labeling: many box crops per forward, vectorised paste-back, compiled refinement.

Labeling cost per box on CPU is what matters against classical labelers (GrabCut), so:

* each image is decoded once; the crops of a whole batch (boxes of several images) are written
  by one compiled loop per image straight into one normalised, channels_last batch
  (:func:`crop_boxes` / :mod:`~masklab.models.mal.crop_kernel`: the reflect-padded, antialiased
  crops of ``make_box_crop`` from each output pixel's few non-zero filter taps);
* the forward runs under ``torch.inference_mode`` in ``channels_last`` layout (about 2x faster
  for the small convolutions of the CPU encoders with one thread);
* paste-back is a batched matrix product: bilinear resizing is separable, so the crop
  probabilities of K boxes go to image resolution as ``R_y @ P @ R_x^T`` with (K, H, h) and
  (K, w, W) interpolation matrices that also clip the window at the image borders and zero the
  rows / columns outside the box (:func:`paste_probs`, one image). The result equals
  :func:`masklab.inference.paste_back.paste_crop_probs` (resize to the window, paste, clip, zero
  outside the box) up to float rounding (tested). Labeling needs only the box pixels (the rest is
  0), so :func:`label_masks` builds the matrices for each box's own rows and columns and pastes a
  whole forward batch, crops of several images together, in one product;
* the refinement at image resolution runs region by region in compiled loops
  (:mod:`~masklab.models.mal.region_kernels`), reading each region from its decoded image.
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
    crop_window,
    labeling_margins,
)
from masklab.inference.paste_back import threshold_for_area
from masklab.models.mal.crf import RegionRefinement
from masklab.models.mal.crop_kernel import resize_windows
from masklab.models.mal.region_kernels import refine_regions_compiled
from masklab.structures.box_crops import CropWindow

if TYPE_CHECKING:
    from masklab.models.mal.model import MALModel

__all__ = [
    "BoxRegions",
    "ImagePixels",
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
        boxes: (K, 4) ``(first row, first column, rows, columns)`` of each box in its region.
    """

    probs: torch.Tensor
    inside: torch.Tensor
    valid: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    boxes: torch.Tensor


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
        boxes=torch.stack(
            [box_rows[:, 0] - rows[:, 0], box_cols[:, 0] - cols[:, 0], box_rows[:, 1], box_cols[:, 1]], 1
        ),
    )


def _logit(p: float) -> float:
    return -math.inf if p <= 0 else math.log(p / (1 - p))


@dataclass(frozen=True)
class ImagePixels:
    """Where the refinement reads each box's pixels from when whole images are at hand: box ``k``'s
    region is cut from ``images[index[k]]`` at the region's own image position (no copies).

    Attributes:
        images: (C, H, W) images (0..255; all uint8 or all float).
        index: each box's image.
    """

    images: Sequence[torch.Tensor]
    index: Sequence[int]


def refine_regions(
    regions: BoxRegions, pixels: Sequence[torch.Tensor] | ImagePixels, refinement: RegionRefinement
) -> torch.Tensor:
    """(K, Hb, Wb) refined logits of the regions: :func:`~masklab.models.mal.crf.refine_box_regions`
    on each region alone (box pixels updated, margin held at background), run by the compiled
    per-region loops of :func:`~masklab.models.mal.region_kernels.refine_regions_compiled`.

    Args:
        regions: the pasted probabilities over each box grown by ``refinement.pad``.
        pixels: each region's (C, h, w) image pixels (uint8 or float, 0..255), ``h, w`` its extent;
            or the whole images the boxes lie on (:class:`ImagePixels`).
        refinement: the settings (kernel, dilation, zeta, clamps, pixel normalisation).
    """
    rows, cols = regions.rows.tolist(), regions.cols.tolist()
    sizes = [(int(r[1]), int(c[1])) for r, c in zip(rows, cols, strict=True)]
    if isinstance(pixels, ImagePixels):
        if len(pixels.index) != len(sizes):
            raise ValueError(f"refine_regions: {len(pixels.index)} image indices for {len(sizes)} regions")
        sources, index = pixels.images, pixels.index
        origins = [(int(r[0]), int(c[0])) for r, c in zip(rows, cols, strict=True)]
    else:
        for k, (size, region) in enumerate(zip(sizes, pixels, strict=True)):
            if tuple(region.shape[-2:]) != size:
                raise ValueError(
                    f"refine_regions: region {k} has {tuple(region.shape[-2:])} pixels, expected {size}"
                )
        sources, index, origins = pixels, range(len(sizes)), [(0, 0)] * len(sizes)
    return refine_regions_compiled(
        regions.probs, sizes, regions.boxes.tolist(), sources, index, origins, refinement
    )


def label_regions(
    probs: torch.Tensor,
    windows: Sequence[CropWindow],
    image_boxes: torch.Tensor,
    mask_thres: Sequence[float],
    *,
    refinement: RegionRefinement | None = None,
    pixels: Sequence[torch.Tensor] | ImagePixels | None = None,
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
            (:func:`~masklab.data.datasets.box_crops.box_regions`), or the images the boxes lie
            on (:class:`ImagePixels`).
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
    pixels: Sequence[torch.Tensor] | ImagePixels | None = None,
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
def _sparse_resize_weights(length: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_resize_weights` as ``(first, taps)``: each output's first source index (size,) and
    its (size, T) consecutive non-zero weights (T: the widest support, zero-padded)."""
    dense = _resize_weights(length, size).numpy()
    nonzero = dense != 0
    first = nonzero.argmax(1)
    last = length - 1 - nonzero[:, ::-1].argmax(1)
    taps = int((last - first).max()) + 1
    # A support shorter than ``taps`` is zero-padded; ``first`` is kept <= length - taps so that
    # every tap's index is valid here (the kernel also stops at the window's end).
    first = np.minimum(first, length - taps)
    index = first[:, None] + np.arange(taps)[None]
    return first.astype(np.int64), np.take_along_axis(dense, index, 1).astype(np.float32)


def _stack_weights(lengths: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, size) first source indices and (K, size, T) weights of K windows (T: the widest)."""
    tables = [_sparse_resize_weights(n, size) for n in lengths]
    taps = max(t.shape[1] for _, t in tables)
    weights = np.zeros((len(tables), size, taps), dtype=np.float32)
    for k, (_, t) in enumerate(tables):
        weights[k, :, : t.shape[1]] = t
    return np.stack([f for f, _ in tables]), weights


def _crop_windows(
    image: torch.Tensor, windows: Sequence[CropWindow], mean: np.ndarray, std: np.ndarray, out: np.ndarray
) -> None:
    """Write the crops of ``windows`` (one image) into ``out`` (K, S, S, C): rounded to 0..255,
    then ``(value - mean) / std`` per channel."""
    if not windows:
        return
    crop_size = out.shape[1]
    geometry = np.array([[w.y0, w.height, w.x0, w.width] for w in windows], dtype=np.int64).reshape(-1, 4)
    row_first, row_weights = _stack_weights(geometry[:, 1].tolist(), crop_size)
    col_first, col_weights = _stack_weights(geometry[:, 3].tolist(), crop_size)
    resize_windows(
        np.ascontiguousarray(image.numpy()),
        geometry,
        row_first,
        row_weights,
        col_first,
        col_weights,
        mean,
        std,
        out,
    )


def _image_windows(
    image: torch.Tensor, image_boxes: torch.Tensor, margins: tuple[float, float, float, float], crop_size: int
) -> list[CropWindow]:
    """The labeling crop window of each box of one (C, H, W) image."""
    height, width = (int(v) for v in image.shape[-2:])
    return [crop_window(box, margins, (height, width), crop_size) for box in image_boxes]


def crop_boxes(
    image: torch.Tensor, image_boxes: torch.Tensor, margins: tuple[float, float, float, float], crop_size: int
) -> tuple[torch.Tensor, list[CropWindow]]:
    """(K, 3, S, S) float crops (0..255, rounded; channels_last) of K boxes of one (3, H, W) uint8
    image, and their windows.

    The same crops as :func:`~masklab.data.datasets.box_crops.make_box_crop` (reflect padding,
    antialiased bilinear resize; equal up to float rounding, tested), computed by one compiled
    loop over the boxes (:func:`~masklab.models.mal.crop_kernel.resize_windows`) from each
    output pixel's few non-zero filter taps, written in channels_last layout (the forward's).
    """
    windows = _image_windows(image, image_boxes, margins, crop_size)
    channels = image.shape[0]
    crops = np.empty((len(windows), crop_size, crop_size, channels), dtype=np.float32)
    _crop_windows(image, windows, np.zeros(channels, np.float32), np.ones(channels, np.float32), crops)
    return torch.from_numpy(crops).permute(0, 3, 1, 2), windows


def label_dataset(model: MALModel, dataset: BoxCropDataset, *, batch_size: int = 64) -> dict[int, np.ndarray]:
    """Annotation id -> (H, W) bool mask for every box of a labeling-mode ``dataset``.

    Each image is decoded once; whole images are packed into batches of up to ``batch_size``
    crops (an image with more boxes runs its forward in ``batch_size`` chunks), whose crops the
    compiled loop writes straight into one normalised batch (as :func:`crop_boxes`); the masks of
    a whole batch are pasted in one product over the box pixels only (:func:`label_masks`, equal
    to :func:`paste_thresholded`) and refined reading the decoded images (:class:`ImagePixels`). The model is
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
    mean = pre.mean.detach().flatten().float().cpu().numpy()
    std = pre.std.detach().flatten().float().cpu().numpy()
    margins = labeling_margins(dataset.test_margin_rate)
    by_image: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for ann, box in dataset.entries:
        by_image.setdefault(ann.image_id, []).append((ann.id, box))
    refinement = model.image_refinement
    size = dataset.crop_size
    masks: dict[int, np.ndarray] = {}
    # Per pending image: its annotation ids, pixels, crop windows and boxes.
    pending: list[tuple[list[int], torch.Tensor, list[CropWindow], torch.Tensor]] = []

    def flush() -> None:
        windows = [win for p in pending for win in p[2]]
        boxes = torch.cat([p[3] for p in pending])
        # The crops go straight into one normalised channels_last batch.
        batch = np.empty((len(windows), size, size, mean.shape[0]), dtype=np.float32)
        at = 0
        for _, image, image_windows, _ in pending:
            _crop_windows(image, image_windows, mean, std, batch[at : at + len(image_windows)])
            at += len(image_windows)
        images = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).to(device)
        probs = torch.cat(
            [
                model._label_probs(images[i : i + batch_size], areas[i : i + batch_size]).float().cpu()
                for i in range(0, len(images), batch_size)
            ]
        )
        pixels = None
        if refinement is not None:
            pixels = ImagePixels([p[1] for p in pending], [i for i, p in enumerate(pending) for _ in p[0]])
        got = label_masks(probs, windows, boxes, model.mask_thres, refinement=refinement, pixels=pixels)
        masks.update(zip([i for p in pending for i in p[0]], got, strict=True))
        pending.clear()

    with torch.inference_mode():
        for image_id, boxes in by_image.items():
            if pending and sum(len(p[0]) for p in pending) + len(boxes) > batch_size:
                flush()
            image_boxes = torch.stack([b for _, b in boxes]).float()
            image = dataset.read_image(image_id)
            windows = _image_windows(image, image_boxes, margins, size)
            pending.append(([i for i, _ in boxes], image, windows, image_boxes))
        if pending:
            flush()
    return masks
