"""MAL's box-conditioned mask network: encoder, instance (K) head, pixel (V) head and K.V decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from masklab.errors import ConfigError

# Box-area buckets (image pixels^2) that choose the feature resolution: small < 32^2 <= medium < 96^2.
_SIZE_EDGES = (32.0**2, 96.0**2)
# Small / medium / large boxes see the encoder map resized by these factors before the pixel head.
_SCALE_FACTORS = (0.5, 1.0, 2.0)


class MalInstanceHead(nn.Module):
    """Instance vector: mean of the whole feature map (context included) -> Linear -> ReLU -> Linear."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden_channels),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_channels, out_channels),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats.mean(dim=(2, 3)))


class MalPixelHead(nn.Module):
    """``num_convs`` conv3x3 + ReLU layers, the map bilinearly upsampled by ``scale_ratio`` before the last."""

    def __init__(
        self, in_channels: int, hidden_channels: int, out_channels: int, num_convs: int, scale_ratio: float
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ConfigError(f"model.mask_head_num_convs: expected >= 1, got {num_convs}")
        chans = [in_channels] + [hidden_channels] * (num_convs - 1) + [out_channels]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(num_convs))
        self.scale_ratio = float(scale_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            if i == len(self.convs) - 1 and self.scale_ratio != 1.0:
                x = F.interpolate(x, scale_factor=self.scale_ratio, mode="bilinear", align_corners=False)
            x = F.relu(conv(x), inplace=True)
        return x


class MalNetwork(nn.Module):
    """Crop -> (B, S/4, S/4) mask logits, the per-pixel dot product of instance and pixel features.

    Args:
        backbone: module with ``feature_info`` returning a list of maps.
        feature_index: which returned map to use (ViT: its only map; CNNs: pick the stride-16 one).
        num_convs: pixel-head conv layers.
        hidden_channels: width of both heads.
        out_channels: dimension of the dot product.
        scale_ratio: pixel-head upsampling factor.
        adjust_scale: route small / medium / large boxes (area in the source image) through the
            map resized 0.5x / 1x / 2x, as MAL does; False uses 1x for all.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_index: int = -1,
        num_convs: int = 4,
        hidden_channels: int = 256,
        out_channels: int = 256,
        scale_ratio: float = 2.0,
        adjust_scale: bool = True,
    ) -> None:
        super().__init__()
        info = backbone.feature_info
        if not -len(info.channels) <= feature_index < len(info.channels):
            raise ConfigError(
                f"model.feature_index: {feature_index} out of range for a backbone with {len(info.channels)} maps"
            )
        self.backbone = backbone
        self.feature_index = feature_index
        in_ch = int(info.channels[feature_index])
        self.instance_head = MalInstanceHead(in_ch, hidden_channels, out_channels)
        self.pixel_head = MalPixelHead(in_ch, hidden_channels, out_channels, num_convs, scale_ratio)
        self.adjust_scale = adjust_scale

    def forward(self, images: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        """Logits (B, S/4, S/4) for (B, 3, S, S) crops of boxes with (B,) areas in image pixels."""
        out_size = (images.shape[-2] // 4, images.shape[-1] // 4)
        feats = self.backbone(images)[self.feature_index]
        kernel = self.instance_head(feats)
        if self.adjust_scale:
            bucket = (box_areas >= _SIZE_EDGES[0]).long() + (box_areas >= _SIZE_EDGES[1]).long()
        else:
            bucket = torch.ones_like(box_areas, dtype=torch.long)
        logits = feats.new_zeros((images.shape[0], *out_size))
        for b in bucket.unique().tolist():
            idx = (bucket == b).nonzero().flatten()
            sub = feats[idx]
            factor = _SCALE_FACTORS[b]
            if factor != 1.0:
                size = (max(1, round(sub.shape[-2] * factor)), max(1, round(sub.shape[-1] * factor)))
                sub = F.interpolate(sub, size=size, mode="bilinear", align_corners=False)
            pix = self.pixel_head(sub)
            dots = torch.einsum("bc,bchw->bhw", kernel[idx], pix)
            if dots.shape[-2:] != out_size:
                dots = F.interpolate(dots[:, None], size=out_size, mode="bilinear", align_corners=False)[:, 0]
            logits = logits.index_copy(0, idx, dots)
        return logits
