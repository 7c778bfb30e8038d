"""HF ResNet / Swin backbone weights renamed for TimmBackbone give HF's feature maps."""

from __future__ import annotations

import pytest
import torch

from masklab.errors import CheckpointError, ModelError
from masklab.models.backbones import TimmBackbone
from masklab.models.backbones.hf_to_timm import hf_backbone_to_timm

transformers = pytest.importorskip("transformers")

_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _hf_backbone(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.AutoBackbone.from_config(config).eval()
    with torch.no_grad():  # BatchNorm statistics and zero-initialised parts away from their defaults
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.05)
    return model


def _timm_twin(hf: torch.nn.Module, **node_changes) -> TimmBackbone:
    imported = hf_backbone_to_timm(hf.state_dict(), hf.config.to_dict())
    node = {k: v for k, v in imported.node.items() if k != "type"} | node_changes
    backbone = TimmBackbone(**node).eval()
    backbone.load_state_dict(imported.state, strict=True)
    return backbone


def _max_differences(hf: torch.nn.Module, ours: TimmBackbone, x: torch.Tensor) -> list[float]:
    with torch.no_grad():
        return [(a - b).abs().max().item() for a, b in zip(hf(x).feature_maps, ours(x), strict=True)]


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        (dict(layer_type="basic", depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128]), "resnet18"),
        (dict(layer_type="bottleneck", depths=[1, 2, 1, 1], hidden_sizes=[32, 64, 128, 256]), "resnet50"),
    ],
)
def test_resnet_features_match(settings: dict, name: str) -> None:
    hf = _hf_backbone(transformers.ResNetConfig(embedding_size=64, out_features=_STAGES, **settings))
    ours = _timm_twin(hf)
    assert ours.model_name == name
    assert max(_max_differences(hf, ours, torch.randn(2, 3, 64, 96))) < 1e-4


def test_swin_features_match_at_padded_sizes_only_with_pad_windows_first() -> None:
    config = transformers.SwinConfig(
        embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7, out_features=_STAGES
    )
    hf = _hf_backbone(config)
    x = torch.randn(1, 3, 128, 128)  # stages of 32, 16, 8, 4: none a multiple of the window
    assert max(_max_differences(hf, _timm_twin(hf), x)) < 1e-4
    # timm's own order (shift, then pad) puts the padding in other windows: why the option exists.
    assert max(_max_differences(hf, _timm_twin(hf, pad_windows_first=False), x)) > 1e-2
    assert max(_max_differences(hf, _timm_twin(hf), torch.randn(1, 3, 224, 224))) < 1e-4


def test_out_norm_on_an_nchw_model_and_pad_windows_first_needs_swin() -> None:
    backbone = TimmBackbone("resnet18", out_indices=(1, 2, 3, 4), out_norm=True).eval()
    assert "out_norms.3.weight" in backbone.state_dict()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    # LayerNorm over channels with unit weight: every position has mean 0.
    assert feats[0].mean(1).abs().max() < 1e-5
    assert "out_norms.0.weight" not in TimmBackbone("resnet18").state_dict()
    with pytest.raises(ModelError, match="pad_windows_first is for timm Swin models"):
        TimmBackbone("resnet18", pad_windows_first=True)


def test_unknown_backbone_keys_are_one_line() -> None:
    with pytest.raises(CheckpointError, match="not a HF ResNet or Swin backbone"):
        hf_backbone_to_timm({"stem.conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="use_absolute_embeddings=True has no timm counterpart"):
        hf_backbone_to_timm(
            {"swin.embeddings.patch_embeddings.projection.weight": torch.zeros(1)},
            {"model_type": "swin", "use_absolute_embeddings": True},
        )
