"""SegFormer's Mix Transformer encoder (MiT-B0..B5; Xie et al., 2021).

Four stages, each an overlapping patch embedding (strided conv), transformer blocks whose attention
attends to a spatially reduced copy of the keys/values (``sr_ratio``), and a Mix-FFN (a depthwise
3x3 conv between the two linear layers, which replaces position embeddings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from masklab.config.registries import BACKBONES
from masklab.errors import CheckpointError, ModelError
from masklab.models.backbones.base import FeatureInfo
from masklab.models.backbones.weight_file import describe_mismatch, read_weight_file

MiTArch = Literal["b0", "b1", "b2", "b3", "b4", "b5"]

# arch -> (embed_dims of stage 1, blocks per stage); heads (1, 2, 5, 8) and widths x(1, 2, 5, 8) are shared.
_ARCHS: dict[str, tuple[int, tuple[int, ...]]] = {
    "b0": (32, (2, 2, 2, 2)),
    "b1": (64, (2, 2, 2, 2)),
    "b2": (64, (3, 4, 6, 3)),
    "b3": (64, (3, 4, 18, 3)),
    "b4": (64, (3, 8, 27, 3)),
    "b5": (64, (3, 6, 40, 3)),
}
_HEADS = (1, 2, 5, 8)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class OverlapPatchEmbed(nn.Module):
    """Strided conv (kernel > stride, so patches overlap) + LayerNorm; returns tokens and the grid size."""

    def __init__(self, in_channels: int, dims: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dims, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dims, eps=1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a ``sr_ratio``-times reduced grid."""

    def __init__(self, dims: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dims % num_heads:
            raise ModelError(f"MixVisionTransformer: {dims} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dims, dims)
        self.kv = nn.Linear(dims, 2 * dims)
        self.proj = nn.Linear(dims, dims)
        self.sr: nn.Module | None = None
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dims, dims, sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dims, eps=1e-6)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        src = x
        if self.sr is not None:
            grid = x.transpose(1, 2).reshape(b, c, h, w)
            src = self.sr_norm(self.sr(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(src).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear -> depthwise 3x3 conv -> GELU -> linear, on tokens laid out as an (h, w) grid."""

    def __init__(self, dims: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dims)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: efficient attention and Mix-FFN, each with stochastic depth."""

    def __init__(self, dims: int, num_heads: int, sr_ratio: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dims, eps=1e-6)
        self.attn = EfficientAttention(dims, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dims, eps=1e-6)
        self.ffn = MixFFN(dims, int(dims * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """Patch embedding, blocks and a final LayerNorm; returns an NCHW map."""

    def __init__(
        self,
        in_channels: int,
        dims: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        first: bool,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dims, 7 if first else 3, 4 if first else 2)
        self.blocks = nn.ModuleList(
            MiTBlock(dims, num_heads, sr_ratio, mlp_ratio, p) for p in drop_paths[:depth]
        )
        self.norm = nn.LayerNorm(dims, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, h, w = self.patch_embed(x)
        for block in self.blocks:
            tokens = block(tokens, h, w)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)


@BACKBONES.register()
class MixVisionTransformer(nn.Module):
    """The MiT encoder of SegFormer; returns four maps at strides 4, 8, 16, 32.

    Args:
        arch: "b0".."b5" presets for ``embed_dims`` and ``num_layers``.
        embed_dims: stage-1 width (stages are x1, x2, x5, x8); None = the preset's.
        num_layers: blocks per stage; None = the preset's.
        num_heads: attention heads per stage.
        sr_ratios: key/value spatial reduction per stage.
        mlp_ratio: Mix-FFN hidden width over the stage width.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this value.
        in_chans: input channels.
        out_indices: which stages to return (0..3).
        pretrained: a local weight file in this module's key layout (safetensors or torch), or None.
    """

    def __init__(
        self,
        arch: MiTArch = "b0",
        embed_dims: int | None = None,
        num_layers: tuple[int, ...] | None = None,
        num_heads: tuple[int, ...] = _HEADS,
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ModelError(
                f"MixVisionTransformer.arch: unknown {arch!r}; expected one of {', '.join(_ARCHS)}"
            )
        base_dims, base_layers = _ARCHS[arch]
        dims = embed_dims or base_dims
        layers = tuple(num_layers or base_layers)
        if not (len(layers) == len(num_heads) == len(sr_ratios) == 4):
            raise ModelError("MixVisionTransformer: num_layers, num_heads and sr_ratios need 4 entries each")
        if any(not 0 <= i < 4 for i in out_indices):
            raise ModelError(f"MixVisionTransformer.out_indices: {list(out_indices)} must lie in 0..3")
        widths = [dims * m for m in (1, 2, 5, 8)]
        total = sum(layers)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        start, prev = 0, in_chans
        for i in range(4):
            self.stages.append(
                MiTStage(
                    prev, widths[i], layers[i], num_heads[i], sr_ratios[i], mlp_ratio, i == 0, rates[start:]
                )
            )
            start += layers[i]
            prev = widths[i]
        self.out_indices = tuple(out_indices)
        self.feature_info = FeatureInfo(
            channels=[widths[i] for i in self.out_indices],
            strides=[(4, 8, 16, 32)[i] for i in self.out_indices],
        )
        self.apply(self._init_weights)
        if pretrained:
            self.load_weights(pretrained)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def load_weights(self, path: str | Path) -> None:
        """Load a local state dict written from this module (e.g. a masklab-exported encoder).

        Raises:
            CheckpointError: keys or shapes do not match.
        """
        source = read_weight_file(path)
        problem = describe_mismatch(self.state_dict(), source)
        if problem:
            raise CheckpointError(f"{path}: does not fit MixVisionTransformer: {problem}")
        self.load_state_dict(source)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps of the selected stages, fine to coarse, each (B, C_i, H/s_i, W/s_i)."""
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
            if i >= max(self.out_indices):
                break
        return outs
