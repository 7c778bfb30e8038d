"""Sine position embedding over a 2-D feature map (DETR / Mask2Former flavour)."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine embedding of normalised (y, x) pixel positions.

    With ``normalize`` the cumulative coordinates 1..H are divided by H and scaled by ``scale``
    (2*pi), so the embedding depends on relative position, not on the image size.

    Args:
        num_pos_feats: features per axis; the output has ``2 * num_pos_feats`` channels (y then x).
        temperature: frequency base.
        normalize: normalise positions to (0, scale].
        scale: range after normalisation.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding for the spatial grid of ``x`` (B, C, H, W) -> (B, 2 * num_pos_feats, H, W)."""
        b, _, h, w = x.shape
        dtype = torch.float32
        y_embed = torch.arange(1, h + 1, dtype=dtype, device=x.device).view(h, 1).expand(h, w)
        x_embed = torch.arange(1, w + 1, dtype=dtype, device=x.device).view(1, w).expand(h, w)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (h + eps) * self.scale
            x_embed = x_embed / (w + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=dtype, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, None] / dim_t
        pos_y = y_embed[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(b, -1, -1, -1).to(x.dtype)
