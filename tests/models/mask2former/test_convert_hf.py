"""Parity with Hugging Face transformers: a converted tiny random HF Mask2Former gives the same logits.

The end-to-end tests go the user's way: ``masklab convert hf-mask2former``, then the emitted config
through ``build_model`` and the checkpoint through ``load_model_weights(strict=True)``.
"""

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from masklab.cli.main import main
from masklab.config.assemble import build_model
from masklab.engine.checkpoint import load_model_weights
from masklab.errors import CheckpointError
from masklab.models.mask2former import Mask2Former, Mask2FormerTransformerDecoder, MSDeformAttnPixelDecoder
from masklab.models.mask2former.convert_hf import (
    convert_hf_mask2former,
    convert_hf_state_dict,
    hf_model_config,
)

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


_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _tiny_resnet(**overrides) -> "transformers.ResNetConfig":
    settings = dict(
        layer_type="basic",
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 64, 128],
        embedding_size=64,  # timm's 7x7 stem is 64 wide: the converter maps only that
        out_features=_STAGES,
    )
    return transformers.ResNetConfig(**{**settings, **overrides})


def _tiny_swin() -> "transformers.SwinConfig":
    # Two blocks (the second one shifted) in the stages whose maps get padded at 96 x 160 (6 x 10, 3 x 5).
    return transformers.SwinConfig(
        embed_dim=16, depths=[1, 1, 2, 2], num_heads=[1, 2, 4, 8], window_size=4, out_features=_STAGES
    )


