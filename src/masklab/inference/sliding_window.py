"""Sliding-window and test-time-augmented semantic inference with MMSegmentation's semantics.

* Sliding window: crops on a grid, the last row/column shifted back inside the image; each crop's
  logits are added into a canvas and divided by how many crops covered each pixel, *before* any
  softmax (``EncoderDecoder.slide_inference`` in MMSeg).
* TTA: every (scale, flip) view is predicted, mapped back to the input size, turned into
  probabilities (softmax, or sigmoid for one channel) and the probabilities are averaged
  (``SegTTAModel.merge_preds`` in MMSeg averages probabilities, not logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from masklab.errors import ModelError

ForwardFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, 3, h, w) images -> (B, C, h, w) logits at the same size."""


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ModelError(f"{name}: expected a positive int or [height, width], got {value!r}")
    return int(pair[0]), int(pair[1])


def window_grid(
    size: tuple[int, int], crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """The ``(y1, y2, x1, x2)`` windows covering an image of ``size`` (MMSeg's grid rule)."""
    (h, w), (ch, cw), (sh, sw) = size, crop_size, stride
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    windows = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2 = min(hi * sh + ch, h)
            x2 = min(wi * sw + cw, w)
            # Clamp the window back inside the image instead of padding the last one.
            windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return windows


def slide_inference(
    forward_fn: ForwardFn,
    images: torch.Tensor,
    crop_size: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
) -> torch.Tensor:
    """Logits of (B, 3, H, W) ``images`` averaged over overlapping crops.

    Args:
        forward_fn: maps a crop batch to logits at the crop's size.
        images: the (preprocessed) batch.
        crop_size: window (h, w) or one int.
        stride: step (h, w) or one int.
        num_classes: channels of ``forward_fn``'s output (1 in binary mode).

    Returns:
        (B, num_classes, H, W) logits (not probabilities).
    """
    crop = _pair(crop_size, "crop_size")
    step = _pair(stride, "stride")
    b, _, h, w = images.shape
    canvas = images.new_zeros((b, num_classes, h, w))
    count = images.new_zeros((b, 1, h, w))
    for y1, y2, x1, x2 in window_grid((h, w), crop, step):
        logits = forward_fn(images[:, :, y1:y2, x1:x2])
        assert logits.shape[-2:] == (y2 - y1, x2 - x1), "forward_fn must return logits at the crop size"
        canvas[:, :, y1:y2, x1:x2] += logits
        count[:, :, y1:y2, x1:x2] += 1
    assert bool((count > 0).all()), "sliding windows left pixels uncovered"
    return canvas / count


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over channels, or sigmoid for a single (binary) channel."""
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)


def tta_inference(
    infer_fn: ForwardFn,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    align_corners: bool = False,
) -> torch.Tensor:
    """Probabilities of (B, 3, H, W) ``images`` averaged over rescaled and flipped views.

    Args:
        infer_fn: whole or sliding inference: images -> logits at the images' size.
        images: the batch, without padding (so rescaling does not stretch the padding in).
        scales: resize ratios, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) as in MMSeg's TTA pipeline.
        flip: also predict the horizontally flipped view of every scale.
        align_corners: of the bilinear resizes.

    Returns:
        (B, C, H, W) averaged probabilities (softmax, or sigmoid for one channel).
    """
    if not scales:
        raise ModelError("tta.scales: give at least one scale, e.g. [1.0]")
    h, w = images.shape[-2:]
    total: torch.Tensor | None = None
    views = 0
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = (
            images
            if size == (h, w)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=align_corners)
        )
        for flipped in (False, True) if flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            logits = infer_fn(view)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=align_corners)
            probs = to_probabilities(logits)
            total = probs if total is None else total + probs
            views += 1
    assert total is not None
    return total / views
