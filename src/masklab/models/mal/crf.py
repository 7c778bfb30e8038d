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

import torch
import torch.nn.functional as F


def color_affinities(images: torch.Tensor, kernel_size: int = 3, zeta: float = 0.1) -> torch.Tensor:
    """(B, k*k, H*W) weights ``exp(-|I_i - I_j|^2 / (2 zeta^2))`` to each neighbour ``j`` of pixel ``i``.

    Args:
        images: (B, C, H, W) normalised images (zeta is in these units: 0.1 after ImageNet
            normalisation is about 6 grey levels, so only near-identical colours are linked).
        kernel_size: odd window side.
        zeta: colour bandwidth.

    Neighbours outside the image get weight 0 (instead of the padding's colour).
    """
    b, c, h, w = images.shape
    pad = kernel_size // 2
    neigh = F.unfold(images, kernel_size, padding=pad).view(b, c, kernel_size * kernel_size, h * w)
    centre = images.reshape(b, c, 1, h * w)
    dist2 = (neigh - centre).pow(2).sum(dim=1)
    valid = F.unfold(images.new_ones(1, 1, h, w), kernel_size, padding=pad)  # (1, k*k, H*W)
    return torch.exp(-dist2 / (2.0 * zeta * zeta)) * valid


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
    k, pad = kernel_size, kernel_size // 2
    box = box_masks.bool()
    # Work on logits: clamping a probability to [low, high] is clamping its logit, and "zero the
    # foreground outside the box, then clamp" leaves logit(low) there, so no exp/log per iteration.
    lo, hi = math.log(low / (1 - low)), math.log(high / (1 - high))
    q = (start * box).clamp(low, high)
    z = torch.log(q) - torch.log1p(-q)
    weights = affinities.view(b, k * k, h, w)
    padded = z.new_zeros((b, h + 2 * pad, w + 2 * pad))
    for _ in range(num_iter):
        # Neighbourhood sum as k*k shifted views of one padded buffer: the same sum as an unfold
        # but without materialising (B, k*k, H*W) each iteration (several times faster on CPU).
        padded[:, pad : pad + h, pad : pad + w] = z
        acc = torch.zeros_like(z)
        for j in range(k * k):
            dy, dx = divmod(j, k)
            acc.addcmul_(padded[:, dy : dy + h, dx : dx + w], weights[:, j])
        z = torch.where(box, acc.clamp(lo, hi), lo)
    return (z > 0) & box