def _tiny_hf(backbone=None, **overrides) -> nn.Module:
    backbone = backbone if backbone is not None else _tiny_resnet()
    settings = dict(
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
    config = transformers.Mask2FormerConfig(backbone_config=backbone, **{**settings, **overrides})
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
    result = convert_hf_mask2former(
        src, tmp_path / "out" / "m2f.pth", backbone_key_map=lambda k: f"backbone.body.{k}"
    )
    state = result.state
    assert result.config_path is None  # a custom backbone mapping: masklab cannot describe that backbone
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


def _save(hf: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    return path


def _convert_and_load(src: Path, dst: Path) -> tuple[Mask2Former, dict]:
    """The user's path: the CLI, then the emitted config and the checkpoint through the normal loaders."""
    assert main(["convert", "hf-mask2former", str(src), str(dst)]) == 0
    config = dst.with_suffix(".yaml")
    model = build_model(config).eval()
    report = load_model_weights(model, dst, strict=True)
    assert not report.missing and not report.unexpected
    return model, yaml.safe_load(config.read_text())["model"]


def _assert_same_logits(hf: nn.Module, ours: Mask2Former, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = hf(pixel_values=x)
        out = ours.predict_outputs(x).last
    assert out.class_logits.shape == ref.class_queries_logits.shape
    torch.testing.assert_close(out.class_logits, ref.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.mask_logits, ref.masks_queries_logits, atol=1e-4, rtol=1e-4)


def test_resnet_checkpoint_loads_from_the_emitted_config(tmp_path) -> None:
    hf = _tiny_hf()
    model, node = _convert_and_load(_save(hf, tmp_path / "hf.safetensors"), tmp_path / "m2f.pth")
    assert node["backbone"]["model_name"] == "resnet18"
    assert node["decoder"]["num_layers"] == hf.config.decoder_layers - 1 == 3
    assert node["pixel_decoder"]["num_layers"] == hf.config.encoder_layers
    assert node["num_classes"] == 5
    _assert_same_logits(hf, model, torch.randn(2, 3, 64, 96))


def test_bottleneck_resnet_maps_to_timm_resnet50(tmp_path) -> None:
    hf = _tiny_hf(_tiny_resnet(layer_type="bottleneck", depths=[1, 2, 1, 1], hidden_sizes=[32, 64, 128, 256]))
    model, node = _convert_and_load(_save(hf, tmp_path / "hf.safetensors"), tmp_path / "m2f.pth")
    assert node["backbone"]["model_name"] == "resnet50"
    assert node["backbone"]["channels"] == [8, 16, 32, 64]  # timm counts a bottleneck's inner width
    _assert_same_logits(hf, model, torch.randn(1, 3, 64, 64))


def test_swin_model_folder_loads_from_the_emitted_config(tmp_path) -> None:
    hf = _tiny_hf(_tiny_swin())
    hf.save_pretrained(tmp_path / "hf")  # config.json + model.safetensors
    model, node = _convert_and_load(tmp_path / "hf", tmp_path / "out" / "m2f.pth")
    assert node["backbone"]["model_name"].startswith("swin_")
    assert node["backbone"]["pad_windows_first"] and node["backbone"]["out_norm"]
    # 96 x 160: stages of 6 x 10 and 3 x 5 are padded to whole windows of 4 before the shift.
    _assert_same_logits(hf, model, torch.randn(1, 3, 96, 160))


_OLD_SWIN = [  # transformers 5 name -> the v4-era name older hub files carry
    ("swin.", ""),
    ("attention.q_proj", "attention.self.query"),
    ("attention.k_proj", "attention.self.key"),
    ("attention.v_proj", "attention.self.value"),
    ("attention.o_proj", "attention.output.dense"),
    (
        "attention.relative_position_bias.relative_position_bias_table",
        "attention.self.relative_position_bias_table",
    ),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
]


def _old_swin_spelling(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from timm.models.swin_transformer import get_relative_position_index

    prefix = "model.pixel_level_module.encoder."
    old = {}
    for key, value in state.items():
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            for new, was in _OLD_SWIN:
                rest = rest.replace(new, was, 1) if new != "swin." else rest.removeprefix(new)
            if rest.endswith("self.relative_position_bias_table"):  # older files kept the index buffer
                old[prefix + rest.replace("bias_table", "index")] = get_relative_position_index(4, 4)
            key = prefix + rest
        old[key] = value
    return old


def test_both_swin_spellings_convert_to_the_same_weights() -> None:
    state = _tiny_hf(_tiny_swin()).state_dict()
    old = _old_swin_spelling(state)
    assert any("attention.self.query" in k for k in old) and not any(".swin." in k for k in old)
    new_state, old_state = convert_hf_state_dict(state), convert_hf_state_dict(old)
    assert set(new_state) == set(old_state)
    assert all(torch.equal(new_state[k], old_state[k]) for k in new_state)


def test_nonstandard_relative_position_index_is_refused() -> None:
    old = _old_swin_spelling(_tiny_hf(_tiny_swin()).state_dict())
    key = next(k for k in old if k.endswith("relative_position_index"))
    old[key] = old[key].flip(0)
    with pytest.raises(CheckpointError, match="not the standard Swin relative position index"):
        convert_hf_state_dict(old)


def test_unmappable_backbones_are_one_line_errors() -> None:
    head = "model.pixel_level_module.encoder."
    with pytest.raises(CheckpointError, match="no masklab mapping") as err:
        convert_hf_state_dict({head + "convnext.embeddings.patch_embeddings.weight": torch.zeros(1)})
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="'convnext' backbone has no masklab mapping"):
        convert_hf_state_dict({}, hf_config={"backbone_config": {"model_type": "convnext"}})
    state = _tiny_hf(_tiny_resnet(embedding_size=32)).state_dict()
    with pytest.raises(CheckpointError, match="embedding_size=32 has no timm counterpart"):
        convert_hf_state_dict(state)
    state = _tiny_hf().state_dict()
    with pytest.raises(CheckpointError, match="downsample_in_bottleneck=True has no timm counterpart"):
        convert_hf_state_dict(state, hf_config={"backbone_config": {"downsample_in_bottleneck": True}})


def test_config_json_fills_what_shapes_do_not_show(tmp_path) -> None:
    hf = _tiny_hf(train_num_points=256, no_object_weight=0.2, pre_norm=True)
    hf.save_pretrained(tmp_path / "hf")
    result = convert_hf_mask2former(tmp_path / "hf", tmp_path / "m2f.pth")
    assert result.config_path == tmp_path / "m2f.yaml"
    assert (result.model["num_points"], result.model["eos_coef"]) == (256, 0.2)
    assert result.model["decoder"]["pre_norm"] is True
    model = build_model(result.config_path).eval()
    load_model_weights(model, tmp_path / "m2f.pth", strict=True)
    _assert_same_logits(hf, model, torch.randn(1, 3, 64, 64))


def test_config_json_that_disagrees_with_the_weights_is_refused(tmp_path) -> None:
    hf = _tiny_hf()
    config = hf.config.to_dict() | {"decoder_layers": 10}
    with pytest.raises(CheckpointError, match="says decoder_layers=10 but the weights have 3 decoder layers"):
        hf_model_config(hf.state_dict(), {"type": "TimmBackbone"}, json.loads(json.dumps(config)))
