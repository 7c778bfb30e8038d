"""``masklab convert mmseg``: a masklab model's weights written under MMSeg's names, in a checkpoint
shaped like MMSeg's (foreign objects in ``meta``), come back through the command into a fresh model
with the same weights and logits; wrong sources are one line.

The masklab -> MMSeg renames below are written from MMSeg's module names (``ResNetV1c.stem``,
mmcv ``ConvModule.{conv,bn}`` / ``DepthwiseSeparableConvModule.{depthwise,pointwise}_conv``,
``PSPHead.psp_modules``, ``ASPPHead.{image_pool,aspp_modules,bottleneck}``, ``UPerHead.bottleneck``,
``SegformerHead.{convs,fusion_conv}``, MiT ``layers.I.{0,1,2}`` with ``nn.MultiheadAttention``), not
from the converter's rules.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from masklab.cli.main import main
from masklab.config.assemble import build_model, resolve
from masklab.engine.checkpoint import load_model_weights
from masklab.models.semantic.convert_mmseg import config_dataset_meta

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
CITYSCAPES = "{}_4xb2-80k_cityscapes-512x1024.yaml"
_RESNET = ["model.backbone.layers=[1, 1, 1, 1]", "model.backbone.channels=[4, 8, 8, 8]"]
_HEAD = ["model.decode_head.channels=16"]
_AUX = ["model.auxiliary_head.channels=8"]
FAMILIES = {
    "fcn": (f"fcn/{CITYSCAPES.format('fcn_r50-d8')}", _RESNET + _HEAD + _AUX),
    "pspnet": (f"pspnet/{CITYSCAPES.format('pspnet_r50-d8')}", _RESNET + _HEAD + _AUX),
    "deeplabv3": (f"deeplabv3/{CITYSCAPES.format('deeplabv3_r50-d8')}", _RESNET + _HEAD + _AUX),
    "deeplabv3plus": (
        f"deeplabv3plus/{CITYSCAPES.format('deeplabv3plus_r50-d8')}",
        [*_RESNET, *_HEAD, *_AUX, "model.decode_head.c1_channels=8"],
    ),
    "upernet": (f"upernet/{CITYSCAPES.format('upernet_r50')}", _RESNET + _HEAD + _AUX),
    "fpn": (f"fpn/{CITYSCAPES.format('fpn_r50')}", [*_RESNET, *_HEAD, "model.neck.out_channels=16"]),
    "segformer": (
        "segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.yaml",
        ["model.backbone.embed_dims=8", "model.backbone.num_layers=[1, 1, 1, 1]", *_HEAD],
    ),
}

# masklab -> MMSeg, module paths (prefix rewrites, first match wins).
_BACKBONE_TO_MMSEG = [
    (r"backbone\.model\.conv1\.(\d)\.", r"backbone.stem.\1."),
    (r"backbone\.model\.bn1\.", "backbone.stem.7."),
    (r"backbone\.model\.(layer\d)\.", r"backbone.\1."),
    (r"backbone\.stages\.(\d)\.patch_embed\.proj\.", r"backbone.layers.\1.0.projection."),
    (r"backbone\.stages\.(\d)\.patch_embed\.norm\.", r"backbone.layers.\1.0.norm."),
    (r"backbone\.stages\.(\d)\.blocks\.(\d)\.attn\.proj\.", r"backbone.layers.\1.1.\2.attn.attn.out_proj."),
    (r"backbone\.stages\.(\d)\.blocks\.(\d)\.attn\.sr_norm\.", r"backbone.layers.\1.1.\2.attn.norm."),
    (r"backbone\.stages\.(\d)\.blocks\.(\d)\.ffn\.fc1\.", r"backbone.layers.\1.1.\2.ffn.layers.0."),
    (r"backbone\.stages\.(\d)\.blocks\.(\d)\.ffn\.dwconv\.", r"backbone.layers.\1.1.\2.ffn.layers.1."),
    (r"backbone\.stages\.(\d)\.blocks\.(\d)\.ffn\.fc2\.", r"backbone.layers.\1.1.\2.ffn.layers.4."),
    (r"backbone\.stages\.(\d)\.blocks\.(\d)\.", r"backbone.layers.\1.1.\2."),
    (r"backbone\.stages\.(\d)\.norm\.", r"backbone.layers.\1.2."),
]
_HEAD_TO_MMSEG = [
    (r"auxiliary_heads\.0\.", "auxiliary_head."),
    (r"decode_head\.psp\.branches\.(\d)\.", r"decode_head.psp_modules.\1.1."),
    (r"decode_head\.psp_bottleneck\.", "decode_head.bottleneck."),
    (r"decode_head\.aspp\.image_pool\.", "decode_head.image_pool."),
    (r"decode_head\.aspp\.branches\.(\d)\.0\.(\d)\.", r"decode_head.aspp_modules.\1.depthwise_conv.\2."),
    (r"decode_head\.aspp\.branches\.(\d)\.1\.(\d)\.", r"decode_head.aspp_modules.\1.pointwise_conv.\2."),
    (r"decode_head\.aspp\.branches\.", "decode_head.aspp_modules."),
    (r"decode_head\.aspp\.bottleneck\.", "decode_head.bottleneck."),
    (r"decode_head\.sep_bottleneck\.(\d)\.0\.", r"decode_head.sep_bottleneck.\1.depthwise_conv."),
    (r"decode_head\.sep_bottleneck\.(\d)\.1\.", r"decode_head.sep_bottleneck.\1.pointwise_conv."),
    (r"decode_head\.projections\.", "decode_head.convs."),
    (r"decode_head\.fusion\.", "decode_head.fusion_conv."),
]


def _rewrite(rules: list[tuple[str, str]], key: str) -> str:
    for pattern, template in rules:
        if m := re.match(pattern, key):
            return m.expand(template) + key[m.end() :]
    return key


def to_mmseg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A masklab state dict under MMSeg's names (what MMSeg would save for the same model)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            if m := re.fullmatch(r"backbone\.stages\.(\d)\.blocks\.(\d)\.attn\.(q|kv)\.(weight|bias)", key):
                if m[3] == "q":  # nn.MultiheadAttention stacks q, k, v rows in one in_proj
                    kv = state[key.replace(".q.", ".kv.")]
                    out[f"backbone.layers.{m[1]}.1.{m[2]}.attn.attn.in_proj_{m[4]}"] = torch.cat([value, kv])
                continue
            new = _rewrite(_BACKBONE_TO_MMSEG, key)
            if re.search(r"ffn\.layers\.[04]\.weight$", new):
                value = value[:, :, None, None]  # MMSeg's Mix-FFN uses 1x1 convolutions
            out[new] = value
            continue
        new = _rewrite(_HEAD_TO_MMSEG, key)
        if ".conv_seg." not in new:  # every other head / neck module is an mmcv ConvModule
            new = re.sub(r"\.0\.(weight|bias)$", r".conv.\1", new)
            new = re.sub(r"\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r".bn.\1", new)
        out[new] = value
    return out


def _model(family: str) -> torch.nn.Module:
    path, overrides = FAMILIES[family]
    rc = resolve(CONFIGS / path, overrides)
    return build_model(rc, config_dataset_meta(rc)).eval()


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight and BN statistic random, so a swapped or zero weight changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=gen) + 0.5
                tensor.copy_(noise if name.endswith("running_var") else (noise - 1.0) * 0.5)
    return model


@pytest.fixture
def throwaway(tmp_path: Path):
    """A module of classes MMSeg-like checkpoints pickle (importable only while the file exists)."""
    (tmp_path / "mm_throwaway.py").write_text(
        "class HistoryBuffer:\n"
        "    def __init__(self):\n"
        "        self.values = [1.0, 2.0]\n"
        "class Hook:\n"
        "    def __init__(self, marker):\n"
        "        self.marker = marker\n"
        "    def __reduce__(self):\n"
        "        return (exec, (f'open({self.marker!r}, \"w\").close()',))\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("mm_throwaway")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mm_throwaway", None)
        (tmp_path / "mm_throwaway.py").unlink()


def _mmseg_checkpoint(
    path: Path, state: dict[str, torch.Tensor], module, marker: Path, classes, v1: bool
) -> Path:
    palette = [[i, 2 * i, 3 * i] for i in range(len(classes))]
    if v1:  # 1.x: dataset_meta in meta, a message hub of mmengine objects beside it
        meta = {"dataset_meta": {"classes": tuple(classes), "palette": palette}, "cfg": "model = dict(...)"}
    else:  # 0.x: CLASSES / PALETTE in meta
        meta = {"CLASSES": tuple(classes), "PALETTE": palette, "mmcv_version": "1.7.0"}
    meta["hook"] = module.Hook(str(marker))  # unpickling it normally would run exec
    meta["buffer"] = module.HistoryBuffer()  # a class of a module that is gone at conversion
    payload = {"meta": meta, "state_dict": state}
    if v1:
        hub = {"log_scalars": {"train/loss": module.HistoryBuffer()}, "runtime_info": {"iter": np.int64(8)}}
        payload["message_hub"] = {**hub, "counts": np.arange(3.0)}  # numpy objects load as numpy
    torch.save(payload, path)
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_converted_checkpoint_gives_the_same_logits(family, tmp_path, throwaway, capsys) -> None:
    path, overrides = FAMILIES[family]
    source = _randomised(_model(family))
    classes = [f"class{i}" for i in range(19)]
    marker = tmp_path / "foreign_code_ran"
    src = _mmseg_checkpoint(
        tmp_path / "mmseg.pth", to_mmseg(source.state_dict()), throwaway, marker, classes, family != "fcn"
    )
    dst = tmp_path / "out" / "masklab.pth"
    sys.modules.pop("mm_throwaway")  # the classes the file names are gone, as mmengine is here
    (tmp_path / "mm_throwaway.py").rename(tmp_path / "moved.txt")
    try:
        code = main(["convert", "mmseg", str(src), str(dst), "--config", str(CONFIGS / path), *overrides])
    finally:
        (tmp_path / "moved.txt").rename(tmp_path / "mm_throwaway.py")
    assert code == 0, capsys.readouterr().err
    assert not marker.exists()  # the pickled exec call was never made
    out = capsys.readouterr().out
    assert "converted" in out and "19 classes" in out and "note:" in out  # names differ from Cityscapes'

    payload = torch.load(dst, weights_only=True)  # a plain masklab checkpoint
    assert payload["dataset_meta"]["classes"] == classes
    assert payload["dataset_meta"]["palette"][2] == [2, 4, 6]
    fresh = _model(family)
    load_model_weights(fresh, dst, strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fresh.encode_decode(images), source.encode_decode(images))


def test_a_bare_state_dict_takes_the_config_class_names(tmp_path, capsys) -> None:
    path, overrides = FAMILIES["pspnet"]
    source = _randomised(_model("pspnet"))
    src = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in to_mmseg(source.state_dict()).items()}, src)  # DDP prefix
    dst = tmp_path / "psp.pth"
    assert main(["convert", "mmseg", str(src), str(dst), "--config", str(CONFIGS / path), *overrides]) == 0
    assert torch.load(dst, weights_only=True)["dataset_meta"]["classes"][:2] == ["road", "sidewalk"]
    assert "note:" not in capsys.readouterr().out


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys) -> None:
    path, overrides = FAMILIES["fcn"]
    src = tmp_path / "notes.pth"
    src.write_text("not a checkpoint\n")
    dst = tmp_path / "x.pth"
    assert main(["convert", "mmseg", str(src), str(dst), "--config", str(CONFIGS / path), *overrides]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and str(src) in line and "not a readable checkpoint" in line
    assert not dst.exists()


def test_a_checkpoint_of_another_architecture_is_one_line(tmp_path, capsys) -> None:
    path, overrides = FAMILIES["fcn"]
    src = tmp_path / "segformer.pth"
    torch.save({"meta": {}, "state_dict": to_mmseg(_model("segformer").state_dict())}, src)
    dst = tmp_path / "x.pth"
    assert main(["convert", "mmseg", str(src), str(dst), "--config", str(CONFIGS / path), *overrides]) == 2
    line = _one_error_line(capsys)
    assert "weights do not fit the model" in line and "backbone.layers.0.0.projection.weight" in line
    assert "backbone.model.conv1.0.weight" in line  # a model weight the file lacks is named too
    assert not dst.exists()


def test_another_class_count_is_one_line(tmp_path, capsys) -> None:
    path, overrides = FAMILIES["upernet"]
    src = tmp_path / "city.pth"
    torch.save({"state_dict": to_mmseg(_model("upernet").state_dict())}, src)  # 19 classes
    ade = CONFIGS / "upernet/upernet_r50_4xb4-160k_ade20k-512x512.yaml"
    dst = tmp_path / "x.pth"
    assert main(["convert", "mmseg", str(src), str(dst), "--config", str(ade), *overrides]) == 2
    line = _one_error_line(capsys)
    assert "a model for 19 classes" in line and "has 150" in line
    assert not dst.exists()


def test_a_weight_without_a_place_is_named(tmp_path, capsys) -> None:
    path, overrides = FAMILIES["deeplabv3"]
    state = to_mmseg(_model("deeplabv3").state_dict())
    state["decode_head.extra.conv.weight"] = torch.zeros(1)
    src = tmp_path / "extra.pth"
    torch.save({"state_dict": state}, src)
    assert (
        main(
            [
                "convert",
                "mmseg",
                str(src),
                str(tmp_path / "x.pth"),
                "--config",
                str(CONFIGS / path),
                *overrides,
            ]
        )
        == 2
    )
    line = _one_error_line(capsys)
    assert "1 checkpoint weights have no place" in line and "decode_head.extra.conv.weight" in line
