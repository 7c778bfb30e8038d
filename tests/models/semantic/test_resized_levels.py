"""ResizedLevels: the resize_concat input's conv and mean computed level by level equal the same ops on
the built concatenation, in values and gradients; ASPPHead runs on it and keeps MMSeg's function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from masklab.models.semantic import ASPPHead, DepthwiseSeparableASPPHead, FCNHead, PSPHead
from masklab.models.semantic.decode_head import DecodeHead
from masklab.models.semantic.resized_levels import ResizedLevels

CHANNELS = [3, 4, 5, 6]


def _levels(h: int, w: int, layout: torch.memory_format, batch: int = 2) -> list[torch.Tensor]:
    """Four levels at stride 1, 2, 4, 8 of an (h, w) map (sizes rounded up, as strided convs give)."""
    torch.manual_seed(0)
    return [
        torch.randn(batch, c, -(-h // 2**i), -(-w // 2**i), dtype=torch.float64)
        .to(memory_format=layout)
        .requires_grad_(True)
        for i, c in enumerate(CHANNELS)
    ]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("k", "dilation"), [(1, 1), (3, 1), (3, 2), (3, 6), (3, 40), (5, 3)])
@pytest.mark.parametrize(("h", "w"), [(16, 16), (13, 20)])
def test_conv2d_equals_conv_of_the_concatenation(
    h: int, w: int, k: int, dilation: int, align_corners: bool, layout: torch.memory_format
) -> None:
    """Dilations past the map (40) leave only the centre tap inside, the zero padding the rest."""
    feats = _levels(h, w, layout)
    weight = torch.randn(7, sum(CHANNELS), k, k, dtype=torch.float64, requires_grad=True)
    levels = ResizedLevels(tuple(feats), (h, w), align_corners)
    want = F.conv2d(levels.concat(), weight, padding=dilation * (k // 2), dilation=dilation)
    got = levels.conv2d(weight, dilation)
    assert got.shape == want.shape == (2, 7, h, w)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    out_grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [*feats, weight], out_grad)
    got_grads = torch.autograd.grad(got, [*feats, weight], out_grad)
    for g, e in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-9)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("h", "w"), [(16, 16), (13, 20)])
def test_mean_equals_mean_of_the_concatenation(h: int, w: int, align_corners: bool) -> None:
    feats = _levels(h, w, torch.channels_last)
    levels = ResizedLevels(tuple(feats), (h, w), align_corners)
    want = levels.concat().mean(dim=(2, 3), keepdim=True)
    got = levels.mean()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    weights = torch.randn_like(want)
    want_grads = torch.autograd.grad((want * weights).sum(), feats)
    got_grads = torch.autograd.grad((got * weights).sum(), feats)
    for g, e in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_concat_resizes_every_level_to_the_first() -> None:
    feats = _levels(12, 12, torch.contiguous_format)
    cat = ResizedLevels(tuple(feats), (12, 12), False).concat()
    assert cat.shape == (2, sum(CHANNELS), 12, 12)
    torch.testing.assert_close(cat[:, :3], feats[0])
    upsampled = F.interpolate(feats[3], size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cat[:, -6:], upsampled)


def _aspp(**kwargs) -> ASPPHead:  # noqa: ANN003 - test helper
    return ASPPHead(
        in_channels=CHANNELS,
        channels=8,
        num_classes=3,
        in_index=[0, 1, 2, 3],
        input_transform="resize_concat",
        dilations=(1, 2, 6, 12),
        dropout_ratio=0.0,
        **kwargs,
    ).double()


def test_aspp_head_builds_the_concatenation_when_tracing_or_exporting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exported graph keeps the plain resize + concat + convs (free sizes, ONNX ops)."""
    head = _aspp().eval()
    feats = [f.detach() for f in _levels(16, 16, torch.contiguous_format)]
    assert head.resized_levels(feats) is not None
    assert head.resized_levels([f.to("meta") for f in feats]) is None  # measured faster on the CPU only
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert head.resized_levels(feats) is None
    seen: list[torch.Size] = []
    handle = head.aspp.bottleneck.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        exported = head(feats)
    handle.remove()
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(head(feats), exported, rtol=0, atol=1e-10)
    assert seen == [torch.Size([2, 5 * 8, 16, 16])]


def test_separable_aspp_falls_back_to_the_concatenation() -> None:
    """DeepLabV3+'s depthwise separable branches are grouped convs the level-by-level conv does not cover."""
    head = DepthwiseSeparableASPPHead(
        in_channels=CHANNELS,
        channels=8,
        num_classes=3,
        in_index=[1, 2, 3],
        input_transform="resize_concat",
        dilations=(1, 2),
        c1_index=0,
        c1_channels=4,
    )
    assert not head.aspp.reads_levels()
    assert _aspp().aspp.reads_levels()
    feats = [f.float().detach() for f in _levels(16, 16, torch.contiguous_format)]
    levels = ResizedLevels(tuple(feats[1:]), (8, 8), False)
    torch.testing.assert_close(head.aspp(levels), head.aspp(levels.concat()))


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "build",
    [
        lambda **kw: ASPPHead(dilations=(1, 3, 9), **kw),
        lambda **kw: PSPHead(pool_scales=(1, 2, 3, 6), bottleneck_kernel_size=1, **kw),
        lambda **kw: FCNHead(num_convs=1, kernel_size=1, concat_input=False, **kw),
        lambda **kw: FCNHead(num_convs=2, kernel_size=3, dilation=2, concat_input=False, **kw),
    ],
    ids=["aspp", "psp_1x1", "fcn_1x1", "fcn_3x3_dilated"],
)
def test_heads_on_the_levels_equal_the_heads_on_the_built_concatenation(
    build, train: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each head that reads ResizedLevels, against the same head fed the concatenation (non-square
    channels-last levels, as the MiT encoder gives them): outputs, input and parameter gradients."""
    head = build(
        in_channels=CHANNELS,
        channels=8,
        num_classes=3,
        in_index=[0, 1, 2, 3],
        input_transform="resize_concat",
        dropout_ratio=0.0,
    ).double()
    head.train(train)
    feats = _levels(13, 20, torch.channels_last)
    params = [p for p in head.parameters() if p.requires_grad]
    assert head.resized_levels(feats) is not None
    state = {k: v.clone() for k, v in head.state_dict().items()}
    out = head(feats)
    grads = torch.autograd.grad(out.sum(), [*feats, *params])
    after = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(state)
    monkeypatch.setattr(DecodeHead, "resized_levels", lambda self, features: None)
    ref = head(feats)
    ref_grads = torch.autograd.grad(ref.sum(), [*feats, *params])
    assert out.shape == (2, 3, 13, 20)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    for key, value in head.state_dict().items():  # BN running statistics moved alike
        torch.testing.assert_close(after[key], value)
