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


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
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

    Returns:
        (N, num_points, 2) normalised coordinates (no gradient).
    """
    n = logits.shape[0]
    device = logits.device
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    with torch.no_grad():
        candidates = torch.rand(n, num_sampled, 2, device=device, generator=generator)
        uncertainty = -point_sample(logits.detach().float(), candidates).abs().squeeze(1)  # (N, num_sampled)
        idx = uncertainty.topk(num_uncertain, dim=1).indices
        chosen = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
        if num_random > 0:
            chosen = torch.cat([chosen, torch.rand(n, num_random, 2, device=device, generator=generator)], 1)
    return chosen
