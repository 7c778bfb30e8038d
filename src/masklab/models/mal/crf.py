"""MAL's mean-field CRF refinement that turns a soft in-box mask into a binary self-training target.

Implemented as in the reference code (not the paper's formula): starting from the clamped average of
student and teacher probabilities inside the box, every iteration replaces each pixel's
distribution by the colour-weighted geometric mean of its ``k x k`` neighbourhood (the pixel
itself included), zeroes the foreground outside the box, renormalises over {bg, fg} and clamps.
For two labels that update is ``q_fg = sigmoid(sum_j w_ij * logit(q_fg_j))``, which is what runs
here: one channel of logits, the neighbourhood sum done with shifted views. There is no separate unary term and no ``omega``
weight (the reference parses ``crf_omega`` and never uses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def color_affinities(
    images: torch.Tensor, kernel_size: int = 3, zeta: float = 0.1, dilation: int = 1
) -> torch.Tensor:
    """(B, k*k, H*W) weights ``exp(-|I_i - I_j|^2 / (2 zeta^2))`` to each neighbour ``j`` of pixel ``i``.

    Args:
        images: (B, C, H, W) normalised images (zeta is in these units: 0.1 after ImageNet
            normalisation is about 6 grey levels, so only near-identical colours are linked).
        kernel_size: odd window side.
        zeta: colour bandwidth.
        dilation: spacing of the window's taps (the window spans ``dilation * (k - 1) + 1`` pixels).

    Neighbours outside the image get weight 0 (instead of the padding's colour).
    """
    b, c, h, w = images.shape
    k, pad = kernel_size, kernel_size // 2 * dilation
    # Shifted views of one padded copy instead of an unfold: the unfold materialises
    # (B, C, k*k, H*W) in a layout that made this 5-8x slower on CPU (measured at 64x64, k 5).
    # The distance is symmetric: the tap at offset -e of pixel p is the tap at +e of pixel p - e,
    # so each pair of mirrored taps is one difference map over the pixels of both (the window
    # grown by |e|), read at two places; the centre tap is 0. Half the taps' arithmetic, same values.
    # The weight itself is computed once per pair (exp over the grown window), then copied twice.
    x = images.float().contiguous()
    padded = F.pad(x, (pad, pad, pad, pad))
    weights = x.new_empty((b, k * k, h, w))
    weights[:, k * k // 2] = 1.0
    scale = -1.0 / (2.0 * zeta * zeta)
    for j in range(k * k // 2):
        ey, ex = (j // k - k // 2) * dilation, (j % k - k // 2) * dilation
        sy, sx = max(0, ey), max(0, ex)  # the grown window starts sy, sx before the image
        rows, cols = h + abs(ey), w + abs(ex)
        here = padded[:, :, pad - sy : pad - sy + rows, pad - sx : pad - sx + cols]
        there = padded[:, :, pad - sy + ey : pad - sy + ey + rows, pad - sx + ex : pad - sx + ex + cols]
        pair = torch.exp_((there - here).pow_(2).sum(1).mul_(scale))  # at q: w(q, q + e)
        weights[:, j] = pair[:, sy : sy + h, sx : sx + w]  # pixel p, tap +e
        weights[:, k * k - 1 - j] = pair[:, sy - ey : sy - ey + h, sx - ex : sx - ex + w]  # p, tap -e
        # Neighbours outside the image get weight 0 (not the zero padding's colour).
        for tap, (dy, dx) in ((j, (ey, ex)), (k * k - 1 - j, (-ey, -ex))):
            if dy > 0:
                weights[:, tap, max(h - dy, 0) :] = 0.0
            elif dy < 0:
                weights[:, tap, : min(-dy, h)] = 0.0
            if dx > 0:
                weights[:, tap, :, max(w - dx, 0) :] = 0.0
            elif dx < 0:
                weights[:, tap, :, : min(-dx, w)] = 0.0
    return weights.view(b, k * k, h * w)


@torch.no_grad()
def mean_field_target(
    start: torch.Tensor,
    affinities: torch.Tensor,
    box_masks: torch.Tensor,
    *,
    kernel_size: int = 3,
    num_iter: int = 100,
    low: float = 0.1,
    high: float = 0.9,
) -> torch.Tensor:
    """(B, H, W) bool target: the refined foreground probability > 0.5, inside the box only.

    Args:
        start: (B, H, W) foreground probabilities (MAL: mean of student and teacher).
        affinities: (B, k*k, H*W) from :func:`color_affinities` at the same resolution.
        box_masks: (B, H, W) bool box rectangles.
        kernel_size: the window the affinities were computed with.
        num_iter: mean-field iterations.
        low: lower clamp of the probabilities (keeps the logits finite).
        high: upper clamp.
    """
    b, h, w = start.shape
    box = box_masks.bool()
    weights = affinities.view(b, kernel_size * kernel_size, h, w)
    z = _mean_field_logits(start * box, weights, kernel_size, num_iter, low, high, box)
    return (z > 0) & box


def _mean_field_logits(
    probs: torch.Tensor,
    weights: torch.Tensor,
    kernel_size: int,
    num_iter: int,
    low: float,
    high: float,
    box: torch.Tensor | None = None,
    outside: torch.Tensor | None = None,
    dilation: int = 1,
) -> torch.Tensor:
    """The shared mean-field loop: (B, H, W) clamped logits after ``num_iter`` colour-weighted updates.

    Works on logits: clamping a probability to [low, high] is clamping its logit, and "zero the
    foreground outside the box, then clamp" leaves logit(low) there, so no exp/log per iteration.
    ``weights`` (B, k*k, H, W); ``box`` (B, H, W) bool or None (no box constraint); ``outside``
    (B, H, W) the logits held fixed outside the box (default logit(low) everywhere: background);
    ``dilation`` the spacing of the window's taps (as the weights were computed with).
    """
    b, h, w = probs.shape
    k, pad = kernel_size, kernel_size // 2 * dilation
    lo, hi = math.log(low / (1 - low)), math.log(high / (1 - high))
    q = probs.clamp(low, high)
    z = torch.log(q) - torch.log1p(-q)
    fixed: torch.Tensor | float = lo if outside is None else outside
    if box is not None and outside is not None:
        z = torch.where(box, z, outside)
    # Zero logits beyond the border: their weights are zero, so they add nothing.
    padded = z.new_zeros((b, h + 2 * pad, w + 2 * pad))
    for _ in range(num_iter):
        # Neighbourhood sum as k*k shifted views of one padded buffer: the same sum as an unfold
        # but without materialising (B, k*k, H*W) each iteration (several times faster on CPU).
        padded[:, pad : pad + h, pad : pad + w] = z
        acc = torch.zeros_like(z)
        for j in range(k * k):
            dy, dx = (v * dilation for v in divmod(j, k))
            acc.addcmul_(padded[:, dy : dy + h, dx : dx + w], weights[:, j])
        z = acc.clamp_(lo, hi) if box is None else torch.where(box, acc.clamp(lo, hi), fixed)
    return z


@torch.no_grad()
def refine_probs(
    probs: torch.Tensor,
    images: torch.Tensor,
    *,
    scale: int = 2,
    kernel_size: int = 5,
    zeta: float = 0.5,
    num_iter: int = 2,
    low: float = 0.1,
    high: float = 0.9,
) -> torch.Tensor:
    """Labeling-time refinement: (B, scale*h, scale*w) foreground probabilities snapped to colour edges.

    The same mean-field update as :func:`mean_field_target` (clamped logits, colour-weighted
    neighbourhood sums), run on the predicted probabilities bilinearly upsampled ``scale`` times
    with the crop's colours at that resolution, and returned soft (clamped to ``[low, high]``) so
    that paste-back still interpolates. No box constraint here: paste-back keeps box pixels only.

    Args:
        probs: (B, h, w) predicted foreground probabilities of B crops.
        images: (B, C, H, W) the crops as the network saw them (normalised).
        scale: upsampling factor of the probability map before the update (1: logit resolution).
        kernel_size: odd neighbourhood side (MAL: ``train.crf_kernel_size``).
        zeta: colour bandwidth in normalised-image units (``train.crf_zeta``).
        num_iter: mean-field iterations (0: only the upsampling).
        low: lower probability clamp.
        high: upper probability clamp.
    """
    b, h, w = probs.shape
    h, w = h * scale, w * scale
    p = probs.float()
    if scale != 1:
        p = F.interpolate(p[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    if num_iter == 0:
        return p
    colours = F.interpolate(images.float(), size=(h, w), mode="bilinear", align_corners=False)
    weights = color_affinities(colours, kernel_size, zeta).view(b, kernel_size * kernel_size, h, w)
    return torch.sigmoid(_mean_field_logits(p, weights, kernel_size, num_iter, low, high))


@dataclass(frozen=True)
class RegionRefinement:
    """Settings of the label refinement at image resolution (``evaluate.crf_refine_space: image``).

    Attributes:
        num_iter: mean-field iterations (>= 1).
        kernel_size: odd neighbourhood side; the region around each box is grown by half of it.
        zeta: colour bandwidth in normalised-image units.
        low: lower probability clamp (and the margin's background value).
        high: upper probability clamp.
        dilation: spacing of the kernel's taps.
        pixel_mean: per-channel mean (0..255) the colours are normalised with (zeta's units).
        pixel_std: per-channel std (0..255).
    """

    num_iter: int
    kernel_size: int
    zeta: float
    low: float
    high: float
    dilation: int = 1
    pixel_mean: tuple[float, ...] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, ...] = (58.395, 57.12, 57.375)

    @property
    def pad(self) -> int:
        """Margin around the box: the pixels the box's border pixels see."""
        return self.kernel_size // 2 * self.dilation


@torch.no_grad()
def refine_box_regions(
    probs: torch.Tensor,
    colours: torch.Tensor,
    inside: torch.Tensor,
    valid: torch.Tensor,
    *,
    kernel_size: int = 5,
    zeta: float = 0.5,
    num_iter: int = 3,
    low: float = 0.1,
    high: float = 0.9,
    dilation: int = 1,
) -> torch.Tensor:
    """Labeling-time refinement at image resolution: (K, H, W) logits of K box regions.

    The PyTorch statement of the update (any device); labeling on CPU runs the compiled per-region
    loops of :func:`~masklab.models.mal.region_kernels.refine_regions_compiled`, which the tests
    hold equal to this function region by region.

    The mean-field update of :func:`mean_field_target` run on the predicted probabilities pasted
    back to the image (each region is a box grown by a margin, cut from its image) with the
    image's own pixels as colours: no resize blurs the edges the update snaps to. Pixels of the
    margin (outside the box, inside the image) are held at background (logit(low)), as a box
    labeler treats everything outside a tight box; slot pixels past a region's extent hold logit 0
    and so add nothing. A mask is ``logits > logit(threshold)`` inside the box.

    Args:
        probs: (K, H, W) pasted foreground probabilities (any value outside the box).
        colours: (K, C, H, W) the regions' pixels, normalised as the network's input.
        inside: (K, H, W) bool, the box's pixels.
        valid: (K, H, W) bool, the region's pixels (the rest of the slot is padding).
        kernel_size: odd neighbourhood side.
        zeta: colour bandwidth in normalised-image units.
        num_iter: mean-field iterations (0: the clamped logits of ``probs``).
        low: lower probability clamp (and the margin's background value).
        high: upper probability clamp.
        dilation: spacing of the kernel's taps.
    """
    k, h, w = probs.shape
    lo = math.log(low / (1 - low))
    box = inside & valid
    outside = torch.where(valid, torch.full_like(probs, lo), torch.zeros_like(probs))
    weights = color_affinities(colours, kernel_size, zeta, dilation).view(k, kernel_size * kernel_size, h, w)
    return _mean_field_logits(
        probs.float(), weights, kernel_size, num_iter, low, high, box, outside, dilation
    )
