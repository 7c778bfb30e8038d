"""PSP, ASPP, DeepLabV3+, UPer, semantic FPN and SegFormer heads: shapes, wiring, gradients, user errors."""

from __future__ import annotations

import pytest
import torch

from masklab.errors import ModelError
from masklab.models.semantic import (
    ASPPHead,
    DepthwiseSeparableASPPHead,
    FPNHead,
    PSPHead,
    SegformerHead,
    UPerHead,
)

CHANNELS = [4, 6, 8, 10]
FEATS = [torch.randn(2, c, 16 >> i, 16 >> i) for i, c in enumerate(CHANNELS)]


def _check_trains(head: torch.nn.Module, out_hw: int) -> None:
    logits = head(FEATS)
    assert tuple(logits.shape) == (2, 3, out_hw, out_hw)
    label = torch.randint(0, 3, (2, 32, 32))
    losses = head.loss(logits, label)
    losses["loss_ce"].backward()
    unused = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


@pytest.mark.parametrize(
    ("head", "out_hw"),
    [
        (lambda: PSPHead(in_channels=CHANNELS, channels=8, num_classes=3, pool_scales=(1, 2)), 2),
        (lambda: ASPPHead(in_channels=CHANNELS, channels=8, num_classes=3, dilations=(1, 2, 3)), 2),
        (
            lambda: DepthwiseSeparableASPPHead(
                in_channels=CHANNELS, channels=8, num_classes=3, c1_channels=4
            ),
            16,
        ),
        (lambda: UPerHead(in_channels=CHANNELS, channels=8, num_classes=3, pool_scales=(1, 2)), 16),
        (lambda: FPNHead(in_channels=CHANNELS, channels=8, num_classes=3), 16),
        (lambda: SegformerHead(in_channels=CHANNELS, channels=8, num_classes=3), 16),
    ],
    ids=["psp", "aspp", "sep_aspp", "uper", "fpn", "segformer"],
)
def test_head_shapes_and_every_parameter_gets_a_gradient(head, out_hw: int) -> None:
    _check_trains(head(), out_hw)


def test_psp_concatenates_input_and_one_branch_per_scale() -> None:
    head = PSPHead(in_channels=CHANNELS, channels=8, num_classes=3, pool_scales=(1, 2, 3, 6))
    assert head.bottleneck[0].in_channels == 10 + 4 * 8
    assert len(head.psp.branches) == 4
    assert head.bottleneck[0].kernel_size == (3, 3)  # MMSeg's bottleneck


def test_psp_bottleneck_kernel_is_configurable_and_keeps_the_map_size() -> None:
    head = PSPHead(
        in_channels=CHANNELS, channels=8, num_classes=3, pool_scales=(1, 2), bottleneck_kernel_size=1
    )
    assert head.bottleneck[0].kernel_size == (1, 1)
    _check_trains(head, 2)


def test_aspp_uses_1x1_for_dilation_one_and_dilated_3x3_otherwise() -> None:
    head = ASPPHead(in_channels=CHANNELS, channels=8, num_classes=3, dilations=(1, 12))
    first, second = head.aspp.branches
    assert first[0].kernel_size == (1, 1)
    assert second[0].kernel_size == (3, 3) and second[0].dilation == (12, 12)
    assert head.aspp.bottleneck[0].in_channels == 3 * 8  # image pool + 2 branches


def test_deeplabv3plus_low_level_branch_reads_its_level_channels_from_the_backbone() -> None:
    head = DepthwiseSeparableASPPHead(
        in_channels=CHANNELS, channels=8, num_classes=3, c1_channels=5, c1_index=1
    )
    assert head.c1_bottleneck[0].in_channels == 6
    assert tuple(head(FEATS).shape[-2:]) == (8, 8)
    branch = head.aspp.branches[1]  # a separable branch: depthwise then pointwise
    assert branch[0][0].groups == 10 and branch[1][0].kernel_size == (1, 1)


