"""Point sampling of mask logits and targets (PointRend style), shared by the matcher and the criterion.

Reading masks at random normalised points lets predictions at 1/4 resolution and targets at full
resolution be compared without resizing either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly read ``maps`` at normalised points.

    Args:
        maps: (N, C, H, W).
        coords: (N, P, 2) normalised (x, y) in [0, 1].

    Returns:
        (N, C, P).
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


@torch.no_grad()
def point_sample_channels(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """:func:`point_sample` without autograd, for maps of many channels (the matcher's (B, Q, h, w) logits).

    ``grid_sample`` reads the four corners once per channel; here each point is one ``embedding_bag`` of
    its four corner rows of a channels-last table (fbgemm on CPU): 20-24 -> 9 ms for (2, 100, 64, 64) maps
    at 12544 points (1 thread). Same bilinear weights: the maps get a one-pixel zero border and points are
    clamped into it, which reads zeros exactly where ``grid_sample``'s zeros padding does.

    Args:
        maps: (N, C, H, W).
        coords: (N, P, 2) normalised (x, y) in [0, 1].

    Returns:
        (N, C, P), a transposed view of an (N, P, C) tensor.
    """
    n, c, h, w = maps.shape
    p = coords.shape[1]
    block = (h + 2) * (w + 2)
    # A tail of w + 3 zero rows takes the weight-0 corners of points clamped onto the last bottom border.
    table = maps.new_zeros(n * block + w + 3, c)
    # Per-image 2-D transposes take copy_'s blocked-transpose path (a 4-D permuted copy was 2x slower).
    flat = maps.new_empty(n, h * w, c)
    for i in range(n):
        flat[i].copy_(maps[i].view(c, h * w).t())
    table[: n * block].view(n, h + 2, w + 2, c)[:, 1:-1, 1:-1] = flat.view(n, h, w, c)
    # non_blocking: a blocking host-to-device copy ends in a stream synchronisation on CUDA.
    scale = torch.tensor([w, h], dtype=coords.dtype).to(coords.device, non_blocking=True)
    pos = torch.minimum((coords * scale + 0.5).clamp_(min=0), scale + 1)  # bordered pixel coordinates
    corner = pos.floor()
    fx, fy = (pos - corner).unbind(-1)
    corner = corner.to(torch.int64)
    row = corner[..., 1] * (w + 2) + corner[..., 0]
    row += torch.arange(n, device=maps.device).view(n, 1) * block
    index = torch.stack([row, row + 1, row + (w + 2), row + (w + 3)], -1).view(n * p, 4)
    gx, gy = 1 - fx, 1 - fy
    weights = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], -1).view(n * p, 4).to(maps.dtype)
    out = F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")
    return out.view(n, p, c).transpose(1, 2)


def _point_draw_sizes(
    num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> tuple[int, int, int]:
    """``(candidates, kept by uncertainty, fresh uniform)`` points per mask of :func:`uncertain_point_coords`."""
    num_uncertain = int(importance_sample_ratio * num_points)
    return int(num_points * oversample_ratio), num_uncertain, num_points - num_uncertain


def draw_point_candidates(
    n: int,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The random part of :func:`uncertain_point_coords` for ``n`` masks, drawn ahead of the logits.

    Returns ``(candidates, fresh)``: (n, candidates, 2) uniform points, then (n, fresh, 2) more uniform
    points (``None`` when every point is chosen by uncertainty), in the order the function draws them,
    so a caller that draws for several prediction points first and samples them in one batch later
    uses the same random numbers as sampling each on its own.
    """
    num_sampled, _, num_random = _point_draw_sizes(num_points, oversample_ratio, importance_sample_ratio)
    candidates = torch.rand(n, num_sampled, 2, device=device, generator=generator)
    fresh = torch.rand(n, num_random, 2, device=device, generator=generator) if num_random > 0 else None
    return candidates, fresh


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
    draws: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Points concentrated where the mask is uncertain (|logit| small), plus uniform ones.

    Draws ``num_points * oversample_ratio`` uniform candidates per mask, keeps the
    ``importance_sample_ratio`` share with the smallest |logit| and fills up with fresh uniform points.

    Args:
        logits: (N, 1, H, W) mask logits.
        num_points: points per mask.
        oversample_ratio: candidates per kept point (>= 1).
        importance_sample_ratio: share of points chosen by uncertainty, in [0, 1].
        generator: optional RNG.
        draws: the uniform points already drawn by :func:`draw_point_candidates` (then ``generator``
            is not used).

    Returns:
        (N, num_points, 2) normalised coordinates (no gradient).
    """
    n = logits.shape[0]
    _, num_uncertain, _ = _point_draw_sizes(num_points, oversample_ratio, importance_sample_ratio)
    with torch.no_grad():
        if draws is None:
            draws = draw_point_candidates(
                n, num_points, oversample_ratio, importance_sample_ratio, logits.device, generator
            )
        candidates, fresh = draws
        uncertainty = -point_sample(logits.detach().float(), candidates).abs().squeeze(1)  # (N, num_sampled)
        # Unsorted: the same set of points (the loss is a mean over them), about 4x faster than sorted.
        idx = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices
        chosen = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
        if fresh is not None:
            chosen = torch.cat([chosen, fresh], 1)
    return chosen
