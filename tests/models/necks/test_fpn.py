"""FPN neck: output count/channels, top-down addition, extra levels, range errors."""

from __future__ import annotations

import pytest
import torch

from masklab.errors import ModelError
from masklab.models.necks import FPN

FEATS = [torch.randn(1, c, 16 >> i, 16 >> i) for i, c in enumerate([4, 6, 8, 10])]


def test_outputs_keep_resolutions_and_expose_out_channels() -> None:
    neck = FPN(in_channels=[4, 6, 8, 10], out_channels=5)
    outs = neck(FEATS)
    assert neck.out_channels == [5, 5, 5, 5]
    assert [tuple(o.shape) for o in outs] == [(1, 5, 16 >> i, 16 >> i) for i in range(4)]


def test_extra_outputs_are_max_pooled_and_start_level_skips_levels() -> None:
    neck = FPN(in_channels=[4, 6, 8, 10], out_channels=5, num_outs=4, start_level=1)
    outs = neck(FEATS)
    assert [o.shape[-1] for o in outs] == [8, 4, 2, 1]
    torch.testing.assert_close(outs[3], outs[2][:, :, ::2, ::2])


def test_top_down_pass_adds_upsampled_coarse_laterals() -> None:
    neck = FPN(in_channels=[2, 2], out_channels=2)
    with torch.no_grad():
        for conv in [*neck.lateral_convs, *neck.fpn_convs]:
            conv[0].bias.zero_()
        for conv in neck.lateral_convs:
            conv[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        for conv in neck.fpn_convs:
            conv[0].weight.zero_()
            conv[0].weight[:, :, 1, 1] = torch.eye(2)
    fine, coarse = torch.ones(1, 2, 4, 4), torch.full((1, 2, 2, 2), 3.0)
    outs = neck([fine, coarse])
    torch.testing.assert_close(outs[0], torch.full((1, 2, 4, 4), 4.0))
    torch.testing.assert_close(outs[1], coarse)


def test_bad_level_range_is_an_error() -> None:
    with pytest.raises(ModelError, match="start_level"):
        FPN(in_channels=[4, 6], out_channels=5, start_level=2)
    with pytest.raises(ModelError, match="num_outs"):
        FPN(in_channels=[4, 6], out_channels=5, num_outs=1)


def test_without_output_convs_returns_the_summed_laterals_and_has_no_fpn_convs() -> None:
    neck = FPN(in_channels=[4, 6, 8, 10], out_channels=5, output_convs=False)
    assert len(neck.fpn_convs) == 0
    assert not any(k.startswith("fpn_convs") for k in neck.state_dict())
    outs = neck(FEATS)
    assert [tuple(o.shape) for o in outs] == [(1, 5, 16 >> i, 16 >> i) for i in range(4)]
    with torch.no_grad():
        top = neck.lateral_convs[3](FEATS[3])
    torch.testing.assert_close(outs[3], top)


def test_default_keeps_mmseg_checkpoint_keys() -> None:
    keys = set(FPN(in_channels=[4, 6], out_channels=5).state_dict())
    assert keys == {
        f"{m}.{i}.0.{p}" for m in ("lateral_convs", "fpn_convs") for i in (0, 1) for p in ("weight", "bias")
    }


def test_gradients_reach_every_lateral_without_output_convs() -> None:
    neck = FPN(in_channels=[4, 6, 8, 10], out_channels=5, output_convs=False)
    sum(o.sum() for o in neck(FEATS)).backward()
    assert all(p.grad is not None for p in neck.parameters())
