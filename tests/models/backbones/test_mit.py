"""MiT encoder: strides/channels per preset, feature_info agreement, gradients, weight loading."""

from __future__ import annotations

import pytest
import torch

from masklab.errors import CheckpointError, ModelError
from masklab.models.backbones import MixVisionTransformer


def _tiny(**kwargs: object) -> MixVisionTransformer:
    return MixVisionTransformer("b0", embed_dims=8, num_layers=(1, 1, 1, 1), **kwargs)


def test_presets_set_widths_and_depths() -> None:
    with torch.device("meta"):  # shapes only: skip allocating and initialising full-size weights
        b0 = MixVisionTransformer("b0")
        b2 = MixVisionTransformer("b2")
    assert b0.feature_info.channels == [32, 64, 160, 256]
    assert b2.feature_info.channels == [64, 128, 320, 512]
    assert [len(s.blocks) for s in b2.stages] == [3, 4, 6, 3]


def test_maps_match_feature_info_and_train() -> None:
    model = _tiny()
    feats = model(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == model.feature_info.channels
    assert [64 // f.shape[-1] for f in feats] == model.feature_info.strides == [4, 8, 16, 32]
    sum(f.mean() for f in feats).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_out_indices_select_stages() -> None:
    model = _tiny(out_indices=(1, 3))
    assert model.feature_info.strides == [8, 32]
    assert len(model(torch.randn(1, 3, 64, 64))) == 2


def test_weights_round_trip_and_misfit_is_an_error(tmp_path) -> None:
    source = _tiny()
    path = tmp_path / "mit.pth"
    torch.save(source.state_dict(), path)
    loaded = _tiny(pretrained=str(path))
    x = torch.randn(1, 3, 32, 32)
    source.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x)[-1], source(x)[-1])
    with pytest.raises(CheckpointError, match="does not fit"):
        MixVisionTransformer("b0", embed_dims=16, num_layers=(1, 1, 1, 1), pretrained=str(path))


def test_unknown_arch_is_an_error() -> None:
    with pytest.raises(ModelError, match="arch"):
        MixVisionTransformer("b9")  # type: ignore[arg-type]
