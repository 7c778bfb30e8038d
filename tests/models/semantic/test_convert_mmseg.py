"""``masklab convert mmseg``: a masklab model's weights written under MMSeg's names, in a checkpoint
shaped like MMSeg's (foreign objects in ``meta``), come back through the command into a fresh model
with the same weights and logits; wrong sources are one line.

The masklab -> MMSeg renames below are written from MMSeg's module names (``ResNetV1c.stem``,
mmcv ``ConvModule.{conv,bn}`` / ``DepthwiseSeparableConvModule.{depthwise,pointwise}_conv``,
``PSPHead.psp_modules``, ``ASPPHead.{image_pool,aspp_modules,bottleneck}``, ``UPerHead.bottleneck``,
``SegformerHead.{convs,fusion_conv}``, MiT ``layers.I.{0,1,2}`` with ``nn.MultiheadAttention``), not
from the converter's rules. The tests at the end go further: checkpoints enumerated the way MMSeg's own
constructors build their modules (zoo-sized for the key and shape check, small with distinct values for
where each tensor lands) and the MiT attention / Mix-FFN and ResNetV1c stem recomputed from MMSeg's tensors.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masklab.cli.main import main
from masklab.config.assemble import build_model, resolve
from masklab.engine.checkpoint import load_model_weights
from masklab.models.semantic.convert_mmseg import config_dataset_meta, convert_mmseg_state_dict, model_layout

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


# ------------------------------------------------------------------ checkpoints laid out as MMSeg's modules
# Each entry: (MMSeg key, masklab key, MMSeg shape, what of the MMSeg tensor the masklab one holds). The MMSeg
# side is enumerated the way MMSeg's constructors build their modules (mmseg/models/backbones/{resnet,mit}.py,
# necks/fpn.py, decode_heads/{fcn,psp,aspp,sep_aspp,uper,fpn,segformer}_head.py, mmcv ConvModule /
# DepthwiseSeparableConvModule, torch nn.MultiheadAttention), not from a masklab state dict.
Spec = list[tuple[str, str, tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]]]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _norm(spec: Spec, mm: str, ml: str, c: int, batch: bool = True) -> None:
    names = ["weight", "bias"] + (["running_mean", "running_var", "num_batches_tracked"] if batch else [])
    spec += [(f"{mm}.{n}", f"{ml}.{n}", () if n == "num_batches_tracked" else (c,), _same) for n in names]


def _conv(spec: Spec, mm: str, ml: str, cout: int, cin: int, k: int, bias: bool, take=_same) -> None:
    spec.append((f"{mm}.weight", f"{ml}.weight", (cout, cin, k, k), take))
    if bias:
        spec.append((f"{mm}.bias", f"{ml}.bias", (cout,), _same))


def _conv_module(
    spec: Spec, mm: str, ml: str, cin: int, cout: int, k: int, norm: bool = True, dw: bool = False
):
    """mmcv ConvModule: ``conv`` (a bias only without a norm, bias='auto'), then ``bn`` (SyncBN's abbr)."""
    _conv(spec, f"{mm}.conv", f"{ml}.0", cout, 1 if dw else cin, k, bias=not norm)
    if norm:
        _norm(spec, f"{mm}.bn", f"{ml}.1", cout)


def _sep_conv_module(spec: Spec, mm: str, ml: str, cin: int, cout: int) -> None:
    """mmcv DepthwiseSeparableConvModule: ``depthwise_conv`` (3x3, groups=cin) and ``pointwise_conv`` (1x1)."""
    _conv_module(spec, f"{mm}.depthwise_conv", f"{ml}.0", cin, cin, 3, dw=True)
    _conv_module(spec, f"{mm}.pointwise_conv", f"{ml}.1", cin, cout, 1)


def _resnet_v1c(
    spec: Spec, planes: tuple[int, ...], depths: tuple[int, ...], strides: tuple[int, ...]
) -> list[int]:
    """ResNetV1c: ``stem`` = (conv3x3, bn, relu) x 3, Bottleneck ``layerN.J.{conv,bn}{1,2,3}`` and, in block 0
    when its stride or width changes (ResLayer, avg_down=False), ``downsample.{0,1}``; dilations add no module."""
    stem = 64
    half = stem // 2
    for i, (cin, cout) in ((0, (3, half)), (3, (half, half)), (6, (half, stem))):
        _conv(spec, f"backbone.stem.{i}", f"backbone.model.conv1.{i}", cout, cin, 3, bias=False)
        bn = f"backbone.model.conv1.{i + 1}" if i < 6 else "backbone.model.bn1"
        _norm(spec, f"backbone.stem.{i + 1}", bn, cout)
    inplanes, outs = stem, []
    for n, (p, depth, stride) in enumerate(zip(planes, depths, strides, strict=True), start=1):
        for j in range(depth):
            mm, ml = f"backbone.layer{n}.{j}", f"backbone.model.layer{n}.{j}"
            for c, (cout, cin, k) in enumerate(
                [(p, inplanes if j == 0 else 4 * p, 1), (p, p, 3), (4 * p, p, 1)], 1
            ):
                _conv(spec, f"{mm}.conv{c}", f"{ml}.conv{c}", cout, cin, k, bias=False)
                _norm(spec, f"{mm}.bn{c}", f"{ml}.bn{c}", cout)
            if j == 0 and (stride != 1 or inplanes != 4 * p):
                _conv(spec, f"{mm}.downsample.0", f"{ml}.downsample.0", 4 * p, inplanes, 1, bias=False)
                _norm(spec, f"{mm}.downsample.1", f"{ml}.downsample.1", 4 * p)
        inplanes = 4 * p
        outs.append(inplanes)
    return outs


def _mit(spec: Spec, embed: int, depths: tuple[int, ...], heads=(1, 2, 5, 8), sr=(8, 4, 2, 1)) -> list[int]:
    """MixVisionTransformer: ``layers.I`` = [PatchEmbed(projection, norm), [TransformerEncoderLayer], LN];
    attention is mmcv MultiheadAttention's ``attn`` (an nn.MultiheadAttention: in_proj rows q|k|v) plus
    ``sr`` / ``norm``; Mix-FFN ``layers`` = [1x1 conv, 3x3 depthwise conv, GELU, Dropout, 1x1 conv, Dropout]."""
    cin, outs = 3, []
    for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        d = embed * h
        mm, ml = f"backbone.layers.{i}", f"backbone.stages.{i}"
        _conv(spec, f"{mm}.0.projection", f"{ml}.patch_embed.proj", d, cin, 7 if i == 0 else 3, bias=True)
        _norm(spec, f"{mm}.0.norm", f"{ml}.patch_embed.norm", d, batch=False)
        for j in range(depth):
            mb, lb = f"{mm}.1.{j}", f"{ml}.blocks.{j}"
            _norm(spec, f"{mb}.norm1", f"{lb}.norm1", d, batch=False)
            for part in ("weight", "bias"):
                shape = (3 * d, d) if part == "weight" else (3 * d,)
                spec.append(
                    (f"{mb}.attn.attn.in_proj_{part}", f"{lb}.attn.q.{part}", shape, lambda t, d=d: t[:d])
                )
                spec.append(
                    (f"{mb}.attn.attn.in_proj_{part}", f"{lb}.attn.kv.{part}", shape, lambda t, d=d: t[d:])
                )
            spec.append((f"{mb}.attn.attn.out_proj.weight", f"{lb}.attn.proj.weight", (d, d), _same))
            spec.append((f"{mb}.attn.attn.out_proj.bias", f"{lb}.attn.proj.bias", (d,), _same))
            if sr[i] > 1:
                _conv(spec, f"{mb}.attn.sr", f"{lb}.attn.sr", d, d, sr[i], bias=True)
                _norm(spec, f"{mb}.attn.norm", f"{lb}.attn.sr_norm", d, batch=False)
            _norm(spec, f"{mb}.norm2", f"{lb}.norm2", d, batch=False)
            flat = lambda t: t.flatten(1)  # noqa: E731 - MMSeg's 1x1 convs are masklab's linear layers
            _conv(spec, f"{mb}.ffn.layers.0", f"{lb}.ffn.fc1", 4 * d, d, 1, bias=True, take=flat)
            _conv(spec, f"{mb}.ffn.layers.1", f"{lb}.ffn.dwconv", 4 * d, 1, 3, bias=True)
            _conv(spec, f"{mb}.ffn.layers.4", f"{lb}.ffn.fc2", d, 4 * d, 1, bias=True, take=flat)
        _norm(spec, f"{mm}.2", f"{ml}.norm", d, batch=False)
        cin = d
        outs.append(d)
    return outs


def _seg(spec: Spec, mm: str, ml: str, ch: int, classes: int) -> None:
    _conv(spec, f"{mm}.conv_seg", f"{ml}.conv_seg", classes, ch, 1, bias=True)


def _fcn_head(
    spec: Spec, mm: str, ml: str, cin: int, ch: int, convs: int, concat: bool, classes: int
) -> None:
    for i in range(convs):
        _conv_module(spec, f"{mm}.convs.{i}", f"{ml}.convs.{i}", cin if i == 0 else ch, ch, 3)
    if concat:
        _conv_module(spec, f"{mm}.conv_cat", f"{ml}.conv_cat", cin + ch, ch, 3)
    _seg(spec, mm, ml, ch, classes)


def _ppm(spec: Spec, mm: str, ml: str, cin: int, ch: int) -> None:
    """PSPHead / UPerHead ``psp_modules.I`` = Sequential(AdaptiveAvgPool2d, ConvModule 1x1)."""
    for i in range(4):
        _conv_module(spec, f"{mm}.psp_modules.{i}.1", f"{ml}.psp.branches.{i}", cin, ch, 1)


def mmseg_spec(family: str, full: bool = False, classes: int = 19) -> Spec:
    """What MMSeg's model for ``family`` saves, sized like :data:`FAMILIES` (``full``: the zoo config)."""
    spec: Spec = []
    if family == "segformer":
        ch = 256 if full else 16
        dims = _mit(spec, 32 if full else 8, (2, 2, 2, 2) if full else (2, 1, 1, 1))
        for i, d in enumerate(dims):
            _conv_module(spec, f"decode_head.convs.{i}", f"decode_head.projections.{i}", d, ch, 1)
        _conv_module(spec, "decode_head.fusion_conv", "decode_head.fusion", 4 * ch, ch, 1)
        _seg(spec, "decode_head", "decode_head", ch, classes)
        return spec
    planes, depths = ((64, 128, 256, 512), (3, 4, 6, 3)) if full else ((4, 8, 8, 8), (1, 1, 1, 1))
    strides = (1, 2, 2, 2) if family in ("upernet", "fpn") else (1, 2, 1, 1)  # r50 / r50-d8
    c1, c2, c3, c4 = _resnet_v1c(spec, planes, depths, strides)
    ch, aux = (512, 256) if full else (16, 8)
    mm = ml = "decode_head"
    if family == "fcn":
        _fcn_head(spec, mm, ml, c4, ch, 2, True, classes)
    elif family == "pspnet":
        _ppm(spec, mm, ml, c4, ch)
        _conv_module(spec, f"{mm}.bottleneck", f"{ml}.bottleneck", c4 + 4 * ch, ch, 3)
    elif family in ("deeplabv3", "deeplabv3plus"):
        _conv_module(spec, f"{mm}.image_pool.1", f"{ml}.aspp.image_pool.1", c4, ch, 1)
        _conv_module(spec, f"{mm}.aspp_modules.0", f"{ml}.aspp.branches.0", c4, ch, 1)
        for i in (1, 2, 3):
            if family == "deeplabv3":
                _conv_module(spec, f"{mm}.aspp_modules.{i}", f"{ml}.aspp.branches.{i}", c4, ch, 3)
            else:
                _sep_conv_module(spec, f"{mm}.aspp_modules.{i}", f"{ml}.aspp.branches.{i}", c4, ch)
        _conv_module(spec, f"{mm}.bottleneck", f"{ml}.aspp.bottleneck", 5 * ch, ch, 3)
        if family == "deeplabv3plus":
            low = 48 if full else 8
            _conv_module(spec, f"{mm}.c1_bottleneck", f"{ml}.c1_bottleneck", c1, low, 1)
            _sep_conv_module(spec, f"{mm}.sep_bottleneck.0", f"{ml}.sep_bottleneck.0", ch + low, ch)
            _sep_conv_module(spec, f"{mm}.sep_bottleneck.1", f"{ml}.sep_bottleneck.1", ch, ch)
    elif family == "upernet":
        _ppm(spec, mm, ml, c4, ch)
        _conv_module(spec, f"{mm}.bottleneck", f"{ml}.psp_bottleneck", c4 + 4 * ch, ch, 3)
        for i, c in enumerate((c1, c2, c3)):
            _conv_module(spec, f"{mm}.lateral_convs.{i}", f"{ml}.lateral_convs.{i}", c, ch, 1)
            _conv_module(spec, f"{mm}.fpn_convs.{i}", f"{ml}.fpn_convs.{i}", ch, ch, 3)
        _conv_module(spec, f"{mm}.fpn_bottleneck", f"{ml}.fpn_bottleneck", 4 * ch, ch, 3)
    elif family == "fpn":  # FPN neck (norm_cfg=None: conv biases, no norms), FPNHead strides 4/8/16/32
        out, ch = (256, 128) if full else (16, 16)
        for i, c in enumerate((c1, c2, c3, c4)):
            _conv_module(spec, f"neck.lateral_convs.{i}", f"neck.lateral_convs.{i}", c, out, 1, norm=False)
            _conv_module(spec, f"neck.fpn_convs.{i}", f"neck.fpn_convs.{i}", out, out, 3, norm=False)
        for i in range(
            4
        ):  # max(1, log2(stride / 4)) ConvModules, each but in level 0 followed by an Upsample
            for k in range(max(1, i)):
                n = f"scale_heads.{i}.{2 * k}"
                _conv_module(spec, f"{mm}.{n}", f"{ml}.{n}", out if k == 0 else ch, ch, 3)
    if family != "fpn":
        _fcn_head(spec, "auxiliary_head", "auxiliary_heads.0", c3, aux, 1, False, classes)
    if family != "fcn":
        _seg(spec, mm, ml, 128 if full and family == "fpn" else ch, classes)
    return spec


def spec_state(spec: Spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct values in every MMSeg tensor (counters too), so a misplaced one is caught."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for mm, _, shape, _ in spec:
        if mm in state:
            continue
        if mm.endswith("num_batches_tracked"):
            state[mm] = torch.tensor(len(state) + 1)
        else:
            value = torch.randn(shape, generator=gen)
            state[mm] = value.abs() + 0.5 if mm.endswith("running_var") else value
    return state


_SPEC_OVERRIDES = {f: o for f, (_, o) in FAMILIES.items()}
_SPEC_OVERRIDES["segformer"] = [  # two blocks in stage 0: block indices past 0 are renamed too
    o.replace("[1, 1, 1, 1]", "[2, 1, 1, 1]") for o in FAMILIES["segformer"][1]
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_weight_of_an_mmseg_layout_lands_on_its_own_place(family, tmp_path, capsys) -> None:
    path = CONFIGS / FAMILIES[family][0]
    spec = mmseg_spec(family)
    state = spec_state(spec)
    classes = [f"c{i}" for i in range(19)]
    meta = {"dataset_meta": {"classes": tuple(classes), "palette": [[i, i, i] for i in range(19)]}}
    src = tmp_path / "mmseg.pth"
    torch.save({"meta": meta, "state_dict": state}, src)
    dst = tmp_path / "masklab.pth"
    code = main(["convert", "mmseg", str(src), str(dst), "--config", str(path), *_SPEC_OVERRIDES[family]])
    assert code == 0, capsys.readouterr().err
    out = torch.load(dst, weights_only=True)["model"]
    rc = resolve(path, _SPEC_OVERRIDES[family])
    own = build_model(rc, config_dataset_meta(rc)).state_dict()
    assert set(out) == set(own) == {ml for _, ml, _, _ in spec}  # nothing missing, nothing extra
    for mm, ml, _, take in spec:
        assert torch.equal(out[ml], take(state[mm])), f"{ml} is not {mm}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_zoo_sized_mmseg_layout_fits_the_zoo_config(family) -> None:
    """R50-D8 / MiT-B0 at full size: every MMSeg key is known and gives every model key its shape."""
    rc = resolve(CONFIGS / FAMILIES[family][0])
    own = build_model(rc, config_dataset_meta(rc)).state_dict()
    spec = mmseg_spec(family, full=True)
    state = {mm: torch.empty(shape, device="meta") for mm, _, shape, _ in spec}
    out, unknown, _ = convert_mmseg_state_dict(state, model_layout(rc.model, rc.source))
    assert not unknown
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in own.items()}


def _converted(family: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    spec = mmseg_spec(family)
    state = spec_state(spec)
    rc = resolve(CONFIGS / FAMILIES[family][0], _SPEC_OVERRIDES[family])
    model = build_model(rc, config_dataset_meta(rc)).eval()
    model.load_state_dict(convert_mmseg_state_dict(state, model_layout(rc.model, rc.source))[0])
    return model, state


def test_mit_attention_and_mix_ffn_compute_what_mmseg_computes() -> None:
    """Stage 1 (2 heads, sr 4): MMSeg's nn.MultiheadAttention on the reduced grid and its conv Mix-FFN."""
    model, state = _converted("segformer")
    block = model.backbone.stages[1].blocks[0]
    d, h, w = 16, 8, 8
    x = torch.randn(2, h * w, d, generator=torch.Generator().manual_seed(3))
    pre = "backbone.layers.1.1.0."
    mha = torch.nn.MultiheadAttention(d, 2)  # MMSeg's attn.attn, called sequence-first
    mha.load_state_dict(
        {k[len(pre + "attn.attn.") :]: v for k, v in state.items() if k.startswith(pre + "attn.attn.")}
    )
    grid = x.transpose(1, 2).reshape(2, d, h, w)
    reduced = F.conv2d(grid, state[pre + "attn.sr.weight"], state[pre + "attn.sr.bias"], stride=4)
    kv = F.layer_norm(
        reduced.flatten(2).transpose(1, 2),
        (d,),
        state[pre + "attn.norm.weight"],
        state[pre + "attn.norm.bias"],
        1e-6,
    ).transpose(0, 1)
    with torch.no_grad():
        expected = mha(x.transpose(0, 1), kv, kv, need_weights=False)[0].transpose(0, 1)
        assert torch.allclose(block.attn(x, h, w), expected, atol=1e-5)
        ffn = pre + "ffn.layers."
        y = F.conv2d(grid, state[ffn + "0.weight"], state[ffn + "0.bias"])
        y = F.conv2d(y, state[ffn + "1.weight"], state[ffn + "1.bias"], padding=1, groups=4 * d)
        y = F.conv2d(F.gelu(y), state[ffn + "4.weight"], state[ffn + "4.bias"])
        assert torch.allclose(block.ffn(x, h, w), y.flatten(2).transpose(1, 2), atol=1e-5)


def test_resnet_v1c_stem_computes_what_mmseg_computes() -> None:
    """MMSeg's ``stem`` = conv(stride 2)-bn-relu, conv-bn-relu, conv-bn-relu, run on its own tensors."""
    model, state = _converted("fcn")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    expected = x
    for i in (0, 3, 6):
        bn = [state[f"backbone.stem.{i + 1}.{n}"] for n in ("running_mean", "running_var", "weight", "bias")]
        expected = F.relu(
            F.batch_norm(
                F.conv2d(expected, state[f"backbone.stem.{i}.weight"], stride=2 if i == 0 else 1, padding=1),
                *bn,
            )
        )
    timm = model.backbone.model
    with torch.no_grad():
        assert torch.allclose(timm.act1(timm.bn1(timm.conv1(x))), expected, atol=1e-5)


def test_two_mmseg_keys_for_one_masklab_key_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later key never silently overwrites an earlier one's tensor (both are named)."""
    from masklab.errors import CheckpointError
    from masklab.models.semantic import convert_mmseg as module
    from masklab.models.semantic.convert_mmseg import ModelLayout

    monkeypatch.setattr(module, "mmseg_key_to_masklab", lambda key, layout: "decode_head.conv_seg.weight")
    state = {
        "decode_head.conv_seg.weight": torch.zeros(2, 4, 1, 1),
        "decode_head.other.weight": torch.ones(2),
    }
    with pytest.raises(
        CheckpointError, match=r"'decode_head.conv_seg.weight' and 'decode_head.other.weight' both map"
    ):
        convert_mmseg_state_dict(state, ModelLayout("TimmBackbone", "FCNHead"))
