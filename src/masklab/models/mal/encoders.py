"""Encoders for MAL: a timm ViT by name (the paper's choice) and a tiny CNN for CPU tests.

Both expose ``feature_info`` and return a list of maps like every masklab backbone, so a
``features_only`` CNN (``TimmBackbone``) plugs into :class:`~masklab.models.mal.model.MALModel` too.
"""

from __future__ import annotations

import torch
from torch import nn

from masklab.config.registries import BACKBONES
from masklab.errors import CheckpointError, ConfigError
from masklab.models.backbones.base import FeatureInfo
from masklab.models.backbones.weight_file import describe_mismatch, read_weight_file


@BACKBONES.register()
class MalViTEncoder(nn.Module):
    """A plain timm ViT returning its patch tokens as one (B, C, H/p, W/p) map (prefix tokens dropped).

    Built with ``dynamic_img_size=True`` so any crop size works (position embeddings are resized);
    weights come only from a local file (e.g. MAE ``vit_base_patch16_224.mae``), never the network.

    Args:
        arch: timm model name, e.g. ``vit_base_patch16_224.mae`` or ``vit_tiny_patch16_224``.
        pretrained: local weight file (``.safetensors`` / ``.pth``; MAE checkpoints nesting the
            weights under ``model`` are fine), or None for random init.
        frozen_stages: -1 trains everything; ``n >= 0`` freezes the patch embedding, position
            embedding and the first ``n`` blocks.
        drop_path_rate: stochastic depth of the blocks (MAL: 0).
        depth: override the number of blocks (tiny test models); None keeps the architecture's.
    """

    def __init__(
        self,
        arch: str = "vit_base_patch16_224.mae",
        *,
        pretrained: str | None = None,
        frozen_stages: int = -1,
        drop_path_rate: float = 0.0,
        depth: int | None = None,
    ) -> None:
        super().__init__()
        import timm

        extra = {} if depth is None else {"depth": depth}
        try:
            self.vit = timm.create_model(
                arch,
                pretrained=False,
                num_classes=0,
                dynamic_img_size=True,
                drop_path_rate=drop_path_rate,
                **extra,
            )
        except RuntimeError as err:  # timm's "Unknown model"
            raise ConfigError(f"model.arch: {arch!r} is not a timm model ({err})") from None
        except TypeError:  # a timm CNN (resnet50, ...) takes no dynamic_img_size
            raise ConfigError(
                f"model.arch: {arch!r} is not a plain ViT (timm builds it without dynamic_img_size)"
            ) from None
        if not hasattr(self.vit, "patch_embed") or not hasattr(self.vit, "blocks"):
            raise ConfigError(f"model.arch: {arch!r} is not a plain ViT (no patch_embed/blocks)")
        self.patch_size = int(self.vit.patch_embed.patch_size[0])
        self.num_prefix_tokens = int(getattr(self.vit, "num_prefix_tokens", 1))
        self.feature_info = FeatureInfo(channels=[int(self.vit.embed_dim)], strides=[self.patch_size])
        if pretrained:
            self._load(pretrained)
        self._freeze(frozen_stages)

    def _load(self, path: str) -> None:
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(read_weight_file(path), self.vit)  # resizes position embeddings
        expected = self.vit.state_dict()
        # MAE checkpoints have no classifier; the pooled-feature norm may be absent too.
        mismatch = describe_mismatch(
            {k: v for k, v in expected.items() if not k.startswith(("head.", "fc_norm."))},
            state,
            ("head.", "fc_norm.", "decoder", "mask_token"),
        )
        if mismatch:
            raise CheckpointError(f"{path}: does not fit timm {type(self.vit).__name__}: {mismatch}")
        self.vit.load_state_dict(state, strict=False)

    def _freeze(self, frozen_stages: int) -> None:
        if frozen_stages < 0:
            return
        for name in ("patch_embed", "cls_token", "reg_token", "pos_embed"):
            part = getattr(self.vit, name, None)
            if isinstance(part, nn.Module):
                part.requires_grad_(False)
            elif isinstance(part, nn.Parameter):
                part.requires_grad_(False)
        for block in list(self.vit.blocks)[:frozen_stages]:
            block.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.vit.forward_features(x)[:, self.num_prefix_tokens :]
        return [tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)]


@BACKBONES.register()
class MalTinyEncoder(nn.Module):
    """A few strided conv + ReLU layers: a fast stand-in encoder for CPU tests and demos.

    Args:
        channels: width of every layer.
        num_layers: stride-2 layers (output stride ``2 ** num_layers``).
        patch_stem: replace the first two stride-2 3x3 convs by one 4x4 stride-4 "patchify" conv
            (a ViT-style patch embedding): same output stride, about a third of the encoder's
            multiply-adds at 128 px, which is what CPU labeling speed is made of.
    """

    def __init__(self, channels: int = 32, num_layers: int = 3, *, patch_stem: bool = False) -> None:
        super().__init__()
        if num_layers < 1 or (patch_stem and num_layers < 2):
            raise ConfigError(
                f"model.backbone.num_layers: expected >= {2 if patch_stem else 1}, got {num_layers}"
            )
        layers: list[nn.Module] = []
        in_ch = 3
        strided = num_layers
        if patch_stem:
            layers += [nn.Conv2d(3, channels, 4, stride=4), nn.ReLU(inplace=True)]
            in_ch, strided = channels, num_layers - 2
        for _ in range(strided):
            layers += [nn.Conv2d(in_ch, channels, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            in_ch = channels
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.feature_info = FeatureInfo(channels=[channels], strides=[2**num_layers])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.body(x)]