def test_deeplabv3plus_without_low_level_branch_stays_at_deep_resolution() -> None:
    head = DepthwiseSeparableASPPHead(in_channels=CHANNELS, channels=8, num_classes=3, c1_channels=0)
    assert tuple(head(FEATS).shape[-2:]) == (2, 2)


def test_fpn_head_uses_one_conv_per_octave() -> None:
    head = FPNHead(in_channels=CHANNELS, channels=8, num_classes=3, feature_strides=(4, 8, 16, 32))
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in h.modules()) for h in head.scale_heads]
    assert convs == [1, 1, 2, 3]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: FPNHead(in_channels=CHANNELS, channels=8, num_classes=3, feature_strides=(4, 8)),
            "4 levels",
        ),
        (
            lambda: FPNHead(in_channels=CHANNELS, channels=8, num_classes=3, feature_strides=(4, 8, 12, 32)),
            "power",
        ),
        (lambda: PSPHead(in_channels=CHANNELS, channels=8, num_classes=3, pool_scales=(0, 2)), "pool_scales"),
        (
            lambda: PSPHead(in_channels=CHANNELS, channels=8, num_classes=3, bottleneck_kernel_size=2),
            "bottleneck_kernel_size",
        ),
        (lambda: ASPPHead(in_channels=CHANNELS, channels=8, num_classes=3, dilations=()), "dilations"),
        (lambda: UPerHead(in_channels=CHANNELS, channels=8, num_classes=3, in_index=[3]), "two levels"),
        (
            lambda: DepthwiseSeparableASPPHead(in_channels=CHANNELS, channels=8, num_classes=3, c1_index=7),
            "c1_index",
        ),
    ],
)
def test_configuration_mistakes_are_one_line_errors(build, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build()


def test_uper_top_down_adds_coarse_maps_into_fine_ones() -> None:
    """With zero lateral weights the finest map only carries what flowed down from the top."""
    head = UPerHead(in_channels=CHANNELS, channels=8, num_classes=3, pool_scales=(1,), norm=None).eval()
    for conv in head.lateral_convs:
        torch.nn.init.zeros_(conv[0].weight)
        torch.nn.init.zeros_(conv[0].bias)
    inputs = list(FEATS)
    top = head.psp_bottleneck(torch.cat([inputs[-1], *head.psp(inputs[-1])], dim=1))
    assert top.abs().sum() > 0
    out = head(inputs)
    assert torch.isfinite(out).all()


def test_export_pooling_equals_adaptive_avg_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    from masklab.models.semantic import psp_head

    x = torch.randn(2, 3, 13, 10, dtype=torch.float64)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    sizes = (1, 2, 3, 6)
    for got, s in zip(psp_head.adaptive_avg_pools(x, sizes), sizes, strict=True):
        torch.testing.assert_close(got, torch.nn.functional.adaptive_avg_pool2d(x, s))


@pytest.mark.parametrize("train", [False, True])
def test_segformer_fusion_applied_per_level_equals_mmseg_concat_formula(train: bool) -> None:
    """fusion(cat(resize(proj_i(x_i)))) == norm/act(sum_i resize(W_i proj_i(x_i))): values and gradients."""
    torch.manual_seed(0)
    head = SegformerHead(in_channels=CHANNELS, channels=8, num_classes=3, dropout_ratio=0.0).double()
    head.train(train)
    feats = [f.double().requires_grad_(True) for f in FEATS]

    def reference() -> torch.Tensor:
        size = feats[0].shape[-2:]
        ups = [
            torch.nn.functional.interpolate(p(x), size=size, mode="bilinear", align_corners=False)
            for p, x in zip(head.projections, feats, strict=True)
        ]
        return head.cls_seg(head.fusion(torch.cat(ups, dim=1)))

    state = {k: v.clone() for k, v in head.state_dict().items()}
    ref = reference()
    ref_grads = torch.autograd.grad(ref.sum(), [*feats, head.fusion[0].weight])
    head.load_state_dict(state)  # undo the reference's BN running-stat update
    out = head(feats)
    grads = torch.autograd.grad(out.sum(), [*feats, head.fusion[0].weight])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("train", [False, True])
def test_psp_pointwise_bottleneck_equals_mmseg_concat_formula(train: bool) -> None:
    """bottleneck(cat([x, *resize(branch_i(pool_i(x)))])) with a 1x1 bottleneck, computed without the concat."""
    torch.manual_seed(0)
    head = PSPHead(
        in_channels=CHANNELS,
        in_index=[0, 1, 2, 3],
        input_transform="resize_concat",
        channels=8,
        num_classes=3,
        pool_scales=(1, 2, 3, 6),
        bottleneck_kernel_size=1,
        dropout_ratio=0.0,
    ).double()
    head.train(train)
    feats = [f.double().requires_grad_(True) for f in FEATS]
    params = [head.bottleneck[0].weight, head.psp.branches[2][0].weight]

    def reference() -> torch.Tensor:
        x = head.transform_inputs(feats)
        ups = [
            torch.nn.functional.interpolate(
                branch(torch.nn.functional.adaptive_avg_pool2d(x, s)), size=x.shape[-2:], mode="bilinear"
            )
            for s, branch in zip(head.psp.pool_scales, head.psp.branches, strict=True)
        ]
        return head.cls_seg(head.bottleneck(torch.cat([x, *ups], dim=1)))

    state = {k: v.clone() for k, v in head.state_dict().items()}
    ref = reference()
    ref_grads = torch.autograd.grad(ref.sum(), [*feats, *params])
    head.load_state_dict(state)  # undo the reference's BN running-stat update
    out = head(feats)
    grads = torch.autograd.grad(out.sum(), [*feats, *params])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("h", "w"), [(13, 10), (32, 32), (4, 5)])
