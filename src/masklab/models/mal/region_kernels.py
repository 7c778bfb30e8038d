"""Compiled loops (numba) of the labeling refinement at image resolution, region by region.

The refinement (:func:`~masklab.models.mal.crf.refine_box_regions`: colour affinities, then
mean-field updates of the box pixels) is a handful of multiply-adds per pixel and tap. As PyTorch
ops each of them is one pass over memory (25 taps x 3 iterations of ``addcmul`` plus the
affinities: ~100 passes), so on CPU it ran at memory speed however the regions were laid out.
Here every region is refined on its own, start to end, in loops whose working set (the region's
colours, 12 pair weights and two logit buffers: ~150 KB for a 50x50 box) stays in the core's
cache, each tap one long vectorised loop over the box's flattened rows. Only the ``exp`` of the
affinities runs as one PyTorch op over all regions (vectorised; a scalar ``exp`` in the loops
would cost more than everything else).

The numbers are those of :func:`~masklab.models.mal.crf.refine_box_regions` on each region alone
(tested): the same taps summed in the same order; equal up to float rounding (the ``exp``
implementations differ in the last bit, and weights below 1.6e-38 are that value instead of 0).

Layout: each region is worked on in a grid of the box grown by the kernel's reach ``pad`` on every
side (``gh = box rows + 2 pad``, ``gw = box columns + 2 pad``); the region (the same box grown by
``pad`` but clipped to the image) lies inside it, and grid pixels outside the region (past the
image border) have a far-away colour (weight ~0 to anything) and logit 0. A box pixel's taps then
never leave the grid: no bounds checks in the loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from numba import njit

from masklab.models.mal.crf import RegionRefinement

__all__ = ["refine_regions_compiled"]

# Per-region metadata columns: region rows, region columns, pair-weight offset (flat float
# buffer), the box's first row and column in the region, box rows, box columns; the pixel source
# (an image or the region's own pixels) as its offset in the flat pixel buffer, its rows and
# columns, and the region's first row and column in it.
_H, _W, _PAIRS, _BOX_R0, _BOX_C0, _BOX_NR, _BOX_NC, _SRC, _SRC_H, _SRC_W, _SRC_R0, _SRC_C0 = range(12)

# Colour of the grid's pixels outside the region: so far from any normalised colour that a tap
# reaching one gets a squared distance of ~1e36, i.e. the exponent floor.
_FAR = 1.0e18
# Floor of the exponents: exp(-87) ~ 1.6e-38, the smallest normal float (PyTorch's vectorised exp
# takes a slow path for -inf and denormal results: 2-5x slower); a weight this small changes no
# float32 sum of the O(1) logits.
_FLOOR = -87.0


@njit(cache=True, boundscheck=False)
def _pair_exponents(
    pixels: np.ndarray,
    meta: np.ndarray,
    offsets: np.ndarray,
    pad: int,
    mean: np.ndarray,
    std: np.ndarray,
    scale: float,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered through refine_regions_compiled
    """``max(scale * |I(q + e) - I(q)|^2, _FLOOR)`` of every grid pixel ``q`` of each region and
    half-window offset ``e``: one long loop per tap over the flattened grid (a tap's reach past the
    grid's ends, or into the pixels outside the region, gets the floor)."""
    channels = mean.shape[0]
    for k in range(meta.shape[0]):
        h, w = meta[k, _H], meta[k, _W]
        gh, gw = meta[k, _BOX_NR] + 2 * pad, meta[k, _BOX_NC] + 2 * pad
        top, left = pad - meta[k, _BOX_R0], pad - meta[k, _BOX_C0]  # the region's origin in the grid
        n = gh * gw
        colours = np.full((channels, gh, gw), np.float32(_FAR), dtype=np.float32)
        base, src_h, src_w = meta[k, _SRC], meta[k, _SRC_H], meta[k, _SRC_W]
        for c in range(channels):
            for y in range(h):
                first = base + (c * src_h + meta[k, _SRC_R0] + y) * src_w + meta[k, _SRC_C0]
                src = pixels[first : first + w]
                dst = colours[c, top + y, left : left + w]
                for x in range(w):
                    dst[x] = (np.float32(src[x]) - mean[c]) / std[c]
        flat = colours.reshape((channels, n))
        pairs = out[meta[k, _PAIRS] : meta[k, _PAIRS] + offsets.shape[0] * n].reshape((offsets.shape[0], n))
        for j in range(offsets.shape[0]):
            shift = offsets[j, 0] * gw + offsets[j, 1]
            lo, hi = max(0, -shift), min(n, n - shift)
            row = pairs[j]
            row[:lo] = _FLOOR
            row[hi:] = _FLOOR
            acc = row[lo:hi]
            acc[:] = 0.0
            for c in range(channels):
                here = flat[c, lo:hi]
                there = flat[c, lo + shift : hi + shift]
                for i in range(hi - lo):
                    d = there[i] - here[i]
                    acc[i] += d * d
            for i in range(hi - lo):
                acc[i] = max(acc[i] * scale, _FLOOR)


@njit(cache=True, boundscheck=False)
def _mean_field(
    logits: np.ndarray,
    pairs_flat: np.ndarray,
    meta: np.ndarray,
    offsets: np.ndarray,
    pad: int,
    low: float,
    high: float,
    num_iter: int,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered through refine_regions_compiled
    """``num_iter`` mean-field updates of each region's box pixels, starting from ``logits`` (the
    clamped probabilities' logits, (K, Hb, Wb)); writes the region's logits (margin: logit(low))
    into ``out[k, :h, :w]``. Each tap is one long loop over the flattened rows of the box (the
    columns beside the box are computed too and discarded: vectorised)."""
    lo = np.float32(math.log(low / (1.0 - low)))
    hi = np.float32(math.log(high / (1.0 - high)))
    taps = offsets.shape[0]
    for k in range(meta.shape[0]):
        h, w = meta[k, _H], meta[k, _W]
        r0, c0, nr, nc = meta[k, _BOX_R0], meta[k, _BOX_C0], meta[k, _BOX_NR], meta[k, _BOX_NC]
        gh, gw = nr + 2 * pad, nc + 2 * pad
        top, left = pad - r0, pad - c0
        n = gh * gw
        pairs = pairs_flat[meta[k, _PAIRS] : meta[k, _PAIRS] + taps * n].reshape((taps, n))
        z = np.zeros((gh, gw), dtype=np.float32)
        z[top : top + h, left : left + w] = lo
        z[pad : pad + nr, pad : pad + nc] = logits[k, r0 : r0 + nr, c0 : c0 + nc]
        new = z.copy()
        zf, nf = z.reshape(n), new.reshape(n)
        # The flattened span from the box's first pixel to its last; its taps stay in the grid.
        first = pad * gw + pad
        span = (nr - 1) * gw + nc
        acc = np.empty(span, dtype=np.float32)
        for _ in range(num_iter):
            acc[:] = 0.0
            # Taps in PyTorch's order: the 12 "before" offsets, the centre, the mirrored ones.
            for j in range(taps):
                shift = offsets[j, 0] * gw + offsets[j, 1]
                wj = pairs[j, first : first + span]
                zj = zf[first + shift : first + shift + span]
                for i in range(span):
                    acc[i] += wj[i] * zj[i]
            zc = zf[first : first + span]
            for i in range(span):
                acc[i] += zc[i]
            for j in range(taps - 1, -1, -1):
                shift = offsets[j, 0] * gw + offsets[j, 1]
                wj = pairs[j, first - shift : first - shift + span]
                zj = zf[first - shift : first - shift + span]
                for i in range(span):
                    acc[i] += wj[i] * zj[i]
            for y in range(nr):
                row = nf[first + y * gw : first + y * gw + nc]
                got = acc[y * gw : y * gw + nc]
                for i in range(nc):
                    row[i] = min(max(got[i], lo), hi)
            zf, nf = nf, zf
        out[k, :h, :w] = zf.reshape((gh, gw))[top : top + h, left : left + w]


# Grid pixels refined per group of regions (the pair weights: 12 floats each for 5x5 taps, ~100 MB).
GROUP_PIXELS = 1 << 21


def refine_regions_compiled(
    probs: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    boxes: Sequence[tuple[int, int, int, int]],
    sources: Sequence[torch.Tensor],
    source_index: Sequence[int],
    origins: Sequence[tuple[int, int]],
    refinement: RegionRefinement,
) -> torch.Tensor:
    """(K, Hb, Wb) refined logits of K box regions (0 past each region's extent).

    Args:
        probs: (K, Hb, Wb) pasted probabilities in padded slots (region ``k`` in ``[:h, :w]``).
        sizes: each region's ``(h, w)``.
        boxes: each box's ``(first row, first column, rows, columns)`` in its region (the region
            is the box grown by ``refinement.pad``, clipped to the image).
        sources: (C, H, W) pixel arrays (0..255, all uint8 or all float) the regions are read
            from: whole images, or each region's own pixels.
        source_index: each region's source.
        origins: each region's ``(row, column)`` in its source.
        refinement: the settings (kernel, dilation, zeta, clamps, pixel normalisation).
    """
    k_regions = probs.shape[0]
    out = torch.zeros(probs.shape, dtype=torch.float32)
    if k_regions == 0:
        return out
    pad, k = refinement.pad, refinement.kernel_size
    offsets = np.array(
        [
            ((j // k - k // 2) * refinement.dilation, (j % k - k // 2) * refinement.dilation)
            for j in range(k * k // 2)
        ],
        dtype=np.int64,
    ).reshape(-1, 2)
    if not len(sizes) == len(boxes) == len(source_index) == len(origins) == k_regions:
        raise ValueError(
            f"refine_regions_compiled: {k_regions} regions but {len(sizes)} sizes, {len(boxes)} boxes, "
            f"{len(source_index)} source indices, {len(origins)} origins"
        )
    if any(h > probs.shape[1] or w > probs.shape[2] for h, w in sizes):
        raise ValueError(
            f"refine_regions_compiled: a region is larger than its {tuple(probs.shape[1:])} slot"
        )
    meta = np.zeros((k_regions, 12), dtype=np.int64)
    meta[:, [_H, _W]] = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    meta[:, [_BOX_R0, _BOX_C0, _BOX_NR, _BOX_NC]] = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    r0, c0, nr, nc, h, w = (meta[:, i] for i in (_BOX_R0, _BOX_C0, _BOX_NR, _BOX_NC, _H, _W))
    # The loops write the grid (box grown by pad) without bounds checks: each region must be its
    # box grown by at most pad on every side.
    if (
        (nr < 1).any()
        or (nc < 1).any()
        or (r0 < 0).any()
        or (c0 < 0).any()
        or (r0 > pad).any()
        or (c0 > pad).any()
        or (r0 + nr > h).any()
        or (c0 + nc > w).any()
        or (h > r0 + nr + pad).any()
        or (w > c0 + nc + pad).any()
    ):
        raise ValueError(f"refine_regions_compiled: a region is not its box grown by at most {pad} pixels")
    shapes = np.array([tuple(src.shape) for src in sources], dtype=np.int64).reshape(-1, 3)
    channels = len(refinement.pixel_mean)
    if (shapes[:, 0] != channels).any():
        raise ValueError(
            f"refine_regions_compiled: pixel sources need {channels} channels, got {sorted(set(shapes[:, 0].tolist()))}"
        )
    starts = np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]])
    index = np.asarray(source_index, dtype=np.int64)
    if ((index < 0) | (index >= len(sources))).any():
        raise ValueError(f"refine_regions_compiled: source indices must be in [0, {len(sources)})")
    meta[:, _SRC], meta[:, _SRC_H], meta[:, _SRC_W] = starts[index], shapes[index, 1], shapes[index, 2]
    meta[:, [_SRC_R0, _SRC_C0]] = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    if (
        (meta[:, _SRC_R0] < 0).any()
        or (meta[:, _SRC_C0] < 0).any()
        or (meta[:, _SRC_R0] + h > meta[:, _SRC_H]).any()
        or (meta[:, _SRC_C0] + w > meta[:, _SRC_W]).any()
    ):
        raise ValueError("refine_regions_compiled: a region reaches outside its pixel source")
    flat = torch.cat([src.reshape(-1) for src in sources])
    flat = (flat if flat.dtype == torch.uint8 else flat.float()).numpy()
    mean = np.asarray(refinement.pixel_mean, dtype=np.float32)
    std = np.asarray(refinement.pixel_std, dtype=np.float32)
    scale = np.float32(-1.0 / (2.0 * refinement.zeta * refinement.zeta))
    q = probs.float().clamp(refinement.low, refinement.high)
    logits = (torch.log(q) - torch.log1p(-q)).contiguous().numpy()
    out_np = out.numpy()
    # Regions in groups of at most GROUP_PIXELS grid pixels: the pair weights of a group (12 floats
    # per grid pixel for 5x5 taps) stay bounded however large the boxes of a batch are.
    grid = (nr + 2 * pad) * (nc + 2 * pad)
    total = np.cumsum(grid)
    first = 0
    while first < k_regions:
        before = int(total[first - 1]) if first else 0
        end = max(first + 1, int(np.searchsorted(total, before + GROUP_PIXELS, side="right")))
        group = meta[first:end].copy()
        pair_sizes = len(offsets) * grid[first:end]
        group[:, _PAIRS] = np.concatenate([[0], np.cumsum(pair_sizes)[:-1]])
        pairs = np.empty(int(pair_sizes.sum()), dtype=np.float32)
        _pair_exponents(flat, group, offsets, pad, mean, std, scale, pairs)
        torch.from_numpy(pairs).exp_()
        _mean_field(
            logits[first:end],
            pairs,
            group,
            offsets,
            pad,
            refinement.low,
            refinement.high,
            refinement.num_iter,
            out_np[first:end],
        )
        first = end
    return out
