"""smp-layout options (FPN neck without output convs, DeepLabV3+ ``layout="smp"``): same parameters
and FLOPs as segmentation_models_pytorch's models, and MMSeg defaults untouched."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from masklab.errors import ModelError
from masklab.models.semantic import DepthwiseSeparableASPPHead

CHANNELS = [4, 6, 8, 10]
FEATS = [torch.randn(2, c, 16 >> i, 16 >> i) for i, c in enumerate(CHANNELS)]


def _sep_aspp(**kwargs: object) -> DepthwiseSeparableASPPHead:
    return DepthwiseSeparableASPPHead(
        in_channels=CHANNELS, channels=8, num_classes=3, c1_channels=4, dilations=(1, 2, 3, 4), **kwargs
    )


def test_smp_layout_shapes_and_every_parameter_gets_a_gradient() -> None:
    head = _sep_aspp(layout="smp")
    logits = head(FEATS)
    assert tuple(logits.shape) == (2, 3, 16, 16)
    head.loss(logits, torch.randint(0, 3, (2, 32, 32)))["loss_ce"].backward()
    assert all(p.grad is not None for p in head.parameters())


def test_smp_layout_is_1x1_fusion_one_refining_and_one_decoder_separable_conv() -> None:
    head = _sep_aspp(layout="smp")
    assert head.aspp.bottleneck[0].kernel_size == (1, 1)
    assert head.aspp_refine is not None and len(head.sep_bottleneck) == 1
    depthwise = head.aspp.branches[1][0]  # bare depthwise conv: no bias, norm or ReLU before pointwise
    assert isinstance(depthwise, torch.nn.Conv2d) and depthwise.bias is None and depthwise.dilation == (2, 2)


def test_mmseg_layout_is_the_default_and_keeps_its_checkpoint_keys() -> None:
    keys = set(_sep_aspp().state_dict())
    assert "aspp.bottleneck.0.weight" in keys and "sep_bottleneck.1.1.0.weight" in keys
    assert "aspp.branches.1.0.1.weight" in keys  # the depthwise conv's BatchNorm
    assert not any(k.startswith("aspp_refine") for k in keys)
    assert _sep_aspp().state_dict()["aspp.bottleneck.0.weight"].shape == (8, 5 * 8, 3, 3)


def test_unknown_layout_is_an_error() -> None:
    with pytest.raises(ModelError, match="layout"):
        _sep_aspp(layout="torchvision")


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["FPN", "DeepLabV3+"])
def test_matched_models_have_smp_parameters_and_flops(name: str) -> None:
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("timm")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[3] / "benchmarks"))
    try:
        from semseg_vs_smp import masklab_models, num_params, smp_models
    finally:
        sys.path.pop(0)
    ours, theirs = masklab_models(19, matched=True)[name], smp_models(19)[name]
    assert num_params(ours) == num_params(theirs)
    ours.eval(), theirs.eval()
    images = torch.randn(1, 3, 64, 64)
    assert _flops(lambda: ours.encode_decode(images)) == _flops(lambda: theirs(images))
