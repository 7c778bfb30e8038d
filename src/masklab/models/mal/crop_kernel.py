"""Compiled loop (numba) of MAL's labeling crops: reflect-padded windows resized with sparse filters.

A labeling crop is a window around the box (reflected where it leaves the image) resized to the
crop size with ``F.interpolate(bilinear, antialias=True)``'s separable filter. Each output pixel
reads only a few source pixels per axis (2 when upsampling; ``~2 x length / size`` when
shrinking), so one loop over the boxes with each output's own taps does the work of a dense
``W_y @ window @ W_x^T`` product at a small fraction of its multiply-adds, without the gather of
the window or per-box tensor ops.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["resize_windows"]


@njit(cache=True, boundscheck=False)
def _reflect(i: int, size: int) -> int:  # pragma: no cover - compiled
    """Index ``i`` folded into ``[0, size)`` by mirror reflection (edge pixel not repeated), as
    :func:`~masklab.data.datasets.box_crops.reflect_indices`."""
    if size == 1:
        return 0
    period = 2 * (size - 1)
    i = i % period  # Python semantics in numba: non-negative for a positive period
    return period - i if i >= size else i


@njit(cache=True, boundscheck=False)
def resize_windows(
    image: np.ndarray,
    geometry: np.ndarray,
    row_first: np.ndarray,
    row_weights: np.ndarray,
    col_first: np.ndarray,
    col_weights: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered through labeling.crop_boxes
    """Write K crops of ``image`` into ``out``: each value rounded to an integer and clamped to
    0..255 as the dataset's crops are, then normalised as ``(value - mean[c]) / std[c]`` (mean 0,
    std 1: the plain crops).

    Args:
        image: (C, H, W) uint8 pixels.
        geometry: (K, 4) int ``y0, height, x0, width`` of each window (may leave the image).
        row_first: (K, S) first window row each output row reads.
        row_weights: (K, S, T) its consecutive taps' weights (zero-padded; taps past the window's
            end are not read).
        col_first: (K, S) first window column each output column reads.
        col_weights: (K, S, T) its taps' weights.
        mean: (C,) per-channel value subtracted after rounding.
        std: (C,) per-channel divisor after that.
        out: (K, S, S, C) the crops, channels last.
    """
    channels, height, width = image.shape
    size = out.shape[1]
    taps = col_weights.shape[2]
    for k in range(geometry.shape[0]):
        y0, wh, x0, ww = geometry[k, 0], geometry[k, 1], geometry[k, 2], geometry[k, 3]
        # Each output column's source pixels (reflected), tap by tap; taps past the window's end
        # (zero weight) read its last column.
        cols = np.empty((taps, size), dtype=np.int64)
        for t in range(taps):
            for ox in range(size):
                cols[t, ox] = _reflect(x0 + min(col_first[k, ox] + t, ww - 1), width)
        # Columns first: every window row resized to S columns (C, window rows, S).
        rows = np.zeros((channels, wh, size), dtype=np.float32)
        for y in range(wh):
            sy = _reflect(y0 + y, height)
            for c in range(channels):
                src = image[c, sy]
                dst = rows[c, y]
                for t in range(taps):
                    wt, ct = col_weights[k, :, t], cols[t]
                    for ox in range(size):
                        dst[ox] += wt[ox] * np.float32(src[ct[ox]])
        # Then rows: each output row from its window rows' taps, accumulated over whole rows.
        acc = np.empty((channels, size), dtype=np.float32)
        for oy in range(size):
            f = row_first[k, oy]
            acc[:] = 0.0
            for t in range(min(row_weights.shape[2], wh - f)):
                wt = row_weights[k, oy, t]
                for c in range(channels):
                    src_row, dst_row = rows[c, f + t], acc[c]
                    for ox in range(size):
                        dst_row[ox] += wt * src_row[ox]
            for ox in range(size):
                for c in range(channels):
                    v = min(max(np.rint(acc[c, ox]), np.float32(0.0)), np.float32(255.0))
                    out[k, oy, ox, c] = (v - mean[c]) / std[c]
