"""TimmBackbone: feature shapes per family, local weight files, frozen stages, norm_eval."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from masklab.errors import CheckpointError, ConfigError, ModelError
from masklab.models.backbones import TimmBackbone

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {"out_indices": (1, 2, 3, 4)}),
        ("resnet50", {"out_indices": (1, 2, 3, 4), "output_stride": 8}),
        ("convnext_atto", {}),
        ("mobilenetv3_small_100", {}),
        # Swin family at a tiny width/depth: same code path (NHWC output), a fraction of the cost.
        (
            "swin_tiny_patch4_window7_224",
            {
                "img_size": 64,
                "embed_dim": 16,
                "depths": (1, 1, 1, 1),
                "num_heads": (1, 1, 1, 1),
                "window_size": 2,
            },
        ),
    ],
)
def test_families_give_the_strides_feature_info_says(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    backbone = TimmBackbone(name, **kwargs).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    info = backbone.feature_info
    assert len(feats) == len(info)
    if kwargs.get("output_stride") == 8:
        assert info.strides == [4, 8, 8, 8]
    for feat, channels, stride in zip(feats, info.channels, info.strides):
        # NCHW for every family, Swin's NHWC included.
        assert tuple(feat.shape) == (1, channels, 64 // stride, 64 // stride)


def test_pretrained_true_refuses_to_download() -> None:
    with pytest.raises(ModelError, match="local"):
        TimmBackbone("resnet18", pretrained=True)


def test_classification_checkpoint_loads_into_features_model(tmp_path) -> None:
    torch.manual_seed(1)
    classifier = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": classifier.state_dict()}, path)
    backbone = TimmBackbone("resnet18", pretrained=str(path))
    source = classifier.state_dict()
    loaded = backbone.model.state_dict()
    assert len(loaded) > 50
    for key, value in loaded.items():
        assert torch.equal(value, source[key]), key


def test_safetensors_with_flattened_names_loads(tmp_path) -> None:
    # FeatureListNet renames "stages.0" to "stages_0"; the original names must still load.
    torch.manual_seed(2)
    classifier = timm.create_model("convnext_atto")
    path = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    backbone = TimmBackbone("convnext_atto", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, intermediates_only=True)
        got = backbone(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


def test_file_of_another_architecture_is_one_line_error(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("convnext_atto").state_dict(), path)
    with pytest.raises(CheckpointError, match="missing keys") as err:
        TimmBackbone("resnet18", pretrained=str(path))
    assert "\n" not in str(err.value) and "resnet18" in str(err.value) and "conv1.weight" in str(err.value)


def test_unused_weights_of_a_larger_architecture_are_named(tmp_path, capsys) -> None:
    """resnet34 weights hold every resnet18 key with its shape: they load, with one line naming
    the blocks resnet18 has no place for (the classifier head alone is expected to go unused)."""
    path = tmp_path / "r34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    TimmBackbone("resnet18", pretrained=str(path))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}: "), lines
    # 7 extra BasicBlocks (layer1.2, layer2.2-3, layer3.2-5, layer4.2) of 12 or 17 tensors each.
    n_extra = sum(1 for k in torch.load(path) if k.startswith(("layer1.2.", "layer2.2.", "layer2.3.",
                  "layer3.2.", "layer3.3.", "layer3.4.", "layer3.5.", "layer4.2.")))  # fmt: skip
    assert f"{n_extra} weights of the file are unused by timm model 'resnet18'" in lines[0]
    assert "layer1.2.conv1.weight" in lines[0] and "fc." not in lines[0]

    path18 = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), path18)
    TimmBackbone("resnet18", pretrained=str(path18))  # only fc.* unused: nothing to say
    assert capsys.readouterr().out == ""


def test_output_stride_other_than_8_16_32_is_one_line() -> None:
    from masklab.config import check_config, load_config

    with pytest.raises(ModelError, match=r"output_stride: expected 8, 16, 32 or null, got 4$"):
        TimmBackbone("resnet18", output_stride=4)  # timm itself: a bare AssertionError
    cfg = load_config(CONFIGS / "_base_" / "models" / "fcn_r18-d8.yaml", ["model.backbone.output_stride=4"])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == (
        "<override>: model.backbone.output_stride: expected one of 8, 16, 32 | None, got int 4"
    )


def test_missing_weight_file_is_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        TimmBackbone("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_frozen_stages_get_no_gradient_and_stay_in_eval() -> None:
    torch.manual_seed(0)
    backbone = TimmBackbone("resnet18", out_indices=(1, 2, 3, 4), frozen_stages=1).train()
    frozen_bn_mean = backbone.model.layer1[0].bn1.running_mean.clone()
    feats = backbone(torch.randn(2, 3, 16, 16))
    sum(f.mean() for f in feats).backward()
    assert backbone.model.conv1.weight.grad is None
    assert all(p.grad is None for p in backbone.model.layer1.parameters())
    assert backbone.model.layer2[0].conv1.weight.grad is not None
    assert not backbone.model.bn1.training and not backbone.model.layer1[0].bn1.training
    assert backbone.model.layer2[0].bn1.training
    # Eval mode: the frozen BatchNorm statistics did not move.
    assert torch.equal(backbone.model.layer1[0].bn1.running_mean, frozen_bn_mean)


def test_norm_eval_keeps_every_batchnorm_in_eval() -> None:
    backbone = TimmBackbone("resnet18", norm_eval=True).train()
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert backbone.model.layer2[0].bn1.weight.requires_grad