def test_eager_pooling_equals_adaptive_avg_pool(h: int, w: int, layout: torch.memory_format) -> None:
    from masklab.models.semantic import psp_head

    x = torch.randn(2, 3, h, w, dtype=torch.float64).to(memory_format=layout).requires_grad_(True)
    sizes = (1, 2, 3, 6)
    expected = [torch.nn.functional.adaptive_avg_pool2d(x, s) for s in sizes]
    got = psp_head.adaptive_avg_pools(x, sizes)
    weights = [torch.randn_like(e) for e in expected]
    (want_grad,) = torch.autograd.grad(
        sum((e * wt).sum() for e, wt in zip(expected, weights, strict=True)), x
    )
    (got_grad,) = torch.autograd.grad(sum((g * wt).sum() for g, wt in zip(got, weights, strict=True)), x)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize(
    "build",
    [
        lambda **kw: PSPHead(pool_scales=(1, 2), **kw),
        lambda **kw: ASPPHead(dilations=(1, 2), **kw),
        lambda **kw: DepthwiseSeparableASPPHead(dilations=(1, 2), c1_index=0, c1_channels=4, **kw),
    ],
    ids=["psp", "aspp", "sep_aspp"],
)
def test_single_tensor_heads_read_resize_concat(build) -> None:
    """MMSeg's resize_concat: levels 1-3 resized to level 1 and concatenated (6 + 8 + 10 channels)."""
    head = build(
        in_channels=CHANNELS, channels=8, num_classes=3, in_index=[1, 2, 3], input_transform="resize_concat"
    )
    assert head.in_channels == 6 + 8 + 10
    _check_trains(head, 16 if isinstance(head, DepthwiseSeparableASPPHead) else 8)
    with pytest.raises(ModelError, match="resize_concat"):
        build(
            in_channels=CHANNELS,
            channels=8,
            num_classes=3,
            in_index=[1, 2],
            input_transform="multiple_select",
        )
