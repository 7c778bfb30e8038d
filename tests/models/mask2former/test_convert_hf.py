"""Parity with Hugging Face transformers: a converted tiny random HF Mask2Former gives the same logits."""

import functools
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from masklab.errors import CheckpointError
from masklab.models.mask2former import Mask2Former, Mask2FormerTransformerDecoder, MSDeformAttnPixelDecoder
from masklab.models.mask2former.convert_hf import convert_hf_mask2former, convert_hf_state_dict

transformers = pytest.importorskip("transformers")


@dataclass
class _Info:
    channels: list[int]
    strides: list[int]


class HFBackbone(nn.Module):
    """Runs the HF backbone module so that both models see identical features."""

    def __init__(self, body: nn.Module, channels: list[int]) -> None:
        super().__init__()
        self.body = body
        self.feature_info = _Info(channels, [4, 8, 16, 32])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).feature_maps)


def _tiny_hf() -> nn.Module:
    backbone = transformers.ResNetConfig(
        layer_type="basic",
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 64, 128],
        embedding_size=16,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        num_queries=10,
        decoder_layers=4,
        encoder_layers=1,
        num_attention_heads=4,
        dim_feedforward=128,
        encoder_feedforward_dim=128,
        num_labels=5,
    )
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    # Random init leaves some parts at zero (attention weights, offsets): perturb so parity means something.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _masklab_twin(hf: nn.Module) -> Mask2Former:
    body = hf.model.pixel_level_module.encoder
    return Mask2Former(
        HFBackbone(body, [16, 32, 64, 128]),
        num_classes=5,
        pixel_decoder=functools.partial(
            MSDeformAttnPixelDecoder, conv_dim=64, mask_dim=64, num_layers=1, num_heads=4, ffn_dim=128
        ),
        decoder=functools.partial(
            Mask2FormerTransformerDecoder,
            num_queries=10,
            hidden_dim=64,
            num_layers=3,
            nheads=4,
            dim_feedforward=128,
        ),
        data_preprocessor=nn.Identity(),
    ).eval()


def test_converted_hf_model_gives_the_same_logits(tmp_path) -> None:
    hf = _tiny_hf()
    src = tmp_path / "hf.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(src))
    state = convert_hf_mask2former(
        src, tmp_path / "out" / "m2f.pth", backbone_key_map=lambda k: f"backbone.body.{k}"
    )
    # masklab's pixel decoder, decoder and heads start from their own random init: parity needs the file.
    ours = _masklab_twin(_tiny_hf())
    result = ours.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        out = ours.predict_outputs(x).last
    assert out.class_logits.shape == ref.class_queries_logits.shape == (2, 10, 6)
    torch.testing.assert_close(out.class_logits, ref.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.mask_logits, ref.masks_queries_logits, atol=1e-4, rtol=1e-4)
    saved = torch.load(tmp_path / "out" / "m2f.pth", weights_only=True)
    assert set(saved["model"]) == set(state)


def test_unknown_key_is_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="'model.something.else'"):
        convert_hf_state_dict({"model.something.else": torch.zeros(1)})
